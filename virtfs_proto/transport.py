"""The client side's socket code: exact reads and SCM_RIGHTS over an AF_UNIX stream.

The sans-I/O :class:`~virtfs_proto.connection.ClientConnection` decides what
the bytes mean; this module only moves them. Three rules keep descriptors
attached to the right reply:

* **Exact reads.** FD replies have no header and a passed descriptor rides
  with the ``recvmsg()`` that reads the first byte of its reply, so we never
  ask the kernel for more than :meth:`ClientConnection.bytes_wanted` bytes:
  a read cannot swallow the start of the next reply (nor its descriptor).
* **Room for extras.** Each ``recvmsg()`` leaves room for
  :data:`FD_ROOM` descriptors although a reply carries at most one, so a
  peer that passes several is *seen* (and the extras closed) rather than
  silently truncated by the kernel; more than that sets ``MSG_CTRUNC``,
  which we detect and report as :class:`~virtfs_proto.errors.AncillaryTruncated`.
* **Nothing leaks.** Every received descriptor is either handed to the
  caller inside an :class:`~virtfs_proto.messages.FdReply` or closed here
  before an error is raised. Descriptors are received ``O_CLOEXEC`` so a
  helper started later does not inherit them.

Errors are typed: EOF or a reset is
:class:`~virtfs_proto.errors.ConnectionClosed`, a timeout
:class:`~virtfs_proto.errors.TransportTimeout`.

:meth:`Transport.send` and :meth:`Transport.recv` bypass the codec; the raw
reply readers a test suite uses (:mod:`virtfs_proto.kit.raw`) build on them.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Final

from . import messages as m
from .connection import NEED_DATA, ClientConnection, ConnectionState, ReplyReceived
from .errors import (
    AncillaryTruncated,
    BadFdCount,
    ConnectionClosed,
    LocalProtocolError,
    NotAProxySocket,
    RemoteProtocolError,
    TransportTimeout,
)

#: Descriptors one ``recvmsg()`` has room for. A reply carries at most one;
#: the rest of the room exists so a misbehaving peer's extras are received
#: and closed (and reported) instead of being dropped by the kernel.
FD_ROOM: Final = 16

_FD_SIZE: Final = array.array("i").itemsize
_CONTROL_SPACE: Final = socket.CMSG_SPACE(FD_ROOM * _FD_SIZE)


class _Default:
    """Sentinel type for "use the transport's own timeout"."""


#: Pass as ``timeout=`` to use the transport's default timeout (the default).
DEFAULT_TIMEOUT: Final = _Default()

Timeout = float | None | _Default


def close_fds(fds: Sequence[int]) -> None:
    """Close every descriptor in ``fds``, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Transport:
    """One AF_UNIX stream socket to a helper, with exact reads and fd passing.

    ``timeout`` (seconds, or None to wait forever) bounds each *whole*
    operation: a reply that trickles in byte by byte still has to finish in
    time. Every method taking ``timeout=`` can override it for one call.

    Not thread-safe by itself: :class:`~virtfs_proto.client.ProxyClient`
    serialises access. The transport owns the socket and closes it.
    """

    def __init__(self, sock: socket.socket, *, timeout: float | None = None) -> None:
        if not isinstance(sock, socket.socket):
            raise NotAProxySocket(
                f"expected a connected AF_UNIX stream socket.socket, got {type(sock).__name__}"
            )
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise NotAProxySocket("the proxy protocol runs over an AF_UNIX SOCK_STREAM socket")
        self.sock = sock
        self.timeout = timeout
        # Timeouts are enforced per system call from a deadline; the socket
        # starts in blocking mode so each call's timeout is ours alone.
        sock.settimeout(None)

    # -- plumbing ------------------------------------------------------------

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed)."""
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.sock.fileno() < 0

    def close(self, conn: ClientConnection | None = None) -> None:
        """Close the socket (the helper sees EOF and exits) and every descriptor
        ``conn`` received that no reply delivered. Idempotent.

        The transport owns a received descriptor until a reply hands it over
        (then its receiver does): this and :meth:`read_event` are the only
        places that close undelivered ones.
        """
        if conn is not None:
            close_fds(conn.discard_fds())
        self.sock.close()

    def shutdown_write(self) -> None:
        """Send EOF to the helper but keep reading (to see what it still says)."""
        self.sock.shutdown(socket.SHUT_WR)

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def deadline(self, timeout: Timeout) -> float | None:
        if isinstance(timeout, _Default):
            timeout = self.timeout
        return None if timeout is None else time.monotonic() + timeout

    def _arm(self, deadline: float | None, what: str) -> None:
        """Set the socket's timeout to what is left before ``deadline``."""
        if deadline is None:
            self.sock.settimeout(None)
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportTimeout(f"timed out {what}")
        self.sock.settimeout(left)

    # -- sending -------------------------------------------------------------

    def send(
        self, data: bytes, fds: Sequence[int] = (), *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> None:
        """Send all of ``data``; ``fds`` (if any) ride as SCM_RIGHTS with its first bytes.

        Raw: nothing checks that ``data`` is a well-formed request, so test
        suites can send anything. A peer that went away raises
        :class:`ConnectionClosed`.
        """
        deadline = self.deadline(timeout)
        view = memoryview(data)
        try:
            if fds:
                if not data:
                    raise LocalProtocolError("descriptors need at least one byte to ride with")
                self._arm(deadline, "sending")
                sent = socket.send_fds(self.sock, [view], list(fds))
                view = view[sent:]
            while view:
                self._arm(deadline, "sending")
                sent = self.sock.send(view)
                view = view[sent:]
        except TimeoutError:
            raise TransportTimeout(f"timed out sending ({len(view)} bytes unsent)") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionClosed(f"the helper has gone away ({exc.strerror})") from exc

    def send_request(self, conn: ClientConnection, request: m.Request) -> None:
        """Encode ``request`` through ``conn`` (it becomes outstanding) and send it."""
        self.send(conn.send_request(request))

    # -- receiving -----------------------------------------------------------

    def recvmsg(self, max_bytes: int, deadline: float | None) -> tuple[bytes, list[int], bool]:
        """One ``recvmsg()`` by ``deadline`` (see :meth:`deadline`): (data, fds, MSG_CTRUNC
        was set). b"" is EOF. The caller owns the descriptors."""
        self._arm(deadline, "waiting for the helper")
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(
                max_bytes, _CONTROL_SPACE, socket.MSG_CMSG_CLOEXEC
            )
        except TimeoutError:
            raise TransportTimeout("timed out waiting for the helper") from None
        except ConnectionResetError as exc:
            raise ConnectionClosed("the helper reset the connection") from exc
        fds = array.array("i")
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                # A truncated control message can end mid-descriptor.
                fds.frombytes(cdata[: len(cdata) - len(cdata) % _FD_SIZE])
        return data, list(fds), bool(flags & socket.MSG_CTRUNC)

    def recv(
        self, max_bytes: int, *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> tuple[bytes, list[int]]:
        """One ``recvmsg()`` of at most ``max_bytes``: the bytes and the descriptors with them.

        ``b""`` means EOF. On ``MSG_CTRUNC`` the descriptors that arrived are
        closed and :class:`AncillaryTruncated` (carrying the bytes) is raised.
        The caller owns the returned descriptors.
        """
        data, fds, truncated = self.recvmsg(max_bytes, self.deadline(timeout))
        if truncated:
            close_fds(fds)
            raise AncillaryTruncated(
                f"MSG_CTRUNC: descriptors were dropped ({len(fds)} arrived and were closed)",
                data=data,
            )
        return data, fds

    # -- driving a ClientConnection -------------------------------------------

    def exchange(
        self, conn: ClientConnection, request: m.Request, *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> ReplyReceived:
        """Send ``request`` and return its reply (``conn`` must have nothing outstanding).

        The reply may be an :class:`~virtfs_proto.messages.ErrorReply`;
        turning it into an exception is the client's business.
        """
        if conn.outstanding:
            raise LocalProtocolError(
                f"exchange() with {conn.outstanding} replies outstanding: use read_event()"
            )
        deadline = self.deadline(timeout)
        self.send(conn.send_request(request), timeout=self._left(deadline))
        return self.read_event(conn, timeout=self._left(deadline))

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def read_event(
        self, conn: ClientConnection, *, timeout: Timeout = DEFAULT_TIMEOUT
    ) -> ReplyReceived:
        """Read until the oldest outstanding request's reply is complete, and return it.

        For pipelining: send several requests, then call this once per
        request. Reads never go past that reply. Raises:

        * :class:`ConnectionClosed` on EOF or a reset (the helper died);
        * :class:`TransportTimeout` if ``timeout`` passes (what arrived is
          kept in ``conn``; calling again resumes);
        * :class:`BadFdCount` if the reply came with the wrong descriptors
          (they are closed here; the stream is still in step);
        * :class:`AncillaryTruncated` on ``MSG_CTRUNC`` (also in step);
        * another :class:`RemoteProtocolError` for garbage (fatal for ``conn``).
        """
        if not conn.outstanding:
            raise LocalProtocolError("read_event() with no request outstanding")
        deadline = self.deadline(timeout)
        truncated = False
        while True:
            try:
                event = conn.next_event()
            except BadFdCount as exc:
                close_fds(exc.fds)
                exc.fds = ()
                close_fds(conn.discard_fds())
                if truncated:
                    raise AncillaryTruncated(
                        "MSG_CTRUNC: the descriptor of an FD reply was dropped",
                        message_type=exc.message_type,
                    ) from None
                raise
            except RemoteProtocolError:
                close_fds(conn.discard_fds())
                raise
            if isinstance(event, ReplyReceived):
                return self._deliver(conn, event, truncated)
            if event is ConnectionState.CLOSED:  # pragma: no cover - outstanding was checked
                raise ConnectionClosed("the helper closed the connection")
            assert event is NEED_DATA
            want = conn.bytes_wanted()
            if want <= 0:  # pragma: no cover - NEED_DATA with a request outstanding wants bytes
                raise LocalProtocolError("the connection needs data but wants no bytes")
            data, fds, trunc = self.recvmsg(want, deadline)
            if trunc:
                close_fds(fds)
                fds = []
                truncated = True
            if data:
                conn.receive_data(data, fds)
            else:
                close_fds(fds)
                conn.receive_eof()

    def _deliver(
        self, conn: ClientConnection, event: ReplyReceived, truncated: bool
    ) -> ReplyReceived:
        # Reads stop at the end of this reply, so any descriptor still
        # undelivered came with it and is one too many.
        stray = conn.discard_fds()
        if stray or truncated:
            close_fds(stray)
            if isinstance(event.reply, m.FdReply):
                close_fds([event.reply.fd])
            message_type = event.request.TYPE
            if truncated:
                raise AncillaryTruncated(
                    "MSG_CTRUNC: descriptors were dropped from the reply", message_type=message_type
                )
            raise BadFdCount(
                f"{len(stray)} unexpected descriptors came with the reply to"
                f" {message_type.name} (closed)",
                message_type=message_type,
            )
        return event
