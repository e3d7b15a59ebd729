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
from virtfs_proto.server.oslib import open_own_fd_dir
from virtfs_proto.server.resolve import Resolver

from .conftest import Export


def _ops(export: Export, *, get_version: bool = True) -> Iterator[tuple[Operations, list[str]]]:
    root = os.open(export.root, os.O_PATH | os.O_DIRECTORY)
    logged: list[str] = []
    cwd = os.open(".", os.O_PATH)
    fd_dir, _ = open_own_fd_dir()
    try:
        yield (
            Operations(Resolver(root), get_version=get_version, log=logged.append, fd_dir=fd_dir),
            logged,
        )
    finally:
        os.fchdir(cwd)  # the xattr handlers fchdir()
        for fd in (cwd, root, fd_dir):
            os.close(fd)


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


def test_lstat_times_are_tv_sec_and_tv_nsec(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    """The reply's times are the kernel's timespec: tv_nsec in [0, 1e9) and
    tv_sec floored, before 1970 too (as u64 on the wire), every other field
    as lstat(2) says."""
    o, _ = ops
    f = export.root / "file.txt"
    U64 = 2**64 - 1
    for atime_ns, mtime_ns in (
        (1_500_000_000_123_456_789, 7),
        (-1_500_000_000_123_456_789, -1),  # tv_sec -1500000001, tv_nsec 876543211
        (-999_999_999, 0),
    ):
        os.utime(f, ns=(atime_ns, mtime_ns))
        reply = o.handle(m.LstatRequest(b"//file.txt\0"))
        st = os.lstat(f)
        assert isinstance(reply, m.StatReply)
        assert (reply.st_atim_sec, reply.st_atim_nsec) == (
            (atime_ns // 10**9) & U64,
            atime_ns % 10**9,
        )
        assert (reply.st_mtim_sec, reply.st_mtim_nsec) == (
            (mtime_ns // 10**9) & U64,
            mtime_ns % 10**9,
        )
        assert (reply.st_ctim_sec, reply.st_ctim_nsec) == (
            (st.st_ctime_ns // 10**9) & U64,
            st.st_ctime_ns % 10**9,
        )
        assert (reply.st_dev, reply.st_ino, reply.st_nlink, reply.st_mode) == (
            st.st_dev,
            st.st_ino,
            st.st_nlink,
            st.st_mode,
        )
        assert (reply.st_uid, reply.st_gid, reply.st_rdev, reply.st_size) == (
            st.st_uid,
            st.st_gid,
            st.st_rdev,
            st.st_size,
        )
        assert (reply.st_blksize, reply.st_blocks) == (st.st_blksize, st.st_blocks)


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


def _owner(path: os.PathLike[str] | str) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.mark.parametrize(
    ("link", "created"),
    [("target", "target"), ("/abs_target", "abs_target"), ("dir/../target", "target")],
)
def test_create_through_a_dangling_symlink_gets_the_owner(
    export: Export, ops: tuple[Operations, list[str]], link: str, created: str
) -> None:
    """Created is what the O_EXCL open says, not a look at the name beforehand."""
    o, _ = ops
    os.symlink(link, export.root / "dangling")
    reply = o.handle(m.CreateRequest(b"//dangling", os.O_RDWR | os.O_CREAT, 0o4750, 7, 8))
    assert isinstance(reply, m.FdReply)
    assert os.fstat(reply.fd).st_ino == os.lstat(export.root / created).st_ino
    os.close(reply.fd)
    assert _owner(export.root / created) == (7, 8, 0o4750)
    # O_EXCL does not follow it: the link exists
    excl = m.CreateRequest(b"//dangling", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644, 7, 8)
    assert o.handle(excl) == err(errno.EEXIST)


def test_dangling_symlink_chain_is_bounded(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    o, _ = ops
    for i in range(45):
        os.symlink(f"l{i + 1}", export.root / f"l{i}")
    create = m.CreateRequest(b"//l0", os.O_RDWR | os.O_CREAT, 0o644, 7, 8)
    assert o.handle(create) == err(errno.ELOOP)
    assert not os.path.lexists(export.root / "l45")


def test_tmpfile_gets_the_owner(export: Export, ops: tuple[Operations, list[str]]) -> None:
    o, _ = ops
    reply = o.handle(m.CreateRequest(b"//dir", os.O_RDWR | os.O_TMPFILE, 0o2750, 7, 8))
    assert isinstance(reply, m.FdReply)
    st = os.fstat(reply.fd)
    os.close(reply.fd)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 8, 0o2750)


def test_open_acts_on_the_object_it_checked(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    """A FIFO swapped in after the type check is never opened: the reopen goes
    through the checked fd, not the name."""
    o, _ = ops
    os.mkfifo(export.root / "fifo2")
    original = o.resolver.open_clean
    swaps = 0

    def swap_after_open(path: bytes, flags: int, mode: int) -> int:
        nonlocal swaps
        fd = original(path, flags, mode)
        if path == b"//file.txt":
            os.rename(export.root / "file.txt", export.root / "moved.txt")
            os.rename(export.root / "fifo2", export.root / "file.txt")
            swaps += 1
        return fd

    o.resolver.open_clean = swap_after_open  # type: ignore[method-assign]
    ino = os.lstat(export.root / "file.txt").st_ino
    reply = o.handle(m.OpenRequest(b"//file.txt\0", os.O_RDONLY))
    assert swaps == 1
    assert isinstance(reply, m.FdReply)
    assert os.fstat(reply.fd).st_ino == ino  # the regular file, now moved.txt
    os.close(reply.fd)


@pytest.mark.parametrize("directory", [False, True], ids=["file", "O_DIRECTORY"])
def test_a_symlink_retargeted_between_probe_and_follow_is_checked_again(
    export: Export, ops: tuple[Operations, list[str]], directory: bool
) -> None:
    """T_OPEN looks at the last component without following it first; a
    symlink is then followed by a second lookup. Retargeted in between, to a
    FIFO, what that second lookup finds is checked on its own fd: never
    opened for I/O (a writer blocked in open(2) would be released)."""
    o, _ = ops
    os.mkfifo(export.root / "fifo2")
    target = "dir" if directory else "file.txt"
    os.symlink(target, export.root / "flip")
    original = o.resolver.open_clean
    lookups: list[int] = []

    def retarget_after_probe(path: bytes, flags: int, mode: int) -> int:
        try:
            return original(path, flags, mode)
        finally:
            lookups.append(flags)
            if len(lookups) == 1:
                os.unlink(export.root / "flip")
                os.symlink("fifo2", export.root / "flip")

    o.resolver.open_clean = retarget_after_probe  # type: ignore[method-assign]
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    reply = o.handle(m.OpenRequest(b"//flip\0", flags))
    assert lookups[0] & os.O_NOFOLLOW and not lookups[-1] & os.O_NOFOLLOW
    assert reply == err(errno.ENOTDIR if directory else errno.ENXIO)
    # nobody holds the FIFO open for reading: a writer cannot open it
    with pytest.raises(OSError) as exc:
        os.open(export.root / "fifo2", os.O_WRONLY | os.O_NONBLOCK)
    assert exc.value.errno == errno.ENXIO


def test_open_follows_symlinks_inside_the_root(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    """The not-following first look falls back to a lookup that follows: to a
    file, to a directory (O_DIRECTORY), and an absolute one stays inside."""
    o, _ = ops
    os.symlink("/file.txt", export.root / "abs_to_file")
    os.symlink("dir", export.root / "to_dir")
    for path, flags, want in (
        (b"//abs_to_file\0", os.O_RDONLY, export.root / "file.txt"),
        (b"//to_dir\0", os.O_RDONLY | os.O_DIRECTORY, export.root / "dir"),
        (b"//dir/../abs_to_file\0", os.O_RDONLY, export.root / "file.txt"),
    ):
        reply = o.handle(m.OpenRequest(path, flags))
        assert isinstance(reply, m.FdReply), (path, reply)
        st = os.fstat(reply.fd)
        os.close(reply.fd)
        assert (st.st_dev, st.st_ino) == (os.stat(want).st_dev, os.stat(want).st_ino)
    assert o.handle(m.OpenRequest(b"//abs_to_file\0", os.O_NOFOLLOW)) == err(errno.ELOOP)
    reply = o.handle(m.OpenRequest(b"//to_dir\0", os.O_DIRECTORY | os.O_NOFOLLOW))
    assert reply == err(errno.ENOTDIR)


def test_reopened_fd_has_the_clients_flags(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    o, _ = ops
    reply = o.handle(m.OpenRequest(b"//file.txt\0", os.O_WRONLY | os.O_APPEND | os.O_TRUNC))
    assert isinstance(reply, m.FdReply)
    flags = fcntl.fcntl(reply.fd, fcntl.F_GETFL)
    os.close(reply.fd)
    assert flags & (os.O_ACCMODE | os.O_APPEND) == os.O_WRONLY | os.O_APPEND
    assert (export.root / "file.txt").stat().st_size == 0  # O_TRUNC took


def test_a_node_swapped_in_before_the_chown_keeps_its_owner(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    """mkdir, then another process replaces the name: nothing else gets the owner."""
    o, _ = ops
    real_mkdir = os.mkdir

    def mkdir_then_swap(name: bytes, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(name, mode, dir_fd=dir_fd)
        os.rename(name, b"ours", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        real_mkdir(name, 0o700, dir_fd=dir_fd)
        os.chown(name, 4242, 4242, dir_fd=dir_fd)  # another user's directory

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "mkdir", mkdir_then_swap)
        assert o.handle(m.MkdirRequest(7, 8, b"//new", 0o755)) == err(errno.EAGAIN)
    assert _owner(export.root / "new")[:2] == (4242, 4242)
    assert _owner(export.root / "ours")[:2] == (0, 0)  # ours, never given away


def test_mknod_file_is_created_by_the_open_that_owns_it(
    export: Export, ops: tuple[Operations, list[str]]
) -> None:
    o, _ = ops
    assert o.handle(m.MknodRequest(7, 8, b"//f", stat.S_IFREG | 0o4755, 0)) == m.StatusReply()
    assert _owner(export.root / "f") == (7, 8, 0o4755)
    os.symlink("elsewhere", export.root / "dangling")
    req = m.MknodRequest(7, 8, b"//dangling", stat.S_IFREG | 0o644, 0)
    assert o.handle(req) == err(errno.EEXIST)
    assert not os.path.lexists(export.root / "elsewhere")


def test_a_name_that_keeps_coming_and_going_is_bounded(
    ops: tuple[Operations, list[str]],
) -> None:
    """Exists for O_EXCL, gone for the open, forever: EAGAIN, not a busy helper."""
    o, _ = ops
    calls = 0

    def flicker(path: bytes, flags: int, *_: object) -> int:
        nonlocal calls
        calls += 1
        if flags & os.O_EXCL:
            raise FileExistsError(errno.EEXIST, "exists")
        raise FileNotFoundError(errno.ENOENT, "gone")

    # the O_EXCL create (made in the parent's fd) and every lookup by path
    o._create_once = flicker  # type: ignore[method-assign]
    o.resolver.open_clean = flicker  # type: ignore[method-assign]
    reply = o.handle(m.CreateRequest(b"//x", os.O_RDWR | os.O_CREAT, 0o644, 7, 8))
    assert reply == err(errno.EAGAIN)
    assert 2 < calls < 1000
