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

from .. import messages as m
from ..connection import NEED_DATA, ClientConnection, ReplyReceived
from ..errors import ProxyProtocolError
from . import procfs

#: Seconds a single reply may take before the helper counts as blocked.
DEFAULT_TIMEOUT: Final = 2.0
#: Seconds a helper may take to start (bind its socket) or to exit after EOF.
START_TIMEOUT: Final = 10.0
EXIT_TIMEOUT: Final = 3.0


class HelperHung(Exception):
    """No (complete) reply arrived within the timeout: the helper is blocked."""


class HelperGone(Exception):
    """The helper closed the connection or died instead of replying."""


class HelperStartError(Exception):
    """The helper did not start (exited early or never accepted the connection)."""


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


# -- private transport ------------------------------------------------------
# PRIVATE TRANSPORT (until virtfs_proto.transport lands): the two system
# calls the suite needs, with a deadline. Replace with the transport module.


def _send(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        if sent < len(data):
            sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def _recv(sock: socket.socket, max_bytes: int, deadline: float) -> tuple[bytes, list[int]]:
    """Up to ``max_bytes`` and the fds that came with them; b"" at EOF."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)
    data, fds, _flags, _addr = socket.recv_fds(sock, max_bytes, 4)
    return data, fds


# -- end of private transport -----------------------------------------------


class HelperSession:
    """Start ``argv`` on ``export`` in ``mode`` ("fd" or "socket") and talk to it.

    ``extra_fds`` are inherited by the helper besides its socket (to check that
    it closes them). stdout and stderr go to a file read by :meth:`log`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        export: Path,
        mode: str,
        *,
        rundir: Path,
        uid: int = 65534,
        gid: int = 65534,
        extra_fds: Sequence[int] = (),
    ) -> None:
        self.argv = list(argv)
        self.export = export
        self.mode = mode
        self.uid, self.gid = uid, gid
        self.conn = ClientConnection()
        #: the socket file's (uid, gid, mode) right after connect (socket mode)
        self.socket_stat: os.stat_result | None = None
        # owned by the session for its whole life, closed in close()
        self._log = tempfile.TemporaryFile(dir=rundir, prefix="helper-log-")  # noqa: SIM115
        self._closed = False
        self.final_log = ""
        if mode == "fd":
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            cmd = [*self.argv, "-p", str(export), "-f", str(theirs.fileno()), "-n"]
            try:
                self.proc = self._popen(cmd, [theirs.fileno(), *extra_fds])
            finally:
                theirs.close()
            self.sock = ours
        elif mode == "socket":
            path = rundir / f"helper-{os.getpid()}-{time.monotonic_ns()}.sock"
            cmd = [*self.argv, "-p", str(export), "-s", str(path)]
            cmd += ["-u", str(uid), "-g", str(gid), "-n"]
            self.proc = self._popen(cmd, list(extra_fds))
            self.sock = self._connect(path)
        else:
            raise ValueError(f"mode must be 'fd' or 'socket', not {mode!r}")

    def _popen(self, cmd: list[str], pass_fds: list[int]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            pass_fds=pass_fds,
            start_new_session=True,
        )

    def _connect(self, path: Path) -> socket.socket:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise HelperStartError(
                    f"helper {describe_status(self.proc.returncode)} before accepting: "
                    f"{self.log()[-400:]!r}"
                )
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(os.fsencode(path))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    self.kill()
                    raise HelperStartError("helper never created its socket") from None
                time.sleep(0.005)
                continue
            # as QEMU does: the client unlinks the socket file after connect
            with contextlib.suppress(OSError):
                self.socket_stat = os.lstat(path)
                os.unlink(path)
            return sock

    # -- process state ------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

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

    def fd_count(self) -> int:
        return procfs.fd_count(self.pid)

    def wait_idle(self, timeout: float = 1.0) -> None:
        """Wait until the helper sleeps in a read (it has finished the last request)."""
        procfs.wait_blocked(self.pid, timeout)

    # -- requests -------------------------------------------------------------

    def call(self, request: m.Request, timeout: float = DEFAULT_TIMEOUT) -> m.Reply:
        """Send one request and return its reply (an FdReply's fd is ours to close)."""
        _send(self.sock, self.conn.send_request(request))
        return self.next_reply(timeout)

    def call_raw(
        self, frame: bytes, decode_as: m.Request, timeout: float = DEFAULT_TIMEOUT
    ) -> m.Reply:
        """Send ``frame`` verbatim and decode the reply as answering ``decode_as``."""
        self.conn.send_request(decode_as)
        _send(self.sock, frame)
        return self.next_reply(timeout)

    def pipeline(self, requests: Sequence[m.Request]) -> None:
        """Send every request in one write; collect the replies with :meth:`next_reply`."""
        _send(self.sock, b"".join(self.conn.send_request(r) for r in requests))

    def next_reply(self, timeout: float = DEFAULT_TIMEOUT) -> m.Reply:
        deadline = time.monotonic() + timeout
        while True:
            event = self.conn.next_event()
            if isinstance(event, ReplyReceived):
                return event.reply
            if event is not NEED_DATA:
                raise HelperGone(f"connection closed ({self.status()})")
            want = self.conn.bytes_wanted()
            try:
                data, fds = _recv(self.sock, want, deadline)
            except TimeoutError:
                raise HelperHung(f"no reply within {timeout:g} s ({self.status()})") from None
            except ConnectionResetError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self.conn.receive_eof()
                with contextlib.suppress(ProxyProtocolError):
                    self.conn.next_event()
                raise HelperGone(f"connection closed ({self._status_after_eof()})")
            self.conn.receive_data(data, fds)

    def _status_after_eof(self) -> str:
        self.wait_exit(1.0)
        return self.status()

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Bytes (and fds) that the codec's connection does not track."""
        _send(self.sock, data, fds)

    def read_raw(self, timeout: float) -> tuple[bytes, bool]:
        """Whatever arrives within ``timeout`` seconds, and whether EOF was seen."""
        deadline = time.monotonic() + timeout
        got = bytearray()
        while len(got) < 1 << 20:
            try:
                data, fds = _recv(self.sock, 65536, deadline)
            except TimeoutError:
                return bytes(got), False
            except ConnectionResetError:
                return bytes(got), True
            for fd in fds:
                os.close(fd)
            if not data:
                return bytes(got), True
            got += data
        return bytes(got), False

    # -- teardown -------------------------------------------------------------

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> int | None:
        """EOF to the helper, then wait for it to exit; kill it if it does not."""
        if self._closed:
            return self.proc.returncode
        self._closed = True
        for fd in self.conn.discard_fds():
            os.close(fd)
        self.sock.close()
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
