"""One helper process under test and the client end of its socket.

Everything here is bounded in time: a helper that stops answering makes a
call raise :class:`HelperHung` after ``timeout`` seconds instead of hanging
the suite, and a helper that dies makes it raise :class:`HelperGone`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ... import messages as m
from ... import procfs
from ...connection import ClientConnection
from ...errors import ConnectionClosed, HelperStartError, ProxyProtocolError, TransportTimeout
from ...transport import Transport, close_fds

#: Seconds a single reply may take before the helper counts as blocked. Generous,
#: so that a loaded machine does not turn a slow reply into a failure; the cases
#: that expect a blocking helper (special files) use a shorter one of their own.
DEFAULT_TIMEOUT: Final = 5.0
#: Seconds a helper may take to start (bind its socket) or to exit after EOF.
START_TIMEOUT: Final = 10.0
EXIT_TIMEOUT: Final = 3.0
#: The socket's owner (``-u``/``-g``) when the suite runs as root.
NOBODY: Final = 65534


class HelperHung(Exception):
    """No (complete) reply arrived within the timeout: the helper is blocked."""


class HelperGone(Exception):
    """The helper closed the connection or died instead of replying."""


def describe_status(returncode: int | None) -> str:
    """``exit 0``, ``killed by SIGABRT``, or ``running``."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


class HelperSession:
    """Start ``argv`` on ``export`` in ``mode`` ("fd" or "socket") and talk to it.

    ``extra_fds`` are inherited by the helper besides its socket (to check that
    it closes them). In socket mode ``uid``/``gid`` are given as ``-u``/``-g``
    (default: nobody as root; the invoker otherwise, the only owner a
    rootless helper can give its socket). stdout and stderr go to a file read by :meth:`log`.

    Not :func:`virtfs_proto.launcher.spawn_helper`: the suite needs raw access
    to the connection (malformed frames), extra inherited descriptors, the
    socket file's owner before it is unlinked, and its own process group so
    that a helper which forks can be killed whole.
    """

    def __init__(
        self,
        argv: Sequence[str],
        export: Path,
        mode: str,
        *,
        rundir: Path,
        uid: int | None = None,
        gid: int | None = None,
        extra_fds: Sequence[int] = (),
        socket_path: Path | None = None,
        unlink_socket: bool = True,
    ) -> None:
        self.argv = list(argv)
        self.export = export
        self.mode = mode
        root = os.geteuid() == 0
        self.uid = uid if uid is not None else (NOBODY if root else os.geteuid())
        self.gid = gid if gid is not None else (NOBODY if root else os.getegid())
        self.conn = ClientConnection()
        # owned by the session for its whole life, closed in close()
        self._log = tempfile.TemporaryFile(dir=rundir, prefix="helper-log-")  # noqa: SIM115
        self._closed = False
        self._serving_pid: int | None = None
        self.final_log = ""
        try:
            sock = self._start(export, mode, rundir, extra_fds, socket_path, unlink_socket)
        except BaseException:
            # e.g. Ctrl-C while waiting for its socket: never leave it running
            if hasattr(self, "proc"):
                self.kill()
            self._log.close()
            raise
        self.transport = Transport(sock, timeout=DEFAULT_TIMEOUT)

    def _start(
        self,
        export: Path,
        mode: str,
        rundir: Path,
        extra_fds: Sequence[int],
        socket_path: Path | None,
        unlink_socket: bool,
    ) -> socket.socket:
        """Run the helper the way ``mode`` says and return our end of its connection."""
        if mode == "fd":
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            cmd = [*self.argv, "-p", str(export), "-f", str(theirs.fileno()), "-n"]
            try:
                self.proc = self._popen(cmd, [theirs.fileno(), *extra_fds])
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            return ours
        if mode == "socket":
            path = socket_path or rundir / f"helper-{os.getpid()}-{time.monotonic_ns()}.sock"
            cmd = [*self.argv, "-p", str(export), "-s", str(path)]
            cmd += ["-u", str(self.uid), "-g", str(self.gid), "-n"]
            self.proc = self._popen(cmd, list(extra_fds))
            return self._connect(path, unlink_socket)
        raise ValueError(f"mode must be 'fd' or 'socket', not {mode!r}")

    def _popen(self, cmd: list[str], pass_fds: list[int]) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                pass_fds=pass_fds,
                start_new_session=True,  # a helper that forks is killed whole (killpg)
            )
        except OSError as exc:  # not executable, a directory, gone
            raise HelperStartError(
                f"cannot run {cmd[0]}: {exc.strerror or exc}", argv=tuple(cmd)
            ) from None

    def _connect(self, path: Path, unlink: bool) -> socket.socket:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise HelperStartError(
                    "the helper exited at once instead of listening on its socket",
                    returncode=self.proc.returncode,
                    stderr=self.log()[-2000:],
                    argv=tuple(self.argv),
                )
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(os.fsencode(path))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    self.kill()
                    raise HelperStartError(
                        f"the helper never listened on its socket ({START_TIMEOUT:g} s)"
                    ) from None
                time.sleep(0.005)
                continue
            # as QEMU does: the client unlinks the socket file after connect
            if unlink:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            return sock

    # -- process state ------------------------------------------------------

    @property
    def pid(self) -> int:
        """The process that serves (spec: the process model): the started
        process's only child once it has one (ours), else the started one
        (QEMU's). Read /proc through this, never through ``proc.pid``."""
        if self._serving_pid is None:
            pid = procfs.serving_pid(self.proc.pid)
            if pid == self.proc.pid:
                return pid  # no child (yet): ask again next time
            self._serving_pid = pid
        return self._serving_pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int | None:
        """The exit status once the helper has exited, or None if it still runs."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def status(self) -> str:
        return describe_status(self.proc.poll())

    def log(self) -> str:
        if self._log.closed:
            return self.final_log
        self._log.seek(0)
        return self._log.read(1 << 20).decode(errors="replace")

    # -- requests -------------------------------------------------------------

    def call(self, request: m.Request, timeout: float = DEFAULT_TIMEOUT) -> m.Reply:
        """Send one request and return its reply (an FdReply's fd is ours to close)."""
        self.send_raw(self.conn.send_request(request))
        return self.next_reply(timeout)

    def call_raw(
        self, frame: bytes, decode_as: m.Request, timeout: float = DEFAULT_TIMEOUT
    ) -> m.Reply:
        """Send ``frame`` verbatim and decode the reply as answering ``decode_as``."""
        self.conn.send_request(decode_as)
        self.send_raw(frame)
        return self.next_reply(timeout)

    def pipeline(self, requests: Sequence[m.Request]) -> None:
        """Send every request in one write; collect the replies with :meth:`next_reply`."""
        self.send_raw(b"".join(self.conn.send_request(r) for r in requests))

    def next_reply(self, timeout: float = DEFAULT_TIMEOUT) -> m.Reply:
        """The reply to the oldest outstanding request."""
        try:
            return self.transport.read_event(self.conn, timeout=timeout).reply
        except TransportTimeout:
            raise HelperHung(f"no reply within {timeout:g} s ({self.status()})") from None
        except ConnectionClosed:
            self.wait_exit(1.0)
            raise HelperGone(f"connection closed ({self.status()})") from None

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Bytes (and fds) as they are; the codec's connection does not see them."""
        try:
            self.transport.send(data, fds)
        except TransportTimeout:
            raise HelperHung(f"the helper does not read ({self.status()})") from None
        except ConnectionClosed:
            self.wait_exit(1.0)
            raise HelperGone(f"connection closed ({self.status()})") from None

    def read_raw(self, timeout: float) -> tuple[bytes, bool]:
        """Whatever arrives within ``timeout`` seconds, and whether EOF was seen."""
        deadline = time.monotonic() + timeout
        got = bytearray()
        while len(got) < 1 << 20:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TransportTimeout("deadline")
                data, fds = self.transport.recv(65536, timeout=left)
            except TransportTimeout:
                return bytes(got), False
            except (ConnectionClosed, ProxyProtocolError):
                return bytes(got), True
            close_fds(fds)
            if not data:
                return bytes(got), True
            got += data
        return bytes(got), False

    # -- teardown -------------------------------------------------------------

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.transport.shutdown_write()

    def abandon(self) -> None:
        """Close our end at once, without reading what the helper still sends."""
        close_fds(self.conn.discard_fds())
        self.transport.close()

    def close(self) -> int | None:
        """EOF to the helper, then wait for it to exit; kill it if it does not."""
        if self._closed:
            return self.proc.returncode
        self._closed = True
        close_fds(self.conn.discard_fds())
        self.transport.close()
        status = self.wait_exit()
        if status is None:
            self.kill()
        self.final_log = self.log()
        self._log.close()
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(EXIT_TIMEOUT)
