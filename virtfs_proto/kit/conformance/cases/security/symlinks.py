"""Security cases: symlink escapes (spec: security.rst)."""

from __future__ import annotations

import errno as E
import os
import stat
from collections.abc import Callable

from ..... import messages as m
from .....constants import UTIME_NOW
from ...model import Context, Name, case, qemu, qpath
from ._common import ESCAPE_ERRNOS, O_RD, contained, escape_case, secret_rel

_FINAL = [
    ("open_rel", "T_OPEN of a final symlink to ../outside/secret.txt", "escape_rel", "open"),
    ("open_abs", "T_OPEN of a final symlink to the secret's absolute path", "escape_abs", "open"),
    ("open_write", "T_OPEN O_WRONLY|O_TRUNC of a final symlink to outside", "escape_rel", "write"),
    ("truncate", "T_TRUNCATE of a final symlink to outside", "escape_abs", "truncate"),
    ("chmod", "T_CHMOD of a final symlink to outside", "escape_rel", "chmod"),
    ("statfs", "T_STATFS of a final symlink to an outside directory", "escape_dir_abs", "statfs"),
    ("getversion", "T_GETVERSION of a final symlink to outside", "escape_rel", "getversion"),
]
_INTERMEDIATE = [
    ("open_rel", "T_OPEN escape_dir/secret.txt (escape_dir -> ../outside)", "escape_dir", "open"),
    (
        "open_abs",
        "T_OPEN through a symlink to the outside dir's absolute path",
        "escape_dir_abs",
        "open",
    ),
    ("lstat", "T_LSTAT through an intermediate symlink to outside", "escape_dir", "lstat"),
    ("chmod", "T_CHMOD through an intermediate symlink to outside", "escape_dir", "chmod"),
    ("chown", "T_CHOWN through an intermediate symlink to outside", "escape_dir_abs", "chown"),
    ("truncate", "T_TRUNCATE through an intermediate symlink", "escape_dir", "truncate"),
    (
        "utime",
        "T_UTIME through an intermediate symlink (would move the atime)",
        "escape_dir",
        "utime",
    ),
    ("setxattr", "T_LSETXATTR through an intermediate symlink", "escape_dir", "setxattr"),
    ("getxattr", "T_LGETXATTR through an intermediate symlink", "escape_dir_abs", "getxattr"),
    ("listxattr", "T_LLISTXATTR through an intermediate symlink", "escape_dir", "listxattr"),
    ("remove", "T_REMOVE through an intermediate symlink", "escape_dir", "remove"),
    (
        "rename_in",
        "T_RENAME from outside through an intermediate symlink",
        "escape_dir",
        "rename_in",
    ),
    (
        "rename_out",
        "T_RENAME into outside through an intermediate symlink",
        "escape_dir_abs",
        "rename_out",
    ),
    ("mkdir", "T_MKDIR through an intermediate symlink", "escape_dir", "mkdir"),
    ("create", "T_CREATE through an intermediate symlink", "escape_dir_abs", "create"),
    ("symlink", "T_SYMLINK through an intermediate symlink", "escape_dir", "symlink"),
    ("mknod", "T_MKNOD through an intermediate symlink", "escape_dir_abs", "mknod"),
    ("getversion", "T_GETVERSION through an intermediate symlink", "escape_dir", "getversion"),
]


def _op(op: str, path: Name, new: Name, ids: tuple[int, int]) -> m.Request:
    """One request of kind ``op`` on ``path`` (a V9fsPath) / ``new`` (a new name)."""
    excl = os.O_RDWR | os.O_CREAT | os.O_EXCL
    makers: dict[str, Callable[[], m.Request]] = {
        "open": lambda: qemu(m.OpenRequest, path, O_RD),
        "write": lambda: qemu(m.OpenRequest, path, os.O_WRONLY | os.O_TRUNC),
        "truncate": lambda: qemu(m.TruncateRequest, path, 0),
        "chmod": lambda: qemu(m.ChmodRequest, path, 0o777),
        "chown": lambda: qemu(m.ChownRequest, path, *ids),
        "statfs": lambda: qemu(m.StatfsRequest, path),
        "getversion": lambda: qemu(m.GetversionRequest, path),
        "lstat": lambda: qemu(m.LstatRequest, path),
        "utime": lambda: qemu(m.UtimeRequest, path, 0, UTIME_NOW, 0, UTIME_NOW),
        "setxattr": lambda: qemu(m.LsetxattrRequest, path, b"user.evil", b"x", 1, 0),
        "getxattr": lambda: qemu(m.LgetxattrRequest, 100, path, b"user.sentinel"),
        "listxattr": lambda: qemu(m.LlistxattrRequest, 4096, path),
        "remove": lambda: qemu(m.RemoveRequest, path),
        "rename_in": lambda: qemu(m.RenameRequest, path, qpath("stolen")),
        "rename_out": lambda: qemu(m.RenameRequest, qpath("file.txt"), new),
        "mkdir": lambda: qemu(m.MkdirRequest, *ids, new, 0o755),
        "create": lambda: qemu(m.CreateRequest, new, excl, 0o644, *ids),
        "symlink": lambda: qemu(m.SymlinkRequest, *ids, b"x", new),
        "mknod": lambda: qemu(m.MknodRequest, *ids, new, stat.S_IFIFO | 0o600, 0),
    }
    return makers[op]()


def _through(link: str, kind: str, final: bool) -> Callable[[Context], m.Request]:
    if final:
        return lambda ctx: _op(kind, qpath(link), Name(b""), ctx.ids)
    return lambda ctx: _op(kind, qpath(f"{link}/secret.txt"), qpath(f"{link}/planted"), ctx.ids)


for _name, _doc, _link, _kind in _FINAL:
    _extra = (E.EOPNOTSUPP,) if _kind == "chmod" else ()
    escape_case(
        f"symlink.final_{_name}",
        "symlink-escape",
        _doc,
        _through(_link, _kind, True),
        *ESCAPE_ERRNOS,
        *_extra,
    )
for _name, _doc, _link, _kind in _INTERMEDIATE:
    escape_case(
        f"symlink.intermediate_{_name}", "symlink-escape", _doc, _through(_link, _kind, False)
    )


@case("security", "symlink-escape", name="symlink.final_dangling_create")
def final_dangling_create(ctx: Context) -> None:
    """T_CREATE (no O_EXCL) of dangling symlinks to outside must not create the target."""
    for link in ("escape_dangling", "escape_dangling_abs"):
        contained(
            ctx,
            qemu(m.CreateRequest, qpath(link), os.O_WRONLY | os.O_CREAT, 0o644, *ctx.ids),
            (*ESCAPE_ERRNOS, E.EEXIST),
        )


@case("security", "symlink-escape", name="symlink.final_dangling_open_creat")
def final_dangling_open_creat(ctx: Context) -> None:
    """T_OPEN O_CREAT of dangling symlinks to outside must not create the target."""
    for link in ("escape_dangling", "escape_dangling_abs"):
        contained(
            ctx,
            qemu(m.OpenRequest, qpath(link), os.O_WRONLY | os.O_CREAT),
            (*ESCAPE_ERRNOS, E.EEXIST, E.EINVAL),
        )


@case("security", "symlink-escape", name="symlink.final_nofollow_ops")
def final_nofollow_ops(ctx: Context) -> None:
    """T_LSTAT/T_CHOWN/T_UTIME/T_LGETXATTR of a symlink to outside act on the link itself."""
    reply = ctx.ok(qemu(m.LstatRequest, qpath("escape_abs")))
    ctx.expect(stat.S_ISLNK(reply.st_mode), "lstat followed the link out of the export")
    # rootless, the owner is the helper's own: the chown must succeed on the link
    # (it shows no change; behaviour.chown_symlink_nofollow needs another owner)
    owner = ctx.owner(1000, 1000)
    ctx.ok(qemu(m.ChownRequest, qpath("escape_abs"), *owner))
    got = ctx.named_owner(os.lstat(ctx.host("escape_abs")))
    ctx.expect(got[0] == owner[0], "the link kept its owner")
    ctx.ok(qemu(m.UtimeRequest, qpath("escape_rel"), 5, 0, 5, 0))
    ctx.expect(os.lstat(ctx.host("escape_rel")).st_mtime == 5, "the link's mtime did not change")
    reply = ctx.call(qemu(m.LgetxattrRequest, 100, qpath("escape_rel"), b"user.sentinel"))
    ctx.expect(isinstance(reply, m.ErrorReply), "read the sentinel's xattr through the link")


@case("security", "symlink-escape", name="symlink.deep_dotdot_clamped")
def deep_dotdot_clamped(ctx: Context) -> None:
    """escape_deep (../../..) resolves to the export root, or fails: never the host root."""
    reply = ctx.call(qemu(m.OpenRequest, qpath("escape_deep"), O_RD | os.O_DIRECTORY))
    if isinstance(reply, m.FdReply):
        ctx.expect(ctx.same_file(reply.fd, ctx.host()), "escape_deep is not the export root")
    reply = ctx.call(qemu(m.OpenRequest, qpath("escape_deep/file.txt"), O_RD))
    if isinstance(reply, m.FdReply):
        ctx.expect(ctx.same_file(reply.fd, ctx.host("file.txt")), "not the export's file.txt")
    reply = ctx.call(qemu(m.OpenRequest, qpath(f"escape_deep/{secret_rel(ctx)}"), O_RD))
    if isinstance(reply, m.FdReply):
        ctx.expect_inside(reply.fd, "T_OPEN")


@case("security", "symlink-escape", name="symlink.loop")
def symlink_loop(ctx: Context) -> None:
    """A symlink to itself gives ELOOP (no hang, no crash)."""
    ctx.err(qemu(m.OpenRequest, qpath("loop"), O_RD), E.ELOOP)
    ctx.err(qemu(m.OpenRequest, qpath("loop/x"), O_RD), E.ELOOP)
