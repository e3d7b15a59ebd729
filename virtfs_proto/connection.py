"""Sans-I/O connections for both roles, in the style of h11.

Feed bytes (and, on the requesting side, received descriptors) in; get typed
events out. Hand messages in; get bytes (and descriptors to pass) out. No
socket is touched here: :mod:`virtfs_proto.transport` moves the bytes.

Replies carry no tag and do not say what they contain, so the requesting side
keeps its outstanding requests in order; pipelining (several requests in
flight) works because the helper answers strictly in order.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import messages as m
from .codec import (
    check_request_header,
    codecs_for,
    decode_fd_reply,
    decode_reply_payload,
    encode_error_reply,
    encode_reply,
    encode_request,
    fields_encoder,
    reply_bytes_missing,
    reply_encoder,
    reply_header,
    request_frame_length,
)
from .constants import (
    HEADER_SIZE,
    PROXY_MAX_IO_SZ,
    REPLY_KIND,
    V9FS_FD_VALID,
    ByteOrder,
    MessageType,
    ReplyKind,
)
from .errors import (
    BadFdCount,
    ConnectionClosed,
    LocalProtocolError,
    RemoteProtocolError,
    UnexpectedReply,
)


class _NeedData:
    """Sentinel: more bytes must arrive before the next event."""

    _instance: _NeedData | None = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event()`` when the buffered bytes do not hold a whole frame.
NEED_DATA = _NeedData()


class ConnectionState(enum.Enum):
    """Where a connection is: open, or closed by EOF or by a fatal error."""

    OPEN = "open"
    CLOSED = "closed"  #: the peer sent EOF and everything buffered was consumed
    ERROR = "error"  #: a fatal protocol error happened; the connection is unusable


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """A reply, with the request it answers."""

    request: m.Request
    reply: m.Reply


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """A request whose header was valid but whose payload did not decode.

    The connection stays in step (the whole announced payload was consumed)
    and the request still needs an answer: QEMU's helper sends ``-ENOBUFS``.
    """

    type: MessageType
    size: int
    error: RemoteProtocolError


_ERROR = ConnectionState.ERROR


class _Base:
    def __init__(self, byteorder: ByteOrder | None, lenient: bool) -> None:
        self._codecs = codecs_for(byteorder)
        self.byteorder: ByteOrder = self._codecs.byteorder
        self.lenient = lenient
        self._buf = bytearray()
        self._eof = False
        self.state = ConnectionState.OPEN

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self.state = ConnectionState.ERROR
        return exc

    def _check_usable(self) -> None:
        if self.state is ConnectionState.ERROR:
            raise LocalProtocolError("the connection had a fatal protocol error")

    def receive_eof(self) -> None:
        """The peer closed its end; ``next_event`` reports what that cut short."""
        self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed by an event."""
        return len(self._buf)


class ServerConnection(_Base):
    """The helper's side: requests in, replies out.

    ``lenient=True`` accepts payload bytes after a request's last field, as
    QEMU's helper does; otherwise such a request is a :class:`MalformedRequest`.
    """

    def __init__(self, byteorder: ByteOrder | None = None, *, lenient: bool = False) -> None:
        super().__init__(byteorder, lenient)
        self._unanswered: deque[m.Request | MalformedRequest] = deque()
        self._header_unpack = self._codecs.header_struct.unpack_from
        # per request type code: the type, the payload decoder and the message class
        self._decoders = {
            int(t): (t, codec.decode, m.REQUEST_CLASSES[t])
            for t, codec in self._codecs.requests.items()
        }
        # per (request type, reply class): codec.reply_encoder(), found on first use
        self._encoders: dict[tuple[MessageType, type], Callable[[m.Reply], bytes] | None] = {}

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes read from the socket."""
        if self.state is _ERROR or self._eof:
            self._check_usable()
            raise LocalProtocolError("data received after EOF")
        self._buf += data

    def next_event(self) -> m.Request | MalformedRequest | _NeedData | ConnectionState:
        """The next request, ``NEED_DATA``, or ``ConnectionState.CLOSED`` at a clean EOF.

        Fatal garbage (a type that is not a request, a frame over 64 KiB) and
        EOF in the middle of a frame raise :class:`RemoteProtocolError` and
        leave the connection in ``ConnectionState.ERROR``.
        """
        if self.state is _ERROR:
            self._check_usable()
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return self._at_eof(NEED_DATA)
        message_type, size = self._header_unpack(buf, 0)
        entry = self._decoders.get(message_type)
        if entry is None or size > PROXY_MAX_IO_SZ:
            try:
                check_request_header(message_type, size)
            except RemoteProtocolError as exc:
                raise self._fail(exc) from None
            raise AssertionError("check_request_header accepted a frame we cannot decode")
        end = request_frame_length(buf, byteorder=self.byteorder)
        if len(buf) < end:
            return self._at_eof(NEED_DATA)
        mtype, decode, cls = entry
        event: m.Request | MalformedRequest
        try:
            event = cls(*decode(buf, HEADER_SIZE, end, lenient=self.lenient))
        except RemoteProtocolError as exc:
            exc.message_type, exc.size = mtype, size
            event = MalformedRequest(mtype, size, exc)
        del buf[:end]
        self._unanswered.append(event)
        return event

    def _at_eof(self, event: _NeedData) -> _NeedData | ConnectionState:
        if not self._eof:
            return event
        if self._buf:
            raise self._fail(
                ConnectionClosed(f"EOF inside a request frame ({len(self._buf)} bytes buffered)")
            )
        self.state = ConnectionState.CLOSED
        return ConnectionState.CLOSED

    @property
    def unanswered(self) -> int:
        """Requests received and not yet answered."""
        return len(self._unanswered)

    def send_reply(self, reply: m.Reply) -> tuple[bytes, list[int]]:
        """Answer the oldest unanswered request: the bytes to send and the fds to pass."""
        if not self._unanswered:
            raise LocalProtocolError("no request is waiting for a reply")
        pending = self._unanswered[0]
        if isinstance(pending, MalformedRequest):
            if not isinstance(reply, m.ErrorReply):
                raise LocalProtocolError("a malformed request can only get an ErrorReply")
            data = encode_error_reply(pending.type, reply.errno, byteorder=self.byteorder)
        else:
            key = (pending.TYPE, type(reply))
            try:
                encoder = self._encoders[key]
            except KeyError:
                encoder = self._encoders[key] = reply_encoder(key[0], key[1], self.byteorder)
            if encoder is None:
                data = encode_reply(pending, reply, byteorder=self.byteorder)
            else:
                data = encoder(reply)
        self._unanswered.popleft()
        return data, [reply.fd] if isinstance(reply, m.FdReply) else []

    def send_fields(self, values: Sequence[Any]) -> bytes:
        """Answer the oldest unanswered request with a success reply given as
        its field values in the layout's order, without building the reply
        object: the bytes to send.

        Only for the requests whose reply layout their type decides and that
        pass no fd (T_LSTAT, T_READLINK, T_STATFS, T_GETVERSION); anything
        else raises :class:`LocalProtocolError`, as a bad value does.
        """
        if not self._unanswered:
            raise LocalProtocolError("no request is waiting for a reply")
        pending = self._unanswered[0]
        encoder = None
        if not isinstance(pending, MalformedRequest):
            encoder = fields_encoder(pending.TYPE, self.byteorder)
        if encoder is None:
            raise LocalProtocolError(f"{pending!r} cannot be answered with bare field values")
        data = encoder(values)
        self._unanswered.popleft()
        return data


@dataclass(slots=True)
class _FdChunk:
    """Descriptors that arrived with the received bytes ``[start, end)`` of the stream."""

    start: int
    end: int
    fds: list[int] = field(default_factory=list)


class ClientConnection(_Base):
    """The requesting side (QEMU's role): requests out, replies in, in order.

    Descriptors passed by the helper arrive with the ``recvmsg()`` that read
    the first byte of their FD reply. Give each chunk of bytes with the fds
    that came with it; the connection hands each fd to the FD reply that
    began in that chunk. Reading no more than :meth:`bytes_wanted` at a time
    makes that unambiguous. Descriptors it cannot place are reported through
    :class:`~virtfs_proto.errors.BadFdCount`, whose ``fds`` the caller must
    close.
    """

    def __init__(self, byteorder: ByteOrder | None = None, *, lenient: bool = False) -> None:
        super().__init__(byteorder, lenient)
        self._outstanding: deque[m.Request] = deque()
        self._offset = 0  # stream offset of self._buf[0]
        self._received = 0  # stream offset just past the last byte received
        self._fd_chunks: deque[_FdChunk] = deque()

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._outstanding)

    def send_request(self, request: m.Request) -> bytes:
        """Record ``request`` as outstanding and return its bytes."""
        self._check_usable()
        if self._eof:
            raise LocalProtocolError("the helper has closed the connection")
        data = encode_request(request, byteorder=self.byteorder)
        self._outstanding.append(request)
        return data

    def receive_data(self, data: bytes | bytearray | memoryview, fds: Sequence[int] = ()) -> None:
        """Buffer bytes read from the socket, with the descriptors that came with them."""
        self._check_usable()
        if self._eof:
            raise LocalProtocolError("data received after EOF")
        if fds:
            self._fd_chunks.append(_FdChunk(self._received, self._received + len(data), list(fds)))
        self._buf += data
        self._received += len(data)

    def bytes_wanted(self) -> int:
        """The most bytes that may be read without reading past the next reply.

        0 when nothing is outstanding or the next reply is already buffered.
        """
        if not self._outstanding:
            return 0
        return reply_bytes_missing(
            REPLY_KIND[self._outstanding[0].TYPE], self._buf, byteorder=self.byteorder
        )

    def next_event(self) -> ReplyReceived | _NeedData | ConnectionState:
        """The next reply, ``NEED_DATA``, or ``ConnectionState.CLOSED`` at a clean EOF."""
        self._check_usable()
        stray = self._take_stray_fds()
        if stray:
            raise BadFdCount(
                f"{len(stray)} descriptors arrived with no FD reply to carry them", fds=stray
            )
        if not self._outstanding:
            if self._buf:
                raise self._fail(
                    UnexpectedReply(f"{len(self._buf)} bytes arrived with no request outstanding")
                )
            return self._at_eof()
        request = self._outstanding[0]
        buf = self._buf
        if REPLY_KIND[request.TYPE] is ReplyKind.FD:
            if len(buf) < 4:
                return self._at_eof()
            (value,) = self._codecs.int32.unpack_from(buf, 0)
            fds = self._claim_fds() if value == V9FS_FD_VALID else []
            self._consume(4, request)
            try:
                fd_reply = decode_fd_reply(value, fds, message_type=request.TYPE)
            except BadFdCount as exc:
                exc.fds = tuple(fds)
                raise
            except RemoteProtocolError as exc:
                raise self._fail(exc) from None
            return ReplyReceived(request, fd_reply)
        if len(buf) < HEADER_SIZE:
            return self._at_eof()
        message_type, size = self._codecs.header_struct.unpack_from(buf, 0)
        try:
            reply_header(request, message_type, size)
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        end = HEADER_SIZE + size
        if len(buf) < end:
            return self._at_eof()
        try:
            reply = decode_reply_payload(
                request,
                message_type,
                buf,
                HEADER_SIZE,
                end,
                byteorder=self.byteorder,
                lenient=self.lenient,
            )
        finally:
            # The frame is consumed either way: the stream stays in step.
            self._consume(end, request)
        return ReplyReceived(request, reply)

    def _consume(self, n: int, request: m.Request) -> None:
        del self._buf[:n]
        self._offset += n
        self._outstanding.popleft()

    def _claim_fds(self) -> list[int]:
        for chunk in self._fd_chunks:
            if chunk.start <= self._offset < chunk.end and chunk.fds:
                fds, chunk.fds = chunk.fds, []
                return fds
        return []

    def _take_stray_fds(self) -> tuple[int, ...]:
        stray: list[int] = []
        chunks = self._fd_chunks
        while chunks and chunks[0].end <= self._offset:
            stray.extend(chunks.popleft().fds)
        return tuple(stray)

    def discard_fds(self) -> list[int]:
        """Every received descriptor not yet delivered in a reply, for the caller to close.

        Call it when tearing the connection down (after a fatal error above all).
        """
        fds = [fd for chunk in self._fd_chunks for fd in chunk.fds]
        self._fd_chunks.clear()
        return fds

    def _at_eof(self) -> _NeedData | ConnectionState:
        if not self._eof:
            return NEED_DATA
        if self._outstanding or self._buf:
            raise self._fail(
                ConnectionClosed(
                    f"the helper closed the connection with {len(self._outstanding)} "
                    f"request(s) unanswered and {len(self._buf)} bytes of a reply buffered",
                    message_type=self._outstanding[0].TYPE if self._outstanding else None,
                )
            )
        self.state = ConnectionState.CLOSED
        return ConnectionState.CLOSED
