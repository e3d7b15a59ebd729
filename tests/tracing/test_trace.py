"""The tracer in the middle: bytes and descriptors pass unchanged, exchanges are logged.

Most tests put the test on both ends (it plays QEMU and the helper) so every
byte is known; one runs QEMU's real helper behind the tracer. The end-to-end
trace of a real guest session is in tests/e2e.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtfs_proto import messages as m
from virtfs_proto.codec import encode_reply, encode_request
from virtfs_proto.connection import ClientConnection
from virtfs_proto.constants import V9FS_FD_VALID, MessageType
from virtfs_proto.kit.raw import recv_exact
from virtfs_proto.trace import Tracer, TraceStats
from virtfs_proto.transport import Transport


@dataclass
class Rig:
    """client (plays QEMU) <-> tracer <-> peer (plays the helper)."""

    client: Transport
    peer: socket.socket
    out: io.StringIO
    thread: threading.Thread
    result: list[TraceStats]

    def finish(self) -> TraceStats:
        self.client.close()
        self.peer.close()
        self.thread.join(5)
        assert not self.thread.is_alive(), "tracer did not stop after both sides closed"
        return self.result[0]

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


def start_tracer(
    helper_side: socket.socket,
) -> tuple[Transport, io.StringIO, threading.Thread, list[TraceStats]]:
    client, tracer_client = socket.socketpair()
    out = io.StringIO()
    result: list[TraceStats] = []
    tracer = Tracer(tracer_client, helper_side, out)
    thread = threading.Thread(target=lambda: result.append(tracer.run()), daemon=True)
    thread.start()
    return Transport(client, timeout=5), out, thread, result


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """The tracer closes every descriptor it forwarded and both of its sockets."""
    before = open_fds()
    yield
    assert open_fds() == before, "descriptors leaked"


@pytest.fixture
def rig() -> Iterator[Rig]:
    peer, tracer_helper = socket.socketpair()
    client, out, thread, result = start_tracer(tracer_helper)
    r = Rig(client, peer, out, thread, result)
    yield r
    r.client.close()
    r.peer.close()
    thread.join(5)


def recv_frame(sock: socket.socket) -> bytes:
    header = sock.recv(8, socket.MSG_WAITALL)
    size = struct.unpack("=II", header)[1]
    return header + (sock.recv(size, socket.MSG_WAITALL) if size else b"")


def test_fd_reply_passes_a_working_descriptor(no_fd_leak: None, rig: Rig, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"through the tracer")
    request = m.OpenRequest(b"//f\0", os.O_RDONLY)
    conn = ClientConnection()
    rig.client.send_request(conn, request)
    assert recv_frame(rig.peer) == encode_request(request)  # forwarded byte for byte
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    socket.send_fds(rig.peer, [struct.pack("=i", V9FS_FD_VALID)], [fd])
    os.close(fd)
    reply = rig.client.read_event(conn).reply
    assert isinstance(reply, m.FdReply)
    assert os.read(reply.fd, 100) == b"through the tracer"
    os.close(reply.fd)
    stats = rig.finish()
    assert stats.clean and stats.exchanges == 1
    (rec,) = rig.records()
    assert rec["request"] == {"type": "T_OPEN", "path": b"//f\0".hex(), "flags": os.O_RDONLY}
    assert rec["reply"] == {"kind": "fd"}
    assert rec["fds"] == 1
    assert rec["hex"] == {"request": encode_request(request).hex(), "reply": "ffffff7f"}
    assert isinstance(rec["us"], float) and rec["us"] >= 0


def test_replies_arriving_byte_by_byte_are_framed(rig: Rig) -> None:
    requests = [m.LstatRequest(b"/\0"), m.ChmodRequest(b"/x\0", 0o600), m.OpenRequest(b"/y\0", 0)]
    replies: list[m.Reply] = [m.ErrorReply(2), m.StatusReply(), m.ErrorReply(13)]
    conn = ClientConnection()
    for request in requests:  # pipelined: all three in flight
        rig.client.send_request(conn, request)
    wire = b"".join(encode_reply(q, a) for q, a in zip(requests, replies, strict=True))
    for i in range(len(wire)):
        rig.peer.send(wire[i : i + 1])
    got = [rig.client.read_event(conn).reply for _ in requests]
    assert got == replies
    stats = rig.finish()
    assert stats.clean and stats.exchanges == 3
    recs = rig.records()
    assert [r["seq"] for r in recs] == [0, 1, 2]
    assert [r["reply"] for r in recs] == [
        {"kind": "error", "errno": 2, "name": "ENOENT"},
        {"kind": "status"},
        {"kind": "error", "errno": 13, "name": "EACCES"},
    ]


def test_malformed_request_and_its_error_reply_are_logged(rig: Rig) -> None:
    # A T_LSTAT whose 2-byte payload cuts the string short: QEMU's helper answers -ENOBUFS.
    frame = struct.pack("=IIH", MessageType.T_LSTAT, 2, 10)
    rig.client.send(frame)
    assert rig.peer.recv(100) == frame
    rig.peer.send(struct.pack("=IIi", MessageType.T_ERROR, 4, -105))
    assert recv_exact(rig.client, 12).data == struct.pack("=IIi", MessageType.T_ERROR, 4, -105)
    stats = rig.finish()
    assert stats.undecoded == 1 and not stats.clean
    (rec,) = rig.records()
    assert rec["request"]["error"]["kind"] == "TruncatedPayload"  # type: ignore[index]
    assert rec["reply"] == {"kind": "error", "errno": 105, "name": "ENOBUFS"}


def test_unanswered_request_and_stray_bytes(no_fd_leak: None, rig: Rig) -> None:
    rig.peer.send(b"\x00" * 12)  # nothing asked for this
    assert recv_exact(rig.client, 12).data == b"\x00" * 12
    rig.client.send(encode_request(m.StatfsRequest(b"/\0")))
    recv_frame(rig.peer)
    rig.peer.close()  # the helper dies without answering
    assert rig.client.recv(10) == (b"", [])  # the EOF is passed on
    stats = rig.finish()
    assert (stats.stray_bytes, stats.unanswered, stats.exchanges) == (12, 1, 1)
    stray, rec = rig.records()
    assert stray["stray"] == {"kind": "UnexpectedReply", "bytes": "00" * 12, "fds": 0}
    assert rec["reply"] == {"error": {"kind": "NoReply", "message": "no reply came"}}


def test_a_helper_gone_ends_the_trace_while_qemu_stays(no_fd_leak: None, rig: Rig) -> None:
    """QEMU keeps its end open after the EOF (it marks the proxy dead): the
    tracer used to wait for it for ever with the helper long gone."""
    rig.client.send(encode_request(m.StatfsRequest(b"/\0")))
    recv_frame(rig.peer)
    rig.peer.close()
    assert rig.client.recv(10) == (b"", [])
    rig.thread.join(10)
    assert not rig.thread.is_alive(), "tracer still waits on QEMU's side"
    assert rig.result[0].unanswered == 1


def test_cli_with_a_helper_that_cannot_start(tmp_path: Path) -> None:
    """trace -- HELPER whose helper exits at once: a non-zero exit that says so."""
    qemu, theirs = socket.socketpair()
    with qemu:
        out = subprocess.run(
            [sys.executable, "-m", "virtfs_proto.cli", "trace", "-o", str(tmp_path / "t.jsonl"),
             "--listen-fd", str(theirs.fileno()),
             "--", sys.executable, "-c", "raise SystemExit(3)"],
            pass_fds=[theirs.fileno()], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        theirs.close()
        assert qemu.recv(10) == b""  # the EOF reached QEMU's side
    assert out.returncode == 1
    assert out.stderr.strip().endswith("helper exit status 3"), out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-u", "99999999999999999999", "-g", "0"], "argument -u/--uid: not a uid_t"),
        (["-u", "0", "-g", "4294969641"], "argument -g/--gid: not a uid_t"),
        (["--listen-fd", "99999999999999999999"], "--listen-fd 99999999999999999999: not a"),
    ],
    ids=str,
)
def test_cli_numbers_beyond_their_c_type(tmp_path: Path, args: list[str], message: str) -> None:
    """Were internal errors (OverflowError), -u after the socket file was bound
    (left behind, root's)."""
    sock = tmp_path / "t.sock"
    side = [] if "--listen-fd" in args else ["--listen", str(sock)]
    out = subprocess.run(
        [sys.executable, "-m", "virtfs_proto.cli", "trace", *side, *args,
         "--connect", str(tmp_path / "nobody.sock")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode in (1, 2) and message in out.stderr, out.stderr
    assert "internal error" not in out.stderr
    assert not sock.exists()


def test_cli_leaves_no_socket_file_when_stopped_before_qemu_came(tmp_path: Path) -> None:
    """SIGTERM while --listen waits for QEMU: the socket file it bound goes too
    (as the helper's -s does); it was left behind."""
    sock = tmp_path / "t.sock"
    tracer = subprocess.Popen(
        [sys.executable, "-m", "virtfs_proto.cli", "trace", "--listen", str(sock),
         "-u", str(os.getuid()), "-g", str(os.getgid()),  # ours: the chown works unprivileged
         "--", sys.executable, "-c", "import time; time.sleep(60)"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(sock, tracer)
    tracer.terminate()
    assert tracer.wait(30) == 128 + signal.SIGTERM
    assert not sock.exists()


def test_unknown_type_stops_decoding_not_forwarding(rig: Rig) -> None:
    garbage = struct.pack("=II", 99, 0)
    after = encode_request(m.LstatRequest(b"/\0"))
    rig.client.send(garbage + after)
    assert rig.peer.recv(len(garbage + after), socket.MSG_WAITALL) == garbage + after
    stats = rig.finish()
    (rec,) = rig.records()
    assert rec["request"]["error"]["kind"] == "UnknownMessageType"  # type: ignore[index]
    assert stats.undecoded == 1 and stats.exchanges == 1


def test_qemu_helper_behind_the_tracer(qemu_helper: str, tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "file").write_bytes(b"data\n")
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [qemu_helper, "-p", str(export), "-f", str(theirs.fileno()), "-n"],
        pass_fds=[theirs.fileno()],
        stderr=subprocess.DEVNULL,
    )
    theirs.close()
    client, out, thread, result = start_tracer(ours)
    conn = ClientConnection()
    st = client.exchange(conn, m.LstatRequest(b"//file\0")).reply
    assert isinstance(st, m.StatReply) and st.st_size == 5
    opened = client.exchange(conn, m.OpenRequest(b"//file\0", os.O_RDONLY)).reply
    assert isinstance(opened, m.FdReply)
    assert os.read(opened.fd, 10) == b"data\n"
    os.close(opened.fd)
    created = client.exchange(
        conn, m.CreateRequest(b"//new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640, 1000, 1000)
    ).reply
    assert isinstance(created, m.FdReply)
    os.close(created.fd)
    assert client.exchange(conn, m.RemoveRequest(b"//nope")).reply == m.ErrorReply(2)
    client.close()
    thread.join(10)
    assert proc.wait(10) == 0  # EOF reached the helper through the tracer
    stats = result[0]
    assert stats.clean and stats.exchanges == 4
    st_new = os.lstat(export / "new")
    assert (st_new.st_uid, st_new.st_gid, st_new.st_mode & 0o777) == (1000, 1000, 0o640)
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["request"]["type"] for r in recs] == ["T_LSTAT", "T_OPEN", "T_CREATE", "T_REMOVE"]
    assert recs[0]["reply"]["st_size"] == 5
    assert [r["fds"] for r in recs] == [0, 1, 1, 0]


def wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_cli_between_named_sockets(qemu_helper: str, tmp_path: Path) -> None:
    """QEMU's helper on -s PATH, the tracer --connect-ing to it and --listen-ing for QEMU."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "file").write_bytes(b"x" * 7)
    helper_sock, tracer_sock, out = (
        tmp_path / "helper.sock",
        tmp_path / "t.sock",
        tmp_path / "t.jsonl",
    )
    helper = subprocess.Popen(
        [qemu_helper, "-p", str(export), "-s", str(helper_sock), "-u", "0", "-g", "0", "-n"],
        stderr=subprocess.DEVNULL,
    )
    wait_for(helper_sock, helper)
    tracer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "virtfs_proto.cli",
            "trace",
            "-o",
            str(out),
            "--listen",
            str(tracer_sock),
            "-u",
            "65534",
            "-g",
            "65534",
            "--connect",
            str(helper_sock),
        ],
        stderr=subprocess.PIPE,
    )
    wait_for(tracer_sock, tracer)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(500):  # the path exists from bind(); connecting works from listen()
        try:
            sock.connect(str(tracer_sock))
            break
        except ConnectionRefusedError:
            time.sleep(0.01)
    # Owned like the helper's own socket (checked once connected: it listens after chown).
    st = os.stat(tracer_sock)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o770)
    with Transport(sock, timeout=5) as client:
        reply = client.exchange(ClientConnection(), m.LstatRequest(b"//file\0")).reply
    assert isinstance(reply, m.StatReply) and reply.st_size == 7
    _, err = tracer.communicate(timeout=10)
    assert tracer.returncode == 0, err
    assert b"trace: 1 exchanges, 0 did not decode" in err
    assert helper.wait(10) == 0
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["request"] == {"type": "T_LSTAT", "path": b"//file\0".hex()}
    assert rec["reply"]["kind"] == "stat" and rec["reply"]["st_size"] == 7
