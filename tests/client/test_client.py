"""ProxyClient behaviour against QEMU's helper: pipelining, threads, failures, path styles."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from virtfs_proto import messages as m
from virtfs_proto.client import ProxyClient, close_replies, encode_path
from virtfs_proto.errors import ConnectionClosed, LocalProtocolError, TransportTimeout
from virtfs_proto.launcher import Helper, spawn_helper

pytestmark = pytest.mark.qemu_helper


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_pipeline_replies_in_order(client: ProxyClient, export: Path) -> None:
    for i in range(20):
        (export / f"f{i}").write_bytes(b"x" * i)
    requests: list[m.Request] = []
    for i in range(20):
        requests.append(m.LstatRequest(f"f{i}\0".encode()))
        requests.append(m.OpenRequest(f"f{i}\0".encode(), os.O_RDONLY))
    requests.append(m.LstatRequest(b"missing\0"))
    replies = client.pipeline(requests, window=7)
    try:
        assert len(replies) == len(requests)
        for i in range(20):
            st, fd = replies[2 * i], replies[2 * i + 1]
            assert isinstance(st, m.StatReply) and st.st_size == i
            # Each descriptor arrived with its own reply: the right file.
            assert isinstance(fd, m.FdReply) and os.fstat(fd.fd).st_size == i
        assert replies[-1] == m.ErrorReply(2)
        with pytest.raises(FileNotFoundError):
            client.check(replies[-1], "missing")
    finally:
        close_replies(replies)
    # The connection is still in step for ordinary calls.
    assert client.lstat("f3").st_size == 3


def test_pipeline_a_mixed_batch(client: ProxyClient, export: Path) -> None:
    replies = client.pipeline(
        [
            m.MkdirRequest(0, 0, b"/d", 0o700),
            m.CreateRequest(b"/d/f", os.O_RDWR | os.O_CREAT, 0o600, 0, 0),
            m.LsetxattrRequest(b"/d/f\0", b"user.a", b"1", 1, 0),
            m.LgetxattrRequest(0, b"/d/f\0", b"user.a"),
            m.LgetxattrRequest(1, b"/d/f\0", b"user.a"),
            m.RemoveRequest(b"/d"),
        ]
    )
    close_replies(replies)
    assert replies[0] == m.StatusReply()
    assert isinstance(replies[1], m.FdReply)
    assert replies[2:5] == [m.StatusReply(), m.XattrSizeReply(1), m.XattrValueReply(b"1")]
    assert isinstance(replies[5], m.ErrorReply)  # ENOTEMPTY


def test_threads_share_one_client(client: ProxyClient, export: Path) -> None:
    for i in range(4):
        (export / f"t{i}").write_bytes(b"y" * (i + 1))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(50):
                assert client.lstat(f"t{i}").st_size == i + 1
                fd = client.open(f"t{i}")
                assert os.fstat(fd).st_size == i + 1
                os.close(fd)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_no_descriptor_leaks(client: ProxyClient) -> None:
    for _ in range(5):  # warm up anything cached lazily
        os.close(client.open("/file.txt"))
    before = open_fds()
    for _ in range(100):
        os.close(client.open("/file.txt"))
        with pytest.raises(FileNotFoundError):
            client.open("/missing")
    assert open_fds() == before


def test_helper_killed_mid_request_is_a_clear_error(running: Helper, export: Path) -> None:
    # QEMU's helper dies with SIGTRAP when asked to allocate a negative size.
    start = time.monotonic()
    with pytest.raises(ConnectionClosed) as info:
        running.client.readlink("/file.txt", bufsize=-1)
    assert time.monotonic() - start < 5
    assert "SIGTRAP" in str(info.value)
    assert running.client.closed
    # Later calls fail at once, as QEMU answers EIO on a dead socket.
    with pytest.raises(ConnectionClosed, match="earlier failure"):
        running.client.lstat("/")


def test_helper_killed_from_outside(running: Helper) -> None:
    assert running.client.lstat("/").is_dir()
    running.process.send_signal(signal.SIGKILL)
    with pytest.raises(ConnectionClosed, match="SIGKILL"):
        running.client.lstat("/")


def test_uid0_with_nonzero_gid_cripples_qemus_helper(running: Helper, export: Path) -> None:
    """QEMU 7.2 defect (notes §8): reproduced here so the client's reporting is exercised."""
    client = running.client
    client.mkdir("/d", 0o755, 0, 1000)  # succeeds, created 0:1000 ...
    assert (export / "d").stat().st_gid == 1000
    with pytest.raises(PermissionError):  # ... but CAP_CHOWN is gone for good
        client.chown("/file.txt", 5, 5)
    with pytest.raises(ConnectionClosed, match="SIGABRT"):  # and glibc aborts the next setuid
        client.mkdir("/e", 0o755, 1000, 1000)


def test_timeout_instead_of_a_hang(qemu_helper: str, export: Path) -> None:
    os.mkfifo(export / "fifo")
    # GETVERSION open()s without O_NONBLOCK: QEMU's helper blocks on a FIFO.
    with spawn_helper([qemu_helper], export, timeout=0.3) as helper:
        start = time.monotonic()
        with pytest.raises(TransportTimeout):
            helper.client.getversion("/fifo")
        assert time.monotonic() - start < 3
        # The late reply would answer the next request: the client gives up.
        assert helper.client.closed
        with pytest.raises(ConnectionClosed):
            helper.client.lstat("/")
        helper.process.kill()


@pytest.mark.parametrize("style", ["qemu", "nul", "bare"])
def test_path_styles_all_work_with_qemus_helper(qemu_helper: str, export: Path, style: str) -> None:
    with spawn_helper([qemu_helper], export, timeout=10, path_style=style) as helper:  # type: ignore[arg-type]
        c = helper.client
        assert c.lstat("/file.txt").is_file()
        c.mkdir("/d")
        os.close(c.create("/d/f"))
        c.rename("/d/f", "/d/g")
        c.symlink("g", "/d/ln")
        assert c.readlink("/d/ln") == "g"
        c.remove("/d/ln")
        c.remove("/d/g")
        c.remove("/d")
        assert not (export / "d").exists()


def test_qemu_style_path_encoding() -> None:
    assert encode_path("/a", nul=True) == b"/a\0"
    assert encode_path(b"/a", nul=False) == b"/a"
    assert encode_path(Path("é"), nul=False) == "é".encode()
    with pytest.raises(LocalProtocolError):
        encode_path("a\0b", nul=False)
    with pytest.raises(LocalProtocolError):
        encode_path("x" * 65535, nul=True)


def test_embedded_nul_is_refused_before_sending(client: ProxyClient) -> None:
    with pytest.raises(LocalProtocolError):
        client.lstat("file.txt\0garbage")
    assert client.lstat("file.txt").is_file()  # nothing was sent


def test_context_manager_closes_and_helper_exits(qemu_helper: str, export: Path) -> None:
    with spawn_helper([qemu_helper], export) as helper:
        with helper.client as client:
            assert client.statfs().f_bsize > 0
        assert client.closed
        with pytest.raises(ConnectionClosed):
            client.lstat("/")
    assert helper.process.returncode == 0
    assert "Started" in helper.stderr and "Done" in helper.stderr


def test_request_returns_raw_replies(client: ProxyClient) -> None:
    assert client.request(m.LstatRequest(b"/missing\0")) == m.ErrorReply(2)
    reply = client.request(m.StatfsRequest(b"/\0"))
    assert isinstance(reply, m.StatfsReply)


def test_mknod_of_a_socket_and_open_refused(client: ProxyClient, export: Path) -> None:
    client.mknod("/sock", stat.S_IFSOCK | 0o600)
    assert stat.S_ISSOCK(os.lstat(export / "sock").st_mode)
    with pytest.raises(OSError) as info:
        client.open("/sock")
    assert info.value.errno == 6  # ENXIO
