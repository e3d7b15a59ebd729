"""Raw Linux system calls the helper needs and Python's ``os`` module lacks.

Each binding is loaded once, here. Every wrapper raises ``OSError`` with the
kernel's errno, as ``os`` does.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

# The new mount API has one number on every architecture (Linux >= 5.2).
SYS_FSOPEN: Final = 430
SYS_FSCONFIG: Final = 431
SYS_FSMOUNT: Final = 432

FSOPEN_CLOEXEC: Final = 0x1
FSCONFIG_SET_STRING: Final = 1
FSCONFIG_CMD_CREATE: Final = 6
FSMOUNT_CLOEXEC: Final = 0x1
# Landlock (Linux >= 5.13) has one number on every architecture too.
SYS_LANDLOCK_CREATE_RULESET: Final = 444
SYS_LANDLOCK_ADD_RULE: Final = 445
SYS_LANDLOCK_RESTRICT_SELF: Final = 446
MOUNT_ATTR_RDONLY: Final = 0x1
MOUNT_ATTR_NOSUID: Final = 0x2
MOUNT_ATTR_NODEV: Final = 0x4
MOUNT_ATTR_NOEXEC: Final = 0x8

AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_EMPTY_PATH: Final = 0x1000

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_fchownat = _libc.fchownat
_fchownat.restype = ctypes.c_int
_fchownat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def fchown_fd(fd: int, uid: int, gid: int) -> None:
    """Change the owner of the object ``fd`` holds, O_PATH fds included.

    ``fchownat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)``: no name is
    looked up, so nothing can be swapped in and no symlink is followed (an
    O_PATH fd of a symlink changes the link itself). -1 leaves an id as it is.
    """
    _check(
        _fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW),
        "fchownat",
    )


def landlock_create_ruleset(attr: ctypes.Structure | None, flags: int = 0) -> int:
    """landlock_create_ruleset(2): a ruleset fd, or the ABI version with
    ``LANDLOCK_CREATE_RULESET_VERSION`` (then ``attr`` is None)."""
    size = ctypes.sizeof(attr) if attr is not None else 0
    ref = ctypes.byref(attr) if attr is not None else None
    return _check(
        _syscall(SYS_LANDLOCK_CREATE_RULESET, ref, ctypes.c_size_t(size), ctypes.c_uint32(flags)),
        "landlock_create_ruleset",
    )


def landlock_add_rule(ruleset_fd: int, rule_type: int, attr: ctypes.Structure) -> None:
    """landlock_add_rule(2); ``attr`` is the rule's struct."""
    _check(
        _syscall(
            SYS_LANDLOCK_ADD_RULE, ruleset_fd, rule_type, ctypes.byref(attr), ctypes.c_uint32(0)
        ),
        "landlock_add_rule",
    )


def landlock_restrict_self(ruleset_fd: int, flags: int = 0) -> None:
    """landlock_restrict_self(2): the calling thread enters the ruleset's domain."""
    _check(
        _syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, ctypes.c_uint32(flags)),
        "landlock_restrict_self",
    )


def detached_procfs() -> int:
    """A private procfs mounted nowhere: the mount's fd only.

    ``fsopen("proc")`` + ``subset=pid`` (no sysctls, no /proc/kcore, only
    process directories) + ``hidepid=ptraceable`` (no process the caller
    could not ptrace) + ``fsmount`` read-only, nosuid, nodev, noexec. The
    mount is attached to no directory, so no path, in the chroot or out of
    it, leads to it: it is reachable only through this fd. Needs
    CAP_SYS_ADMIN over the current pid namespace (root, before the drop).
    """
    fs_fd = _check(_syscall(SYS_FSOPEN, b"proc", FSOPEN_CLOEXEC), "fsopen(proc)")
    try:
        for key, value in ((b"subset", b"pid"), (b"hidepid", b"ptraceable")):
            _check(
                _syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_SET_STRING, key, value, 0),
                f"fsconfig({key.decode()}={value.decode()})",
            )
        _check(
            _syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_CMD_CREATE, None, None, 0),
            "fsconfig(create)",
        )
        attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
        return _check(_syscall(SYS_FSMOUNT, fs_fd, FSMOUNT_CLOEXEC, attrs), "fsmount")
    finally:
        os.close(fs_fd)


def open_own_fd_dir() -> tuple[int, str]:
    """An fd of this process's ``fd`` directory in a procfs no client path reaches.

    ``openat(fd_dir, "<n>", flags)`` then opens again the very object the
    helper's own fd ``n`` holds (procfs's magic link), with new flags: that
    is how an O_PATH fd whose type has been checked becomes an fd for I/O
    without looking up a name twice. Prefers :func:`detached_procfs`; falls
    back to the host's ``/proc`` (an fd opened before the chroot, reachable
    through no client path either) where the new mount API is missing.
    Returns the fd and where it came from, for the start-up log. Open it in
    the process that will serve: ``self`` is resolved now, and a fork later
    would leave the fd naming its parent's table.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        mount_fd = detached_procfs()
    except OSError as exc:
        return os.open("/proc/self/fd", flags), f"host /proc ({exc})"
    try:
        return os.open("self/fd", flags, dir_fd=mount_fd), "detached procfs"
    finally:
        os.close(mount_fd)
