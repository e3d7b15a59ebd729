"""Security cases: credentials (spec: security.rst)."""

from __future__ import annotations

import errno as E
import os
import stat

from ..... import messages as m
from ...model import OTHER_OWNER, OTHER_USER, Context, case, errname, qemu, qpath


@case(
    "security", "credentials", name="creds.setgid_dir_root_then_user", fresh=True, needs=OTHER_OWNER
)
def creds_setgid_root_then_user(ctx: Context) -> None:
    """Guest root creates in a setgid dir (uid 0, gid N), then a user creates: both work."""
    ctx.ok(qemu(m.MkdirRequest, 0, 1234, qpath("sgid_dir/by_root"), 0o755))
    st = os.lstat(ctx.host("sgid_dir/by_root"))
    ctx.expect((st.st_uid, st.st_gid) == (0, 1234), f"owner {st.st_uid}:{st.st_gid}")
    ctx.ok(qemu(m.MkdirRequest, 1000, 1000, qpath("by_user"), 0o755))
    st = os.lstat(ctx.host("by_user"))
    ctx.expect((st.st_uid, st.st_gid) == (1000, 1000), f"owner {st.st_uid}:{st.st_gid}")


@case("security", "credentials", name="creds.uid0_gidN_then_chown", fresh=True, needs=OTHER_OWNER)
def creds_uid0_then_chown(ctx: Context) -> None:
    """After a uid 0 / gid N request the helper keeps its privileges (T_CHOWN still works)."""
    ctx.ok(qemu(m.MkdirRequest, 0, 1000, qpath("d0"), 0o755))
    ctx.ok(qemu(m.ChownRequest, qpath("file.txt"), 1234, 1234))
    st = os.lstat(ctx.host("file.txt"))
    ctx.expect((st.st_uid, st.st_gid) == (1234, 1234), f"owner {st.st_uid}:{st.st_gid}")


@case("security", "credentials", name="creds.uidN_gid0_then_root", fresh=True, needs=OTHER_OWNER)
def creds_uidN_gid0(ctx: Context) -> None:
    """A uid N / gid 0 request, then root-owned creation and a chown: all work."""
    ctx.ok(qemu(m.MkdirRequest, 1000, 0, qpath("dN"), 0o755))
    ctx.ok(qemu(m.MkdirRequest, 0, 0, qpath("d00"), 0o700))
    ctx.ok(qemu(m.ChownRequest, qpath("file.txt"), 1000, 1000))
    st = os.lstat(ctx.host("d00"))
    ctx.expect((st.st_uid, st.st_gid) == (0, 0), f"owner {st.st_uid}:{st.st_gid}")


@case("security", "credentials", name="creds.minus_one_ids", fresh=True, needs=OTHER_OWNER)
def creds_minus_one(ctx: Context) -> None:
    """uid/gid -1 in a creating request: refused (EINVAL) or served, never a privilege change."""
    reply = ctx.call(qemu(m.MkdirRequest, 0xFFFFFFFF, 0xFFFFFFFF, qpath("dm"), 0o755))
    if isinstance(reply, m.ErrorReply):
        ctx.expect(reply.errno == E.EINVAL, f"failed with {errname(reply.errno)}, not EINVAL")
    ctx.ok(qemu(m.ChownRequest, qpath("file.txt"), 1234, 1234))
    ctx.ok(qemu(m.MkdirRequest, 1000, 1000, qpath("after"), 0o755))
    st = os.lstat(ctx.host("after"))
    ctx.expect((st.st_uid, st.st_gid) == (1000, 1000), f"owner {st.st_uid}:{st.st_gid}")


@case("security", "credentials", name="creds.setgid_dir_inherits", needs=OTHER_OWNER)
def creds_setgid_inherits(ctx: Context) -> None:
    """A directory made in a setgid directory with the dir's group gets the setgid bit too."""
    ctx.ok(qemu(m.MkdirRequest, 1000, 1234, qpath("sgid_dir/sub"), 0o755))
    st = os.lstat(ctx.host("sgid_dir/sub"))
    ctx.expect((st.st_uid, st.st_gid) == (1000, 1234), f"owner {st.st_uid}:{st.st_gid}")
    ctx.expect(bool(st.st_mode & stat.S_ISGID), "the setgid bit was not inherited")


@case("security", "credentials", name="creds.chown_clears_setid", needs=OTHER_OWNER)
def creds_chown_clears(ctx: Context) -> None:
    """T_CHOWN of a setuid/setgid executable clears both bits (no set-id file for a new owner)."""
    ctx.ok(qemu(m.ChownRequest, qpath("suid.bin"), 1001, 1001))
    mode = os.lstat(ctx.host("suid.bin")).st_mode
    ctx.expect(not mode & (stat.S_ISUID | stat.S_ISGID), f"mode {stat.filemode(mode)} kept set-id")


@case(
    "security",
    "credentials",
    name="creds.write_through_fd_clears_setuid",
    needs=(OTHER_OWNER, OTHER_USER),
)
def creds_write_clears(ctx: Context) -> None:
    """A write through a passed fd by an unprivileged client clears the setuid bit."""
    fd = ctx.fd(qemu(m.OpenRequest, qpath("suid.bin"), os.O_WRONLY | os.O_APPEND))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the unprivileged writer
        try:
            os.setgroups([])
            os.setgid(4321)
            os.setuid(4321)
            os.write(fd, b"# appended\n")
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    ctx.expect(os.waitstatus_to_exitcode(status) == 0, "the unprivileged write failed")
    mode = os.lstat(ctx.host("suid.bin")).st_mode
    ctx.expect(not mode & stat.S_ISUID, f"mode {stat.filemode(mode)} kept setuid after a write")


@case("security", "credentials", name="creds.mknod_device_as_user")
def creds_mknod_device(ctx: Context) -> None:
    """A block device requested by uid 1000 (or by gid N) is refused with EPERM."""
    dev = os.makedev(8, 0)
    ctx.err(qemu(m.MknodRequest, 1000, 1000, qpath("blk"), stat.S_IFBLK | 0o666, dev), E.EPERM)
    ctx.err(qemu(m.MknodRequest, 0, 1000, qpath("blk2"), stat.S_IFBLK | 0o666, dev), E.EPERM)
    ctx.expect(not os.path.lexists(ctx.host("blk")), "a device node was created")
