"""Transport unit tests over a plain socketpair, with the test playing the helper."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from virtfs_proto import messages as m
from virtfs_proto.connection import ClientConnection
from virtfs_proto.constants import V9FS_FD_VALID, MessageType, ReplyKind
from virtfs_proto.errors import (
    AncillaryTruncated,
    BadFdCount,
    ConnectionClosed,
    LocalProtocolError,
    TransportTimeout,
)
from virtfs_proto.kit.raw import read_until_eof, recv_reply_raw
from virtfs_proto.transport import FD_ROOM, Transport


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


FD_OK = struct.pack("=i", V9FS_FD_VALID)
STATUS_OK = struct.pack("=IIi", MessageType.T_SUCCESS, 4, 0)


def error_frame(errno: int) -> bytes:
    return struct.pack("=IIi", MessageType.T_ERROR, 4, -errno)


@pytest.fixture
def pair() -> Iterator[tuple[Transport, socket.socket]]:
    ours, peer = socket.socketpair()
    transport = Transport(ours, timeout=5)
    with transport, peer:
        yield transport, peer


@pytest.fixture
def fds_before() -> Iterator[int]:
    """Fails the test if it changed how many descriptors this process holds."""
    before = open_fds()
    yield before
    assert open_fds() == before, "descriptors leaked"


def a_file(tmp_path: os.PathLike[str], content: bytes) -> int:
    path = os.path.join(tmp_path, f"f{content.hex()}")
    with open(path, "wb") as f:
        f.write(content)
    return os.open(path, os.O_RDONLY)


def test_fd_reply_delivers_a_working_fd(fds_before, pair, tmp_path) -> None:
    transport, peer = pair
    fd = a_file(tmp_path, b"hello")
    socket.send_fds(peer, [FD_OK], [fd])
    os.close(fd)
    conn = ClientConnection()
    event = transport.exchange(conn, m.OpenRequest(b"/x\0", os.O_RDONLY))
    assert isinstance(event.reply, m.FdReply)
    assert os.read(event.reply.fd, 10) == b"hello"
    os.close(event.reply.fd)
    # The helper saw exactly the encoded request.
    header = struct.pack("=II", MessageType.T_OPEN, 2 + 3 + 4)
    assert peer.recv(100) == header + struct.pack("=H3si", 3, b"/x\0", os.O_RDONLY)


def test_error_fd_reply(fds_before, pair) -> None:
    transport, peer = pair
    peer.send(struct.pack("=i", -2))
    event = transport.exchange(ClientConnection(), m.OpenRequest(b"/x\0", 0))
    assert event.reply == m.ErrorReply(2)


def test_pipelined_fds_land_with_their_own_reply(fds_before, pair, tmp_path) -> None:
    transport, peer = pair
    conn = ClientConnection()
    for name in (b"/a\0", b"/b\0", b"/c\0"):
        transport.send_request(conn, m.OpenRequest(name, 0))
    # Both fd replies and a status reply queued back to back before we read.
    fa, fb = a_file(tmp_path, b"A"), a_file(tmp_path, b"B")
    socket.send_fds(peer, [FD_OK], [fa])
    socket.send_fds(peer, [FD_OK], [fb])
    peer.send(struct.pack("=i", -13))
    os.close(fa)
    os.close(fb)
    got = [transport.read_event(conn).reply for _ in range(3)]
    assert isinstance(got[0], m.FdReply) and isinstance(got[1], m.FdReply)
    assert os.read(got[0].fd, 1) == b"A"
    assert os.read(got[1].fd, 1) == b"B"
    assert got[2] == m.ErrorReply(13)
    os.close(got[0].fd)
    os.close(got[1].fd)


def test_reply_trickling_byte_by_byte(fds_before, pair, tmp_path) -> None:
    transport, peer = pair
    conn = ClientConnection()
    transport.send_request(conn, m.LstatRequest(b"/\0"))
    transport.send_request(conn, m.OpenRequest(b"/\0", 0))
    stat = m.StatReply(*range(1, 17))
    from virtfs_proto.codec import encode_reply

    data = encode_reply(m.LstatRequest(b"/\0"), stat)
    for i in range(len(data)):
        peer.send(data[i : i + 1])
    fd = a_file(tmp_path, b"z")
    socket.send_fds(peer, [FD_OK[:1]], [fd])
    os.close(fd)
    for i in range(1, 4):
        peer.send(FD_OK[i : i + 1])
    assert transport.read_event(conn).reply == stat
    reply = transport.read_event(conn).reply
    assert isinstance(reply, m.FdReply) and os.read(reply.fd, 1) == b"z"
    os.close(reply.fd)


def test_fd_with_a_status_reply_is_closed_and_reported(fds_before, pair, tmp_path) -> None:
    transport, peer = pair
    conn = ClientConnection()
    fd = a_file(tmp_path, b"x")
    socket.send_fds(peer, [STATUS_OK], [fd])
    os.close(fd)
    with pytest.raises(BadFdCount) as info:
        transport.exchange(conn, m.ChmodRequest(b"/x\0", 0o644))
    assert info.value.fds == ()
    # Still in step: the next exchange works.
    peer.send(error_frame(1))
    assert transport.exchange(conn, m.ChmodRequest(b"/x\0", 0)).reply == m.ErrorReply(1)


def test_fd_with_an_error_fd_reply_is_closed(fds_before, pair, tmp_path) -> None:
    transport, peer = pair
    fd = a_file(tmp_path, b"x")
    socket.send_fds(peer, [struct.pack("=i", -2)], [fd])
    os.close(fd)
    conn = ClientConnection()
    with pytest.raises(BadFdCount):
        transport.exchange(conn, m.OpenRequest(b"/x\0", 0))
    peer.send(STATUS_OK)
    assert transport.exchange(conn, m.RemoveRequest(b"/x")).reply == m.StatusReply()


@pytest.mark.parametrize("count", [0, 2, FD_ROOM])
def test_wrong_number_of_fds_on_success(fds_before, pair, tmp_path, count) -> None:
    transport, peer = pair
    fds = [a_file(tmp_path, b"x") for _ in range(count)]
    if fds:
        socket.send_fds(peer, [FD_OK], fds)
    else:
        peer.send(FD_OK)
    for fd in fds:
        os.close(fd)
    conn = ClientConnection()
    with pytest.raises(BadFdCount):
        transport.exchange(conn, m.OpenRequest(b"/x\0", 0))
    peer.send(struct.pack("=i", -2))
    assert transport.exchange(conn, m.OpenRequest(b"/x\0", 0)).reply == m.ErrorReply(2)


def test_msg_ctrunc_closes_what_arrived(fds_before, pair, tmp_path) -> None:
    transport, peer = pair
    fd = a_file(tmp_path, b"x")
    fds = [os.dup(fd) for _ in range(FD_ROOM + 4)]
    os.close(fd)
    socket.send_fds(peer, [FD_OK], fds)
    for fd in fds:
        os.close(fd)
    conn = ClientConnection()
    with pytest.raises(AncillaryTruncated):
        transport.exchange(conn, m.OpenRequest(b"/x\0", 0))
    # The bytes were consumed: the stream is still in step.
    peer.send(STATUS_OK)
    assert transport.exchange(conn, m.MkdirRequest(0, 0, b"/d", 0o755)).reply == m.StatusReply()


def test_raw_recv_reports_ctrunc(fds_before, pair, tmp_path) -> None:
    transport, peer = pair
    fd = a_file(tmp_path, b"x")
    fds = [os.dup(fd) for _ in range(FD_ROOM + 1)]
    os.close(fd)
    socket.send_fds(peer, [FD_OK], fds)
    for fd in fds:
        os.close(fd)
    with pytest.raises(AncillaryTruncated) as info:
        transport.recv(4)
    assert info.value.data == FD_OK


@pytest.mark.parametrize("sent", [b"", STATUS_OK[:3], STATUS_OK[:8], STATUS_OK[:11]])
def test_eof_before_or_inside_a_reply(fds_before, pair, sent) -> None:
    transport, peer = pair
    peer.send(sent)
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionClosed):
        transport.exchange(ClientConnection(), m.ChmodRequest(b"/x\0", 0))


def test_reset_is_connection_closed(fds_before, pair) -> None:
    transport, peer = pair
    conn = ClientConnection()
    transport.send_request(conn, m.LstatRequest(b"/\0"))
    # Closing with our request unread in its queue makes the kernel reset us.
    peer.close()
    with pytest.raises(ConnectionClosed):
        transport.read_event(conn)
    with pytest.raises(ConnectionClosed):
        transport.send(b"more")


def test_timeout_then_resume(fds_before, pair) -> None:
    transport, peer = pair
    conn = ClientConnection()
    transport.send_request(conn, m.ChmodRequest(b"/x\0", 0))
    peer.send(STATUS_OK[:5])
    start = time.monotonic()
    with pytest.raises(TransportTimeout):
        transport.read_event(conn, timeout=0.2)
    assert 0.15 < time.monotonic() - start < 2
    peer.send(STATUS_OK[5:])
    assert transport.read_event(conn).reply == m.StatusReply()


def test_exchange_refuses_with_replies_outstanding(pair) -> None:
    transport, _ = pair
    conn = ClientConnection()
    transport.send_request(conn, m.LstatRequest(b"/\0"))
    with pytest.raises(LocalProtocolError):
        transport.exchange(conn, m.LstatRequest(b"/\0"))
    with pytest.raises(LocalProtocolError):
        transport.read_event(ClientConnection())


def test_raw_reply_shapes(fds_before, pair, tmp_path) -> None:
    transport, peer = pair
    fd = a_file(tmp_path, b"x")
    socket.send_fds(peer, [FD_OK + STATUS_OK], [fd])
    os.close(fd)
    raw = recv_reply_raw(transport, ReplyKind.FD)
    assert raw.data == FD_OK and len(raw.fds) == 1 and raw.complete
    raw.close_fds()
    raw = recv_reply_raw(transport, MessageType.T_CHMOD)
    assert raw.data == STATUS_OK and raw.fds == [] and raw.complete
    peer.send(struct.pack("=II", 0, 116) + b"\0" * 10)
    peer.shutdown(socket.SHUT_WR)
    raw = recv_reply_raw(transport, ReplyKind.RESPONSE)
    assert raw.eof and not raw.complete and len(raw.data) == 18


def test_raw_send_and_read_until_eof(pair) -> None:
    transport, peer = pair
    transport.send(b"\xff" * 12)
    assert peer.recv(100) == b"\xff" * 12
    with pytest.raises(TransportTimeout):
        read_until_eof(transport, timeout=0.1)
    peer.send(b"bye")
    peer.close()
    raw = read_until_eof(transport)
    assert raw.eof and raw.data == b"bye"


def test_send_passes_fds(fds_before, pair, tmp_path) -> None:
    transport, peer = pair
    fd = a_file(tmp_path, b"q")
    transport.send(b"abc", [fd])
    os.close(fd)
    data, fds, _, _ = socket.recv_fds(peer, 10, 4)
    assert data == b"abc" and len(fds) == 1
    assert os.read(fds[0], 1) == b"q"
    os.close(fds[0])


def test_transport_needs_a_unix_stream_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(LocalProtocolError):
        Transport(s)


def test_closing_with_the_connection_closes_undelivered_fds(fds_before, pair, tmp_path) -> None:
    """A reply cut short by a timeout leaves its fd with the connection; the transport owns
    it and closes it with the socket."""
    transport, peer = pair
    fd = a_file(tmp_path, b"x")
    # The first byte of a STATUS reply, with a descriptor riding on it: not a whole reply.
    socket.send_fds(peer, [STATUS_OK[:1]], [fd])
    os.close(fd)
    conn = ClientConnection()
    transport.send(conn.send_request(m.ChmodRequest(b"/x\0", 0o644)))
    with pytest.raises(TransportTimeout):
        transport.read_event(conn, timeout=0.2)
    held = open_fds()
    transport.close(conn)
    assert open_fds() == held - 2  # the socket and the undelivered descriptor
