"""Encode and decode whole frames: the stateless half of the codec.

Everything here is derived from :mod:`virtfs_proto.layouts` through
:mod:`virtfs_proto.fastpath`. Replies are not self-describing, so decoding or
encoding one needs the request it answers. For stateful use over a stream,
see :mod:`virtfs_proto.connection`.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from . import messages as m
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
    FrameTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
    TrailingBytes,
    TruncatedPayload,
    UnexpectedReply,
    UnknownMessageType,
)
from .fastpath import CompiledStruct
from .layouts import layouts_for

#: Largest errno value an ErrorReply can carry (``-errno`` must fit an int32,
#: whose smallest value is ``-2**31``; the decoder yields that one too).
_MAX_ERRNO: Final = 1 << 31

#: The request types by their code (a dict lookup is cheaper than ``MessageType(code)``).
_REQUEST_CODES: Final[Mapping[int, MessageType]] = {int(t): t for t in REPLY_KIND}

#: The success layout of each RESPONSE request (xattr requests depend on ``size``).
_RESPONSE_LAYOUT: Final[Mapping[MessageType, str]] = {
    MessageType.T_LSTAT: "stat",
    MessageType.T_READLINK: "readlink",
    MessageType.T_STATFS: "statfs",
    MessageType.T_GETVERSION: "version",
}


class Codecs:
    """Every layout of one byte order, compiled."""

    def __init__(self, byteorder: ByteOrder | None) -> None:
        layouts = layouts_for(byteorder)
        self.byteorder = layouts.byteorder
        self.header = CompiledStruct(layouts.header)
        self.requests = {t: CompiledStruct(d) for t, d in layouts.requests.items()}
        self.replies = {name: CompiledStruct(d) for name, d in layouts.replies.items()}
        header_single = self.header._single
        int32 = self.replies["status"]._single
        assert header_single is not None and header_single.size == HEADER_SIZE
        assert int32 is not None and int32.size == 4
        #: the header as one ``struct.Struct`` (type, size)
        self.header_struct: struct.Struct = header_single
        #: one int32 (the FD reply, a status, an errno)
        self.int32: struct.Struct = int32


@functools.cache
def codecs_for(byteorder: ByteOrder | None = None) -> Codecs:
    """The compiled codecs for a byte order (``None``: the host's)."""
    return Codecs(byteorder)


def success_layout(request: m.Request) -> str:
    """The name of the reply layout that a success answer to ``request`` uses."""
    kind = REPLY_KIND[request.TYPE]
    if kind is ReplyKind.FD:
        return "fd"
    if kind is ReplyKind.STATUS:
        return "status"
    if isinstance(request, m.LgetxattrRequest | m.LlistxattrRequest):
        return "xattr_size" if request.size == 0 else "xattr_value"
    return _RESPONSE_LAYOUT[request.TYPE]


# -- requests --------------------------------------------------------------


def encode_request(request: m.Request, *, byteorder: ByteOrder | None = None) -> bytes:
    """Header plus payload for a request."""
    c = codecs_for(byteorder)
    try:
        codec = c.requests[request.TYPE]
    except (AttributeError, KeyError):
        raise LocalProtocolError(f"not a request: {request!r}") from None
    payload = codec.encode_message(request)
    if len(payload) > PROXY_MAX_IO_SZ:
        raise LocalProtocolError(
            f"payload of {len(payload)} bytes exceeds PROXY_MAX_IO_SZ ({PROXY_MAX_IO_SZ})",
            message_type=request.TYPE,
            size=len(payload),
        )
    return c.header_struct.pack(request.TYPE, len(payload)) + payload


def check_request_header(message_type: int, size: int) -> MessageType:
    """Validate a request header before its payload is read; fatal errors raise."""
    if size > PROXY_MAX_IO_SZ:
        raise FrameTooLarge(
            f"request announces {size} payload bytes, more than {PROXY_MAX_IO_SZ}",
            message_type=message_type,
            size=size,
        )
    mtype = _REQUEST_CODES.get(message_type)
    if mtype is None:
        raise UnknownMessageType(
            f"{message_type} is not a request type", message_type=message_type, size=size
        )
    return mtype


def decode_request_payload(
    message_type: MessageType,
    buf: bytes | bytearray | memoryview,
    start: int,
    end: int,
    *,
    byteorder: ByteOrder | None = None,
    lenient: bool = False,
) -> m.Request:
    """Decode the payload ``buf[start:end]`` of a request of a known type."""
    codec = codecs_for(byteorder).requests[message_type]
    try:
        values = codec.decode(buf, start, end, lenient=lenient)
    except RemoteProtocolError as exc:
        exc.message_type, exc.size = message_type, end - start
        raise
    return m.REQUEST_CLASSES[message_type](*values)


def decode_request(
    data: bytes | bytearray | memoryview,
    *,
    byteorder: ByteOrder | None = None,
    lenient: bool = False,
) -> m.Request:
    """Decode exactly one whole request frame (header and payload).

    ``lenient`` accepts payload bytes after the last field, as QEMU's helper
    does; by default they raise :class:`~virtfs_proto.errors.TrailingBytes`.
    Bytes after the frame announced by the header always raise.
    """
    c = codecs_for(byteorder)
    if len(data) < HEADER_SIZE:
        raise TruncatedPayload(f"{len(data)} bytes is shorter than the 8-byte header", offset=0)
    message_type, size = c.header_struct.unpack_from(data, 0)
    mtype = check_request_header(message_type, size)
    end = HEADER_SIZE + size
    if len(data) < end:
        raise TruncatedPayload(
            f"header announces {size} payload bytes, {len(data) - HEADER_SIZE} present",
            message_type=message_type,
            size=size,
            offset=len(data) - HEADER_SIZE,
        )
    if len(data) > end:
        raise TrailingBytes(
            f"{len(data) - end} bytes follow the frame",
            message_type=message_type,
            size=size,
            offset=size,
        )
    return decode_request_payload(
        mtype, data, HEADER_SIZE, end, byteorder=byteorder, lenient=lenient
    )


# -- replies ---------------------------------------------------------------


def _check_reply_fits(request: m.Request, reply: m.Reply) -> str:
    if getattr(request, "TYPE", None) not in REPLY_KIND:
        raise LocalProtocolError(f"not a request: {request!r}")
    if isinstance(reply, m.ErrorReply):
        if not 0 < reply.errno <= _MAX_ERRNO:
            raise LocalProtocolError(f"errno must be 1..2**31, not {reply.errno}")
        return "error"
    layout = success_layout(request)
    if layout != getattr(reply, "LAYOUT", None):
        raise LocalProtocolError(
            f"{type(reply).__name__} cannot answer {request.TYPE.name}"
            f" (expected the {layout!r} reply)",
            message_type=request.TYPE,
        )
    return layout


def encode_reply(
    request: m.Request, reply: m.Reply, *, byteorder: ByteOrder | None = None
) -> bytes:
    """The bytes of ``reply`` answering ``request``.

    An :class:`~virtfs_proto.messages.FdReply`'s descriptor is not part of
    the bytes: send it as SCM_RIGHTS ancillary data with them.
    """
    layout = _check_reply_fits(request, reply)
    return encode_reply_for(request.TYPE, reply, layout, byteorder)


def encode_error_reply(
    message_type: MessageType, errno: int, *, byteorder: ByteOrder | None = None
) -> bytes:
    """An error answer to a request of ``message_type`` (no decoded request needed)."""
    reply = m.ErrorReply(errno)
    if not 0 < errno <= _MAX_ERRNO:
        raise LocalProtocolError(f"errno must be 1..2**31, not {errno}")
    return encode_reply_for(message_type, reply, "error", byteorder)


def encode_reply_for(
    message_type: MessageType, reply: m.Reply, layout: str, byteorder: ByteOrder | None
) -> bytes:
    c = codecs_for(byteorder)
    kind = REPLY_KIND[message_type]
    if kind is ReplyKind.FD:
        value = V9FS_FD_VALID if isinstance(reply, m.FdReply) else -reply.errno  # type: ignore[union-attr]
        return c.replies["fd"].encode((value,))
    if isinstance(reply, m.ErrorReply):
        return c.header_struct.pack(MessageType.T_ERROR, 4) + c.replies["error"].encode(
            (-reply.errno,)
        )
    codec = c.replies[layout]
    payload = codec.encode((0,)) if layout == "status" else codec.encode_message(reply)
    if len(payload) > PROXY_MAX_IO_SZ:
        raise LocalProtocolError(
            f"reply payload of {len(payload)} bytes exceeds PROXY_MAX_IO_SZ",
            message_type=message_type,
            size=len(payload),
        )
    return c.header_struct.pack(MessageType.T_SUCCESS, len(payload)) + payload


def _error_encoder(prefix: bytes, int32: struct.Struct) -> Callable[[m.Reply], bytes]:
    pack = int32.pack

    def encode_error(reply: m.Reply) -> bytes:
        errno = reply.errno  # type: ignore[union-attr]
        if not 0 < errno <= _MAX_ERRNO:
            raise LocalProtocolError(f"errno must be 1..2**31, not {errno}")
        try:
            return prefix + pack(-errno)
        except struct.error as exc:
            raise LocalProtocolError(f"cannot encode errno {errno!r}: {exc}") from None

    return encode_error


def reply_encoder(
    message_type: MessageType, reply_type: type[m.Reply], byteorder: ByteOrder | None = None
) -> Callable[[m.Reply], bytes] | None:
    """A function that encodes a ``reply_type`` answering a ``message_type`` request.

    Its bytes and its errors are :func:`encode_reply`'s; the checks that depend
    only on the two types are made once, here. None where the encoding also
    depends on the request's values (the xattr requests' ``size``) or where the
    reply cannot answer the request: use :func:`encode_reply` then. Build it
    once per pair of types and keep it (``ServerConnection`` does).
    """
    c = codecs_for(byteorder)
    kind = REPLY_KIND.get(message_type)
    if kind is None:
        return None
    if kind is ReplyKind.FD:
        if issubclass(reply_type, m.ErrorReply):
            return _error_encoder(b"", c.int32)
        if getattr(reply_type, "LAYOUT", None) != "fd":
            return None
        valid = c.replies["fd"].encode((V9FS_FD_VALID,))
        return lambda reply: valid
    if issubclass(reply_type, m.ErrorReply):
        return _error_encoder(c.header_struct.pack(MessageType.T_ERROR, 4), c.int32)
    if message_type in (MessageType.T_LGETXATTR, MessageType.T_LLISTXATTR):
        return None
    layout = "status" if kind is ReplyKind.STATUS else _RESPONSE_LAYOUT[message_type]
    if getattr(reply_type, "LAYOUT", None) != layout:
        return None
    if layout == "status":
        success = c.header_struct.pack(MessageType.T_SUCCESS, 4) + c.replies["status"].encode((0,))
        return lambda reply: success
    encode_message = c.replies[layout].encode_message
    return _with_success_header(message_type, encode_message, c.header_struct)


@functools.cache
def fields_encoder(
    message_type: MessageType, byteorder: ByteOrder | None = None
) -> Callable[[Sequence[Any]], bytes] | None:
    """A function that encodes the success reply to a ``message_type`` request
    from its field values in the layout's order, building no reply object.

    Only for the RESPONSE requests whose reply layout the type alone decides
    (T_LSTAT, T_READLINK, T_STATFS, T_GETVERSION); None for the others.
    """
    layout = _RESPONSE_LAYOUT.get(message_type)
    if layout is None:
        return None
    c = codecs_for(byteorder)
    return _with_success_header(message_type, c.replies[layout].encode, c.header_struct)


def _with_success_header(
    message_type: MessageType, encode: Callable[[Any], bytes], header: struct.Struct
) -> Callable[[Any], bytes]:
    pack = header.pack

    def encode_success(value: Any) -> bytes:
        payload = encode(value)
        if len(payload) > PROXY_MAX_IO_SZ:
            raise LocalProtocolError(
                f"reply payload of {len(payload)} bytes exceeds PROXY_MAX_IO_SZ",
                message_type=message_type,
                size=len(payload),
            )
        return pack(MessageType.T_SUCCESS, len(payload)) + payload

    return encode_success


def reply_header(request: m.Request, message_type: int, size: int) -> None:
    """Validate a STATUS/RESPONSE reply header before its payload is read."""
    if message_type not in (MessageType.T_SUCCESS, MessageType.T_ERROR):
        raise UnexpectedReply(
            f"reply type {message_type} is neither T_SUCCESS nor T_ERROR"
            f" (answering {request.TYPE.name})",
            message_type=message_type,
            size=size,
        )
    if size > PROXY_MAX_IO_SZ:
        raise FrameTooLarge(
            f"reply announces {size} payload bytes, more than {PROXY_MAX_IO_SZ}",
            message_type=message_type,
            size=size,
        )


def request_frame_length(
    buffered: bytes | bytearray | memoryview, *, byteorder: ByteOrder | None = None
) -> int:
    """The length of the request frame that starts ``buffered``.

    The one framing rule every splitter of request streams follows
    (connection, tracer, vector runner, suite): the header while it is
    incomplete, then the header plus the ``size`` it announces. The frame is
    whole once ``len(buffered)`` reaches it. The size is not judged here:
    :func:`check_request_header` says whether it may be waited for.
    """
    if len(buffered) < HEADER_SIZE:
        return HEADER_SIZE
    size: int = codecs_for(byteorder).header_struct.unpack_from(buffered, 0)[1]
    return HEADER_SIZE + size


def request_bytes_missing(
    buffered: bytes | bytearray | memoryview, *, byteorder: ByteOrder | None = None
) -> int:
    """How many more bytes the request that starts ``buffered`` needs; 0 when whole.

    The twin of :func:`reply_bytes_missing`, by :func:`request_frame_length`.
    """
    return max(0, request_frame_length(buffered, byteorder=byteorder) - len(buffered))


def reply_bytes_missing(
    kind: ReplyKind,
    buffered: bytes | bytearray | memoryview,
    *,
    byteorder: ByteOrder | None = None,
    max_payload: int = PROXY_MAX_IO_SZ,
) -> int:
    """How many more bytes the reply of shape ``kind`` needs, given its first bytes.

    The one framing rule every reader of replies follows (connection,
    transport, tracer): an FD reply is 4 bytes; a STATUS/RESPONSE reply is
    the header, then the ``size`` it announces, of which at most
    ``max_payload`` is waited for. 0 when the reply is complete.
    """
    have = len(buffered)
    if kind is ReplyKind.FD:
        return max(0, 4 - have)
    if have < HEADER_SIZE:
        return HEADER_SIZE - have
    size: int = codecs_for(byteorder).header_struct.unpack_from(buffered, 0)[1]
    return max(0, HEADER_SIZE + min(size, max_payload) - have)


def decode_fd_reply(
    value: int, fds: Sequence[int], *, message_type: int | None = None
) -> m.FdReply | m.ErrorReply:
    """Interpret the int32 of an FD reply and the descriptors that came with it.

    On error the caller still owns (and must close) every descriptor in ``fds``.
    """
    if value == V9FS_FD_VALID:
        if len(fds) != 1:
            raise BadFdCount(
                f"FD reply came with {len(fds)} descriptors, expected 1",
                fds=tuple(fds),
                message_type=message_type,
            )
        return m.FdReply(fds[0])
    if value < 0:
        if fds:
            raise BadFdCount(
                f"error FD reply came with {len(fds)} descriptors, expected none",
                fds=tuple(fds),
                message_type=message_type,
            )
        return m.ErrorReply(-value)
    raise UnexpectedReply(
        f"FD reply value {value} is neither V9FS_FD_VALID nor a negative errno",
        message_type=message_type,
    )


def decode_reply_payload(
    request: m.Request,
    message_type: int,
    buf: bytes | bytearray | memoryview,
    start: int,
    end: int,
    *,
    byteorder: ByteOrder | None = None,
    lenient: bool = False,
) -> m.Reply:
    """Decode the payload of a STATUS/RESPONSE reply whose header was checked."""
    c = codecs_for(byteorder)
    size = end - start
    try:
        if message_type == MessageType.T_ERROR:
            (status,) = c.replies["error"].decode(buf, start, end, lenient=lenient)
            if status >= 0:
                raise UnexpectedReply(f"T_ERROR carries {status}, not a negative errno")
            return m.ErrorReply(-status)
        layout = success_layout(request)
        values = c.replies[layout].decode(buf, start, end, lenient=lenient)
    except RemoteProtocolError as exc:
        exc.message_type, exc.size = message_type, size
        raise
    if layout == "status":
        if values[0] != 0:
            raise UnexpectedReply(
                f"T_SUCCESS status reply carries {values[0]}, not 0",
                message_type=message_type,
                size=size,
            )
        return m.StatusReply()
    return m.REPLY_CLASSES[layout](*values)


def decode_error_reply(
    message_type: MessageType,
    data: bytes | bytearray | memoryview,
    *,
    byteorder: ByteOrder | None = None,
) -> m.ErrorReply:
    """Decode a reply that can only be an error (to a request that did not decode)."""
    c = codecs_for(byteorder)
    if REPLY_KIND[message_type] is ReplyKind.FD:
        expected = 4
        value = c.int32.unpack_from(data, 0)[0] if len(data) == 4 else None
    else:
        expected = HEADER_SIZE + 4
        value = None
        if len(data) == expected and c.header_struct.unpack_from(data, 0) == (
            MessageType.T_ERROR,
            4,
        ):
            value = c.int32.unpack_from(data, HEADER_SIZE)[0]
    if value is None or value >= 0:
        raise UnexpectedReply(
            f"expected a {expected}-byte error reply to a malformed {message_type.name}",
            message_type=message_type,
            size=len(data),
        )
    return m.ErrorReply(-value)


def decode_reply(
    request: m.Request,
    data: bytes | bytearray | memoryview,
    *,
    fds: Sequence[int] = (),
    byteorder: ByteOrder | None = None,
    lenient: bool = False,
) -> m.Reply:
    """Decode exactly one whole reply to ``request``, with the fds received with it."""
    c = codecs_for(byteorder)
    if REPLY_KIND[request.TYPE] is ReplyKind.FD:
        if len(data) != 4:
            raise (TruncatedPayload if len(data) < 4 else TrailingBytes)(
                f"an FD reply is exactly 4 bytes, not {len(data)}", offset=min(len(data), 4)
            )
        (value,) = c.replies["fd"].decode(data, 0, 4)
        return decode_fd_reply(value, fds, message_type=request.TYPE)
    if fds:
        raise BadFdCount(
            f"{len(fds)} descriptors came with a {request.TYPE.name} reply", fds=tuple(fds)
        )
    if len(data) < HEADER_SIZE:
        raise TruncatedPayload(f"{len(data)} bytes is shorter than the 8-byte header", offset=0)
    message_type, size = c.header_struct.unpack_from(data, 0)
    reply_header(request, message_type, size)
    end = HEADER_SIZE + size
    if len(data) != end:
        raise (TruncatedPayload if len(data) < end else TrailingBytes)(
            f"header announces {size} payload bytes, {len(data) - HEADER_SIZE} present",
            message_type=message_type,
            size=size,
            offset=min(len(data), end) - HEADER_SIZE,
        )
    return decode_reply_payload(
        request, message_type, data, HEADER_SIZE, end, byteorder=byteorder, lenient=lenient
    )
