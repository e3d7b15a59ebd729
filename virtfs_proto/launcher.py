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
from collections.abc import Mapping, Sequence
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
    #: the named socket's path (already unlinked), in ``"socket"`` mode
    socket_path: str | None = None
    _stderr: IO[bytes] | None = field(default=None, repr=False)

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
        try:
            returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            returncode = self.process.wait()
        if self._stderr is not None and not self._stderr.closed:
            self._stderr_text = _read_all(self._stderr).decode(errors="replace")
            self._stderr.close()
        return returncode

    def __enter__(self) -> Helper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
    what: str, process: subprocess.Popen[bytes], stderr: IO[bytes] | None, argv: Sequence[str]
) -> HelperStartError:
    """Reap (killing if need be) a helper that did not start, and describe why."""
    if process.poll() is None:
        process.kill()
    returncode = process.wait()
    text = _read_all(stderr).decode(errors="replace")
    if stderr is not None:
        stderr.close()
    return HelperStartError(what, returncode=returncode, stderr=text, argv=tuple(argv))


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
    ``start_timeout`` passes). The helper's stderr is captured either way.
    """
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("argv must name the helper")
    if mode not in ("fd", "socket"):
        raise ValueError(f"mode must be 'fd' or 'socket', not {mode!r}")
    # A file, not a pipe: a chatty helper can never block on a full pipe
    # that nobody reads.
    stderr: IO[bytes] = tempfile.TemporaryFile(prefix="virtfs-helper-stderr-")  # noqa: SIM115
    try:
        if mode == "fd":
            return _spawn_fd(argv, export, stderr, timeout, start_timeout, settle, path_style, env)
        return _spawn_socket(
            argv, export, uid, gid, socket_path, stderr, timeout, start_timeout, path_style, env
        )
    except BaseException:
        if not stderr.closed:
            stderr.close()
        raise


def _popen(
    argv: list[str], stderr: IO[bytes], pass_fds: Sequence[int], env: Mapping[str, str] | None
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            env=None if env is None else dict(env),
        )
    except OSError as exc:
        raise HelperStartError(f"cannot run {argv[0]}: {exc}", argv=tuple(argv)) from exc


def _spawn_fd(
    argv: list[str],
    export: str | os.PathLike[str],
    stderr: IO[bytes],
    timeout: float | None,
    start_timeout: float,
    settle: float,
    path_style: PathStyle,
    env: Mapping[str, str] | None,
) -> Helper:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with theirs:
        full = argv + helper_args(export, fd=theirs.fileno())
        try:
            process = _popen(full, stderr, [theirs.fileno()], env)
        except BaseException:
            ours.close()
            raise
    # Only the helper holds its end now, so its exit is our EOF.
    start = time.monotonic()
    while True:
        if process.poll() is not None:
            ours.close()
            raise _failed("the helper exited instead of serving", process, stderr, full)
        elapsed = time.monotonic() - start
        if _STARTED in _read_all(stderr) or elapsed >= min(settle, start_timeout):
            break
        time.sleep(0.005)
    client = ProxyClient(ours, timeout=timeout, path_style=path_style)
    return Helper(client, process, tuple(full), "fd", None, stderr)


def _spawn_socket(
    argv: list[str],
    export: str | os.PathLike[str],
    uid: int | None,
    gid: int | None,
    socket_path: str | None,
    stderr: IO[bytes],
    timeout: float | None,
    start_timeout: float,
    path_style: PathStyle,
    env: Mapping[str, str] | None,
) -> Helper:
    tmpdir = None
    if socket_path is None:
        tmpdir = tempfile.mkdtemp(prefix="virtfs-proxy-")
        socket_path = os.path.join(tmpdir, "proxy.sock")
    try:
        full = argv + helper_args(export, socket_path=socket_path, uid=uid, gid=gid)
        process = _popen(full, stderr, (), env)
        deadline = time.monotonic() + start_timeout
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
                raise _failed("the helper exited instead of listening", process, stderr, full)
            if time.monotonic() >= deadline:
                raise _failed(
                    f"the helper did not listen on {socket_path} within {start_timeout} s",
                    process,
                    stderr,
                    full,
                )
            time.sleep(0.005)
        # The helper accepts one client and never unlinks the path: QEMU does.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    client = ProxyClient(sock, timeout=timeout, path_style=path_style)
    return Helper(client, process, tuple(full), "socket", socket_path, stderr)
