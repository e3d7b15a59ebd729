"""Start a proxy helper and connect a :class:`~virtfs_proto.client.ProxyClient` to it.

This is the flow libvirt used for ``<filesystem type='mount'
accessmode='passthrough'><driver type='proxy'/>``, and QEMU's own named
socket mode:

* ``mode="fd"``: make a ``socketpair()``, give one end to the helper
  (``-f FD -p EXPORT -n``, inherited through ``pass_fds``) and keep the other;
  a management tool would hand that other end to QEMU as
  ``-fsdev proxy,sock_fd=N``.
* ``mode="socket"``: the helper binds ``-s PATH`` (owned ``-u UID -g GID``)
  and accepts exactly one connection; we connect, then unlink PATH right
  away as QEMU's ``connect_namedsocket()`` does (the helper never unlinks it).

The helper runs in the foreground (``-n``) so its log lines go to stderr,
which is captured: a helper that exits instead of serving raises
:class:`~virtfs_proto.errors.HelperStartError` carrying its exit status and
what it wrote.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Final, Literal

from . import procfs
from .client import PathStyle, ProxyClient
from .errors import HelperStartError

#: Where Debian's ``qemu-system-common`` installs QEMU's helper.
QEMU_HELPER: Final = "/usr/lib/qemu/virtfs-proxy-helper"

#: What QEMU's helper logs (to stderr, with ``-n``) once its options are
#: valid; seeing it ends the wait for a helper that might fail to start.
_STARTED: Final = b"Started"

Mode = Literal["fd", "socket"]


def check_helper_command(command: str | Sequence[str]) -> list[str]:
    """The helper's argv from a shell-like string (or a list), its program checked.

    Raises :class:`HelperStartError` with one clear reason when the command
    cannot be split (an unterminated quote), is empty, or its program is
    missing, a directory or not executable, before anything is started.
    """
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:  # shlex says "No closing quotation"
            raise HelperStartError(f"cannot split the helper command {command!r}: {exc}") from None
    else:
        argv = list(command)
    if not argv:
        raise HelperStartError("the helper command is empty")
    program = argv[0]
    path = program if os.sep in program else shutil.which(program)
    hint = (
        "; install it: apt-get install -y qemu-system-common"
        if program.endswith("virtfs-proxy-helper")
        else ""
    )
    if path is None or not os.path.lexists(path):
        raise HelperStartError(f"helper {program!r} not found{hint}", argv=tuple(argv))
    if os.path.isdir(path):
        raise HelperStartError(f"helper {program!r} is a directory", argv=tuple(argv))
    if not os.access(path, os.X_OK):
        raise HelperStartError(f"helper {program!r} is not executable", argv=tuple(argv))
    return argv


def helper_args(
    export: str | os.PathLike[str],
    *,
    fd: int | None = None,
    socket_path: str | None = None,
    uid: int | None = None,
    gid: int | None = None,
    nodaemon: bool = True,
) -> list[str]:
    """The helper's options for an fd (``-f``) or a named socket (``-s``), without argv[0]."""
    if (fd is None) == (socket_path is None):
        raise ValueError("give exactly one of fd and socket_path")
    if fd is not None:
        args = ["-f", str(fd)]
    else:
        assert socket_path is not None
        args = [
            "-s",
            socket_path,
            "-u",
            str(os.getuid() if uid is None else uid),
            "-g",
            str(os.getgid() if gid is None else gid),
        ]
    args += ["-p", os.fspath(export)]
    if nodaemon:
        args.append("-n")
    return args


@dataclass
class Helper:
    """A running helper and the client connected to it.

    Use it as a context manager: leaving closes the client (the helper sees
    EOF and exits) and reaps the process.
    """

    client: ProxyClient
    process: subprocess.Popen[bytes]
    argv: tuple[str, ...]
    mode: Mode
    #: the named socket's path (unlinked unless ``keep_socket``), in ``"socket"`` mode
    socket_path: str | None = None
    _stderr: IO[bytes] | None = field(default=None, repr=False)
    #: the helper leads its own session and process group (``new_session``)
    own_group: bool = False

    @property
    def pid(self) -> int:
        """The helper's process id (the process this launcher started)."""
        return self.process.pid

    @property
    def serving_pid(self) -> int:
        """The process that serves: the started one's only child if it has
        one (ours: pid 1 of its own pid namespace), else the started one
        (spec: the process model). Ask once a reply has come back."""
        return procfs.serving_pid(self.process.pid)

    _stderr_text: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.client.peer_status = self.status

    @property
    def stderr(self) -> str:
        """Everything the helper has written to stderr (so far, while it runs)."""
        if self._stderr_text is not None:
            return self._stderr_text
        return _read_all(self._stderr).decode(errors="replace")

    def status(self, wait: float = 0.5) -> str | None:
        """How the helper ended ("exited with status 0", "was killed by SIGABRT"...).

        Waits up to ``wait`` seconds for it to exit; None if it still runs.
        A dead connection calls this to say *why* in its error.
        """
        try:
            returncode = self.process.wait(wait)
        except subprocess.TimeoutExpired:
            return None
        text = describe_exit(returncode)
        last = self.stderr.strip().splitlines()
        return f"{text} (stderr: {last[-1]})" if last else text

    def close(self, timeout: float = 5.0) -> int:
        """Close the client, wait for the helper to exit (kill it after ``timeout``).

        Returns its exit status (negative: the signal that killed it). The
        captured stderr stays readable through :attr:`stderr`.
        """
        self.client.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        returncode = self.kill()
        if self._stderr is not None and not self._stderr.closed:
            self._stderr_text = _read_all(self._stderr).decode(errors="replace")
            self._stderr.close()
        return returncode

    def kill(self) -> int:
        """SIGKILL the helper's whole process tree (see :func:`stop_process_tree`) and reap it."""
        return stop_process_tree(self.process, own_group=self.own_group)

    def __enter__(self) -> Helper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stop_process_tree(process: subprocess.Popen[bytes], *, own_group: bool = False) -> int:
    """SIGKILL ``process`` and every process it started; reap it; its exit status.

    A helper may fork (a serving child): with ``own_group`` (it was started
    with ``new_session``) its process group goes, even after the leader has
    exited; otherwise its descendants found in /proc while it still runs.
    """
    if own_group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    elif process.poll() is None:
        from .procfs import children  # /proc: only needed here

        tree, todo = [], [process.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children(pid)
        for pid in reversed(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return process.wait()


def describe_exit(returncode: int) -> str:
    """ "exited with status N" or "was killed by SIGNAME", from a Popen returncode."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


def _read_all(f: IO[bytes] | None) -> bytes:
    if f is None or f.closed:
        return b""
    f.flush()
    return os.pread(f.fileno(), 1 << 20, 0)


def _failed(
    what: str,
    process: subprocess.Popen[bytes],
    stderr: IO[bytes] | None,
    argv: Sequence[str],
    own_group: bool,
) -> HelperStartError:
    """Reap (killing if need be) a helper that did not start, and describe why.

    The error's exit status is the helper's own: None when it still ran and
    we killed it (a SIGKILL of ours is no crash of the helper's)."""
    exited = process.poll() is not None
    returncode = stop_process_tree(process, own_group=own_group)
    text = _read_all(stderr).decode(errors="replace")
    return HelperStartError(
        what, returncode=returncode if exited else None, stderr=text, argv=tuple(argv)
    )


@dataclass(frozen=True)
class _Start:
    """How to start a helper: what :func:`spawn_helper` was given."""

    argv: list[str]
    export: str | os.PathLike[str]
    stderr: IO[bytes]
    timeout: float | None
    start_timeout: float
    path_style: PathStyle
    env: Mapping[str, str] | None
    extra_fds: Sequence[int]
    new_session: bool


def spawn_helper(
    argv: Sequence[str],
    export: str | os.PathLike[str],
    mode: Mode = "fd",
    uid: int | None = None,
    gid: int | None = None,
    *,
    timeout: float | None = None,
    start_timeout: float = 10.0,
    settle: float = 0.3,
    socket_path: str | None = None,
    path_style: PathStyle = "qemu",
    env: Mapping[str, str] | None = None,
    extra_fds: Sequence[int] = (),
    new_session: bool = False,
    keep_socket: bool = False,
    before_unlink: Callable[[str], None] | None = None,
    log: IO[bytes] | None = None,
) -> Helper:
    """Start the helper ``argv`` on ``export`` and return it with a connected client.

    ``argv`` is the command without options, e.g. ``[QEMU_HELPER]`` or
    ``[sys.executable, "-m", "virtfs_proto.server"]``. ``uid``/``gid`` own
    the named socket (default: ours). ``timeout`` is the client's per-reply
    timeout (None: wait forever, as QEMU does).

    In fd mode nothing on the wire says the helper is ready, so we wait
    until it logs ``Started`` (QEMU's helper does), exits, or ``settle``
    seconds pass; a helper that exits raises :class:`HelperStartError`. In
    socket mode the wait ends when the connection is accepted (or
    ``start_timeout`` passes). The helper's stderr is captured either way
    (into ``log`` if given, which the caller then owns).

    For a test suite: ``extra_fds`` are inherited besides the socket;
    ``new_session`` starts the helper in its own session and process group,
    so that stopping it stops every process it forked; in socket mode
    ``before_unlink(path)`` runs once connected, before the socket file is
    unlinked as QEMU does (or kept, with ``keep_socket`` and a
    ``socket_path`` of the caller's).
    """
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("argv must name the helper")
    if mode not in ("fd", "socket"):
        raise ValueError(f"mode must be 'fd' or 'socket', not {mode!r}")
    # A file, not a pipe: a chatty helper can never block on a full pipe
    # that nobody reads.
    stderr: IO[bytes] = log or tempfile.TemporaryFile(prefix="virtfs-helper-stderr-")  # noqa: SIM115
    start = _Start(
        argv, export, stderr, timeout, start_timeout, path_style, env, extra_fds, new_session
    )
    try:
        if mode == "fd":
            return _spawn_fd(start, settle)
        return _spawn_socket(start, uid, gid, socket_path, keep_socket, before_unlink)
    except BaseException:
        if log is None and not stderr.closed:
            stderr.close()
        raise


def start_process(
    argv: Sequence[str],
    pass_fds: Sequence[int] = (),
    *,
    output: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Run a helper's whole command line: the one place the package starts one.

    stdin is /dev/null; stdout and stderr go to ``output`` (inherited if
    None); ``pass_fds`` are inherited. A command that cannot be run at all
    (not executable, a directory, gone) is one :class:`HelperStartError`.
    """
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            pass_fds=tuple(pass_fds),
            env=None if env is None else dict(env),
            start_new_session=new_session,
        )
    except OSError as exc:
        # one line, without the errno's repr
        why = exc.strerror or str(exc)
        raise HelperStartError(f"cannot run {argv[0]}: {why}", argv=tuple(argv)) from exc


def _popen(start: _Start, full: list[str], pass_fds: Sequence[int]) -> subprocess.Popen[bytes]:
    return start_process(
        full,
        (*pass_fds, *start.extra_fds),
        output=start.stderr,
        env=start.env,
        new_session=start.new_session,
    )


def _spawn_fd(start: _Start, settle: float) -> Helper:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with theirs:
        full = start.argv + helper_args(start.export, fd=theirs.fileno())
        try:
            process = _popen(start, full, [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
    # Only the helper holds its end now, so its exit is our EOF.
    began = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                raise _failed(
                    "the helper exited at once instead of serving",
                    process,
                    start.stderr,
                    full,
                    start.new_session,
                )
            elapsed = time.monotonic() - began
            if _STARTED in _read_all(start.stderr) or elapsed >= min(settle, start.start_timeout):
                break
            time.sleep(0.005)
    except BaseException:
        # e.g. Ctrl-C while it starts: never leave it running
        ours.close()
        if process.returncode is None:
            stop_process_tree(process, own_group=start.new_session)
        raise
    client = ProxyClient(ours, timeout=start.timeout, path_style=start.path_style)
    return Helper(client, process, tuple(full), "fd", None, start.stderr, start.new_session)


def _spawn_socket(
    start: _Start,
    uid: int | None,
    gid: int | None,
    socket_path: str | None,
    keep_socket: bool,
    before_unlink: Callable[[str], None] | None,
) -> Helper:
    tmpdir = None
    if socket_path is None:
        tmpdir = tempfile.mkdtemp(prefix="virtfs-proxy-")
        socket_path = os.path.join(tmpdir, "proxy.sock")
    process: subprocess.Popen[bytes] | None = None
    try:
        full = start.argv + helper_args(start.export, socket_path=socket_path, uid=uid, gid=gid)
        process = _popen(start, full, ())
        deadline = time.monotonic() + start.start_timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(socket_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                # Not bound yet, or bound and not yet listening.
                sock.close()
            except BaseException:
                sock.close()
                raise
            if process.poll() is not None:
                raise _failed(
                    "the helper exited at once instead of listening on its socket",
                    process,
                    start.stderr,
                    full,
                    start.new_session,
                )
            if time.monotonic() >= deadline:
                raise _failed(
                    f"the helper did not listen on {socket_path} within {start.start_timeout} s",
                    process,
                    start.stderr,
                    full,
                    start.new_session,
                )
            time.sleep(0.005)
        try:
            if before_unlink is not None:
                before_unlink(socket_path)
        except BaseException:
            sock.close()
            raise
        # The helper accepts one client and never unlinks the path: QEMU does.
        if not keep_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
    except BaseException:
        # e.g. Ctrl-C while waiting for its socket: never leave it running
        if process is not None and process.returncode is None:
            stop_process_tree(process, own_group=start.new_session)
        raise
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    client = ProxyClient(sock, timeout=start.timeout, path_style=start.path_style)
    return Helper(
        client, process, tuple(full), "socket", socket_path, start.stderr, start.new_session
    )
