"""Request handlers in-process (as root, no jail): success and error paths that the
QEMU comparison script does not reach, and our documented deviations."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator

import pytest

from virtfs_proto import messages as m
from virtfs_proto.constants import UTIME_NOW, UTIME_OMIT
from virtfs_proto.server.ops import Operations
from virtfs_proto.server.resolve import Resolver

from .conftest import Export


def _ops(export: Export, *, get_version: bool = True) -> Iterator[tuple[Operations, list[str]]]:
    root = os.open(export.root, os.O_PATH | os.O_DIRECTORY)
    logged: list[str] = []
    cwd = os.open(".", os.O_PATH)
    try:
        yield Operations(Resolver(root), get_version=get_version, log=logged.append), logged
    finally:
        os.fchdir(cwd)  # the xattr handlers fchdir()
        os.close(cwd)
        os.close(root)


@pytest.fixture
def ops(export: Export) -> Iterator[tuple[Operations, list[str]]]:
    yield from _ops(export)


def err(n: int) -> m.ErrorReply:
    return m.ErrorReply(n)


def test_create_chowns_only_what_it_created(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    o, _ = ops
    os.chown(export.root / "file.txt", 55, 66)
    reply = o.handle(m.CreateRequest(b"//file.txt", os.O_RDWR | os.O_CREAT, 0o600, 1, 2))
    assert isinstance(reply, m.FdReply)
    os.close(reply.fd)
    st = (export.root / "file.txt").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (55, 66, 0o644)
    reply = o.handle(m.CreateRequest(b"//new", os.O_RDWR | os.O_CREAT, 0o6755, 1, 2))
    assert isinstance(reply, m.FdReply)
    os.close(reply.fd)
    st = (export.root / "new").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1, 2, 0o6755)


def test_passed_fd_flags_are_the_clients(ops: tuple[Operations, list[str]]) -> None:
    o, _ = ops
    for flags in (os.O_RDONLY, os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_APPEND):
        reply = o.handle(m.OpenRequest(b"//file.txt\0", flags))
        assert isinstance(reply, m.FdReply)
        got = fcntl.fcntl(reply.fd, fcntl.F_GETFL)
        os.close(reply.fd)
        assert got & (os.O_NONBLOCK | os.O_APPEND | os.O_ACCMODE) == flags


def test_special_files_are_refused_and_logged_once(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    o, logged = ops
    os.mknod(export.root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    sock = export.root / "sock"
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    os.symlink("fifo", export.root / "to_fifo")
    for path in (b"//null\0", b"//sock\0", b"//fifo\0", b"//to_fifo\0"):
        assert o.handle(m.OpenRequest(path, os.O_RDWR)) == err(errno.ENXIO)
        assert o.handle(m.GetversionRequest(path)) == err(errno.ENXIO)
        create = m.CreateRequest(path.rstrip(b"\0"), os.O_RDWR | os.O_CREAT, 0o644, 0, 0)
        assert o.handle(create) == err(errno.ENXIO)
    s.close()
    assert len(logged) == 1 and "special file" in logged[0]
    # O_NOFOLLOW on a symlink is ELOOP, as open(2) says; O_EXCL on anything EEXIST
    assert o.handle(m.OpenRequest(b"//to_fifo\0", os.O_NOFOLLOW)) == err(errno.ELOOP)
    excl = m.CreateRequest(b"//null", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644, 0, 0)
    assert o.handle(excl) == err(errno.EEXIST)


def test_mknod_devices_only_when_allowed_and_for_root_credentials(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    o, _ = ops
    dev = os.makedev(1, 3)
    # by default refused whatever the ids, though this process (root) could make them
    for uid, gid in ((0, 0), (1000, 1000)):
        for kind in (stat.S_IFCHR, stat.S_IFBLK):
            req = m.MknodRequest(uid, gid, b"//dev", kind | 0o600, dev)
            assert o.handle(req) == err(errno.EPERM)
    assert not os.path.lexists(export.root / "dev")
    o.allow_device_nodes = True
    for uid, gid in ((1000, 1000), (0, 1000), (1000, 0)):
        req = m.MknodRequest(uid, gid, b"//dev", stat.S_IFBLK | 0o600, dev)
        assert o.handle(req) == err(errno.EPERM)
    assert o.handle(m.MknodRequest(0, 0, b"//dev", stat.S_IFBLK | 0o600, dev)) == m.StatusReply()
    assert (export.root / "dev").stat().st_rdev == dev
    setuid = m.MknodRequest(7, 8, b"//suid", stat.S_IFREG | 0o4755, 0)
    assert o.handle(setuid) == m.StatusReply()
    st = (export.root / "suid").lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 8, 0o4755)
    o._have_fchmodat2 = False  # the Linux < 6.6 route
    setgid = m.MknodRequest(7, 8, b"//sgid", stat.S_IFREG | 0o2755, 0)
    assert o.handle(setgid) == m.StatusReply()
    assert stat.S_IMODE((export.root / "sgid").lstat().st_mode) == 0o2755
    for path in (b"/", b"//dir/", b"//dir/.."):
        assert o.handle(m.MknodRequest(0, 0, path, stat.S_IFIFO | 0o600, 0)) == err(errno.EEXIST)
        assert o.handle(m.MkdirRequest(0, 0, path, 0o700)) == err(errno.EEXIST)
        assert o.handle(m.SymlinkRequest(0, 0, b"x", path)) == err(errno.EEXIST)


def test_chmod_without_fchmodat2(export: Export, ops: tuple[Operations, list[str]]) -> None:
    o, _ = ops
    o._have_fchmodat2 = False
    assert o.handle(m.ChmodRequest(b"//link_abs\0", 0o600)) == m.StatusReply()
    assert stat.S_IMODE((export.root / "file.txt").stat().st_mode) == 0o600
    assert o.handle(m.ChmodRequest(b"//dir\0", 0o711)) == m.StatusReply()
    assert stat.S_IMODE((export.root / "dir").stat().st_mode) == 0o711
    # a special file would have to be opened: refused on such kernels
    assert o.handle(m.ChmodRequest(b"//fifo\0", 0o600)) == err(errno.ENOSYS)


def test_chmod_special_file_with_fchmodat2(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    o, _ = ops
    assert o.handle(m.ChmodRequest(b"//fifo\0", 0o4600)) == m.StatusReply()
    assert stat.S_IMODE((export.root / "fifo").lstat().st_mode) == 0o4600


def test_xattr_sizes_and_names(shm_export: Export) -> None:
    for o, _ in _ops(shm_export):
        os.setxattr(shm_export.root / "file.txt", "user.long", b"L" * 65535)
        os.setxattr(shm_export.root / "file.txt", "user.short", b"abc")
        get = m.LgetxattrRequest
        assert o.handle(get(65535, b"//file.txt\0", b"user.long")) == err(errno.ENOBUFS)
        assert o.handle(get(100000, b"//file.txt\0", b"user.long")) == err(errno.ENOBUFS)
        assert o.handle(get(0, b"//file.txt\0", b"user.long")) == m.XattrSizeReply(65535)
        assert o.handle(get(2, b"//file.txt\0", b"user.short")) == err(errno.ERANGE)
        assert o.handle(get(3, b"//file.txt\0", b"user.short\0")) == m.XattrValueReply(b"abc")
        assert o.handle(get(3, b"//file.txt\0", b"user.sh\0ort")) == err(errno.EINVAL)
        assert o.handle(get(3, b"//file.txt\0junk", b"user.short")) == err(errno.EINVAL)
        assert o.handle(get(3, b"/\0", b"user.short")) == err(errno.ENODATA)
        listing = o.handle(m.LlistxattrRequest(1000, b"//file.txt\0"))
        assert isinstance(listing, m.XattrValueReply)
        assert sorted(listing.value.split(b"\0")) == [b"", b"user.long", b"user.short"]
        s = m.LsetxattrRequest
        assert o.handle(s(b"//file.txt\0", b"user.x", b"ab", 3, 0)) == err(errno.EINVAL)
        assert o.handle(s(b"//file.txt\0", b"user.x", b"ab", -1, 0)) == err(errno.EINVAL)
        assert o.handle(s(b"//file.txt\0", b"user.x", b"a\0b", 3, 0)) == m.StatusReply()
        assert os.getxattr(shm_export.root / "file.txt", "user.x") == b"a\0b"
        assert o.handle(s(b"/\0", b"user.onroot", b"r", 1, 0)) == m.StatusReply()
        assert os.getxattr(shm_export.root, "user.onroot") == b"r"
        assert o.handle(s(b"//fifo\0", b"user.x", b"a", 1, 0)) == err(errno.EPERM)
        removal = m.LremovexattrRequest(b"//dir/sub.txt\0", b"user.none")
        assert o.handle(removal) == err(errno.ENODATA)


def test_readlink_bounds(ops: tuple[Operations, list[str]]) -> None:
    o, _ = ops
    r = m.ReadlinkRequest
    assert o.handle(r(b"//link_abs\0", 2)) == m.ReadlinkReply(b"/")
    assert o.handle(r(b"//link_abs\0", 2**31 - 1)) == m.ReadlinkReply(b"/file.txt")
    for size in (1, 0, -1, -(2**31)):
        assert o.handle(r(b"//link_abs\0", size)) == err(errno.EINVAL)


def test_utime_now_and_omit(export: Export, ops: tuple[Operations, list[str]]) -> None:
    o, _ = ops
    f = export.root / "file.txt"
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    assert o.handle(m.UtimeRequest(b"//file.txt\0", 0, UTIME_OMIT, 0, UTIME_NOW)) == m.StatusReply()
    st = f.stat()
    assert st.st_atime_ns == 1_000_000_000 and st.st_mtime_ns > 2_000_000_000
    assert o.handle(m.UtimeRequest(b"//file.txt\0", 5, 1, 0, UTIME_OMIT)) == m.StatusReply()
    assert f.stat().st_atime_ns == 5_000_000_001
    # the symlink itself, not its target
    assert o.handle(m.UtimeRequest(b"//link_abs\0", 9, 0, 9, 0)) == m.StatusReply()
    assert os.lstat(export.root / "link_abs").st_mtime_ns == 9_000_000_000


def test_paths_naming_a_directory_itself(ops: tuple[Operations, list[str]]) -> None:
    o, _ = ops
    assert o.handle(m.RemoveRequest(b"/")) == err(errno.EINVAL)  # QEMU: EBUSY (documented)
    st = o.handle(m.LstatRequest(b"//dir/.."))
    assert isinstance(st, m.StatReply) and stat.S_ISDIR(st.st_mode)
    assert o.handle(m.LstatRequest(b"")) == err(errno.ENOENT)


def test_getversion_off_ext4_never_looks(export: Export) -> None:
    for o, _ in _ops(export, get_version=False):
        assert o.handle(m.GetversionRequest(b"//missing\0")) == m.VersionReply(0)
        assert o.handle(m.GetversionRequest(b"//fifo\0")) == m.VersionReply(0)


def test_truncate_and_remove(export: Export, ops: tuple[Operations, list[str]]) -> None:
    o, _ = ops
    assert o.handle(m.TruncateRequest(b"//link_abs\0", 2)) == m.StatusReply()
    assert (export.root / "file.txt").read_bytes() == b"he"
    assert o.handle(m.TruncateRequest(b"//fifo\0", 0)) == err(errno.EINVAL)
    assert o.handle(m.RemoveRequest(b"//dir")) == err(errno.ENOTEMPTY)
    assert o.handle(m.RemoveRequest(b"//link_dir")) == m.StatusReply()  # the link, not dir
    assert (export.root / "dir" / "sub.txt").exists()


def test_bad_numbers_are_einval_not_a_crash(ops: tuple[Operations, list[str]]) -> None:
    o, _ = ops
    odd_type = m.MknodRequest(0, 0, b"//odd", 0o170000 | 0o644, 0)
    assert o.handle(odd_type) == err(errno.EINVAL)
    bad_nsec = m.UtimeRequest(b"//file.txt\0", 0, -5, 0, 0)
    assert o.handle(bad_nsec) == err(errno.EINVAL)
