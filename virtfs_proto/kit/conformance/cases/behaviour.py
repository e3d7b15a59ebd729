"""Behaviour: every operation's effect, checked on the host side."""

from __future__ import annotations

import errno as E
import fcntl
import os
import stat
import struct
import time

from .... import messages as m
from ....constants import UTIME_NOW, UTIME_OMIT
from ..model import (
    DEVICE_NODES,
    OTHER_OWNER,
    SETID_BITS,
    CheckFailed,
    Context,
    Name,
    case,
    qemu,
    qpath,
)
from ..workspace import COMMENT, FILE_CONTENT, NESTED_CONTENT

#: FS_IOC_GETVERSION = _IOR('v', 1, long)
FS_IOC_GETVERSION = 0x80087601
XATTR_CREATE, XATTR_REPLACE = 1, 2


def read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    out = b""
    while len(out) < 1 << 20 and (chunk := os.read(fd, 65536)):
        out += chunk
    return out


def host_generation(path: str | os.PathLike[str] | bytes, dir_fd: int | None = None) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        raw = fcntl.ioctl(fd, FS_IOC_GETVERSION, b"\0" * 8)
    finally:
        os.close(fd)
    return int(struct.unpack("<i", raw[:4])[0]) & 0xFFFFFFFF


# -- T_OPEN -----------------------------------------------------------------


@case("behaviour", "open")
def open_read(ctx: Context) -> None:
    """T_OPEN O_RDONLY passes back an fd to the file, which reads its content."""
    fd = ctx.fd(qemu(m.OpenRequest, qpath("file.txt"), os.O_RDONLY))
    ctx.expect(ctx.same_file(fd, ctx.host("file.txt")), "the fd is not file.txt")
    ctx.expect(read_all(fd) == FILE_CONTENT, "reading the fd does not give the file's content")
    ctx.expect(os.get_blocking(fd), "O_NONBLOCK set although not asked for")


@case("behaviour", "open")
def open_write_trunc(ctx: Context) -> None:
    """T_OPEN O_WRONLY|O_TRUNC truncates; writes through the fd reach the host file."""
    fd = ctx.fd(qemu(m.OpenRequest, qpath("dir/nested.txt"), os.O_WRONLY | os.O_TRUNC))
    ctx.expect(ctx.host("dir/nested.txt").read_bytes() == b"", "O_TRUNC did not truncate")
    os.write(fd, b"written through the fd")
    ctx.expect(
        ctx.host("dir/nested.txt").read_bytes() == b"written through the fd",
        "a write through the fd did not reach the file",
    )
    acc = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    ctx.expect(acc == os.O_WRONLY, f"access mode {acc}, not O_WRONLY")


@case("behaviour", "open")
def open_directory(ctx: Context) -> None:
    """T_OPEN O_DIRECTORY of a directory (and of the root) passes back a directory fd."""
    fd = ctx.fd(qemu(m.OpenRequest, qpath("dir"), os.O_RDONLY | os.O_DIRECTORY))
    ctx.expect(sorted(os.listdir(fd)) == ["nested.txt", "sub"], "the fd does not list dir/")
    root = ctx.fd(qemu(m.OpenRequest, qpath(""), os.O_RDONLY | os.O_DIRECTORY))
    ctx.expect(ctx.same_file(root, ctx.host()), "opening / does not give the export root")


@case("behaviour", "open")
def open_follows_symlink(ctx: Context) -> None:
    """T_OPEN follows a final symlink; an absolute target resolves inside the export."""
    for link in ("link_file", "link_abs_inside"):
        fd = ctx.fd(qemu(m.OpenRequest, qpath(link), os.O_RDONLY))
        ctx.expect(ctx.same_file(fd, ctx.host("file.txt")), f"{link} did not open file.txt")


@case("behaviour", "open")
def open_errors(ctx: Context) -> None:
    """T_OPEN: ENOENT for a missing name, ENOTDIR for O_DIRECTORY on a file."""
    ctx.err(qemu(m.OpenRequest, qpath("missing"), os.O_RDONLY), E.ENOENT)
    ctx.err(qemu(m.OpenRequest, qpath("file.txt"), os.O_RDONLY | os.O_DIRECTORY), E.ENOTDIR)
    ctx.err(qemu(m.OpenRequest, qpath("file.txt/x"), os.O_RDONLY), E.ENOTDIR)


@case("behaviour", "open")
def open_with_o_creat(ctx: Context) -> None:
    """T_OPEN with O_CREAT: either EINVAL, or a file is created (QEMU's mode 0000 file)."""
    reply = ctx.call(qemu(m.OpenRequest, qpath("created_by_open"), os.O_RDWR | os.O_CREAT))
    if isinstance(reply, m.ErrorReply):
        ctx.expect(reply.errno == E.EINVAL, f"failed with {reply.errno}, expected EINVAL")
        ctx.expect(not ctx.host("created_by_open").exists(), "failed but created the file")
        return
    assert isinstance(reply, m.FdReply)
    ctx.expect(ctx.same_file(reply.fd, ctx.host("created_by_open")), "the fd is not the new file")
    mode = stat.S_IMODE(os.lstat(ctx.host("created_by_open")).st_mode)
    ctx.notes.append(f"created a file of mode {mode:04o}")


# -- T_CREATE ---------------------------------------------------------------


def expect_owner(ctx: Context, st: os.stat_result, owner: tuple[int, int]) -> None:
    """``st`` is owned by ``owner`` as the helper names it (:meth:`Context.owner`)."""
    got = ctx.named_owner(st)
    ctx.expect(got == owner, f"owner {got[0]}:{got[1]}, requested {owner[0]}:{owner[1]}")


@case("behaviour", "create")
def create_owner_mode(ctx: Context) -> None:
    """T_CREATE makes a file owned by uid:gid with the exact mode, and passes it back."""
    owner = ctx.owner(1000, 1001)
    req = qemu(m.CreateRequest, qpath("new.txt"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640, *owner)
    fd = ctx.fd(req)
    st = os.lstat(ctx.host("new.txt"))
    ctx.expect(stat.S_ISREG(st.st_mode), "not a regular file")
    expect_owner(ctx, st, owner)
    ctx.expect(stat.S_IMODE(st.st_mode) == 0o640, f"mode {stat.S_IMODE(st.st_mode):04o}")
    ctx.expect(ctx.same_file(fd, ctx.host("new.txt")), "the fd is not the new file")
    os.write(fd, b"data")
    ctx.expect(ctx.host("new.txt").read_bytes() == b"data", "write through the fd lost")


@case("behaviour", "create")
def create_existing(ctx: Context) -> None:
    """T_CREATE: EEXIST with O_EXCL; without it the existing file is opened, owner kept."""
    owner = ctx.owner(1000, 1000)
    before = os.lstat(ctx.host("file.txt")).st_uid
    ctx.err(
        qemu(
            m.CreateRequest,
            qpath("file.txt"),
            os.O_RDWR | os.O_CREAT | os.O_EXCL,
            0o600,
            *owner,
        ),
        E.EEXIST,
    )
    fd = ctx.fd(qemu(m.CreateRequest, qpath("file.txt"), os.O_RDONLY | os.O_CREAT, 0o600, *owner))
    ctx.expect(ctx.same_file(fd, ctx.host("file.txt")), "did not open the existing file")
    st = os.lstat(ctx.host("file.txt"))
    ctx.expect((st.st_uid, stat.S_IMODE(st.st_mode)) == (before, 0o644), "changed owner or mode")


@case("behaviour", "create")
def create_errors(ctx: Context) -> None:
    """T_CREATE: ENOENT in a missing directory, ENOTDIR under a file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    ctx.err(qemu(m.CreateRequest, qpath("missing/new"), flags, 0o600, *ctx.ids), E.ENOENT)
    ctx.err(qemu(m.CreateRequest, qpath("file.txt/new"), flags, 0o600, *ctx.ids), E.ENOTDIR)


# -- T_MKNOD ----------------------------------------------------------------


@case("behaviour", "mknod")
def mknod_fifo(ctx: Context) -> None:
    """T_MKNOD S_IFIFO makes a FIFO owned by uid:gid with the exact mode."""
    owner = ctx.owner(1000, 1001)
    ctx.ok(qemu(m.MknodRequest, *owner, qpath("newfifo"), stat.S_IFIFO | 0o640, 0))
    st = os.lstat(ctx.host("newfifo"))
    ctx.expect(stat.S_ISFIFO(st.st_mode), "not a FIFO")
    expect_owner(ctx, st, owner)
    ctx.expect(stat.S_IMODE(st.st_mode) == 0o640, f"mode {stat.S_IMODE(st.st_mode):04o}")


@case("behaviour", "mknod")
def mknod_regular(ctx: Context) -> None:
    """T_MKNOD S_IFREG makes an empty regular file."""
    owner = ctx.owner(1000, 1000)
    ctx.ok(qemu(m.MknodRequest, *owner, qpath("newreg"), stat.S_IFREG | 0o600, 0))
    st = os.lstat(ctx.host("newreg"))
    ctx.expect(stat.S_ISREG(st.st_mode) and st.st_size == 0, "not an empty regular file")
    ctx.expect(stat.S_IMODE(st.st_mode) == 0o600, f"mode {stat.S_IMODE(st.st_mode):04o}")
    expect_owner(ctx, st, owner)


@case("behaviour", "mknod")
def mknod_device_unprivileged(ctx: Context) -> None:
    """T_MKNOD of a character device for uid 1000 fails with EPERM and makes nothing."""
    ctx.err(
        qemu(m.MknodRequest, 1000, 1000, qpath("newdev"), stat.S_IFCHR | 0o666, os.makedev(1, 3)),
        E.EPERM,
    )
    ctx.expect(not os.path.lexists(ctx.host("newdev")), "a device node was created")


@case("behaviour", "mknod")
def mknod_exists(ctx: Context) -> None:
    """T_MKNOD over an existing name (even a dangling symlink) fails with EEXIST."""
    for name in ("file.txt", "escape_dangling"):
        fifo = qemu(m.MknodRequest, *ctx.ids, qpath(name), stat.S_IFIFO | 0o600, 0)
        ctx.err(fifo, E.EEXIST)


# -- T_MKDIR ----------------------------------------------------------------


@case("behaviour", "mkdir")
def mkdir_owner_mode(ctx: Context) -> None:
    """T_MKDIR makes a directory owned by uid:gid with the exact mode (sticky bit kept)."""
    owner = ctx.owner(1000, 1001)
    ctx.ok(qemu(m.MkdirRequest, *owner, qpath("newdir"), 0o750))
    ctx.ok(qemu(m.MkdirRequest, *owner, qpath("newdir/sticky"), 0o1777))
    st = os.lstat(ctx.host("newdir"))
    ctx.expect(stat.S_ISDIR(st.st_mode), "not a directory")
    expect_owner(ctx, st, owner)
    ctx.expect(stat.S_IMODE(st.st_mode) == 0o750, f"mode {stat.S_IMODE(st.st_mode):04o}")
    mode = stat.S_IMODE(os.lstat(ctx.host("newdir/sticky")).st_mode)
    ctx.expect(mode == 0o1777, f"mode {mode:04o}, not 1777")


@case("behaviour", "mkdir")
def mkdir_errors(ctx: Context) -> None:
    """T_MKDIR: EEXIST for an existing name or a symlink (not followed); ENOENT without parent."""
    ctx.err(qemu(m.MkdirRequest, *ctx.ids, qpath("dir"), 0o755), E.EEXIST)
    ctx.err(qemu(m.MkdirRequest, *ctx.ids, qpath("escape_dangling"), 0o755), E.EEXIST)
    ctx.err(qemu(m.MkdirRequest, *ctx.ids, qpath("missing/newdir"), 0o755), E.ENOENT)


# -- T_SYMLINK --------------------------------------------------------------


@case("behaviour", "symlink")
def symlink_owner_target(ctx: Context) -> None:
    """T_SYMLINK stores the target verbatim, owned by uid:gid."""
    owner = ctx.owner(1000, 1001)
    for name, target in (("newlink", b"some/relative/target"), ("newabs", b"/etc/shadow")):
        ctx.ok(qemu(m.SymlinkRequest, *owner, target, qpath(name)))
        ctx.expect(os.readlink(os.fsencode(ctx.host(name))) == target, "target changed")
        expect_owner(ctx, os.lstat(ctx.host(name)), owner)


@case("behaviour", "symlink")
def symlink_exists(ctx: Context) -> None:
    """T_SYMLINK over an existing name fails with EEXIST."""
    ctx.err(qemu(m.SymlinkRequest, *ctx.ids, b"x", qpath("file.txt")), E.EEXIST)


# -- T_LINK -----------------------------------------------------------------


@case("behaviour", "link")
def link_file(ctx: Context) -> None:
    """T_LINK makes a second name for the same inode (link count 2)."""
    ctx.ok(qemu(m.LinkRequest, qpath("file.txt"), qpath("dir/hard.txt")))
    a, b = os.lstat(ctx.host("file.txt")), os.lstat(ctx.host("dir/hard.txt"))
    ctx.expect(a.st_ino == b.st_ino and a.st_nlink == 2, "not the same inode with 2 links")


@case("behaviour", "link")
def link_symlink_not_followed(ctx: Context) -> None:
    """T_LINK of a symlink links the symlink itself; directories cannot be linked."""
    ctx.ok(qemu(m.LinkRequest, qpath("link_file"), qpath("hardsym")))
    st = os.lstat(ctx.host("hardsym"))
    ctx.expect(stat.S_ISLNK(st.st_mode), "the new name is not the symlink")
    ctx.expect(os.lstat(ctx.host("file.txt")).st_nlink == 1, "the target got a link")
    ctx.err(qemu(m.LinkRequest, qpath("dir"), qpath("dirlink")), E.EPERM)
    ctx.err(qemu(m.LinkRequest, qpath("missing"), qpath("x")), E.ENOENT)


# -- T_LSTAT ----------------------------------------------------------------


def check_stat(ctx: Context, reply: m.StatReply, name: str) -> None:
    st = os.lstat(ctx.host(name))
    uid, gid = ctx.named_owner(st)
    want = {
        "st_dev": st.st_dev,
        "st_ino": st.st_ino,
        "st_nlink": st.st_nlink,
        "st_mode": st.st_mode,
        "st_uid": uid,
        "st_gid": gid,
        "st_rdev": st.st_rdev,
        "st_size": st.st_size,
        "st_blksize": st.st_blksize,
        "st_blocks": st.st_blocks,
        "st_atim_sec": st.st_atime_ns // 10**9,
        "st_atim_nsec": st.st_atime_ns % 10**9,
        "st_mtim_sec": st.st_mtime_ns // 10**9,
        "st_mtim_nsec": st.st_mtime_ns % 10**9,
        "st_ctim_sec": st.st_ctime_ns // 10**9,
        "st_ctim_nsec": st.st_ctime_ns % 10**9,
    }
    bad = [f"{k} {getattr(reply, k)} != {v}" for k, v in want.items() if getattr(reply, k) != v]
    ctx.expect(not bad, f"lstat {name}: " + ", ".join(bad))


@case("behaviour", "lstat", needs=DEVICE_NODES)
def lstat_fields(ctx: Context) -> None:
    """T_LSTAT of a file, a directory, the root and a device: every field as the host sees it."""
    for name in ("file.txt", "dir", "", "chardev", "fifo"):
        reply = ctx.ok(qemu(m.LstatRequest, qpath(name)))
        check_stat(ctx, reply, name)


@case("behaviour", "lstat")
def lstat_symlink(ctx: Context) -> None:
    """T_LSTAT does not follow a final symlink (even one pointing outside)."""
    for name in ("link_file", "escape_rel", "escape_abs"):
        reply = ctx.ok(qemu(m.LstatRequest, qpath(name)))
        check_stat(ctx, reply, name)
        ctx.expect(stat.S_ISLNK(reply.st_mode), f"{name} is not reported as a symlink")


@case("behaviour", "lstat")
def lstat_errors(ctx: Context) -> None:
    """T_LSTAT: ENOENT for a missing name, ENOTDIR under a file."""
    ctx.err(qemu(m.LstatRequest, qpath("missing")), E.ENOENT)
    ctx.err(qemu(m.LstatRequest, qpath("file.txt/x")), E.ENOTDIR)


# -- T_READLINK -------------------------------------------------------------


@case("behaviour", "readlink")
def readlink_target(ctx: Context) -> None:
    """T_READLINK returns the target without a NUL; bufsize-1 bytes at most."""
    reply = ctx.ok(qemu(m.ReadlinkRequest, qpath("link_file"), 4096))
    ctx.expect(reply.target == b"file.txt", f"target {reply.target!r}")
    reply = ctx.ok(qemu(m.ReadlinkRequest, qpath("escape_rel"), 4096))
    ctx.expect(reply.target == b"../outside/secret.txt", f"target {reply.target!r}")
    reply = ctx.ok(qemu(m.ReadlinkRequest, qpath("link_file"), 5))
    ctx.expect(reply.target == b"file", f"bufsize 5 gave {reply.target!r}, not b'file'")


@case("behaviour", "readlink")
def readlink_errors(ctx: Context) -> None:
    """T_READLINK: EINVAL for a non-symlink and for bufsize 0 or 1; ENOENT if missing."""
    ctx.err(qemu(m.ReadlinkRequest, qpath("file.txt"), 4096), E.EINVAL)
    ctx.err(qemu(m.ReadlinkRequest, qpath("link_file"), 0), E.EINVAL)
    ctx.err(qemu(m.ReadlinkRequest, qpath("link_file"), 1), E.EINVAL)
    ctx.err(qemu(m.ReadlinkRequest, qpath("missing"), 4096), E.ENOENT)


# -- T_STATFS ---------------------------------------------------------------


@case("behaviour", "statfs")
def statfs_root(ctx: Context) -> None:
    """T_STATFS: type, block size, name length and fsid are those of the export's file system."""
    reply = ctx.ok(qemu(m.StatfsRequest, qpath("")))
    sv = os.statvfs(ctx.host())
    ctx.expect(reply.f_bsize == sv.f_bsize, f"f_bsize {reply.f_bsize} != {sv.f_bsize}")
    ctx.expect(reply.f_namelen == sv.f_namemax, f"f_namelen {reply.f_namelen}")
    ctx.expect(reply.f_frsize == sv.f_frsize, f"f_frsize {reply.f_frsize}")
    ctx.expect(reply.f_files == sv.f_files, f"f_files {reply.f_files} != {sv.f_files}")
    fsid = (reply.f_fsid0 & 0xFFFFFFFF) | (reply.f_fsid1 & 0xFFFFFFFF) << 32
    ctx.expect(fsid == sv.f_fsid, f"fsid {fsid:#x} != {sv.f_fsid:#x}")
    ctx.expect(reply.f_type != 0, "f_type is 0")
    ctx.err(qemu(m.StatfsRequest, qpath("missing")), E.ENOENT)


# -- T_CHMOD ----------------------------------------------------------------


@case("behaviour", "chmod", needs=SETID_BITS)
def chmod_file(ctx: Context) -> None:
    """T_CHMOD sets the permission bits (set-id and sticky too); type bits are ignored."""
    ctx.ok(qemu(m.ChmodRequest, qpath("file.txt"), 0o600))
    ctx.expect(stat.S_IMODE(os.lstat(ctx.host("file.txt")).st_mode) == 0o600, "mode not 0600")
    ctx.ok(qemu(m.ChmodRequest, qpath("dir"), stat.S_IFREG | 0o3750))
    st = os.lstat(ctx.host("dir"))
    ctx.expect(
        stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o3750,
        f"dir mode {stat.filemode(st.st_mode)}, not 3750",
    )
    ctx.err(qemu(m.ChmodRequest, qpath("missing"), 0o600), E.ENOENT)


# -- T_CHOWN ----------------------------------------------------------------


@case("behaviour", "chown", needs=OTHER_OWNER)
def chown_file(ctx: Context) -> None:
    """T_CHOWN sets the owner; 0xffffffff leaves an id unchanged."""
    ctx.ok(qemu(m.ChownRequest, qpath("file.txt"), 1000, 1001))
    st = os.lstat(ctx.host("file.txt"))
    ctx.expect((st.st_uid, st.st_gid) == (1000, 1001), f"owner {st.st_uid}:{st.st_gid}")
    ctx.ok(qemu(m.ChownRequest, qpath("file.txt"), 0xFFFFFFFF, 1002))
    st = os.lstat(ctx.host("file.txt"))
    ctx.expect((st.st_uid, st.st_gid) == (1000, 1002), f"owner {st.st_uid}:{st.st_gid}")


@case("behaviour", "chown", needs=OTHER_OWNER)
def chown_symlink_nofollow(ctx: Context) -> None:
    """T_CHOWN of a symlink changes the symlink, not its target."""
    ctx.ok(qemu(m.ChownRequest, qpath("link_file"), 1000, 1000))
    ctx.expect(os.lstat(ctx.host("link_file")).st_uid == 1000, "the symlink kept its owner")
    ctx.expect(os.lstat(ctx.host("file.txt")).st_uid == 0, "the target's owner changed")


# -- T_TRUNCATE -------------------------------------------------------------


@case("behaviour", "truncate")
def truncate_file(ctx: Context) -> None:
    """T_TRUNCATE shrinks and extends; a negative length is EINVAL, a directory EISDIR."""
    ctx.ok(qemu(m.TruncateRequest, qpath("file.txt"), 5))
    ctx.expect(ctx.host("file.txt").read_bytes() == FILE_CONTENT[:5], "not shrunk to 5")
    ctx.ok(qemu(m.TruncateRequest, qpath("file.txt"), 100))
    ctx.expect(os.lstat(ctx.host("file.txt")).st_size == 100, "not extended to 100")
    ctx.err(qemu(m.TruncateRequest, qpath("file.txt"), -1), E.EINVAL)
    ctx.err(qemu(m.TruncateRequest, qpath("dir"), 0), E.EISDIR)
    ctx.ok(qemu(m.TruncateRequest, qpath("link_file"), 3))
    ctx.expect(os.lstat(ctx.host("file.txt")).st_size == 3, "did not follow the symlink")


# -- T_UTIME ----------------------------------------------------------------


@case("behaviour", "utime")
def utime_exact(ctx: Context) -> None:
    """T_UTIME sets atime and mtime to the nanosecond, in wire slot order."""
    ctx.ok(qemu(m.UtimeRequest, qpath("file.txt"), 1234567890, 111, 1300000000, 222))
    st = os.lstat(ctx.host("file.txt"))
    ctx.expect(st.st_atime_ns == 1234567890 * 10**9 + 111, f"atime {st.st_atime_ns}")
    ctx.expect(st.st_mtime_ns == 1300000000 * 10**9 + 222, f"mtime {st.st_mtime_ns}")


@case("behaviour", "utime")
def utime_now_omit(ctx: Context) -> None:
    """T_UTIME: UTIME_OMIT keeps a time, UTIME_NOW sets it to now (seconds ignored)."""
    os.utime(ctx.host("file.txt"), ns=(10**18, 2 * 10**18))
    ctx.ok(qemu(m.UtimeRequest, qpath("file.txt"), 5, UTIME_OMIT, 7, UTIME_NOW))
    st = os.lstat(ctx.host("file.txt"))
    ctx.expect(st.st_atime_ns == 10**18, "UTIME_OMIT did not keep atime")
    ctx.expect(abs(st.st_mtime_ns / 1e9 - time.time()) < 60, "UTIME_NOW did not set mtime")
    ctx.err(qemu(m.UtimeRequest, qpath("file.txt"), 0, 10**9, 0, 0), E.EINVAL)


@case("behaviour", "utime")
def utime_symlink_nofollow(ctx: Context) -> None:
    """T_UTIME of a symlink changes the symlink's times, not the target's."""
    before = os.lstat(ctx.host("file.txt")).st_mtime_ns
    ctx.ok(qemu(m.UtimeRequest, qpath("link_file"), 1000, 0, 2000, 0))
    ctx.expect(os.lstat(ctx.host("link_file")).st_mtime_ns == 2000 * 10**9, "link unchanged")
    ctx.expect(os.lstat(ctx.host("file.txt")).st_mtime_ns == before, "the target changed")


# -- T_RENAME ---------------------------------------------------------------


@case("behaviour", "rename")
def rename_file(ctx: Context) -> None:
    """T_RENAME moves a file (same inode) and replaces an existing target atomically."""
    ino = os.lstat(ctx.host("file.txt")).st_ino
    ctx.ok(qemu(m.RenameRequest, qpath("file.txt"), qpath("dir/renamed.txt")))
    ctx.expect(not ctx.host("file.txt").exists(), "old name still there")
    ctx.expect(os.lstat(ctx.host("dir/renamed.txt")).st_ino == ino, "not the same inode")
    ctx.ok(qemu(m.RenameRequest, qpath("empty.txt"), qpath("dir/renamed.txt")))
    ctx.expect(ctx.host("dir/renamed.txt").read_bytes() == b"", "target not replaced")


@case("behaviour", "rename")
def rename_symlink_and_errors(ctx: Context) -> None:
    """T_RENAME renames a symlink itself; ENOENT for a missing source, ENOTEMPTY onto a dir."""
    ctx.ok(qemu(m.RenameRequest, qpath("escape_rel"), qpath("moved_link")))
    ctx.expect(os.readlink(ctx.host("moved_link")) == "../outside/secret.txt", "link changed")
    ctx.err(qemu(m.RenameRequest, qpath("missing"), qpath("x")), E.ENOENT)
    ctx.err(qemu(m.RenameRequest, qpath("emptydir"), qpath("dir")), E.ENOTEMPTY, E.EEXIST)


# -- T_REMOVE ---------------------------------------------------------------


@case("behaviour", "remove")
def remove_objects(ctx: Context) -> None:
    """T_REMOVE unlinks files, symlinks (not their targets) and special files; rmdirs dirs."""
    for name in ("empty.txt", "link_file", "escape_rel", "fifo", "emptydir"):
        ctx.ok(qemu(m.RemoveRequest, qpath(name)))
        ctx.expect(not os.path.lexists(ctx.host(name)), f"{name} still exists")
    ctx.expect(ctx.host("file.txt").exists(), "the symlink's target was removed")


@case("behaviour", "remove")
def remove_errors(ctx: Context) -> None:
    """T_REMOVE: ENOTEMPTY for a full dir, ENOENT if missing, the root cannot be removed."""
    ctx.err(qemu(m.RemoveRequest, qpath("dir")), E.ENOTEMPTY)
    ctx.err(qemu(m.RemoveRequest, qpath("missing")), E.ENOENT)
    ctx.err(qemu(m.RemoveRequest, qpath("")), E.EBUSY, E.EINVAL, E.EPERM)
    ctx.expect(ctx.host("dir/nested.txt").read_bytes() == NESTED_CONTENT, "dir/ was touched")


# -- xattrs -----------------------------------------------------------------


@case("behaviour", "xattr")
def lgetxattr_value(ctx: Context) -> None:
    """T_LGETXATTR: size 0 probes the length, size > 0 returns the value; ERANGE, ENODATA."""
    reply = ctx.ok(qemu(m.LgetxattrRequest, 0, qpath("file.txt"), b"user.comment"))
    ctx.expect(reply == m.XattrSizeReply(len(COMMENT)), f"probe gave {reply!r}")
    reply = ctx.ok(qemu(m.LgetxattrRequest, 100, qpath("file.txt"), b"user.comment"))
    ctx.expect(reply == m.XattrValueReply(COMMENT), f"value {reply!r}")
    ctx.err(qemu(m.LgetxattrRequest, 2, qpath("file.txt"), b"user.comment"), E.ERANGE)
    ctx.err(qemu(m.LgetxattrRequest, 100, qpath("file.txt"), b"user.missing"), E.ENODATA)


@case("behaviour", "xattr")
def llistxattr_names(ctx: Context) -> None:
    """T_LLISTXATTR lists user.* names NUL-terminated; the probe gives the list's length."""
    os.setxattr(ctx.host("empty.txt"), "user.a", b"1")
    os.setxattr(ctx.host("empty.txt"), "user.bb", b"2")
    probe = ctx.ok(qemu(m.LlistxattrRequest, 0, qpath("empty.txt")))
    reply = ctx.ok(qemu(m.LlistxattrRequest, 4096, qpath("empty.txt")))
    names = sorted(n for n in reply.value.split(b"\0") if n)
    ctx.expect(names == [b"user.a", b"user.bb"], f"names {names}")
    ctx.expect(reply.value.endswith(b"\0"), "list not NUL-terminated")
    ctx.expect(probe == m.XattrSizeReply(len(reply.value)), f"probe {probe!r}")
    ctx.err(qemu(m.LlistxattrRequest, 3, qpath("empty.txt")), E.ERANGE)


@case("behaviour", "xattr")
def lsetxattr_flags(ctx: Context) -> None:
    """T_LSETXATTR stores a value (a prefix for a smaller size); XATTR_CREATE/REPLACE work."""
    ctx.ok(qemu(m.LsetxattrRequest, qpath("file.txt"), b"user.new", b"value", 5, 0))
    ctx.expect(os.getxattr(ctx.host("file.txt"), "user.new") == b"value", "value not stored")
    ctx.ok(qemu(m.LsetxattrRequest, qpath("file.txt"), b"user.pre", b"value", 3, 0))
    ctx.expect(os.getxattr(ctx.host("file.txt"), "user.pre") == b"val", "prefix not stored")
    ctx.err(
        qemu(m.LsetxattrRequest, qpath("file.txt"), b"user.comment", b"x", 1, XATTR_CREATE),
        E.EEXIST,
    )
    ctx.err(
        qemu(m.LsetxattrRequest, qpath("file.txt"), b"user.nope", b"x", 1, XATTR_REPLACE), E.ENODATA
    )
    ctx.ok(qemu(m.LsetxattrRequest, qpath("file.txt"), b"user.comment", b"new", 3, XATTR_REPLACE))
    ctx.expect(os.getxattr(ctx.host("file.txt"), "user.comment") == b"new", "not replaced")


@case("behaviour", "xattr")
def lsetxattr_symlink(ctx: Context) -> None:
    """T_LSETXATTR user.* on a symlink fails (EPERM) and does not reach the target."""
    ctx.err(qemu(m.LsetxattrRequest, qpath("link_file"), b"user.x", b"v", 1, 0), E.EPERM)
    ctx.expect("user.x" not in os.listxattr(ctx.host("file.txt")), "the target got the xattr")


@case("behaviour", "xattr")
def lremovexattr(ctx: Context) -> None:
    """T_LREMOVEXATTR removes an attribute; ENODATA when absent."""
    ctx.ok(qemu(m.LremovexattrRequest, qpath("file.txt"), b"user.comment"))
    ctx.expect("user.comment" not in os.listxattr(ctx.host("file.txt")), "still there")
    ctx.err(qemu(m.LremovexattrRequest, qpath("file.txt"), b"user.comment"), E.ENODATA)


# -- T_GETVERSION -----------------------------------------------------------


def check_generation(
    ctx: Context, path: Name, host: str | os.PathLike[str] | bytes, dir_fd: int | None = None
) -> bool:
    """T_GETVERSION of ``path`` gives the generation the host's ioctl reports for
    ``host`` (relative to ``dir_fd``); False if the file system has none, where
    0 or ENOTTY are both allowed."""
    try:
        want = host_generation(host, dir_fd)
    except OSError:
        reply = ctx.call(qemu(m.GetversionRequest, path))
        ctx.expect(reply in (m.VersionReply(0), m.ErrorReply(E.ENOTTY)), f"answered {reply!r}")
        ctx.notes.append("the export's file system has no generation numbers")
        return False
    reply = ctx.ok(qemu(m.GetversionRequest, path))
    got = reply.version & 0xFFFFFFFF
    if got == 0 and want != 0:
        raise CheckFailed(f"{os.fsdecode(host)}: generation 0, the host says {want:#x}")
    ctx.expect(got == want, f"{os.fsdecode(host)}: generation {got:#x}, the host says {want:#x}")
    return True


@case("behaviour", "getversion")
def getversion_generation(ctx: Context) -> None:
    """T_GETVERSION: the low 32 bits are the inode generation the host's ioctl reports."""
    for name in ("file.txt", "dir"):
        if not check_generation(ctx, qpath(name), ctx.host(name)):
            return
    ctx.err(qemu(m.GetversionRequest, qpath("missing")), E.ENOENT)
