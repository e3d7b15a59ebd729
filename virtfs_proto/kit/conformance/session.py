"""One helper process under test and the client end of its socket.

Everything here is bounded in time: a helper that stops answering makes a
call raise :class:`HelperHung` after ``timeout`` seconds instead of hanging
the suite, and a helper that dies makes it raise :class:`HelperGone`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ... import messages as m
from ... import procfs
from ...connection import ClientConnection
from ...errors import ConnectionClosed, ProxyProtocolError, TransportTimeout
from ...launcher import describe_exit, spawn_helper
from ...transport import close_fds

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
    """``exited with status 0``, ``was killed by SIGABRT``, or ``running``."""
    return "running" if returncode is None else describe_exit(returncode)


class HelperSession:
    """Start ``argv`` on ``export`` in ``mode`` ("fd" or "socket") and talk to it.

    The helper is started by :func:`virtfs_proto.launcher.spawn_helper` in a
    session of its own (a helper that forks is stopped whole), with
    ``extra_fds`` inherited besides its socket (to check that it closes
    them); in socket mode it listens on ``socket_path`` (default: a fresh
    name in ``rundir``), owned ``uid``:``gid`` (default: nobody when we are
    root; else ourselves, the only owner a rootless helper can give it), which is unlinked once
    connected unless ``unlink_socket`` is false. stdout and stderr go to a
    file in ``rundir``, read by :meth:`log`. The suite talks through the
    connection's :class:`Transport` and a codec connection of its own, so
    that it can send malformed frames and descriptors.
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
        if mode not in ("fd", "socket"):
            raise ValueError(f"mode must be 'fd' or 'socket', not {mode!r}")
        self.argv = list(argv)
        self.export = export
        self.mode = mode
        root = os.geteuid() == 0
        self.uid = uid if uid is not None else (NOBODY if root else os.geteuid())
        self.gid = gid if gid is not None else (NOBODY if root else os.getegid())
        self.conn = ClientConnection()
        self._closed = False
        self._serving_pid: int | None = None
        if mode == "socket" and socket_path is None:
            socket_path = rundir / f"helper-{os.getpid()}-{time.monotonic_ns()}.sock"
        # the launcher's to close (Helper.close), read until then by log()
        log = tempfile.TemporaryFile(dir=rundir, prefix="helper-log-")  # noqa: SIM115
        try:
            self._helper = spawn_helper(
                self.argv,
                export,
                "socket" if mode == "socket" else "fd",
                self.uid,
                self.gid,
                timeout=DEFAULT_TIMEOUT,
                start_timeout=START_TIMEOUT,
                socket_path=None if socket_path is None else os.fspath(socket_path),
                extra_fds=extra_fds,
                new_session=True,
                keep_socket=not unlink_socket,
                log=log,
            )
        except BaseException:
            log.close()
            raise
        self.proc = self._helper.process
        #: raw access to the connection: frames, partial frames, SCM_RIGHTS
        self.transport = self._helper.client.transport

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
        """What the helper has written to stdout and stderr (all of it, once closed)."""
        return self._helper.stderr

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
        """EOF to the helper, then wait for it to exit; kill it if it does not.

        The exit status, or None if it had to be killed. Whatever it forked
        is stopped either way."""
        if self._closed:
            return self.proc.returncode
        self._closed = True
        close_fds(self.conn.discard_fds())
        self.transport.close()
        status = self.wait_exit()
        self._helper.close(timeout=0)
        return status

    def kill(self) -> None:
        """SIGKILL the helper's whole process group and reap it."""
        self._helper.kill()
