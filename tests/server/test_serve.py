"""The request loop in-process, over a socketpair (no jail, no privilege drop)."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from virtfs_proto import _fastpath_generated as wire
from virtfs_proto import messages as m
from virtfs_proto.codec import encode_reply, encode_request
from virtfs_proto.connection import ClientConnection
from virtfs_proto.constants import MessageType
from virtfs_proto.kit.raw import recv_exact
from virtfs_proto.server.main import Answerer, Log, serve
from virtfs_proto.server.ops import Answer, Operations
from virtfs_proto.server.resolve import Resolver
from virtfs_proto.transport import Transport


class Recorder(Log):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def __call__(self, message: str, priority: int = 0) -> None:
        self.lines.append(message)


def answering(handle: Callable[[m.Request], m.Reply]) -> Answerer:
    """A serving loop's answerer from a function of request and reply objects."""

    def answer(message_type: int, values: tuple[Any, ...]) -> Answer:
        request = m.REQUEST_CLASSES[MessageType(message_type)](*values)
        reply = handle(request)
        return reply.fd if isinstance(reply, m.FdReply) else encode_reply(request, reply)

    return answer


def _serving(answer: Answerer) -> tuple[socket.socket, dict[str, object]]:
    ours, theirs = socket.socketpair()
    result: dict[str, object] = {}
    log = Recorder()

    def run() -> None:
        result["rc"] = serve(theirs, answer, log)
        theirs.close()

    thread = threading.Thread(target=run)
    thread.start()
    result["thread"] = thread
    result["log"] = log
    return ours, result


def _finish(result: dict[str, object]) -> int:
    thread = result["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(5)
    assert not thread.is_alive()
    rc = result["rc"]
    assert isinstance(rc, int)
    return rc


def _lines(result: dict[str, object]) -> list[str]:
    log = result["log"]
    assert isinstance(log, Recorder)
    return log.lines


def echo_errno(request: m.Request) -> m.Reply:
    """Answers every request with an errno derived from its path length."""
    return m.ErrorReply(len(getattr(request, "path", b"")) or 1)


def test_pipelined_requests_are_answered_in_order() -> None:
    sock, result = _serving(answering(echo_errno))
    conn = ClientConnection()
    paths = [b"x" * n for n in range(1, 40)]
    sock.sendall(b"".join(conn.send_request(m.LstatRequest(p)) for p in paths))
    t = Transport(sock, timeout=5)
    replies = [t.read_event(conn).reply for _ in paths]
    assert replies == [m.ErrorReply(len(p)) for p in paths]
    t.close()
    assert _finish(result) == 0


def test_a_reply_that_cannot_be_encoded_becomes_eio(tmp_path: Path) -> None:
    """A handler whose reply does not encode (a bug) costs that request an
    EIO, logged, and not the client its connection."""
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    logged: list[str] = []
    ops = Operations(Resolver(root_fd), get_version=False, log=logged.append)
    ops.handlers[MessageType.T_LSTAT] = lambda path: wire.frame_stat(wire.T_SUCCESS, 1, 2, 3)
    sock, result = _serving(ops.answer)
    t = Transport(sock, timeout=5)
    conn = ClientConnection()
    assert t.exchange(conn, m.LstatRequest(b"/")).reply == m.ErrorReply(errno.EIO)
    assert t.exchange(conn, m.ChmodRequest(b"/", 0o755)).reply == m.StatusReply()
    t.close()
    assert _finish(result) == 0
    assert len(logged) == 1 and "cannot encode" in logged[0]
    os.close(root_fd)


def test_field_values_and_fds_are_sent_as_replies(tmp_path: Path) -> None:
    """Operations.answer, the helper's answerer: lstat, open with the fd
    passed and an error, pipelined behind each other."""
    (tmp_path / "file.txt").write_bytes(b"hello\n")
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    ops = Operations(Resolver(root_fd), get_version=False, log=lambda *a: None)
    sock, result = _serving(ops.answer)
    conn = ClientConnection()
    requests = [
        m.LstatRequest(b"//file.txt\0"),
        m.OpenRequest(b"//file.txt\0", os.O_RDONLY),
        m.LstatRequest(b"//missing\0"),
    ]
    sock.sendall(b"".join(conn.send_request(r) for r in requests))
    t = Transport(sock, timeout=5)
    stat_reply, fd_reply, missing = (t.read_event(conn).reply for _ in requests)
    assert stat_reply == ops.handle(requests[0])
    assert isinstance(stat_reply, m.StatReply) and stat_reply.st_size == 6
    assert isinstance(fd_reply, m.FdReply)
    try:
        assert os.pread(fd_reply.fd, 10, 0) == b"hello\n"
    finally:
        os.close(fd_reply.fd)
    assert missing == m.ErrorReply(errno.ENOENT)
    t.close()
    assert _finish(result) == 0
    os.close(root_fd)


@pytest.mark.parametrize(
    ("data", "rc", "logged"),
    [
        (b"", 0, None),
        (encode_request(m.LstatRequest(b"/"))[:5], 0, "client went away"),
        (encode_request(m.LstatRequest(b"/"))[:9], 0, "client went away"),
        (struct.pack("=II", 99, 0), 1, "not a request type"),
        (struct.pack("=II", MessageType.T_ERROR, 4) + b"\0" * 4, 1, "not a request type"),
        (struct.pack("=II", MessageType.T_OPEN, 0xFFFFFFFF), 1, "65536"),
    ],
    ids=["eof", "eof-in-header", "eof-in-payload", "unknown", "reply-type", "oversize"],
)
def test_endings(data: bytes, rc: int, logged: str | None) -> None:
    sock, result = _serving(answering(echo_errno))
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(100) == b""  # no reply, connection closed
    sock.close()
    assert _finish(result) == rc
    if logged:
        assert any(logged in line for line in _lines(result)), _lines(result)


def test_client_gone_before_the_reply_is_a_clean_exit() -> None:
    gate = threading.Event()

    def slow(request: m.Request) -> m.Reply:
        gate.wait(5)
        return m.StatusReply()

    sock, result = _serving(answering(slow))
    sock.sendall(encode_request(m.ChmodRequest(b"/", 0o755)) * 3)
    sock.close()
    gate.set()
    assert _finish(result) == 0


@pytest.mark.parametrize("flavour", ["T_LSTAT", "T_OPEN"])
def test_a_payload_that_does_not_decode_is_answered_enobufs(flavour: str) -> None:
    """As QEMU's unmarshal: the request gets -ENOBUFS (an FD reply for T_OPEN)
    and the stream stays in step."""
    mtype = MessageType[flavour]
    sock, result = _serving(answering(echo_errno))
    bad = struct.pack("=IIH", mtype, 2, 5)  # a 5-byte string in a 2-byte payload
    sock.sendall(bad + encode_request(m.LstatRequest(b"xyz")))
    expected = (
        struct.pack("=i", -errno.ENOBUFS)
        if mtype is MessageType.T_OPEN
        else struct.pack("=IIi", MessageType.T_ERROR, 4, -errno.ENOBUFS)
    )
    t = Transport(sock, timeout=5)
    assert recv_exact(t, len(expected)).data == expected
    conn = ClientConnection()
    conn.send_request(m.LstatRequest(b"xyz"))
    assert t.read_event(conn).reply == m.ErrorReply(3)
    t.close()
    assert _finish(result) == 0


def test_frames_cut_anywhere_by_the_stream_are_answered() -> None:
    """A frame that arrives over several reads (the helper keeps its start)
    and a read that ends inside the next frame."""
    sock, result = _serving(answering(echo_errno))
    conn = ClientConnection()
    paths = [b"a", b"bbbbbbbbbbbb", b"cc"]
    stream = b"".join(conn.send_request(m.LstatRequest(p)) for p in paths)
    for cut in (3, 9, 10, 20, 31, len(stream)):  # inside a header, a payload, the next frame
        sock.sendall(stream[:cut])
        stream = stream[cut:]
        time.sleep(0.02)  # separate reads, as far as the scheduler allows
    t = Transport(sock, timeout=5)
    assert [t.read_event(conn).reply for _ in paths] == [m.ErrorReply(len(p)) for p in paths]
    t.close()
    assert _finish(result) == 0
