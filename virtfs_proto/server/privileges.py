"""Containment layer (b) and least privilege, through ctypes only.

The helper starts as root, then, before it reads a single request:

1. :func:`enter_jail` chroots into the export (``--sandbox=chroot``); with
   the default ``--sandbox=namespace``, :mod:`.sandbox` has already made a
   root of the helper's own (pivot_root into a tmpfs holding a ``nodev``
   bind mount of the export) and chroots into the bind mount. Either way
   the helper keeps no fd that points outside the jail (the export fd is
   reopened inside it, and :func:`close_inherited_fds` closes everything
   else but the socket), and once CAP_SYS_CHROOT is gone and the uid is not
   0 the process can neither chroot again nor mount, so the classic chroot
   escapes are closed.
2. :func:`drop_privileges` removes every capability but :data:`KEPT_CAPABILITIES`
   (and :data:`DEVICE_NODE_CAPABILITIES` with ``--allow-device-nodes``)
   from the bounding set, clears the ambient set, sets PR_SET_KEEPCAPS,
   switches real, effective, saved (and hence fs) uid/gid to an unprivileged
   user with no supplementary groups, then sets permitted = effective = the
   kept set, inheritable = 0, and PR_SET_NO_NEW_PRIVS.

Capabilities and the bounding set are per thread, so the drop refuses to run
in a process with more than one thread: QEMU's helper drops in its main
thread only and leaves its RCU thread with every capability.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable, Mapping

from .._record import Record
from ..procfs import capability_name
from . import oslib

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    from typing import Final

CAP_CHOWN: Final = 0
CAP_DAC_OVERRIDE: Final = 1
CAP_DAC_READ_SEARCH: Final = 2
CAP_FOWNER: Final = 3
CAP_FSETID: Final = 4
CAP_SETGID: Final = 6
CAP_SETUID: Final = 7
CAP_SETPCAP: Final = 8
CAP_SYS_CHROOT: Final = 18
CAP_SYS_ADMIN: Final = 21
CAP_MKNOD: Final = 27

#: The capabilities the helper keeps, each with the reason it is needed. The
#: helper performs every operation on behalf of the guest, whose own kernel
#: already made the permission decision, so it must not be stopped by the
#: host's DAC checks, exactly as QEMU's helper (which runs as uid 0) is not.
#:
#: CAP_DAC_READ_SEARCH is deliberately *not* kept although DAC_OVERRIDE
#: covers what it grants for reading and searching: it also grants
#: ``open_by_handle_at(2)``, which opens any inode of the filesystem by handle
#: and walks straight out of both containment layers (the "shocker" escape).
KEPT_CAPABILITIES: Final[Mapping[int, str]] = {
    CAP_CHOWN: "give created files the requester's uid:gid (create, mkdir, mknod, "
    "symlink are done as the helper's user, then chowned) and serve T_CHOWN",
    CAP_DAC_OVERRIDE: "read, write and search files and directories whatever their "
    "mode and owner: the guest kernel has already checked the guest's permissions",
    CAP_FOWNER: "chmod, utimensat, xattr changes, O_NOATIME and links to files the "
    "helper's user does not own (the guest owns them); sticky-directory removals",
    CAP_FSETID: "keep the setuid/setgid bits a guest asks for (chmod, create with a "
    "group the helper is not in) and across the chown that applies credentials",
}

#: Kept in addition only with ``--allow-device-nodes``. A device node the
#: guest makes names any host device whatever that device's own mode, and
#: QEMU (or anyone) holding a directory fd from the helper can open it: so
#: by default the helper cannot make device nodes at all.
DEVICE_NODE_CAPABILITIES: Final[Mapping[int, str]] = {
    CAP_MKNOD: "device nodes for T_MKNOD with uid == gid == 0 (the only case in which "
    "QEMU's helper could create them), only with --allow-device-nodes",
}


def kept_capabilities(*, allow_device_nodes: bool) -> dict[int, str]:
    """The capabilities the helper keeps, with their reasons, for this configuration."""
    kept = dict(KEPT_CAPABILITIES)
    if allow_device_nodes:
        kept.update(DEVICE_NODE_CAPABILITIES)
    return kept


PR_SET_DUMPABLE: Final = 4
PR_SET_KEEPCAPS: Final = 8
PR_CAPBSET_READ: Final = 23
PR_CAPBSET_DROP: Final = 24
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4


class ConfinementError(Exception):
    """The helper could not confine itself; it must not serve requests."""


#: prctl(2) and capset(2) are :mod:`.oslib`'s (one libc handle, one errno check)
prctl = oslib.prctl
capset = oslib.capset


class CapabilitySets(Record):
    """The calling thread's capability sets as 64-bit masks."""

    __slots__ = ("effective", "inheritable", "permitted")
    effective: int
    permitted: int
    inheritable: int

    def __init__(self, effective: int, permitted: int, inheritable: int) -> None:
        self._set(effective=effective, permitted=permitted, inheritable=inheritable)


def capget() -> CapabilitySets:
    """capget(2) for the calling thread."""
    effective, permitted, inheritable = oslib.capget()
    return CapabilitySets(effective, permitted, inheritable)


def last_capability() -> int:
    """The highest capability number this kernel knows (without /proc)."""
    cap = 0
    while cap < 63:
        if oslib.prctl_status(PR_CAPBSET_READ, cap + 1) < 0:
            break
        cap += 1
    return cap


def capability_mask(caps: Iterable[int]) -> int:
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    return mask


def resolve_user(user: str | None, group: str | None) -> tuple[int, int]:
    """uid and gid for ``--user``/``--group`` (default ``nobody`` and its
    primary group). A number needs no passwd or group entry, so a launcher
    can give each VM a uid of its own; a numeric ``--user`` without
    ``--group`` gets the gid of the same number."""
    user = user or "nobody"
    try:
        uid = int(user)
        default_gid = uid
    except ValueError:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ConfinementError(f"unknown user {user!r}") from None
        uid, default_gid = entry.pw_uid, entry.pw_gid
    if group is None:
        gid = default_gid
    else:
        try:
            gid = int(group)
        except ValueError:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise ConfinementError(f"unknown group {group!r}") from None
    if uid == 0 or gid == 0:
        raise ConfinementError("the helper must drop to a non-root uid and gid")
    return uid, gid


def thread_count(proc_fd: int | None) -> int:
    """Threads of this process, from /proc (via ``proc_fd`` once chrooted)."""
    if proc_fd is None:
        try:
            return len(os.listdir(f"/proc/{os.getpid()}/task"))
        except FileNotFoundError:
            import threading  # only without /proc: not on the helper's path

            return threading.active_count()
    fd = os.open(f"{os.getpid()}/task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        return len(os.listdir(fd))
    finally:
        os.close(fd)


def enter_jail(export_fd: int) -> None:
    """chroot into the directory ``export_fd`` (no lookup by name) and cd to its root."""
    os.fchdir(export_fd)
    os.chroot(".")
    os.chdir("/")


def close_inherited_fds(keep: Iterable[int]) -> None:
    """Close every fd >= 3 except ``keep``: an inherited directory fd would be a
    way out of the jail for anyone who can name it (e.g. via /proc/self/fd)."""
    lo = 3
    for fd in sorted(set(keep)):
        if fd < lo:
            continue
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)


def drop_privileges(
    uid: int,
    gid: int,
    keep: Iterable[int] = KEPT_CAPABILITIES,
    *,
    proc_fd: int | None = None,
    rootless: bool = False,
) -> None:
    """Become ``uid:gid`` with exactly the ``keep`` capabilities, for good.

    Must run while still root with CAP_SETPCAP/SETUID/SETGID, in a
    single-threaded process; afterwards the change cannot be undone.

    ``rootless``: the process is in a user namespace of its own
    (:mod:`.userns`) and its capabilities are over that namespace only;
    ``uid:gid`` are the ids it already has there (0 too: under ``--subids``
    inside 0 is the invoking user outside). Supplementary groups are
    cleared where the namespace allows setgroups; an identity map denies
    it, and the invoking user's own groups stay.
    """
    if not rootless and (uid == 0 or gid == 0):
        raise ConfinementError("refusing to 'drop' to uid or gid 0")
    threads = thread_count(proc_fd)
    if threads != 1:
        raise ConfinementError(
            f"{threads} threads: capabilities are per thread, refusing to drop in one"
        )
    mask = capability_mask(keep)
    # The bounding set can only shrink while CAP_SETPCAP is effective: first.
    for cap in range(last_capability() + 1):
        if not mask >> cap & 1:
            prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    # Without KEEPCAPS, leaving uid 0 would empty the permitted set.
    prctl(PR_SET_KEEPCAPS, 1)
    groups_fixed = True
    try:
        os.setgroups([])
    except PermissionError:
        if not rootless:
            raise
        groups_fixed = False  # setgroups denied in this user namespace
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    prctl(PR_SET_KEEPCAPS, 0)
    # The uid change cleared the effective set; permitted still has everything
    # the bounding set allowed, so trim it to the kept set and raise those.
    capset(effective=mask, permitted=mask, inheritable=0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    _verify(uid, gid, mask, groups_fixed=groups_fixed)


def _verify(uid: int, gid: int, mask: int, *, groups_fixed: bool = True) -> None:
    sets = capget()
    if sets.permitted != mask or sets.effective != mask or sets.inheritable:
        raise ConfinementError(f"capabilities did not take: {sets}")
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise ConfinementError("uid/gid did not take")
    if groups_fixed and os.getgroups() not in ([], [gid]):
        raise ConfinementError("supplementary groups remain")
    if prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise ConfinementError("no_new_privs did not take")
    for cap in (CAP_SYS_CHROOT, CAP_SETUID, CAP_SETGID, CAP_SYS_ADMIN):
        if prctl(PR_CAPBSET_READ, cap) != 0:
            raise ConfinementError(f"{capability_name(cap)} is still in the bounding set")
    other = 1 if uid == 0 else 0
    try:
        os.setresuid(other, other, other)
    except OSError:  # EPERM; EINVAL where ``other`` is not mapped (rootless)
        pass
    else:  # pragma: no cover - would mean the drop is reversible
        raise ConfinementError(f"could become uid {other}")
