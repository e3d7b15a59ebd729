"""Strict decoding and the typed errors: what is refused, with which error, carrying what."""

from __future__ import annotations

import pytest

from virtfs_proto import errors as e
from virtfs_proto import messages as m
from virtfs_proto.codec import (
    decode_error_reply,
    decode_reply,
    decode_request,
    encode_error_reply,
    encode_reply,
    encode_request,
)
from virtfs_proto.connection import NEED_DATA, ConnectionState, ServerConnection
from virtfs_proto.constants import PROXY_MAX_IO_SZ, ByteOrder, MessageType

T = MessageType
LE: ByteOrder = "little"


def u32(n: int, order: ByteOrder = LE) -> bytes:
    return n.to_bytes(4, order)


def s32(n: int, order: ByteOrder = LE) -> bytes:
    return n.to_bytes(4, order, signed=True)


def frame(mtype: int, payload: bytes, order: ByteOrder = LE) -> bytes:
    return u32(mtype, order) + u32(len(payload), order) + payload


def string(data: bytes, order: ByteOrder = LE) -> bytes:
    return len(data).to_bytes(2, order) + data


# -- the hierarchy --------------------------------------------------------------

REMOTE = [
    e.UnknownMessageType,
    e.FrameTooLarge,
    e.TruncatedPayload,
    e.TrailingBytes,
    e.UnexpectedReply,
    e.BadFdCount,
    e.ConnectionClosed,
]


@pytest.mark.parametrize("cls", REMOTE, ids=lambda c: c.__name__)
def test_remote_errors_are_remote(cls: type[Exception]) -> None:
    assert issubclass(cls, e.RemoteProtocolError)
    assert issubclass(cls, e.ProxyProtocolError)
    assert not issubclass(cls, e.LocalProtocolError)


def test_local_is_not_remote() -> None:
    assert issubclass(e.LocalProtocolError, e.ProxyProtocolError)
    assert not issubclass(e.LocalProtocolError, e.RemoteProtocolError)
    assert not issubclass(e.RemoteProtocolError, e.LocalProtocolError)


def test_error_carries_and_shows_where() -> None:
    err = e.TruncatedPayload("cut", message_type=8, size=3, offset=2)
    assert (err.message_type, err.size, err.offset, err.kind) == (8, 3, 2, "TruncatedPayload")
    assert str(err) == "cut (type=T_LSTAT, size=3, offset=2)"
    assert str(e.UnknownMessageType("bad", message_type=99)) == "bad (type=99)"
    assert str(e.RemoteProtocolError("plain")) == "plain"


# -- unknown type ---------------------------------------------------------------


@pytest.mark.parametrize("mtype", [0, 1, 22, 23, 0x100, 0xFFFFFFFF])
@pytest.mark.parametrize("order", ["little", "big"])
def test_unknown_type(mtype: int, order: ByteOrder) -> None:
    data = frame(mtype, b"\x00" * 4, order)
    with pytest.raises(e.UnknownMessageType) as info:
        decode_request(data, byteorder=order)
    assert (info.value.message_type, info.value.size) == (mtype, 4)

    conn = ServerConnection(byteorder=order)
    conn.receive_data(data[:8])  # the header alone is enough to refuse it
    with pytest.raises(e.UnknownMessageType) as info:
        conn.next_event()
    assert (info.value.message_type, info.value.size) == (mtype, 4)
    assert conn.state is ConnectionState.ERROR
    with pytest.raises(e.LocalProtocolError):
        conn.next_event()
    with pytest.raises(e.LocalProtocolError):
        conn.receive_data(b"more")


# -- the 64 KiB bound -----------------------------------------------------------


@pytest.mark.parametrize("size", [PROXY_MAX_IO_SZ + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
@pytest.mark.parametrize("order", ["little", "big"])
def test_frame_too_large_refused_from_the_header_alone(size: int, order: ByteOrder) -> None:
    header = u32(T.T_LSTAT, order) + u32(size, order)
    conn = ServerConnection(byteorder=order)
    conn.receive_data(header)
    with pytest.raises(e.FrameTooLarge) as info:
        conn.next_event()
    assert (info.value.message_type, info.value.size) == (T.T_LSTAT, size)
    assert conn.state is ConnectionState.ERROR
    with pytest.raises(e.FrameTooLarge):
        decode_request(header, byteorder=order)


@pytest.mark.parametrize("order", ["little", "big"])
def test_frame_of_exactly_64k_is_accepted(order: ByteOrder) -> None:
    path = b"p" * (PROXY_MAX_IO_SZ - 2)
    request = m.LstatRequest(path)
    data = encode_request(request, byteorder=order)
    assert len(data) == 8 + PROXY_MAX_IO_SZ
    assert data[4:8] == u32(PROXY_MAX_IO_SZ, order)
    assert decode_request(data, byteorder=order) == request

    conn = ServerConnection(byteorder=order)
    conn.receive_data(data[:8])
    assert conn.next_event() is NEED_DATA  # not refused: it may buffer 64 KiB
    conn.receive_data(data[8:])
    assert conn.next_event() == request


def test_encoding_more_than_64k_is_refused() -> None:
    request = m.LinkRequest(b"a" * 65535, b"b" * 2)  # 2 + 65535 + 2 + 2 = 65541
    with pytest.raises(e.LocalProtocolError) as info:
        encode_request(request)
    assert info.value.size == 65541
    assert info.value.message_type == T.T_LINK
    # The largest xattr value a reply can carry is 65534 bytes (notes section 10).
    request_x = m.LgetxattrRequest(65536, b"/f\x00", b"user.big")
    assert len(encode_reply(request_x, m.XattrValueReply(b"v" * 65534))) == 8 + 65536
    with pytest.raises(e.LocalProtocolError):
        encode_reply(request_x, m.XattrValueReply(b"v" * 65535))


def test_reply_frame_too_large() -> None:
    data = u32(0) + u32(PROXY_MAX_IO_SZ + 1)
    with pytest.raises(e.FrameTooLarge) as info:
        decode_reply(m.LstatRequest(b"/\x00"), data)
    assert info.value.size == PROXY_MAX_IO_SZ + 1


# -- truncated payloads: type, size and the offset of what did not fit ---------------


@pytest.mark.parametrize("order", ["little", "big"])
def test_truncated_request_offsets(order: ByteOrder) -> None:
    # T_CREATE "sdddd": path b"ab" at 0 (2 + 2 bytes), flags 4, mode 8, uid 12, gid 16.
    payload = string(b"ab", order) + b"".join(u32(v, order) for v in (1, 2, 3, 4))
    assert len(payload) == 20
    expected = {0: 0, 1: 0, 2: 0, 3: 0, 4: 4, 7: 4, 8: 8, 11: 8, 12: 12, 15: 12, 16: 16, 19: 16}
    for cut, offset in expected.items():
        with pytest.raises(e.TruncatedPayload) as info:
            decode_request(frame(T.T_CREATE, payload[:cut], order), byteorder=order)
        err = info.value
        assert (err.message_type, err.size, err.offset) == (T.T_CREATE, cut, offset), cut
        assert isinstance(err, e.RemoteProtocolError)


def test_truncated_request_names_the_field() -> None:
    payload = string(b"ab") + u32(1) + u32(2) + u32(3) + b"\x04"
    with pytest.raises(e.TruncatedPayload, match="'gid'"):
        decode_request(frame(T.T_CREATE, payload))


@pytest.mark.parametrize(
    ("mtype", "payload", "offset"),
    [
        # the length prefix says 10, three bytes follow
        (T.T_LSTAT, b"\x0a\x00abc", 0),
        # the second string of T_LINK
        (T.T_LINK, string(b"/old\x00") + b"\xff\xff" + b"x" * 100, 7),
        # T_LGETXATTR "dss": size 4, path at 4, name at 4 + 2 + 3
        (T.T_LGETXATTR, u32(0) + string(b"/f\x00") + b"\x05\x00user", 9),
        # a length prefix cut in half
        (T.T_RENAME, string(b"a") + b"\x01", 3),
    ],
    ids=["lstat-path", "link-newpath", "lgetxattr-name", "rename-half-length"],
)
def test_string_length_past_the_payload(mtype: MessageType, payload: bytes, offset: int) -> None:
    with pytest.raises(e.TruncatedPayload) as info:
        decode_request(frame(mtype, payload))
    assert (info.value.message_type, info.value.size, info.value.offset) == (
        mtype,
        len(payload),
        offset,
    )


def test_frame_shorter_than_its_header_says() -> None:
    data = frame(T.T_LSTAT, string(b"/file\x00"))
    with pytest.raises(e.TruncatedPayload) as info:
        decode_request(data[:-3])
    assert (info.value.message_type, info.value.size, info.value.offset) == (T.T_LSTAT, 8, 5)
    with pytest.raises(e.TruncatedPayload) as info:
        decode_request(data[:5])
    assert info.value.offset == 0


#: ProxyStat field offsets in the payload, from the notes' table (section 7).
STAT_OFFSETS = [0, 8, 16, 24, 28, 32, 36, 44, 52, 60, 68, 76, 84, 92, 100, 108, 116]


@pytest.mark.parametrize("cut", [0, 1, 7, 8, 23, 24, 27, 28, 35, 36, 43, 100, 101, 108, 115])
def test_truncated_stat_reply_offsets(cut: int) -> None:
    payload = bytes(range(116))
    expected = max(off for off in STAT_OFFSETS if off <= cut)
    if cut not in STAT_OFFSETS:  # cut inside a field: that field's start
        expected = max(off for off in STAT_OFFSETS if off < cut)
    with pytest.raises(e.TruncatedPayload) as info:
        decode_reply(m.LstatRequest(b"/\x00"), frame(T.T_SUCCESS, payload[:cut]))
    err = info.value
    assert (err.message_type, err.size, err.offset) == (T.T_SUCCESS, cut, expected)


def test_truncated_error_and_status_replies() -> None:
    for request in (m.ChmodRequest(b"/f\x00", 0o644), m.ReadlinkRequest(b"/l\x00", 4096)):
        with pytest.raises(e.TruncatedPayload) as info:
            decode_reply(request, frame(T.T_ERROR, b"\xfe\xff"))
        assert (info.value.message_type, info.value.size, info.value.offset) == (T.T_ERROR, 2, 0)
    with pytest.raises(e.TruncatedPayload):
        decode_reply(m.ChmodRequest(b"/f\x00", 0), frame(T.T_SUCCESS, b""))
    with pytest.raises(e.TruncatedPayload):
        decode_reply(m.ReadlinkRequest(b"/l\x00", 4096), frame(T.T_SUCCESS, b"\x09\x00/target"))
    for short in (b"", b"\xff", b"\xff\xff\xff"):
        with pytest.raises(e.TruncatedPayload):
            decode_reply(m.OpenRequest(b"/f\x00", 0), short, fds=(5,))


# -- trailing bytes ---------------------------------------------------------------


def test_trailing_payload_bytes_strict_and_lenient() -> None:
    payload = string(b"/file\x00") + b"\x00\x00"
    data = frame(T.T_LSTAT, payload)
    with pytest.raises(e.TrailingBytes) as info:
        decode_request(data)
    assert (info.value.message_type, info.value.size, info.value.offset) == (T.T_LSTAT, 10, 8)
    assert decode_request(data, lenient=True) == m.LstatRequest(b"/file\x00")


def test_trailing_reply_payload_bytes_strict_and_lenient() -> None:
    request = m.LstatRequest(b"/\x00")
    data = frame(T.T_SUCCESS, bytes(116) + b"\x01")
    with pytest.raises(e.TrailingBytes) as info:
        decode_reply(request, data)
    assert (info.value.size, info.value.offset) == (117, 116)
    assert decode_reply(request, data, lenient=True) == m.StatReply(*[0] * 16)
    error = frame(T.T_ERROR, s32(-2) + b"junk")
    with pytest.raises(e.TrailingBytes):
        decode_reply(m.MkdirRequest(0, 0, b"d", 0o755), error)
    assert decode_reply(m.MkdirRequest(0, 0, b"d", 0o755), error, lenient=True) == m.ErrorReply(2)


def test_bytes_after_the_frame_always_refused() -> None:
    data = frame(T.T_LSTAT, string(b"/file\x00")) + b"\x08"
    for lenient in (False, True):
        with pytest.raises(e.TrailingBytes):
            decode_request(data, lenient=lenient)
    with pytest.raises(e.TrailingBytes):
        decode_reply(m.OpenRequest(b"/f\x00", 0), s32(0x7FFFFFFF) + b"\x00", fds=(5,))
    with pytest.raises(e.TrailingBytes):
        decode_reply(m.ChmodRequest(b"/f\x00", 0), frame(0, bytes(4)) + b"\x00", lenient=True)


# -- fds --------------------------------------------------------------------------

OPEN = m.OpenRequest(b"/file\x00", 0)
VALID = s32(0x7FFFFFFF)


def test_fd_reply_with_its_fd() -> None:
    assert decode_reply(OPEN, VALID, fds=(7,)) == m.FdReply(7)
    assert decode_reply(OPEN, s32(-2)) == m.ErrorReply(2)


@pytest.mark.parametrize(
    ("request_", "data", "fds"),
    [
        (OPEN, VALID, ()),
        (OPEN, VALID, (7, 8)),
        (OPEN, s32(-2), (7,)),
        (m.CreateRequest(b"f", 0, 0, 0, 0), VALID, (1, 2, 3)),
        (m.LstatRequest(b"/\x00"), frame(T.T_ERROR, s32(-2)), (7,)),
        (m.ChmodRequest(b"/f\x00", 0), frame(T.T_SUCCESS, bytes(4)), (7, 8)),
    ],
    ids=["valid-none", "valid-two", "error-one", "create-three", "lstat-one", "chmod-two"],
)
def test_bad_fd_count(request_: m.Request, data: bytes, fds: tuple[int, ...]) -> None:
    with pytest.raises(e.BadFdCount) as info:
        decode_reply(request_, data, fds=fds)
    assert info.value.fds == fds
    assert isinstance(info.value, e.RemoteProtocolError)


# -- replies that cannot answer -------------------------------------------------


@pytest.mark.parametrize("status", [1, 2, -1, 0x7FFFFFFF])
def test_success_status_must_be_zero(status: int) -> None:
    with pytest.raises(e.UnexpectedReply) as info:
        decode_reply(m.ChmodRequest(b"/f\x00", 0), frame(T.T_SUCCESS, s32(status)))
    assert (info.value.message_type, info.value.size) == (T.T_SUCCESS, 4)


@pytest.mark.parametrize("status", [0, 1, 0x7FFFFFFF])
@pytest.mark.parametrize(
    "request_", [m.ChmodRequest(b"/f\x00", 0), m.LstatRequest(b"/\x00")], ids=["status", "stat"]
)
def test_error_must_be_negative(request_: m.Request, status: int) -> None:
    with pytest.raises(e.UnexpectedReply) as info:
        decode_reply(request_, frame(T.T_ERROR, s32(status)))
    assert (info.value.message_type, info.value.size) == (T.T_ERROR, 4)


@pytest.mark.parametrize("mtype", [2, 8, 21, 22, 0xFFFFFFFF])
def test_reply_type_must_be_success_or_error(mtype: int) -> None:
    with pytest.raises(e.UnexpectedReply) as info:
        decode_reply(m.ChmodRequest(b"/f\x00", 0), frame(mtype, bytes(4)))
    assert info.value.message_type == mtype


@pytest.mark.parametrize("value", [0, 1, 0x7FFFFFFE])
def test_fd_reply_value_neither_valid_nor_negative(value: int) -> None:
    with pytest.raises(e.UnexpectedReply):
        decode_reply(OPEN, s32(value), fds=(3,))


# -- encoding errors are local ----------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        m.LstatRequest(b"x" * 65536),
        m.SymlinkRequest(0, 0, b"t", b"l" * 70000),
        m.LsetxattrRequest(b"/f\x00", b"user.a", b"v" * 65536, 1, 0),
        m.LstatRequest("/file"),  # type: ignore[arg-type]
        m.LstatRequest(None),  # type: ignore[arg-type]
        m.OpenRequest(b"/f", 2**31),
        m.OpenRequest(b"/f", -(2**31) - 1),
        m.OpenRequest(b"/f", "0"),  # type: ignore[arg-type]
        m.MkdirRequest(-1, 0, b"d", 0o755),
        m.MkdirRequest(0, 2**32, b"d", 0o755),
        m.MknodRequest(0, 0, b"n", 0o644, -1),
        m.MknodRequest(0, 0, b"n", 0o644, 2**64),
        m.TruncateRequest(b"/f", 2**63),
        m.UtimeRequest(b"/f", 0, 0, 0, -(2**63) - 1),
        m.ReadlinkRequest(b"/l", None),  # type: ignore[arg-type]
        m.LgetxattrRequest(2**31, b"/f", b"user.a"),
    ],
    ids=lambda r: type(r).__name__,
)
def test_request_encoding_errors_are_local(request_: m.Request) -> None:
    with pytest.raises(e.LocalProtocolError):
        encode_request(request_)


def test_not_a_request_is_local() -> None:
    for thing in (m.StatusReply(), m.ErrorReply(2), object(), b"\x08\x00\x00\x00"):
        with pytest.raises(e.LocalProtocolError):
            encode_request(thing)  # type: ignore[arg-type]


STAT = m.StatReply(*range(16))


@pytest.mark.parametrize(
    ("request_", "reply"),
    [
        (OPEN, m.StatusReply()),
        (OPEN, STAT),
        (m.LstatRequest(b"/"), m.FdReply(3)),
        (m.LstatRequest(b"/"), m.StatusReply()),
        (m.ChmodRequest(b"/f", 0), STAT),
        (m.ChmodRequest(b"/f", 0), m.FdReply(3)),
        (m.StatfsRequest(b"/"), STAT),
        (m.GetversionRequest(b"/"), m.XattrSizeReply(3)),
        (m.LgetxattrRequest(0, b"/f", b"user.a"), m.XattrValueReply(b"v")),
        (m.LgetxattrRequest(8, b"/f", b"user.a"), m.XattrSizeReply(1)),
        (m.LlistxattrRequest(0, b"/f"), m.ReadlinkReply(b"v")),
        (m.ReadlinkRequest(b"/l", 10), m.XattrValueReply(b"t")),
        (OPEN, OPEN),
        (m.StatusReply(), m.StatusReply()),
        (m.ChmodRequest(b"/f", 0), None),
    ],
    ids=lambda x: type(x).__name__,
)
def test_wrong_reply_class_is_local(request_: m.Request, reply: m.Reply) -> None:
    with pytest.raises(e.LocalProtocolError):
        encode_reply(request_, reply)


@pytest.mark.parametrize("errno", [0, -1, -2, 2**31 + 1, 2**40])
@pytest.mark.parametrize(
    "request_", [OPEN, m.ChmodRequest(b"/f", 0), m.LstatRequest(b"/")], ids=["fd", "status", "stat"]
)
def test_errno_out_of_range_is_local(request_: m.Request, errno: int) -> None:
    with pytest.raises(e.LocalProtocolError):
        encode_reply(request_, m.ErrorReply(errno))


@pytest.mark.parametrize(
    "reply",
    [
        m.StatReply(*range(15), 2**64),
        m.StatReply(-1, *range(15)),
        m.StatfsReply(*range(10), -1),
        m.VersionReply(2**64),
        m.ReadlinkReply(b"t" * 65536),
        m.ReadlinkReply("target"),  # type: ignore[arg-type]
    ],
    ids=lambda r: type(r).__name__,
)
def test_reply_field_out_of_range_is_local(reply: m.Reply) -> None:
    request = {
        m.StatReply: m.LstatRequest(b"/"),
        m.StatfsReply: m.StatfsRequest(b"/"),
        m.VersionReply: m.GetversionRequest(b"/"),
        m.ReadlinkReply: m.ReadlinkRequest(b"/l", 4096),
    }[type(reply)]
    with pytest.raises(e.LocalProtocolError):
        encode_reply(request, reply)


def test_int_field_edges_encode() -> None:
    """The range checks are exactly the wire widths: the extremes encode."""
    for request in (
        m.OpenRequest(b"", 2**31 - 1),
        m.OpenRequest(b"", -(2**31)),
        m.MkdirRequest(2**32 - 1, 0, b"", 2**32 - 1),
        m.MknodRequest(0, 0, b"", 0, 2**64 - 1),
        m.TruncateRequest(b"", -(2**63)),
        m.LstatRequest(b"x" * 65534),
    ):
        assert decode_request(encode_request(request)) == request


# -- the answer to a request that did not decode ---------------------------------


@pytest.mark.parametrize("order", ["little", "big"])
@pytest.mark.parametrize("mtype", list(T)[2:], ids=lambda t: t.name)
def test_error_reply_to_a_malformed_request_round_trips(
    mtype: MessageType, order: ByteOrder
) -> None:
    data = encode_error_reply(mtype, 105, byteorder=order)
    if mtype in (T.T_OPEN, T.T_CREATE):
        assert data == s32(-105, order)
    else:
        assert data == u32(1, order) + u32(4, order) + s32(-105, order)
    assert decode_error_reply(mtype, data, byteorder=order) == m.ErrorReply(105)


@pytest.mark.parametrize(
    ("mtype", "hexdata"),
    [
        (T.T_OPEN, "ffffff7f"),  # success is not an answer to a malformed request
        (T.T_OPEN, "00000000"),
        (T.T_OPEN, "97ffff"),
        (T.T_OPEN, "97ffffff00"),
        (T.T_LSTAT, "00000000 04000000 97ffffff"),  # T_SUCCESS
        (T.T_LSTAT, "01000000 04000000 00000000"),  # not negative
        (T.T_LSTAT, "01000000 08000000 97ffffff 00000000"),
        (T.T_LSTAT, "01000000 04000000 97ff"),
        (T.T_LSTAT, "97ffffff"),
        (T.T_CHMOD, ""),
    ],
)
def test_error_reply_to_a_malformed_request_refuses_anything_else(
    mtype: MessageType, hexdata: str
) -> None:
    with pytest.raises(e.UnexpectedReply) as info:
        decode_error_reply(mtype, bytes.fromhex(hexdata))
    assert info.value.message_type == mtype


@pytest.mark.parametrize("errno", [0, -5, 2**31 + 1])
def test_encode_error_reply_range(errno: int) -> None:
    with pytest.raises(e.LocalProtocolError):
        encode_error_reply(T.T_LSTAT, errno)
    assert decode_error_reply(T.T_OPEN, encode_error_reply(T.T_OPEN, 2**31)) == m.ErrorReply(2**31)
