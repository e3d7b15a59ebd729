"""Security cases: device nodes (spec: security.rst)."""

from __future__ import annotations

import ctypes
import errno as E
import os
import stat
from pathlib import Path
from typing import Final

from ..... import messages as m
from ...model import DEVICE_NODES, Context, case, qemu, qpath, show
from ._common import SPECIAL_TIMEOUT
from .races import _libc

#
# A device node the helper makes (or opens) hands the guest a host device: the
# node is a name for any device the host has, whatever the device's own mode
# in /dev. The attack uses 10:232, /dev/kvm, which is root-only on the host.

#: /dev/kvm's device number (crw------- root root on the host)
KVM_RDEV: Final = os.makedev(10, 232)
#: /dev/loop0's device number, the block device the cases ask for
LOOP0_RDEV: Final = os.makedev(7, 0)
#: the unprivileged user that stands for QEMU when it uses a passed fd
ATTACKER_ID: Final = 4321
#: inotify(7): an event for every open (not for O_PATH, stat or truncate(2))
_IN_OPEN: Final = 0x20


@case("security", "device-node", name="device.mknod_refused", fresh=True)
def device_mknod_refused(ctx: Context) -> None:
    """T_MKNOD of a character (10:232, /dev/kvm) or block device as uid 0 / gid 0
    fails with EPERM and makes nothing (the helper must not make device nodes)."""
    for name, kind, rdev in (("kvm", stat.S_IFCHR, KVM_RDEV), ("loop0", stat.S_IFBLK, LOOP0_RDEV)):
        reply = ctx.call(qemu(m.MknodRequest, *ctx.ids, qpath(name), kind | 0o666, rdev))
        ctx.expect(not os.path.lexists(ctx.host(name)), f"made the device node {name!r}")
        ctx.expect(
            isinstance(reply, m.ErrorReply) and reply.errno == E.EPERM,
            f"T_MKNOD of {name!r} answered {show(reply)}; expected EPERM",
        )


def _unprivileged_open(dirfd: int, name: str) -> str | None:
    """What an unprivileged process (uid/gid ATTACKER_ID, no capabilities) gets
    from openat(dirfd, name, O_RDWR): a description of the device, or None."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the attacker holding the helper's fd
        try:
            os.close(rfd)
            os.setgroups([])
            os.setresgid(ATTACKER_ID, ATTACKER_ID, ATTACKER_ID)
            os.setresuid(ATTACKER_ID, ATTACKER_ID, ATTACKER_ID)
            try:
                fd = os.open(name, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dirfd)
            except OSError:
                os._exit(0)
            st = os.fstat(fd)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                kind = "char" if stat.S_ISCHR(st.st_mode) else "block"
                rdev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
                os.write(wfd, f"{kind} device {rdev}".encode())
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(wfd)
    try:
        got = os.read(rfd, 200).decode()
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    return got or None


@case("security", "device-node", name="device.mknod_then_open_via_dir_fd", fresh=True)
def device_mknod_attack(ctx: Context) -> None:
    """The whole attack: T_MKNOD c 10:232 0666 as uid 0, T_OPEN "/" O_DIRECTORY, then an
    unprivileged openat() of the node through that fd must not yield a device."""
    reply = ctx.call(qemu(m.MknodRequest, *ctx.ids, qpath("kvm"), stat.S_IFCHR | 0o666, KVM_RDEV))
    dirfd = ctx.fd(qemu(m.OpenRequest, qpath(""), os.O_RDONLY | os.O_DIRECTORY))
    got = _unprivileged_open(dirfd, "kvm")
    ctx.expect(
        got is None,
        f"T_MKNOD answered {show(reply)}, then uid {ATTACKER_ID} opened {got} read-write "
        "through the helper's directory fd",
    )
    ctx.expect(not os.path.lexists(ctx.host("kvm")), f"T_MKNOD answered {show(reply)}: node made")


class _OpenWatch:
    """inotify IN_OPEN on one host path: did anything open it (O_PATH aside)?"""

    def __init__(self, path: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or _libc.inotify_add_watch(self.fd, bytes(path), _IN_OPEN) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify on {path}: {os.strerror(err)}")

    def opened(self) -> bool:
        """Whether an open happened since the last call (the events are consumed)."""
        try:
            return bool(os.read(self.fd, 4096))
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.fd)


@case("security", "device-node", name="device.existing_node_never_opened", needs=DEVICE_NODES)
def device_existing_never_opened(ctx: Context) -> None:
    """A device node already in the export (10:232 and 1:3, made on the host) is never
    opened: T_OPEN, T_CREATE without O_EXCL, T_TRUNCATE and T_GETVERSION refuse it with
    ENXIO/EINVAL, pass back no fd, and inotify sees no open of the node."""
    os.mknod(ctx.host("kvm"), stat.S_IFCHR | 0o666, KVM_RDEV)
    problems: list[str] = []
    for name in ("kvm", "chardev"):
        watch = _OpenWatch(ctx.host(name))
        try:
            for label, request, errnos in (
                ("T_OPEN O_RDWR", qemu(m.OpenRequest, qpath(name), os.O_RDWR), (E.ENXIO,)),
                (
                    "T_OPEN O_RDONLY|O_NONBLOCK",
                    qemu(m.OpenRequest, qpath(name), os.O_RDONLY | os.O_NONBLOCK),
                    (E.ENXIO,),
                ),
                (
                    "T_CREATE O_RDWR|O_CREAT",
                    qemu(m.CreateRequest, qpath(name), os.O_RDWR | os.O_CREAT, 0o666, *ctx.ids),
                    (E.ENXIO,),
                ),
                ("T_TRUNCATE", qemu(m.TruncateRequest, qpath(name), 0), (E.EINVAL,)),
                ("T_GETVERSION", qemu(m.GetversionRequest, qpath(name)), (E.ENXIO, E.EINVAL)),
            ):
                what = f"{label} of {name!r}"
                reply = ctx.call(request, timeout=SPECIAL_TIMEOUT)
                if watch.opened():
                    problems.append(f"{what} opened the device")
                if isinstance(reply, m.FdReply):
                    mode = os.fstat(reply.fd).st_mode
                    problems.append(f"{what} passed back an fd ({stat.filemode(mode)})")
                elif not isinstance(reply, m.ErrorReply) or reply.errno not in errnos:
                    problems.append(f"{what} answered {show(reply)}")
        finally:
            watch.close()
    ctx.expect(not problems, "; ".join(problems))
