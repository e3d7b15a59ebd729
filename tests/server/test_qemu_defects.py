"""Every QEMU 7.2 helper defect in the research notes, shown on QEMU's helper and
shown absent from ours, side by side.

Each test first demonstrates the defect on QEMU's binary (so the test could
tell the difference), then runs the same traffic against ours.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time

import pytest
from helpers import OUR_HELPER, require_qemu_helper

from virtfs_proto import messages as m
from virtfs_proto.codec import encode_request
from virtfs_proto.constants import HEADER_SIZE, MessageType
from virtfs_proto.errors import ConnectionClosed, TransportTimeout
from virtfs_proto.launcher import Helper

from .conftest import Export, spawn_ours, spawn_qemu

pytestmark = pytest.mark.qemu_helper

EINVAL, ENXIO, ENOBUFS, EPERM = 22, 6, 105, 1


def both(export: Export, helpers: list[Helper]) -> tuple[Helper, Helper]:
    qemu = spawn_qemu(export.root)
    ours = spawn_ours(export.root)
    helpers += [qemu, ours]
    return qemu, ours


def test_uid0_gidN_credentials_do_not_cripple_or_kill(
    export: Export, helpers: list[Helper]
) -> None:
    qemu = spawn_qemu(export.root)
    # device nodes allowed, so that CAP_MKNOD can be seen to survive uid 0 / gid N
    ours = spawn_ours(export.root, "--allow-device-nodes")
    helpers += [qemu, ours]
    # QEMU: the request works but leaves the helper with CapEff = DAC_OVERRIDE...
    assert qemu.client.request(m.MkdirRequest(0, 1000, b"//q_dir", 0o755)) == m.StatusReply()
    assert qemu.client.request(m.ChownRequest(b"//file.txt\0", 7, 7)) == m.ErrorReply(EPERM)
    # ...and the next request with a non-zero uid kills it (SIGABRT, no reply)
    with pytest.raises(ConnectionClosed):
        qemu.client.request(m.MkdirRequest(1000, 1000, b"//q_dir2", 0o755))
    assert qemu.process.wait(5) == -signal.SIGABRT
    # ours: the same sequence simply works, and keeps working
    assert ours.client.request(m.MkdirRequest(0, 1000, b"//o_dir", 0o755)) == m.StatusReply()
    assert ours.client.request(m.ChownRequest(b"//file.txt\0", 7, 7)) == m.StatusReply()
    assert ours.client.request(m.MkdirRequest(1000, 1000, b"//o_dir2", 0o755)) == m.StatusReply()
    create = m.CreateRequest(b"//o_file", os.O_RDWR | os.O_CREAT, 0o640, 0, 1000)
    reply = ours.client.request(create)
    assert isinstance(reply, m.FdReply)
    os.close(reply.fd)
    dev = m.MknodRequest(0, 0, b"//o_null", 0o20666, os.makedev(1, 3))
    assert ours.client.request(dev) == m.StatusReply()
    owners = {n: os.lstat(export.root / n)[4:6] for n in ("o_dir", "o_dir2", "o_file")}
    assert owners == {"o_dir": (0, 1000), "o_dir2": (1000, 1000), "o_file": (0, 1000)}
    assert ours.close() == 0


def test_xattr_of_65536_bytes_is_not_returned_empty(
    shm_export: Export, helpers: list[Helper]
) -> None:
    big = shm_export.root / "big"
    big.write_bytes(b"")
    os.setxattr(big, "user.max", b"v" * 65536)
    os.setxattr(big, "user.fits", b"f" * 65534)
    qemu, ours = both(shm_export, helpers)
    get_max = m.LgetxattrRequest(65536, b"//big\0", b"user.max")
    assert qemu.client.request(get_max) == m.XattrValueReply(b"")  # QEMU: silent data loss
    assert ours.client.request(get_max) == m.ErrorReply(ENOBUFS)
    probe = m.LgetxattrRequest(0, b"//big\0", b"user.max")
    assert qemu.client.request(probe) == ours.client.request(probe) == m.XattrSizeReply(65536)
    fits = m.LgetxattrRequest(65534, b"//big\0", b"user.fits")
    assert qemu.client.request(fits) == ours.client.request(fits) == m.XattrValueReply(b"f" * 65534)


@pytest.mark.parametrize(
    "request_",
    [
        m.ReadlinkRequest(b"//link_abs\0", -1),
        m.LgetxattrRequest(-1, b"//file.txt\0", b"user.x"),
        m.LlistxattrRequest(-1, b"//file.txt\0"),
        m.LgetxattrRequest(-(2**31), b"//file.txt\0", b"user.x"),
    ],
    ids=["readlink", "lgetxattr", "llistxattr", "lgetxattr-min"],
)
def test_negative_sizes_get_an_error_not_a_crash(
    export: Export, helpers: list[Helper], request_: m.Request
) -> None:
    qemu, ours = both(export, helpers)
    with pytest.raises(ConnectionClosed):
        qemu.client.request(request_)
    assert qemu.process.wait(5) == -signal.SIGTRAP
    assert ours.client.request(request_) == m.ErrorReply(EINVAL)
    assert isinstance(ours.client.request(m.LstatRequest(b"/\0")), m.StatReply)


def test_special_files_never_block(export: Export, helpers: list[Helper]) -> None:
    qemu, ours = both(export, helpers)
    # QEMU: GETVERSION on a FIFO blocks the single-threaded helper
    with pytest.raises(TransportTimeout):
        qemu.client.request(m.GetversionRequest(b"//fifo\0"), timeout=0.5)
    for request in (
        m.GetversionRequest(b"//fifo\0"),
        m.OpenRequest(b"//fifo\0", os.O_RDONLY),
        m.OpenRequest(b"//fifo\0", os.O_WRONLY),
        m.CreateRequest(b"//fifo", os.O_RDWR | os.O_CREAT, 0o644, 0, 0),
    ):
        start = time.monotonic()
        assert ours.client.request(request, timeout=2.0) == m.ErrorReply(ENXIO)
        assert time.monotonic() - start < 1.0


def test_getversion_has_no_stack_garbage(export: Export, helpers: list[Helper]) -> None:
    qemu, ours = both(export, helpers)
    # what leaks is what a previous request left on QEMU's stack: a T_OPEN leaves
    # a stack address there (a fresh helper may show zeros)
    os.close(qemu.client.open("file.txt"))
    q = qemu.client.request(m.GetversionRequest(b"//file.txt\0"))
    o = ours.client.request(m.GetversionRequest(b"//file.txt\0"))
    assert isinstance(q, m.VersionReply) and isinstance(o, m.VersionReply)
    assert q.version >> 32 != 0  # QEMU: the high half is a stack address
    assert o.version == q.version & 0xFFFFFFFF


def test_getversion_is_zero_without_looking_off_ext4_like_qemu(
    shm_export: Export, helpers: list[Helper]
) -> None:
    qemu, ours = both(shm_export, helpers)
    for path in (b"//file.txt\0", b"//missing\0", b"//fifo\0"):
        request = m.GetversionRequest(path)
        assert qemu.client.request(request) == ours.client.request(request) == m.VersionReply(0)


def test_client_gone_is_not_sigpipe_death(export: Export, helpers: list[Helper]) -> None:
    """Pipelined requests, then the client closes: the replies hit a dead socket."""
    frames = encode_request(m.LstatRequest(b"/\0")) * 2000
    rcs = {}
    for name, h in zip(("qemu", "ours"), both(export, helpers), strict=True):
        h.client.transport.send(frames)
        h.client.close()
        rcs[name] = h.process.wait(10)
    assert rcs == {"qemu": -signal.SIGPIPE, "ours": 0}


def _raw_exit(h: Helper, data: bytes) -> tuple[int, bytes]:
    t = h.client.transport
    t.send(data)
    t.shutdown_write()
    reply, fds = t.recv(100)
    assert fds == []
    return h.process.wait(10), reply


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack("=II", 22, 0),  # unknown type
        struct.pack("=II", MessageType.T_SUCCESS, 0),  # a reply type sent as a request
        struct.pack("=II", MessageType.T_LSTAT, 65537),  # oversize frame
    ],
    ids=["unknown-type", "reply-type", "oversize"],
)
def test_fatal_garbage_closes_without_reply_and_exits_nonzero(
    export: Export, helpers: list[Helper], frame: bytes
) -> None:
    qemu, ours = both(export, helpers)
    assert _raw_exit(qemu, frame) == (0, b"")  # QEMU: a failure, reported as success
    assert _raw_exit(ours, frame) == (1, b"")
    assert "closing the connection" in ours.stderr


def test_eof_and_short_payloads_like_qemu(export: Export, helpers: list[Helper]) -> None:
    qemu, ours = both(export, helpers)
    short = struct.pack("=II", MessageType.T_LSTAT, 1) + b"\0"  # size too small: ENOBUFS
    for h in (qemu, ours):
        h.client.transport.send(short)
        reply = h.client.transport.recv(100)
        assert reply == (struct.pack("=IIi", MessageType.T_ERROR, 4, -ENOBUFS), [])
        assert _raw_exit(h, encode_request(m.LstatRequest(b"/"))[: HEADER_SIZE + 1])[0] == 0


def test_unusable_socket_fd_exits_nonzero(export: Export) -> None:
    qemu_rc = subprocess.run(
        [require_qemu_helper(), "-p", str(export.root), "-f", "47", "-n"],
        capture_output=True,
        timeout=10,
    ).returncode
    ours = subprocess.run(
        [*OUR_HELPER, "-p", str(export.root), "-f", "47", "-n"], capture_output=True, timeout=20
    )
    assert qemu_rc == 0
    assert ours.returncode == 1 and ours.stderr


def test_embedded_nul_is_refused_not_truncated(export: Export, helpers: list[Helper]) -> None:
    """QEMU reads a path as a C string: b"file.txt\\0junk" names file.txt."""
    qemu, ours = both(export, helpers)
    request = m.LstatRequest(b"//file.txt\0junk")
    assert isinstance(qemu.client.request(request), m.StatReply)
    assert ours.client.request(request) == m.ErrorReply(EINVAL)
