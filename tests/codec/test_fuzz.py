"""Fuzz properties in h11's style: a peer's bytes give messages or RemoteProtocolError.

Nothing else may escape: no struct.error, no construct error, no IndexError,
no KeyError, no ValueError from an enum. And whatever does decode strictly
re-encodes to the very same bytes.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtfs_proto import messages as m
from virtfs_proto.codec import decode_reply, decode_request, encode_reply, encode_request
from virtfs_proto.connection import (
    NEED_DATA,
    ClientConnection,
    ConnectionState,
    MalformedRequest,
    ReplyReceived,
    ServerConnection,
)
from virtfs_proto.constants import HEADER_SIZE, ByteOrder
from virtfs_proto.errors import BadFdCount, RemoteProtocolError

from .strategies import BYTE_ORDERS, reply_for, requests_any

fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
orders = st.sampled_from(BYTE_ORDERS)

type_codes = st.one_of(st.integers(0, 23), st.sampled_from([0x100, 0x7FFFFFFF, 0xFFFFFFFF]))


@st.composite
def frame_like(draw: st.DrawFn, order: ByteOrder) -> bytes:
    """A header (plausible type, size near the truth) and a random payload."""
    payload = draw(st.binary(max_size=140))
    size = draw(
        st.one_of(
            st.just(len(payload)),
            st.integers(0, len(payload) + 4),
            st.sampled_from([65536, 65537, 0xFFFFFFFF]),
        )
    )
    return draw(type_codes).to_bytes(4, order) + size.to_bytes(4, order) + payload


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """Valid bytes with a few bytes changed, then cut short or extended."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    tail = draw(st.binary(max_size=6))
    return bytes(data[:cut] if draw(st.booleans()) else data) + tail


def request_bytes(order: ByteOrder) -> st.SearchStrategy[bytes]:
    valid = st.lists(requests_any, max_size=3).map(
        lambda rs: b"".join(encode_request(r, byteorder=order) for r in rs)
    )
    return st.one_of(
        st.binary(max_size=200),
        st.lists(frame_like(order), max_size=3).map(b"".join),
        valid,
        valid.flatmap(mutated),
    )


def reply_bytes_for(request: m.Request, order: ByteOrder) -> st.SearchStrategy[bytes]:
    valid = reply_for(request).map(lambda p: encode_reply(request, p, byteorder=order))
    return st.one_of(st.binary(max_size=130), frame_like(order), valid, valid.flatmap(mutated))


# -- stateless ------------------------------------------------------------------


@fuzz
@given(order=orders, data=st.data())
def test_decode_request_gives_a_request_or_a_remote_error(
    order: ByteOrder, data: st.DataObject
) -> None:
    wire = data.draw(request_bytes(order))
    for lenient in (False, True):
        try:
            request = decode_request(wire, byteorder=order, lenient=lenient)
        except RemoteProtocolError:
            continue
        again = encode_request(request, byteorder=order)
        if lenient:
            assert wire[HEADER_SIZE:].startswith(again[HEADER_SIZE:])
        else:
            assert again == wire


@fuzz
@given(
    order=orders,
    request=requests_any,
    fds=st.lists(st.integers(0, 1000), max_size=3).map(tuple),
    data=st.data(),
)
def test_decode_reply_gives_a_reply_or_a_remote_error(
    order: ByteOrder, request: m.Request, fds: tuple[int, ...], data: st.DataObject
) -> None:
    wire = data.draw(reply_bytes_for(request, order))
    for lenient in (False, True):
        try:
            reply = decode_reply(request, wire, fds=fds, byteorder=order, lenient=lenient)
        except BadFdCount as exc:
            assert exc.fds == fds
            continue
        except RemoteProtocolError:
            continue
        assert fds == ((reply.fd,) if isinstance(reply, m.FdReply) else ())
        if not lenient:
            assert encode_reply(request, reply, byteorder=order) == wire


# -- ServerConnection -------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@fuzz
@given(
    order=orders,
    lenient=st.booleans(),
    eof=st.booleans(),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
    data=st.data(),
)
def test_server_connection_gives_events_or_a_remote_error(
    order: ByteOrder, lenient: bool, eof: bool, cuts: list[int], data: st.DataObject
) -> None:
    wire = data.draw(request_bytes(order))
    conn = ServerConnection(byteorder=order, lenient=lenient)
    events: list[Any] = []
    try:
        for chunk in split(wire, cuts):
            conn.receive_data(chunk)
            while (event := conn.next_event()) is not NEED_DATA:
                events.append(event)
        if eof:
            conn.receive_eof()
            while (event := conn.next_event()) is not ConnectionState.CLOSED:
                events.append(event)
    except RemoteProtocolError:
        assert conn.state is ConnectionState.ERROR
    # Every event is a request or a malformed one, and accounts for its frame exactly.
    pos = 0
    for event in events:
        assert isinstance(event, (MalformedRequest, *m.REQUEST_CLASSES.values()))
        size = int.from_bytes(wire[pos + 4 : pos + 8], order)
        frame = wire[pos : pos + HEADER_SIZE + size]
        if isinstance(event, MalformedRequest):
            assert isinstance(event.error, RemoteProtocolError)
            assert event.size == size
        elif not lenient:
            assert encode_request(event, byteorder=order) == frame
        pos += len(frame)
    assert conn.unanswered == len(events)


# -- ClientConnection -------------------------------------------------------------


@fuzz
@given(
    order=orders,
    lenient=st.booleans(),
    requests=st.lists(requests_any, min_size=1, max_size=3),
    data=st.data(),
)
def test_client_connection_gives_events_or_remote_errors_and_loses_no_fd(
    order: ByteOrder,
    lenient: bool,
    requests: list[m.Request],
    data: st.DataObject,
) -> None:
    wire = b"".join(data.draw(reply_bytes_for(r, order)) for r in requests)
    wire += data.draw(st.binary(max_size=8))
    chunks = split(wire, data.draw(st.lists(st.integers(0, 10**6), max_size=6)))
    next_fd = iter(range(100, 10**6))
    fed: list[tuple[bytes, tuple[int, ...]]] = []
    for chunk in chunks:
        fds = tuple(next(next_fd) for _ in range(data.draw(st.integers(0, 2))))
        fed.append((chunk, fds))
    eof = data.draw(st.booleans())

    conn = ClientConnection(byteorder=order, lenient=lenient)
    for request in requests:
        conn.send_request(request)
    accounted: list[int] = []
    replies: list[ReplyReceived] = []

    def pump() -> bool:
        """Take events until NEED_DATA/CLOSED; False after a fatal error."""
        for _ in range(100):
            try:
                event = conn.next_event()
            except BadFdCount as exc:
                accounted.extend(exc.fds)
                if conn.state is ConnectionState.ERROR:
                    return False
                continue
            except RemoteProtocolError:
                if conn.state is ConnectionState.ERROR:
                    return False
                continue
            if event is NEED_DATA or event is ConnectionState.CLOSED:
                return True
            assert isinstance(event, ReplyReceived)
            replies.append(event)
            if isinstance(event.reply, m.FdReply):
                accounted.append(event.reply.fd)
        raise AssertionError("next_event made no progress")

    alive = True
    given_fds: list[int] = []
    for chunk, fds in fed:
        conn.receive_data(chunk, fds)
        given_fds += fds
        if not (alive := pump()):
            break
    if alive and eof:
        conn.receive_eof()
        pump()
    accounted.extend(conn.discard_fds())
    # Every descriptor is delivered, reported or discarded: exactly once, none invented.
    assert sorted(accounted) == sorted(given_fds)
    # Replies answer the requests in order (a reply that failed to decode answers none).
    remaining = iter(requests)
    assert all(any(r.request is q for q in remaining) for r in replies)
