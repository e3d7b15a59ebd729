"""Behaviour at depth: every path-taking request on a path longer than PATH_MAX.

A request payload can carry a path of almost 64 KiB, and a local file system
serves any depth, so the helper must too (spec: limits.rst): each request
type is run on an object at the end of a path of 4,100, 8,200 and 60,000
wire bytes (T_LINK and T_RENAME with the long path as either operand), and
its effect is checked on the host through directory fds, since no single
host path can name the object. At 4100 bytes the object's directory is
still under PATH_MAX, so a helper that resolves only the parent of some
paths and the whole path of others shows it there: the operations on the
last component succeed, open, chmod, truncate, statfs fail.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .... import messages as m
from ..model import CheckFailed, Context, Name, case, qemu, qpath
from ..workspace import COMMENT, FILE_CONTENT, deep_dir
from .behaviour import check_generation, read_all

#: lengths of the long path (before the counted NUL where its field has one)
LENGTHS: Final = (4100, 8200, 60000)
#: the length of each directory name on the way down (the last one takes the rest)
STEP: Final = 250
#: the name of the object at the end of the path, in the deepest directory: at
#: 4100 bytes the path of its directory is still under PATH_MAX, at 8200 not
LEAF: Final = b"leaf" + b"f" * 96
#: a symlink's target (T_SYMLINK, T_READLINK)
TARGET: Final = b"target-of-the-deep-link"
#: the owner creating requests and T_CHOWN name as root (a rootless run names its
#: own ids instead: the owner is incidental here, the path is what is checked)
OWNER: Final = (1000, 1001)


def deep_path(length: int) -> tuple[list[bytes], Name]:
    """Directory names and the path ``//d1/d2/.../leaf`` of exactly ``length``
    bytes, as QEMU builds it (its request adds the NUL where it counts one)."""
    tail = b"/" + LEAF
    room = length - 2 - len(tail)  # the names and the slashes between them
    names = [b"%03d" % i + b"d" * (STEP - 3) for i in range((room - 1) // (STEP + 1))]
    names.append(b"z" * (room - len(names) * (STEP + 1)))  # 1 to STEP + 1 <= NAME_MAX bytes
    path = qpath(b"/".join(names) + tail)
    assert len(path) == length
    return names, path


# -- what each request does, and what the host then shows ----------------------
#
# ``prepare`` runs on the host in the deepest directory (its fd), ``request``
# builds the request from the long path, ``check`` reads the effect on the host.

Prepare = Callable[[int], None]
Check = Callable[[Context, int, Any], None]


def _file(deep: int) -> None:
    fd = os.open(LEAF, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644, dir_fd=deep)
    try:
        os.write(fd, FILE_CONTENT)
        os.fchmod(fd, 0o644)
        os.setxattr(fd, "user.comment", COMMENT)
    finally:
        os.close(fd)


def _symlink(deep: int) -> None:
    os.symlink(TARGET, LEAF, dir_fd=deep)


def _nothing(deep: int) -> None:
    pass


def _leaf(deep: int) -> os.stat_result:
    return os.stat(LEAF, dir_fd=deep, follow_symlinks=False)


def _absent(ctx: Context, dirfd: int, name: bytes | str) -> None:
    try:
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    raise CheckFailed(f"{os.fsdecode(name)} is still there")


def _with_leaf_fd(deep: int, use: Callable[[int], Any]) -> Any:
    fd = os.open(LEAF, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=deep)
    try:
        return use(fd)
    finally:
        os.close(fd)


def _owned(ctx: Context, st: os.stat_result) -> None:
    owner = ctx.named_owner(st)
    ctx.expect(owner == ctx.owner(*OWNER), f"owner {owner[0]}:{owner[1]}")


def _owner_mode(ctx: Context, st: os.stat_result, kind: Callable[[int], bool], mode: int) -> None:
    ctx.expect(kind(st.st_mode), f"wrong type {stat.filemode(st.st_mode)}")
    _owned(ctx, st)
    ctx.expect(stat.S_IMODE(st.st_mode) == mode, f"mode {stat.S_IMODE(st.st_mode):04o}")


def _check_open(ctx: Context, deep: int, reply: m.FdReply) -> None:
    ctx.expect(os.fstat(reply.fd).st_ino == _leaf(deep).st_ino, "the fd is not the deep file")
    ctx.expect(read_all(reply.fd) == FILE_CONTENT, "reading the fd does not give the content")
    acc = fcntl.fcntl(reply.fd, fcntl.F_GETFL) & os.O_ACCMODE
    ctx.expect(acc == os.O_RDWR, f"access mode {acc}, not O_RDWR")


def _check_create(ctx: Context, deep: int, reply: m.FdReply) -> None:
    st = _leaf(deep)
    _owner_mode(ctx, st, stat.S_ISREG, 0o640)
    ctx.expect(os.fstat(reply.fd).st_ino == st.st_ino, "the fd is not the new file")


def _check_symlink(ctx: Context, deep: int, reply: m.Reply) -> None:
    ctx.expect(os.readlink(LEAF, dir_fd=deep) == TARGET, "not the target asked for")
    _owned(ctx, _leaf(deep))


def _check_lstat(ctx: Context, deep: int, reply: m.StatReply) -> None:
    st = _leaf(deep)
    got = (reply.st_dev, reply.st_ino, reply.st_mode, reply.st_size)
    ctx.expect(got == (st.st_dev, st.st_ino, st.st_mode, st.st_size), f"lstat gave {got}")


def _check_statfs(ctx: Context, deep: int, reply: m.StatfsReply) -> None:
    sv = os.fstatvfs(deep)
    fsid = (reply.f_fsid0 & 0xFFFFFFFF) | (reply.f_fsid1 & 0xFFFFFFFF) << 32
    ctx.expect(fsid == sv.f_fsid, f"fsid {fsid:#x} != {sv.f_fsid:#x}")
    ctx.expect(reply.f_namelen == sv.f_namemax, f"f_namelen {reply.f_namelen}")


def _check_truncate(ctx: Context, deep: int, reply: m.Reply) -> None:
    data = _with_leaf_fd(deep, read_all)
    ctx.expect(data == FILE_CONTENT[:3], f"content {data!r}, not truncated to 3 bytes")


def _check_utime(ctx: Context, deep: int, reply: m.Reply) -> None:
    st = _leaf(deep)
    want = (1234567890 * 10**9 + 111, 1300000000 * 10**9 + 222)
    got = (st.st_atime_ns, st.st_mtime_ns)
    ctx.expect(got == want, f"times {got}, not {want}")


def _check_rename_out(ctx: Context, deep: int, reply: m.Reply) -> None:
    _absent(ctx, deep, LEAF)
    ctx.expect(os.lstat(ctx.host("short")).st_size == len(FILE_CONTENT), "not moved to short")


def _check_rename_in(ctx: Context, deep: int, reply: m.Reply) -> None:
    ctx.expect(_leaf(deep).st_size == len(FILE_CONTENT), "file.txt did not arrive")
    ctx.expect(not ctx.host("file.txt").exists(), "file.txt is still at the root")


def _check_link_out(ctx: Context, deep: int, reply: m.Reply) -> None:
    st = _leaf(deep)
    ctx.expect(os.lstat(ctx.host("short")).st_ino == st.st_ino, "short is not the deep file")
    ctx.expect(st.st_nlink == 2, f"{st.st_nlink} links")


def _check_link_in(ctx: Context, deep: int, reply: m.Reply) -> None:
    ctx.expect(_leaf(deep).st_ino == os.lstat(ctx.host("file.txt")).st_ino, "not file.txt")


@dataclass(frozen=True, slots=True)
class LongOp:
    """One request on the long path: how to set it up, send it and judge it."""

    name: str
    doc: str
    prepare: Prepare
    #: the request on the path, naming the owner given where it names one
    request: Callable[[Name, tuple[int, int]], m.Request]
    check: Check

    def run(self, ctx: Context, deep: int, path: Name) -> None:
        self.prepare(deep)
        self.check(ctx, deep, ctx.ok(self.request(path, ctx.owner(*OWNER))))


_RW = os.O_RDWR
_EXCL = os.O_RDWR | os.O_CREAT | os.O_EXCL

OPS: Final = (
    LongOp(
        "open",
        "T_OPEN O_RDWR passes back the deep file",
        _file,
        lambda p, _: qemu(m.OpenRequest, p, _RW),
        _check_open,
    ),
    LongOp(
        "create",
        "T_CREATE makes the deep file with owner and mode, and passes it back",
        _nothing,
        lambda p, o: qemu(m.CreateRequest, p, _EXCL, 0o640, *o),
        _check_create,
    ),
    LongOp(
        "mknod",
        "T_MKNOD makes a FIFO with owner and mode",
        _nothing,
        lambda p, o: qemu(m.MknodRequest, *o, p, stat.S_IFIFO | 0o600, 0),
        lambda ctx, d, r: _owner_mode(ctx, _leaf(d), stat.S_ISFIFO, 0o600),
    ),
    LongOp(
        "mkdir",
        "T_MKDIR makes a directory with owner and mode",
        _nothing,
        lambda p, o: qemu(m.MkdirRequest, *o, p, 0o750),
        lambda ctx, d, r: _owner_mode(ctx, _leaf(d), stat.S_ISDIR, 0o750),
    ),
    LongOp(
        "symlink",
        "T_SYMLINK makes a symlink with its target and owner",
        _nothing,
        lambda p, o: qemu(m.SymlinkRequest, *o, TARGET, p),
        _check_symlink,
    ),
    LongOp(
        "link_from_long",
        "T_LINK of the deep file to a short name",
        _file,
        lambda p, _: qemu(m.LinkRequest, p, qpath("short")),
        _check_link_out,
    ),
    LongOp(
        "link_to_long",
        "T_LINK of file.txt to a deep name",
        _nothing,
        lambda p, _: qemu(m.LinkRequest, qpath("file.txt"), p),
        _check_link_in,
    ),
    LongOp(
        "lstat",
        "T_LSTAT of the deep file",
        _file,
        lambda p, _: qemu(m.LstatRequest, p),
        _check_lstat,
    ),
    LongOp(
        "readlink",
        "T_READLINK of a deep symlink",
        _symlink,
        lambda p, _: qemu(m.ReadlinkRequest, p, 4096),
        lambda ctx, d, r: ctx.expect(r.target == TARGET, f"target {r.target!r}"),
    ),
    LongOp(
        "statfs",
        "T_STATFS of the deep file is the export's file system",
        _file,
        lambda p, _: qemu(m.StatfsRequest, p),
        _check_statfs,
    ),
    LongOp(
        "chmod",
        "T_CHMOD of the deep file",
        _file,
        lambda p, _: qemu(m.ChmodRequest, p, 0o604),
        lambda ctx, d, r: ctx.expect(stat.S_IMODE(_leaf(d).st_mode) == 0o604, "mode not 0604"),
    ),
    LongOp(
        "chown",
        "T_CHOWN of the deep file",
        _file,
        lambda p, o: qemu(m.ChownRequest, p, *o),
        lambda ctx, d, r: _owned(ctx, _leaf(d)),
    ),
    LongOp(
        "truncate",
        "T_TRUNCATE of the deep file",
        _file,
        lambda p, _: qemu(m.TruncateRequest, p, 3),
        _check_truncate,
    ),
    LongOp(
        "utime",
        "T_UTIME of the deep file, to the nanosecond",
        _file,
        lambda p, _: qemu(m.UtimeRequest, p, 1234567890, 111, 1300000000, 222),
        _check_utime,
    ),
    LongOp(
        "rename_from_long",
        "T_RENAME of the deep file to a short name",
        _file,
        lambda p, _: qemu(m.RenameRequest, p, qpath("short")),
        _check_rename_out,
    ),
    LongOp(
        "rename_to_long",
        "T_RENAME of file.txt to a deep name",
        _nothing,
        lambda p, _: qemu(m.RenameRequest, qpath("file.txt"), p),
        _check_rename_in,
    ),
    LongOp(
        "remove",
        "T_REMOVE of the deep file",
        _file,
        lambda p, _: qemu(m.RemoveRequest, p),
        lambda ctx, d, r: _absent(ctx, d, LEAF),
    ),
    LongOp(
        "lgetxattr",
        "T_LGETXATTR of the deep file",
        _file,
        lambda p, _: qemu(m.LgetxattrRequest, 100, p, b"user.comment"),
        lambda ctx, d, r: ctx.expect(r == m.XattrValueReply(COMMENT), f"value {r!r}"),
    ),
    LongOp(
        "llistxattr",
        "T_LLISTXATTR of the deep file",
        _file,
        lambda p, _: qemu(m.LlistxattrRequest, 4096, p),
        lambda ctx, d, r: ctx.expect(b"user.comment" in r.value.split(b"\0"), f"list {r!r}"),
    ),
    LongOp(
        "lsetxattr",
        "T_LSETXATTR of the deep file",
        _file,
        lambda p, _: qemu(m.LsetxattrRequest, p, b"user.new", b"value", 5, 0),
        lambda ctx, d, r: ctx.expect(
            _with_leaf_fd(d, lambda fd: os.getxattr(fd, "user.new")) == b"value", "not stored"
        ),
    ),
    LongOp(
        "lremovexattr",
        "T_LREMOVEXATTR of the deep file",
        _file,
        lambda p, _: qemu(m.LremovexattrRequest, p, b"user.comment"),
        lambda ctx, d, r: ctx.expect(
            "user.comment" not in _with_leaf_fd(d, os.listxattr), "still there"
        ),
    ),
)


def _getversion(ctx: Context, deep: int, path: Name) -> None:
    _file(deep)
    check_generation(ctx, path, LEAF, deep)


def _register(
    name: str,
    doc: str,
    act: Callable[[Context, int, Name], None],
) -> None:
    """One case per length: ``act`` gets the deepest directory's fd and the path to it."""
    for length in LENGTHS:

        def run(ctx: Context, length: int = length) -> None:
            names, path = deep_path(length)
            root = ctx.adopt(os.open(ctx.host(), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
            act(ctx, ctx.adopt(deep_dir(root, names, create=True)), path)

        run.__doc__ = f"{doc}, at the end of a {length}-byte path"
        case("behaviour", "long-paths", name=f"long_path.{name}_{length}")(run)


for _op in OPS:
    _register(_op.name, _op.doc, _op.run)
_register("getversion", "T_GETVERSION of the deep file is its generation", _getversion)
