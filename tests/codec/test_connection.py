"""The sans-I/O connections: feeding, pipelining, malformed requests, EOF, fd placement.

Inputs are fed whole, one byte at a time, in arbitrary chunks and with the
next frame's bytes trailing, as h11's tests do. Descriptors are fake ints:
the codec never touches them.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtfs_proto import errors as e
from virtfs_proto import messages as m
from virtfs_proto.codec import encode_reply, encode_request
from virtfs_proto.connection import (
    NEED_DATA,
    ClientConnection,
    ConnectionState,
    MalformedRequest,
    ReplyReceived,
    ServerConnection,
)
from virtfs_proto.constants import ByteOrder, MessageType

from .strategies import BYTE_ORDERS, payload_reply_of, reply_for, requests_any

T = MessageType
LE: ByteOrder = "little"
connection_cases = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def drain(conn: Any) -> list[Any]:
    """Every event available now (stops at NEED_DATA or CLOSED)."""
    events = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is ConnectionState.CLOSED:
            return events
        events.append(event)


def chunks_of(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


exchanges = st.lists(requests_any, min_size=1, max_size=6).flatmap(
    lambda reqs: st.tuples(st.just(reqs), st.tuples(*(reply_for(r) for r in reqs)))
)


# -- ServerConnection -------------------------------------------------------------


@pytest.mark.parametrize("order", BYTE_ORDERS)
@connection_cases
@given(
    requests=st.lists(requests_any, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 10**6))
)
def test_server_whole_bytewise_and_chunked(
    order: ByteOrder, requests: list[m.Request], cuts: list[int]
) -> None:
    wire = b"".join(encode_request(r, byteorder=order) for r in requests)

    whole = ServerConnection(byteorder=order)
    whole.receive_data(wire)
    assert drain(whole) == requests
    assert whole.buffered == 0
    assert whole.unanswered == len(requests)

    bytewise = ServerConnection(byteorder=order)
    events: list[Any] = []
    for i in range(len(wire)):
        bytewise.receive_data(wire[i : i + 1])
        events += drain(bytewise)
    assert events == requests

    chunked = ServerConnection(byteorder=order)
    events = []
    for chunk in chunks_of(wire, cuts):
        chunked.receive_data(memoryview(chunk))
        events += drain(chunked)
    assert events == requests
    chunked.receive_eof()
    assert chunked.next_event() is ConnectionState.CLOSED
    assert chunked.state is ConnectionState.CLOSED


@connection_cases
@given(requests=st.lists(requests_any, min_size=2, max_size=4), data=st.data())
def test_server_with_the_next_frame_trailing(
    requests: list[m.Request], data: st.DataObject
) -> None:
    frames = [encode_request(r) for r in requests]
    conn = ServerConnection()
    fed = 0  # bytes of the current frame that came with the previous one
    for i, request in enumerate(requests):
        following = frames[i + 1] if i + 1 < len(frames) else b""
        k = data.draw(st.integers(0, max(0, len(following) - 1)))
        conn.receive_data(frames[i][fed:] + following[:k])
        assert conn.next_event() == request
        assert conn.next_event() is NEED_DATA
        assert conn.buffered == k
        fed = k


def test_server_pipelining_answers_in_order() -> None:
    requests = [
        m.OpenRequest(b"/file\x00", 0),
        m.LstatRequest(b"/file\x00"),
        m.MkdirRequest(1000, 1000, b"//dir", 0o755),
        m.LgetxattrRequest(0, b"/file\x00", b"user.a"),
    ]
    conn = ServerConnection()
    conn.receive_data(b"".join(encode_request(r) for r in requests))
    assert drain(conn) == requests
    assert conn.unanswered == 4
    stat = m.StatReply(*range(16))
    replies = [m.FdReply(42), stat, m.StatusReply(), m.XattrSizeReply(7)]
    for request, reply in zip(requests, replies, strict=True):
        data, fds = conn.send_reply(reply)
        assert data == encode_reply(request, reply)
        assert fds == ([42] if isinstance(reply, m.FdReply) else [])
    assert conn.unanswered == 0
    with pytest.raises(e.LocalProtocolError):
        conn.send_reply(m.StatusReply())


ALL_REPLY_CLASSES = tuple(m.REPLY_CLASSES.values())


@pytest.mark.parametrize("order", BYTE_ORDERS)
@connection_cases
@given(
    request=requests_any,
    cls=st.sampled_from(ALL_REPLY_CLASSES),
    data=st.data(),
)
def test_server_reply_bytes_and_errors_are_encode_replys(
    order: ByteOrder, request: m.Request, cls: type[m.Reply], data: st.DataObject
) -> None:
    """The per-type encoders send_reply keeps agree with encode_reply on every
    pairing: the right reply, an error (in range or not), and a wrong class."""
    if cls is m.ErrorReply:
        reply: m.Reply = m.ErrorReply(data.draw(st.integers(-5, 2**31 + 5)))
    elif cls is m.FdReply:
        reply = m.FdReply(data.draw(st.integers(0, 2**31 - 1)))
    elif cls is m.StatusReply:
        reply = m.StatusReply()
    else:
        reply = data.draw(payload_reply_of(cls))
    conn = ServerConnection(byteorder=order)
    for _ in range(2):  # the second time through the cached encoder
        conn.receive_data(encode_request(request, byteorder=order))
        assert conn.next_event() == request
        try:
            expected: Any = encode_reply(request, reply, byteorder=order)
        except e.LocalProtocolError:
            with pytest.raises(e.LocalProtocolError):
                conn.send_reply(reply)
            assert conn.unanswered == 1
            conn.send_reply(m.ErrorReply(5))
            continue
        sent, fds = conn.send_reply(reply)
        assert sent == expected
        assert fds == ([reply.fd] if isinstance(reply, m.FdReply) else [])
    assert conn.unanswered == 0


@pytest.mark.parametrize("order", BYTE_ORDERS)
@connection_cases
@given(request=requests_any, data=st.data())
def test_server_send_fields_is_send_reply_of_the_success_reply(
    order: ByteOrder, request: m.Request, data: st.DataObject
) -> None:
    conn = ServerConnection(byteorder=order)
    conn.receive_data(encode_request(request, byteorder=order))
    conn.next_event()
    cls = m.REPLY_CLASSES.get(_FIELDS_LAYOUT.get(request.TYPE, ""))
    if cls is None:
        with pytest.raises(e.LocalProtocolError):
            conn.send_fields((0,))
        assert conn.unanswered == 1
        return
    reply = data.draw(payload_reply_of(cls))
    values = tuple(getattr(reply, f.name) for f in dataclasses.fields(reply))
    assert conn.send_fields(values) == encode_reply(request, reply, byteorder=order)
    assert conn.unanswered == 0


_FIELDS_LAYOUT = {
    T.T_LSTAT: "stat",
    T.T_READLINK: "readlink",
    T.T_STATFS: "statfs",
    T.T_GETVERSION: "version",
}


def test_server_send_fields_refuses_bad_values_and_malformed_requests() -> None:
    conn = ServerConnection()
    conn.receive_data(encode_request(m.LstatRequest(b"/\x00")))
    conn.next_event()
    with pytest.raises(e.LocalProtocolError):
        conn.send_fields((1, 2))  # too few fields
    with pytest.raises(e.LocalProtocolError):
        conn.send_fields((-1,) * 16)  # out of the u64 range
    assert conn.unanswered == 1
    conn.receive_data(bytes.fromhex("08000000 01000000 00"))  # T_LSTAT, 1-byte payload
    conn.send_reply(m.ErrorReply(2))
    assert isinstance(conn.next_event(), MalformedRequest)
    with pytest.raises(e.LocalProtocolError):
        conn.send_fields((0,) * 16)
    assert conn.unanswered == 1


def test_server_wrong_reply_leaves_the_request_waiting() -> None:
    conn = ServerConnection()
    conn.receive_data(encode_request(m.LstatRequest(b"/\x00")))
    conn.next_event()
    with pytest.raises(e.LocalProtocolError):
        conn.send_reply(m.StatusReply())
    with pytest.raises(e.LocalProtocolError):
        conn.send_reply(m.ErrorReply(0))
    assert conn.unanswered == 1
    data, fds = conn.send_reply(m.ErrorReply(2))
    assert data == bytes.fromhex("01000000 04000000 feffffff")
    assert fds == []


@pytest.mark.parametrize(
    ("mtype", "payload", "error", "answer"),
    [
        # T_OPEN whose flags are cut: FD-shaped -ENOBUFS (no header)
        (T.T_OPEN, b"\x02\x00/f\x01", e.TruncatedPayload, "97ffffff"),
        (T.T_CREATE, b"\x01\x00f", e.TruncatedPayload, "97ffffff"),
        (T.T_LSTAT, b"\x09\x00/f", e.TruncatedPayload, "01000000 04000000 97ffffff"),
        (T.T_MKDIR, b"", e.TruncatedPayload, "01000000 04000000 97ffffff"),
        (T.T_CHMOD, b"\x01\x00f" + bytes(6), e.TrailingBytes, "01000000 04000000 97ffffff"),
    ],
    ids=["open", "create", "lstat", "mkdir-empty", "chmod-trailing"],
)
def test_malformed_request_keeps_the_stream_in_step(
    mtype: MessageType, payload: bytes, error: type[Exception], answer: str
) -> None:
    bad = mtype.to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload
    good = m.LstatRequest(b"/next\x00")
    conn = ServerConnection()
    conn.receive_data(bad + encode_request(good))
    event = conn.next_event()
    assert isinstance(event, MalformedRequest)
    assert (event.type, event.size) == (mtype, len(payload))
    assert isinstance(event.error, error)
    assert event.error.message_type == mtype
    assert conn.next_event() == good  # in step: the next frame decodes
    assert conn.unanswered == 2
    with pytest.raises(e.LocalProtocolError):
        conn.send_reply(m.StatusReply())  # a malformed request gets an error
    with pytest.raises(e.LocalProtocolError):
        conn.send_reply(m.FdReply(3))
    data, fds = conn.send_reply(m.ErrorReply(105))  # ENOBUFS, as QEMU's helper answers
    assert data == bytes.fromhex(answer)
    assert fds == []
    data, _ = conn.send_reply(m.StatReply(*[0] * 16))
    assert data[:8] == bytes.fromhex("00000000 74000000")


def test_lenient_server_accepts_trailing_payload_bytes() -> None:
    payload = b"\x01\x00f" + (0o644).to_bytes(4, "little") + b"xx"
    frame = T.T_CHMOD.to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload
    conn = ServerConnection(lenient=True)
    conn.receive_data(frame)
    assert conn.next_event() == m.ChmodRequest(b"f", 0o644)
    strict = ServerConnection()
    strict.receive_data(frame)
    assert isinstance(strict.next_event(), MalformedRequest)


def test_server_clean_eof() -> None:
    conn = ServerConnection()
    conn.receive_data(encode_request(m.StatfsRequest(b"/\x00")) * 2)
    conn.receive_eof()
    # what arrived before EOF is still delivered
    assert conn.next_event() == m.StatfsRequest(b"/\x00")
    assert conn.next_event() == m.StatfsRequest(b"/\x00")
    assert conn.next_event() is ConnectionState.CLOSED
    assert conn.next_event() is ConnectionState.CLOSED
    with pytest.raises(e.LocalProtocolError):
        conn.receive_data(b"\x00")


@pytest.mark.parametrize("cut", [1, 7, 8, 9, 13])
def test_server_eof_mid_frame(cut: int) -> None:
    data = encode_request(m.LstatRequest(b"/file\x00"))
    assert len(data) == 16
    conn = ServerConnection()
    conn.receive_data(data[:cut])
    assert conn.next_event() is NEED_DATA
    conn.receive_eof()
    with pytest.raises(e.ConnectionClosed):
        conn.next_event()
    assert conn.state is ConnectionState.ERROR
    with pytest.raises(e.LocalProtocolError):
        conn.next_event()


# -- ClientConnection -------------------------------------------------------------


def served(
    requests: list[m.Request], replies: tuple[m.Reply, ...], order: ByteOrder = LE
) -> list[tuple[bytes, list[int]]]:
    """Each reply as the helper sends it: one sendmsg of bytes with its fds."""
    server = ServerConnection(byteorder=order)
    server.receive_data(b"".join(encode_request(r, byteorder=order) for r in requests))
    assert drain(server) == requests
    return [server.send_reply(reply) for reply in replies]


@pytest.mark.parametrize("order", BYTE_ORDERS)
@connection_cases
@given(exchange=exchanges)
def test_client_whole(
    order: ByteOrder, exchange: tuple[list[m.Request], tuple[m.Reply, ...]]
) -> None:
    requests, replies = exchange
    client = ClientConnection(byteorder=order)
    for request in requests:
        assert client.send_request(request) == encode_request(request, byteorder=order)
    assert client.outstanding == len(requests)
    events = []
    for data, fds in served(requests, replies, order):
        client.receive_data(data, fds)
        events += drain(client)
    assert events == [ReplyReceived(r, p) for r, p in zip(requests, replies, strict=True)]
    assert all(ev.request is req for ev, req in zip(events, requests, strict=True))
    assert client.outstanding == 0
    assert client.discard_fds() == []
    client.receive_eof()
    assert client.next_event() is ConnectionState.CLOSED


@connection_cases
@given(exchange=exchanges)
def test_client_all_replies_in_one_buffer(
    exchange: tuple[list[m.Request], tuple[m.Reply, ...]],
) -> None:
    """Replies buffered together (the fds given with the chunk where each FD reply starts)."""
    requests, replies = exchange
    client = ClientConnection()
    for request in requests:
        client.send_request(request)
    events = []
    for data, fds in served(requests, replies):
        # each reply's chunk carries its fds, the chunk before it ends right there
        client.receive_data(data, fds)
    events = drain(client)
    assert [ev.reply for ev in events] == list(replies)


@connection_cases
@given(exchange=exchanges)
def test_client_one_byte_at_a_time(exchange: tuple[list[m.Request], tuple[m.Reply, ...]]) -> None:
    requests, replies = exchange
    client = ClientConnection()
    for request in requests:
        client.send_request(request)
    events: list[Any] = []
    for data, fds in served(requests, replies):
        for i in range(len(data)):
            client.receive_data(data[i : i + 1], fds if i == 0 else ())
            events += drain(client)
    assert [ev.reply for ev in events] == list(replies)
    assert client.discard_fds() == []


@connection_cases
@given(exchange=exchanges, data=st.data())
def test_client_reading_bytes_wanted_never_crosses_a_reply(
    exchange: tuple[list[m.Request], tuple[m.Reply, ...]], data: st.DataObject
) -> None:
    """A reader that takes at most bytes_wanted() per recvmsg gets each reply's fds right."""
    requests, replies = exchange
    client = ClientConnection()
    for request in requests:
        client.send_request(request)
    sent = served(requests, replies)
    stream = b"".join(d for d, _ in sent)
    starts, pos = {}, 0
    for d, fds in sent:
        starts[pos] = fds  # the kernel hands the fds to the read that takes this byte
        pos += len(d)
    boundaries = [*sorted(starts), len(stream)]
    pos, events = 0, []
    while client.outstanding:
        wanted = client.bytes_wanted()
        if wanted == 0:  # the next reply is buffered whole
            got = drain(client)
            assert got
            events += got
            continue
        n = data.draw(st.integers(1, wanted))
        # a read of n bytes from pos does not cross the next reply boundary
        next_boundary = min(b for b in boundaries if b > pos)
        assert pos + wanted <= next_boundary
        client.receive_data(stream[pos : pos + n], starts.get(pos, ()))
        pos += n
        events += drain(client)
    assert pos == len(stream)
    assert client.bytes_wanted() == 0
    assert [ev.reply for ev in events] == list(replies)


def test_client_trailing_data_of_the_next_reply() -> None:
    requests = [m.ChmodRequest(b"/f\x00", 0o600), m.LstatRequest(b"/f\x00")]
    client = ClientConnection()
    for request in requests:
        client.send_request(request)
    status = bytes.fromhex("00000000 04000000 00000000")
    stat = bytes.fromhex("00000000 74000000") + bytes(116)
    client.receive_data(status + stat[:5])
    assert client.next_event() == ReplyReceived(requests[0], m.StatusReply())
    assert client.next_event() is NEED_DATA
    assert client.bytes_wanted() == 3
    client.receive_data(stat[5:8])
    assert client.bytes_wanted() == 116
    client.receive_data(stat[8:])
    assert client.next_event() == ReplyReceived(requests[1], m.StatReply(*[0] * 16))


OPEN = m.OpenRequest(b"/file\x00", 0)
VALID = bytes.fromhex("ffffff7f")
STATUS_OK = bytes.fromhex("00000000 04000000 00000000")


def test_client_fd_reply_split_over_chunks_keeps_its_fd() -> None:
    client = ClientConnection()
    client.send_request(OPEN)
    assert client.bytes_wanted() == 4
    client.receive_data(VALID[:1], (9,))
    assert client.next_event() is NEED_DATA
    assert client.bytes_wanted() == 3
    client.receive_data(VALID[1:])
    assert client.next_event() == ReplyReceived(OPEN, m.FdReply(9))
    assert client.bytes_wanted() == 0


def test_client_fd_with_a_status_reply_is_stray() -> None:
    chmod = m.ChmodRequest(b"/f\x00", 0)
    client = ClientConnection()
    client.send_request(chmod)
    client.send_request(OPEN)
    client.receive_data(STATUS_OK, (5,))
    assert client.next_event() == ReplyReceived(chmod, m.StatusReply())
    with pytest.raises(e.BadFdCount) as info:
        client.next_event()
    assert info.value.fds == (5,)
    # not fatal: the connection carries on
    client.receive_data(VALID, (6,))
    assert client.next_event() == ReplyReceived(OPEN, m.FdReply(6))


def test_client_fd_after_the_chunk_that_starts_the_reply() -> None:
    client = ClientConnection()
    client.send_request(OPEN)
    client.receive_data(VALID[:2])
    client.receive_data(VALID[2:], (7,))
    with pytest.raises(e.BadFdCount) as info:  # the FD reply found no fd
        client.next_event()
    assert info.value.fds == ()
    with pytest.raises(e.BadFdCount) as info:  # and the late one is reported, to be closed
        client.next_event()
    assert info.value.fds == (7,)
    assert client.state is ConnectionState.OPEN
    assert client.next_event() is NEED_DATA


def test_client_two_fds_for_one_reply() -> None:
    client = ClientConnection()
    client.send_request(OPEN)
    client.send_request(OPEN)
    client.receive_data(VALID, (3, 4))
    with pytest.raises(e.BadFdCount) as info:
        client.next_event()
    assert info.value.fds == (3, 4)
    assert client.outstanding == 1  # the reply was consumed
    client.receive_data(VALID, (5,))
    assert client.next_event() == ReplyReceived(OPEN, m.FdReply(5))


def test_client_fd_with_an_error_fd_reply() -> None:
    client = ClientConnection()
    client.send_request(OPEN)
    client.receive_data(bytes.fromhex("faffffff"), (3,))  # -ENXIO, yet an fd came
    assert client.next_event() == ReplyReceived(OPEN, m.ErrorReply(6))
    with pytest.raises(e.BadFdCount) as info:
        client.next_event()
    assert info.value.fds == (3,)
    assert client.discard_fds() == []


def test_client_discard_fds() -> None:
    client = ClientConnection()
    client.send_request(OPEN)
    client.receive_data(VALID[:2], (11, 12))
    assert client.next_event() is NEED_DATA
    assert client.discard_fds() == [11, 12]
    assert client.discard_fds() == []
    client.receive_data(VALID[2:])
    with pytest.raises(e.BadFdCount) as info:  # its fds were discarded
        client.next_event()
    assert info.value.fds == ()


def test_client_discard_fds_after_a_fatal_error() -> None:
    client = ClientConnection()
    client.send_request(OPEN)
    client.receive_data(bytes.fromhex("05000000"), (8,))  # neither FD_VALID nor -errno
    with pytest.raises(e.UnexpectedReply):
        client.next_event()
    assert client.state is ConnectionState.ERROR
    with pytest.raises(e.LocalProtocolError):
        client.next_event()
    assert client.discard_fds() == [8]


@pytest.mark.parametrize(
    "garbage",
    [
        bytes.fromhex("02000000 04000000 00000000"),  # a request type as reply type
        bytes.fromhex("ffffffff 04000000 00000000"),
        bytes.fromhex("00000000 01000100"),  # 65537 bytes announced
    ],
    ids=["type-2", "type-max", "too-large"],
)
def test_client_fatal_reply_header(garbage: bytes) -> None:
    client = ClientConnection()
    client.send_request(m.ChmodRequest(b"/f\x00", 0))
    client.receive_data(garbage[:8])
    with pytest.raises((e.UnexpectedReply, e.FrameTooLarge)):
        client.next_event()
    assert client.state is ConnectionState.ERROR
    with pytest.raises(e.LocalProtocolError):
        client.send_request(m.ChmodRequest(b"/f\x00", 0))


def test_client_bytes_with_nothing_outstanding() -> None:
    client = ClientConnection()
    client.receive_data(STATUS_OK)
    with pytest.raises(e.UnexpectedReply):
        client.next_event()
    assert client.state is ConnectionState.ERROR


@pytest.mark.parametrize(
    ("request_", "bad_reply", "error"),
    [
        (m.ChmodRequest(b"/f\x00", 0), "00000000 04000000 01000000", e.UnexpectedReply),
        (m.ChmodRequest(b"/f\x00", 0), "01000000 04000000 00000000", e.UnexpectedReply),
        (m.LstatRequest(b"/\x00"), "00000000 04000000 00000000", e.TruncatedPayload),
        (m.ReadlinkRequest(b"/l\x00", 10), "00000000 03000000 05002f", e.TruncatedPayload),
        (m.GetversionRequest(b"/\x00"), "00000000 09000000" + "00" * 9, e.TrailingBytes),
    ],
    ids=["status-1", "error-0", "short-stat", "readlink-past", "version-slack"],
)
def test_client_bad_payload_is_not_fatal(
    request_: m.Request, bad_reply: str, error: type[Exception]
) -> None:
    client = ClientConnection()
    client.send_request(request_)
    client.send_request(m.ChmodRequest(b"/g\x00", 0))
    client.receive_data(bytes.fromhex(bad_reply) + STATUS_OK)
    with pytest.raises(error):
        client.next_event()
    assert client.state is ConnectionState.OPEN
    assert client.next_event() == ReplyReceived(m.ChmodRequest(b"/g\x00", 0), m.StatusReply())


def test_client_lenient_accepts_payload_slack() -> None:
    client = ClientConnection(lenient=True)
    request = m.GetversionRequest(b"/\x00")
    client.send_request(request)
    client.receive_data(bytes.fromhex("00000000 09000000 0700000000000000 ff"))
    assert client.next_event() == ReplyReceived(request, m.VersionReply(7))


def test_client_clean_eof() -> None:
    client = ClientConnection()
    assert client.next_event() is NEED_DATA
    client.send_request(m.ChmodRequest(b"/f\x00", 0))
    client.receive_data(STATUS_OK)
    client.receive_eof()
    assert client.next_event() == ReplyReceived(m.ChmodRequest(b"/f\x00", 0), m.StatusReply())
    assert client.next_event() is ConnectionState.CLOSED
    assert client.state is ConnectionState.CLOSED
    with pytest.raises(e.LocalProtocolError):
        client.send_request(m.ChmodRequest(b"/f\x00", 0))


@pytest.mark.parametrize("have", [0, 3, 8, 11])
def test_client_eof_with_a_request_unanswered(have: int) -> None:
    client = ClientConnection()
    client.send_request(m.ChmodRequest(b"/f\x00", 0))
    client.receive_data(STATUS_OK[:have])
    client.receive_eof()
    with pytest.raises(e.ConnectionClosed) as info:
        client.next_event()
    assert info.value.message_type == T.T_CHMOD
    assert client.state is ConnectionState.ERROR


@pytest.mark.parametrize("have", [0, 2])
def test_client_eof_inside_an_fd_reply(have: int) -> None:
    client = ClientConnection()
    client.send_request(OPEN)
    client.receive_data(VALID[:have], (4,) if have else ())
    client.receive_eof()
    with pytest.raises(e.ConnectionClosed):
        client.next_event()
    assert client.discard_fds() == ([4] if have else [])


# -- both ends together ------------------------------------------------------------


@pytest.mark.parametrize("order", BYTE_ORDERS)
@connection_cases
@given(exchange=exchanges)
def test_client_and_server_loopback(
    order: ByteOrder, exchange: tuple[list[m.Request], tuple[m.Reply, ...]]
) -> None:
    requests, replies = exchange
    client, server = ClientConnection(byteorder=order), ServerConnection(byteorder=order)
    for request in requests:
        server.receive_data(client.send_request(request))
    received = drain(server)
    assert received == requests
    for reply in replies:
        data, fds = server.send_reply(reply)
        assert len(fds) == (1 if isinstance(reply, m.FdReply) else 0)
        client.receive_data(data, fds)
    events = drain(client)
    assert [(ev.request, ev.reply) for ev in events] == list(zip(requests, replies, strict=True))
    assert server.unanswered == client.outstanding == 0


def test_data_after_eof_is_refused_on_both_sides() -> None:
    client = ClientConnection()
    client.send_request(OPEN)
    client.receive_eof()
    with pytest.raises(e.LocalProtocolError):
        client.receive_data(VALID, (3,))
    assert client.discard_fds() == []  # the caller still owns fd 3
    server = ServerConnection()
    server.receive_eof()
    with pytest.raises(e.LocalProtocolError):
        server.receive_data(b"\x08")
