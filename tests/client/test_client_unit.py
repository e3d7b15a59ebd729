"""ProxyClient against a scripted fake helper (ServerConnection in a thread)."""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from virtfs_proto import messages as m
from virtfs_proto.client import MAX_XATTR_SIZE, ProxyClient, StatfsResult, StatResult
from virtfs_proto.connection import NEED_DATA, ConnectionState, MalformedRequest, ServerConnection
from virtfs_proto.errors import ConnectionClosed, LocalProtocolError

Script = Callable[[m.Request], m.Reply | None]  # None: hang up without answering


class FakeHelper:
    """Answers each request with ``script(request)``; records what it got."""

    def __init__(self, sock: socket.socket, script: Script) -> None:
        self.sock, self.script = sock, script
        self.received: list[m.Request] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        conn = ServerConnection(lenient=True)
        with self.sock:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    data = self.sock.recv(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                assert not isinstance(event, (MalformedRequest, ConnectionState))
                self.received.append(event)
                reply = self.script(event)
                if reply is None:
                    return
                data, fds = conn.send_reply(reply)
                if fds:
                    socket.send_fds(self.sock, [data], fds)
                else:
                    self.sock.sendall(data)


@pytest.fixture
def fake() -> Iterator[Callable[[Script], tuple[ProxyClient, FakeHelper]]]:
    made: list[tuple[ProxyClient, FakeHelper]] = []

    def make(script: Script) -> tuple[ProxyClient, FakeHelper]:
        ours, theirs = socket.socketpair()
        pair = (ProxyClient(ours, timeout=5), FakeHelper(theirs, script))
        made.append(pair)
        return pair

    yield make
    for client, helper in made:
        client.close()
        helper.thread.join(5)


def test_xattr_value_that_grows_between_probe_and_fetch(fake) -> None:
    sizes = iter([3, 6])

    def script(req: m.Request) -> m.Reply:
        assert isinstance(req, m.LgetxattrRequest)
        if req.size == 0:
            return m.XattrSizeReply(next(sizes))
        return m.ErrorReply(errno.ERANGE) if req.size < 6 else m.XattrValueReply(b"grown!")

    client, helper = fake(script)
    assert client.lgetxattr("/f", "user.a") == b"grown!"
    assert [r.size for r in helper.received] == [0, 3, 0, 6]  # type: ignore[union-attr]
    # QEMU's strings: V9fsPath with its NUL counted, the name without.
    assert helper.received[0] == m.LgetxattrRequest(0, b"/f\0", b"user.a")


def test_xattr_too_large_for_the_protocol(fake) -> None:
    client, helper = fake(lambda req: m.XattrSizeReply(MAX_XATTR_SIZE + 2))
    with pytest.raises(OSError) as info:
        client.llistxattr("/f")
    assert info.value.errno == errno.E2BIG
    assert len(helper.received) == 1  # never asked for a size the helper mangles


def test_empty_xattr_needs_no_fetch(fake) -> None:
    client, helper = fake(lambda req: m.XattrSizeReply(0))
    assert client.lgetxattr("/f", "user.e") == b""
    assert client.llistxattr(b"/f") == []
    assert len(helper.received) == 2


def test_wire_strings_follow_qemu(fake) -> None:
    client, helper = fake(lambda req: m.StatusReply())
    client.mkdir("/d", 0o700, 5, 6)
    client.symlink("target", "/d/l")
    client.link("/a", "/b")
    client.rename("/b", "/c")
    client.remove("/c")
    client.chown("/a")
    client.utime("/a", 1_500_000_000_000_000_001, (7, 8))
    assert helper.received == [
        m.MkdirRequest(5, 6, b"/d", 0o700),
        m.SymlinkRequest(0, 0, b"target", b"/d/l"),
        m.LinkRequest(b"/a\0", b"/b"),
        m.RenameRequest(b"/b", b"/c"),
        m.RemoveRequest(b"/c"),
        m.ChownRequest(b"/a\0", 0xFFFFFFFF, 0xFFFFFFFF),
        m.UtimeRequest(b"/a\0", 1_500_000_000, 1, 7, 8),
    ]


def test_path_style_nul_and_bare(fake) -> None:
    client, helper = fake(lambda req: m.StatusReply())
    client.path_style = "nul"
    client.mkdir("/d")
    client.path_style = "bare"
    client.chmod("/d", 0o700)
    assert helper.received == [m.MkdirRequest(0, 0, b"/d\0", 0o755), m.ChmodRequest(b"/d", 0o700)]


def test_create_adds_o_creat(fake, tmp_path) -> None:
    fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)

    def script(req: m.Request) -> m.Reply:
        return m.FdReply(fd)

    client, helper = fake(script)
    got = client.create("/x", os.O_WRONLY, 0o600, 1000, 1000)
    os.close(got)
    os.close(fd)
    assert helper.received == [m.CreateRequest(b"/x", os.O_WRONLY | os.O_CREAT, 0o600, 1000, 1000)]


def test_unencodable_request_does_not_break_the_connection(fake) -> None:
    client, helper = fake(lambda req: m.StatusReply())
    with pytest.raises(LocalProtocolError):
        client.lsetxattr("/f", "user.big", b"x" * 65530)
    with pytest.raises(LocalProtocolError):
        client.pipeline(
            [m.ChmodRequest(b"/", 0), m.LsetxattrRequest(b"/", b"n", b"x" * 65535, 1, 0)]
        )
    client.chmod("/f", 0o600)  # still usable, nothing was sent before
    assert helper.received == [m.ChmodRequest(b"/f\0", 0o600)]


def test_helper_hanging_up_mid_pipeline(fake, tmp_path) -> None:
    fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
    answers = iter([m.FdReply(fd), None])
    client, _ = fake(lambda req: next(answers))
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ConnectionClosed):
        client.pipeline([m.OpenRequest(b"/x\0", 0), m.LstatRequest(b"/\0")])
    os.close(fd)
    # The descriptor already received was closed, not leaked.
    assert len(os.listdir("/proc/self/fd")) <= before
    assert client.closed


def test_stat_results_read_like_os() -> None:
    reply = m.StatReply(1, 2, 3, 0o100644, 4, 5, 6, 7, 8, 9, (1 << 64) - 1, 500, 10, 20, 30, 40)
    st = StatResult(reply)
    assert st.is_file() and not st.is_dir() and not st.is_symlink()
    assert st.st_atime_ns == -(10**9) + 500  # time_t is signed
    assert st.st_mtime_ns == 10 * 10**9 + 20 and st.st_ctime == pytest.approx(30.00000004)
    fs = StatfsResult(
        m.StatfsReply(0xEF53, 4096, 1, 2, 3, 4, 5, 0xFFFFFFFFE69BBB74, 0x12, 255, 4096)
    )
    assert fs.f_fsid == 0x12_E69BBB74  # each half's low 32 bits, as glibc combines them
    assert fs.f_namemax == 255 and fs.f_favail == 5
