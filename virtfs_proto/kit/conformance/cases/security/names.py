"""Security cases: bad names (spec: security.rst)."""

from __future__ import annotations

import errno as E
import os
import stat
from collections.abc import Callable

from ..... import messages as m
from ...model import (
    CheckFailed,
    Context,
    Deviation,
    Name,
    case,
    errname,
    qemu,
    qpath,
    show,
    wrong_nul,
)
from ._common import O_RD, escape_case, secret_rel

escape_case(
    "names.dotdot_open",
    "bad-names",
    "T_OPEN //../outside/secret.txt: .. at the root stays at the root",
    lambda c: qemu(m.OpenRequest, qpath(b"../outside/secret.txt"), O_RD),
)
escape_case(
    "names.dotdot_deep_open",
    "bad-names",
    "T_OPEN dir/ followed by 20 .. and the secret's host path",
    lambda c: qemu(m.OpenRequest, qpath(b"dir/" + b"../" * 20 + os.fsencode(secret_rel(c))), O_RD),
)
escape_case(
    "names.absolute_host_path_open",
    "bad-names",
    "T_OPEN of the secret's absolute host path resolves inside the export",
    lambda c: qemu(m.OpenRequest, Name(os.fsencode(c.ws.secret)), O_RD),
)
escape_case(
    "names.absolute_host_path_lstat",
    "bad-names",
    "T_LSTAT of the secret's absolute host path must not leak its metadata",
    lambda c: qemu(m.LstatRequest, Name(os.fsencode(c.ws.secret))),
)
escape_case(
    "names.dotdot_getxattr",
    "bad-names",
    "T_LGETXATTR of ../outside/secret.txt must not read the sentinel's xattr",
    lambda c: qemu(m.LgetxattrRequest, 100, qpath(b"../outside/secret.txt"), b"user.sentinel"),
)
escape_case(
    "names.dotdot_rename_in",
    "bad-names",
    "T_RENAME ../outside/secret.txt into the export must fail",
    lambda c: qemu(m.RenameRequest, qpath(b"../outside/secret.txt"), qpath("stolen")),
)


@case("security", "bad-names", name="names.dotdot_clamped_at_root")
def dotdot_clamped(ctx: Context) -> None:
    """T_OPEN //../../file.txt opens the export's file.txt (.. at the root is the root)."""
    reply = ctx.call(qemu(m.OpenRequest, qpath(b"../../file.txt"), O_RD))
    if isinstance(reply, m.ErrorReply):
        raise CheckFailed(f"failed with {errname(reply.errno)}; .. at the root must stay there")
    assert isinstance(reply, m.FdReply)
    ctx.expect(ctx.same_file(reply.fd, ctx.host("file.txt")), "did not open the export's file")


def _created_inside_or_refused(ctx: Context, request: m.Request, name: str) -> None:
    reply = ctx.call(request)
    if isinstance(reply, m.ErrorReply):
        return
    ctx.expect(os.path.lexists(ctx.host(name)), f"succeeded but {name} is not in the export")


@case("security", "bad-names", name="names.dotdot_create_objects")
def dotdot_create_objects(ctx: Context) -> None:
    """T_MKDIR/T_CREATE/T_SYMLINK/T_MKNOD named ../../x create inside the export or fail."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    _created_inside_or_refused(
        ctx, qemu(m.MkdirRequest, *ctx.ids, qpath(b"../../esc_dir"), 0o755), "esc_dir"
    )
    _created_inside_or_refused(
        ctx, qemu(m.CreateRequest, qpath(b"../../esc_file"), flags, 0o644, *ctx.ids), "esc_file"
    )
    _created_inside_or_refused(
        ctx, qemu(m.SymlinkRequest, *ctx.ids, b"x", qpath(b"../esc_link")), "esc_link"
    )
    _created_inside_or_refused(
        ctx,
        qemu(m.MknodRequest, *ctx.ids, qpath(b"../esc_fifo"), stat.S_IFIFO | 0o600, 0),
        "esc_fifo",
    )


@case("security", "bad-names", name="names.dotdot_rename_out")
def dotdot_rename_out(ctx: Context) -> None:
    """T_RENAME file.txt to ../../moved.txt keeps it inside the export (or fails)."""
    reply = ctx.call(qemu(m.RenameRequest, qpath("file.txt"), qpath(b"../../moved.txt")))
    if not isinstance(reply, m.ErrorReply):
        ctx.expect(ctx.host("moved.txt").exists(), "renamed, but not to the export's root")


@case("security", "bad-names", name="names.empty_path")
def empty_path(ctx: Context) -> None:
    """An empty path (or a lone NUL) is ENOENT for every kind of operation."""
    # both forms for every field: with the NUL QEMU would not send, too
    for raw in (Name(b""), wrong_nul(Name(b""))):
        ctx.err(qemu(m.LstatRequest, raw), E.ENOENT)
        ctx.err(qemu(m.OpenRequest, raw, O_RD), E.ENOENT)
        ctx.err(qemu(m.MkdirRequest, *ctx.ids, raw, 0o755), E.ENOENT)
        ctx.err(qemu(m.RemoveRequest, raw), E.ENOENT)
        ctx.err(qemu(m.ChmodRequest, raw, 0o777), E.ENOENT)


def _nul_case(
    ctx: Context, request: m.Request, truncated_effect: Callable[[m.Reply], bool]
) -> None:
    """A name with an embedded NUL: EINVAL (SHOULD), or the operation on the name before
    the NUL (tolerated, as QEMU's helper does); anything else fails."""
    what = request.TYPE.name
    reply = ctx.call(request)
    if isinstance(reply, m.ErrorReply):
        ctx.expect(reply.errno == E.EINVAL, f"failed with {errname(reply.errno)}, not EINVAL")
        ctx.expect(not truncated_effect(reply), "failed, but acted on the truncated name")
        return
    if isinstance(reply, m.FdReply):
        ctx.expect_inside(reply.fd, what)
    if truncated_effect(reply):
        raise Deviation("embedded-nul-truncates", f"{what}: acted on the name before the NUL")
    raise CheckFailed(f"succeeded ({show(reply)}) without acting on the name before the NUL")


@case("security", "bad-names", name="names.embedded_nul_open")
def embedded_nul_open(ctx: Context) -> None:
    """T_OPEN file.txt\\0/../../outside/secret.txt: EINVAL or file.txt, never the secret."""
    _nul_case(
        ctx,
        qemu(m.OpenRequest, qpath(b"file.txt\0/../../outside/secret.txt"), O_RD),
        lambda r: isinstance(r, m.FdReply) and ctx.same_file(r.fd, ctx.host("file.txt")),
    )


@case("security", "bad-names", name="names.embedded_nul_mkdir")
def embedded_nul_mkdir(ctx: Context) -> None:
    """T_MKDIR newdir\\0junk: EINVAL (SHOULD), or a truncated name (tolerated)."""
    _nul_case(
        ctx,
        qemu(m.MkdirRequest, *ctx.ids, qpath(b"newdir\0junk"), 0o755),
        lambda r: ctx.host("newdir").exists(),
    )


@case("security", "bad-names", name="names.embedded_nul_remove")
def embedded_nul_remove(ctx: Context) -> None:
    """T_REMOVE empty.txt\\0garbage: EINVAL (SHOULD), or removes empty.txt (tolerated)."""
    _nul_case(
        ctx,
        qemu(m.RemoveRequest, qpath(b"empty.txt\0garbage")),
        lambda r: not ctx.host("empty.txt").exists(),
    )


@case("security", "bad-names", name="names.long_component")
def long_component(ctx: Context) -> None:
    """A 256-byte component is ENAMETOOLONG (never truncated to 255)."""
    ctx.err(qemu(m.MkdirRequest, *ctx.ids, qpath(b"a" * 256), 0o755), E.ENAMETOOLONG)
    ctx.err(qemu(m.LstatRequest, qpath(b"b" * 300)), E.ENAMETOOLONG)
    ctx.expect(not ctx.host("a" * 255).exists(), "created a truncated name")


@case("security", "bad-names", name="names.long_path")
def long_path(ctx: Context) -> None:
    """A path over PATH_MAX is resolved, not refused: 5000 bytes through missing
    directories are ENOENT; a 65000-byte component is ENAMETOOLONG (NAME_MAX)."""
    ctx.err(qemu(m.LstatRequest, qpath(b"d/" * 2500)), E.ENOENT)
    ctx.err(qemu(m.OpenRequest, Name(b"/" + b"x" * 65000), O_RD), E.ENAMETOOLONG)


@case("security", "bad-names", name="names.non_utf8")
def non_utf8(ctx: Context) -> None:
    """Names are bytes: a non-UTF-8 name is created and found exactly as sent."""
    name = b"\xff\xfe-not-utf8-\x80"
    ctx.ok(qemu(m.MkdirRequest, *ctx.ids, qpath(name), 0o755))
    ctx.expect(os.path.isdir(os.path.join(os.fsencode(ctx.host()), name)), "name was altered")
    ctx.ok(qemu(m.LstatRequest, qpath(name)))


@case("security", "bad-names", name="names.remove_root")
def remove_root(ctx: Context) -> None:
    """Removing the export root (/, //.., //.) fails and the export stays."""
    for raw in (qpath(""), qpath(b".."), qpath(b".")):
        ctx.err(qemu(m.RemoveRequest, raw), E.EBUSY, E.EINVAL, E.EPERM, E.ENOTEMPTY)
    ctx.expect(ctx.host("file.txt").exists(), "the export lost its content")
