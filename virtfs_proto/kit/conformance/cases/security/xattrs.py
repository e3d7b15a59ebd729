"""Security cases: xattr abuse (spec: security.rst)."""

from __future__ import annotations

import errno as E
import os

from ..... import messages as m
from ...model import MOUNTS, TRUSTED_XATTRS, CheckFailed, Context, case, qemu, qpath, show
from ._common import XATTR_SIZE_ERRNOS


@case("security", "xattr-abuse", name="xattr.trusted_set")
def xattr_trusted_set(ctx: Context) -> None:
    """T_LSETXATTR trusted.* is refused (it needs CAP_SYS_ADMIN, which a helper lacks)."""
    ctx.err(qemu(m.LsetxattrRequest, qpath("file.txt"), b"trusted.evil", b"x", 1, 0), E.EPERM)
    ctx.expect("trusted.evil" not in os.listxattr(ctx.host("file.txt")), "trusted.evil stored")


@case("security", "xattr-abuse", name="xattr.trusted_hidden", needs=TRUSTED_XATTRS)
def xattr_trusted_hidden(ctx: Context) -> None:
    """A trusted.* attribute set by the host is neither readable nor listed."""
    reply = ctx.call(qemu(m.LgetxattrRequest, 100, qpath("file.txt"), b"trusted.hidden"))
    ctx.expect(isinstance(reply, m.ErrorReply), "read a trusted.* attribute")
    reply = ctx.ok(qemu(m.LlistxattrRequest, 4096, qpath("file.txt")))
    ctx.expect(b"trusted." not in reply.value, f"listed trusted.*: {reply.value!r}")


@case("security", "xattr-abuse", name="xattr.security_capability")
def xattr_security_capability(ctx: Context) -> None:
    """T_LSETXATTR security.capability (file caps granting CAP_SYS_ADMIN) is refused."""
    caps = (0x02000001).to_bytes(4, "little") + (1 << 21).to_bytes(4, "little") + bytes(12)
    ctx.err(
        qemu(m.LsetxattrRequest, qpath("suid.bin"), b"security.capability", caps, len(caps), 0),
        E.EPERM,
    )
    ctx.expect("security.capability" not in os.listxattr(ctx.host("suid.bin")), "file caps stored")


@case("security", "xattr-abuse", name="xattr.security_other")
def xattr_security_other(ctx: Context) -> None:
    """T_LSETXATTR security.evil/security.ima is refused (they need CAP_SYS_ADMIN)."""
    for name in (b"security.evil", b"security.ima"):
        ctx.err(
            qemu(m.LsetxattrRequest, qpath("file.txt"), name, b"x", 1, 0),
            E.EPERM,
            E.EOPNOTSUPP,
            E.EACCES,
        )


def _big_xattr(ctx: Context, size: int) -> bytes:
    """A tmpfs in the export (ext4 cannot hold 64 KiB values) with user.big of ``size`` bytes.

    Mounted before the case's helper starts (the cases are ``fresh``): a
    helper in a private mount namespace of its own sees no mount made
    under the export after it started."""
    mnt = ctx.ws.mount_tmpfs("big")
    (mnt / "f").write_bytes(b"")
    value = bytes((i * 7) & 0xFF for i in range(size))
    try:
        os.setxattr(mnt / "f", "user.big", value)
    except OSError as exc:
        raise CheckFailed(
            f"cannot set up the case: a {size}-byte user xattr on tmpfs failed ({exc.strerror}); "
            "user xattrs on tmpfs need Linux 6.6 or later"
        ) from None
    return value


@case("security", "xattr-abuse", name="xattr.get_65534_fits", fresh=True, needs=MOUNTS)
def xattr_65534(ctx: Context) -> None:
    """A 65534-byte value is the largest that fits a reply: returned whole."""
    value = _big_xattr(ctx, 65534)
    reply = ctx.ok(qemu(m.LgetxattrRequest, 65534, qpath("big/f"), b"user.big"))
    ctx.expect(reply == m.XattrValueReply(value), "value not returned whole")


@case("security", "xattr-abuse", name="xattr.get_65535_refused", fresh=True, needs=MOUNTS)
def xattr_65535(ctx: Context) -> None:
    """A 65535-byte value does not fit a reply: ENOBUFS/E2BIG/ERANGE, never truncated."""
    _big_xattr(ctx, 65535)
    ctx.err(qemu(m.LgetxattrRequest, 65535, qpath("big/f"), b"user.big"), *XATTR_SIZE_ERRNOS)


@case("security", "xattr-abuse", name="xattr.get_65536_no_wrap", fresh=True, needs=MOUNTS)
def xattr_65536(ctx: Context) -> None:
    """A 65536-byte value with size 65536 must fail, not wrap to an empty string."""
    _big_xattr(ctx, 65536)
    reply = ctx.call(qemu(m.LgetxattrRequest, 65536, qpath("big/f"), b"user.big"))
    if isinstance(reply, m.XattrValueReply):
        raise CheckFailed(
            f"T_SUCCESS with a {len(reply.value)}-byte value for a 65536-byte attribute "
            "(the 16-bit length wrapped: silent data loss)"
        )
    ctx.expect(
        isinstance(reply, m.ErrorReply) and reply.errno in XATTR_SIZE_ERRNOS,
        f"answered {show(reply)}",
    )


@case("security", "xattr-abuse", name="xattr.get_negative_size")
def xattr_get_negative(ctx: Context) -> None:
    """T_LGETXATTR size -1: EINVAL or ERANGE, and the helper lives."""
    ctx.err(qemu(m.LgetxattrRequest, -1, qpath("file.txt"), b"user.comment"), E.EINVAL, E.ERANGE)


@case("security", "xattr-abuse", name="xattr.list_negative_size")
def xattr_list_negative(ctx: Context) -> None:
    """T_LLISTXATTR size -1: EINVAL or ERANGE, and the helper lives."""
    ctx.err(qemu(m.LlistxattrRequest, -0x80000000, qpath("file.txt")), E.EINVAL, E.ERANGE)


@case("security", "xattr-abuse", name="xattr.readlink_negative_bufsize")
def readlink_negative(ctx: Context) -> None:
    """T_READLINK bufsize -1: EINVAL, and the helper lives."""
    ctx.err(qemu(m.ReadlinkRequest, qpath("link_file"), -1), E.EINVAL)


@case("security", "xattr-abuse", name="xattr.huge_sizes_clamped")
def xattr_huge_sizes(ctx: Context) -> None:
    """Sizes of INT_MAX are clamped, not allocated: the values come back normally."""
    reply = ctx.ok(qemu(m.LgetxattrRequest, 0x7FFFFFFF, qpath("file.txt"), b"user.comment"))
    ctx.expect(isinstance(reply, m.XattrValueReply) and reply.value == b"a comment", show(reply))
    reply = ctx.ok(qemu(m.ReadlinkRequest, qpath("link_file"), 0x7FFFFFFF))
    ctx.expect(reply == m.ReadlinkReply(b"file.txt"), show(reply))


@case("security", "xattr-abuse", name="xattr.set_size_beyond_value")
def xattr_set_overread(ctx: Context) -> None:
    """T_LSETXATTR with size larger than the value: EINVAL, nothing stored (no heap over-read)."""
    reply = ctx.call(qemu(m.LsetxattrRequest, qpath("file.txt"), b"user.over", b"abc", 64, 0))
    stored = (
        os.getxattr(ctx.host("file.txt"), "user.over")
        if not isinstance(reply, m.ErrorReply)
        else None
    )
    if stored is not None:
        raise CheckFailed(f"stored {len(stored)} bytes for a 3-byte value: {stored[:16]!r}...")
    ctx.expect(
        isinstance(reply, m.ErrorReply) and reply.errno == E.EINVAL, f"answered {show(reply)}"
    )


@case("security", "xattr-abuse", name="xattr.set_negative_size")
def xattr_set_negative(ctx: Context) -> None:
    """T_LSETXATTR size -1: EINVAL."""
    ctx.err(qemu(m.LsetxattrRequest, qpath("file.txt"), b"user.neg", b"abc", -1, 0), E.EINVAL)
