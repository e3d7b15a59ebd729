"""Raw Linux system calls the helper needs and Python's ``os`` module lacks.

Each binding is loaded once, here. Every wrapper raises ``OSError`` with the
kernel's errno, as ``os`` does.
"""

from __future__ import annotations

import ctypes
import os

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    from typing import Final

# The new mount API has one number on every architecture (Linux >= 5.2).
SYS_OPEN_TREE: Final = 428
SYS_MOVE_MOUNT: Final = 429
SYS_FSOPEN: Final = 430
SYS_FSCONFIG: Final = 431
SYS_FSMOUNT: Final = 432
SYS_MOUNT_SETATTR: Final = 442
#: pivot_root has no libc wrapper, and a number per architecture
SYS_PIVOT_ROOT: Final = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203}.get(
    os.uname().machine, -1
)

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
OPEN_TREE_CLONE: Final = 0x1
AT_RECURSIVE: Final = 0x8000
MOVE_MOUNT_F_EMPTY_PATH: Final = 0x4
MOVE_MOUNT_T_EMPTY_PATH: Final = 0x40
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 1 << 18
MNT_DETACH: Final = 0x2

CLONE_NEWNS: Final = 0x00020000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000

AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_EMPTY_PATH: Final = 0x1000
AT_FDCWD: Final = -100

#: The one libc handle of the helper; every binding below comes from it.
_libc = ctypes.CDLL(None, use_errno=True)
#: syscall(2) with no argtypes (it is variadic): each caller passes the
#: number and every argument as an exact C type (an int, bytes, a byref or a
#: ctypes scalar). The resolver calls it once per client path: converting
#: arguments through argtypes would cost more than the call's own overhead.
syscall = _libc.syscall
syscall.restype = ctypes.c_long
_fchownat = _libc.fchownat
_fchownat.restype = ctypes.c_int
_fchownat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int)
_unshare = _libc.unshare
_unshare.restype = ctypes.c_int
_unshare.argtypes = (ctypes.c_int,)
_mount = _libc.mount
_mount.restype = ctypes.c_int
_mount.argtypes = (
    ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p
)  # fmt: skip
_umount2 = _libc.umount2
_umount2.restype = ctypes.c_int
_umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


class _MountAttr(ctypes.Structure):
    """struct mount_attr (linux/mount.h)"""

    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _check(rc: int, what: str = "") -> int:
    """``rc``, or the OSError of the kernel's errno when it is negative."""
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}" if what else os.strerror(err))
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


def unshare(flags: int) -> None:
    """unshare(2): ``CLONE_NEW*`` flags."""
    _check(_unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    """The classic mount(2) (no data): a propagation change, or a plain mount."""
    _check(
        _mount(_optional(source), os.fsencode(target), _optional(fstype), flags, None),
        f"mount({target})",
    )


def _optional(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def umount2(target: str, flags: int) -> None:
    _check(_umount2(os.fsencode(target), flags), f"umount2({target})")


def pivot_root(new_root: str, put_old: str) -> None:
    if SYS_PIVOT_ROOT < 0:
        raise OSError(38, f"pivot_root: unknown system call number on {os.uname().machine}")
    _check(syscall(SYS_PIVOT_ROOT, os.fsencode(new_root), os.fsencode(put_old)), "pivot_root")


def clone_tree(fd: int) -> int:
    """A detached copy of the mount tree at ``fd`` (``open_tree(OPEN_TREE_CLONE |
    AT_RECURSIVE)``, the mount API's bind mount): an fd of its root."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH
    return _check(syscall(SYS_OPEN_TREE, fd, b"", flags), "open_tree")


def set_mount_attrs(fd: int, attrs: int, *, recursive: bool = True) -> None:
    """Set ``MOUNT_ATTR_*`` on the mount at ``fd`` (on every mount of its tree
    if ``recursive``) and make them private: nothing mounted there propagates
    anywhere (mount_setattr)."""
    attr = _MountAttr(attrs, 0, MS_PRIVATE, 0)
    _check(
        syscall(
            SYS_MOUNT_SETATTR,
            fd,
            b"",
            AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        "mount_setattr",
    )


def move_mount(from_fd: int, to_dirfd: int, to_path: str) -> None:
    """Attach the mount ``from_fd`` at ``to_path`` under ``to_dirfd`` ("" = on it)."""
    flags = MOVE_MOUNT_F_EMPTY_PATH | (MOVE_MOUNT_T_EMPTY_PATH if to_path == "" else 0)
    _check(
        syscall(SYS_MOVE_MOUNT, from_fd, b"", to_dirfd, os.fsencode(to_path), flags),
        "move_mount",
    )


def new_mount(fstype: str, options: dict[str, str], attrs: int) -> int:
    """A new ``fstype`` mount, attached nowhere (fsopen + fsconfig + fsmount):
    its root's fd. ``attrs`` are ``MOUNT_ATTR_*``."""
    fs_fd = _check(syscall(SYS_FSOPEN, fstype.encode(), FSOPEN_CLOEXEC), f"fsopen({fstype})")
    try:
        for key, value in options.items():
            _check(
                syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0),
                f"fsconfig({key}={value})",
            )
        _check(
            syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_CMD_CREATE, None, None, 0),
            f"fsconfig({fstype}: create)",
        )
        return _check(syscall(SYS_FSMOUNT, fs_fd, FSMOUNT_CLOEXEC, attrs), "fsmount")
    finally:
        os.close(fs_fd)


def landlock_create_ruleset(attr: ctypes.Structure | None, flags: int = 0) -> int:
    """landlock_create_ruleset(2): a ruleset fd, or the ABI version with
    ``LANDLOCK_CREATE_RULESET_VERSION`` (then ``attr`` is None)."""
    size = ctypes.sizeof(attr) if attr is not None else 0
    ref = ctypes.byref(attr) if attr is not None else None
    return _check(
        syscall(SYS_LANDLOCK_CREATE_RULESET, ref, ctypes.c_size_t(size), ctypes.c_uint32(flags)),
        "landlock_create_ruleset",
    )


def landlock_add_rule(ruleset_fd: int, rule_type: int, attr: ctypes.Structure) -> None:
    """landlock_add_rule(2); ``attr`` is the rule's struct."""
    _check(
        syscall(
            SYS_LANDLOCK_ADD_RULE, ruleset_fd, rule_type, ctypes.byref(attr), ctypes.c_uint32(0)
        ),
        "landlock_add_rule",
    )


def landlock_restrict_self(ruleset_fd: int, flags: int = 0) -> None:
    """landlock_restrict_self(2): the calling thread enters the ruleset's domain."""
    _check(
        syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, ctypes.c_uint32(flags)),
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
    attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
    return new_mount("proc", {"subset": "pid", "hidepid": "ptraceable"}, attrs)


def open_procfs(*, private_only: bool = False) -> tuple[int, str]:
    """An fd of a procfs root that no client path reaches, and what it is.

    Prefers :func:`detached_procfs` (of the caller's pid namespace); falls
    back to the host's ``/proc`` (an fd opened before the chroot, reachable
    through no client path either) where the new mount API is missing,
    unless ``private_only`` (in a new pid namespace the host's /proc would
    show the wrong processes: refuse instead).
    """
    try:
        return detached_procfs(), "detached procfs"
    except OSError as exc:
        if private_only:
            raise
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        return os.open("/proc", flags), f"host /proc ({exc})"


def open_own_fd_dir(proc_fd: int | None = None) -> tuple[int, str]:
    """An fd of this process's ``fd`` directory in a procfs no client path reaches.

    ``openat(fd_dir, "<n>", flags)`` then opens again the very object the
    helper's own fd ``n`` holds (procfs's magic link), with new flags: that
    is how an O_PATH fd whose type has been checked becomes an fd for I/O
    without looking up a name twice. ``proc_fd`` is a procfs root from
    :func:`open_procfs` (made and closed here if not given). Returns the fd
    and where it came from, for the start-up log. Open it in the process
    that will serve: ``self`` is resolved now, and a fork later would leave
    the fd naming its parent's table.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if proc_fd is not None:
        return os.open("self/fd", flags, dir_fd=proc_fd), "the given procfs"
    mount_fd, origin = open_procfs()
    try:
        return os.open("self/fd", flags, dir_fd=mount_fd), origin
    finally:
        os.close(mount_fd)


PTRACE_ATTACH: Final = 16
PTRACE_DETACH: Final = 17
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def ptrace(request: int, pid: int) -> None:
    """ptrace(2) for a request with no address or data (attach, detach)."""
    _check(_ptrace(request, pid, None, None), "ptrace")


# -- openat2 (the resolver's lookup) ---------------------------------------------

SYS_OPENAT2: Final = 437  # the same number on every architecture (Linux >= 5.6)
#: the number as a prebuilt C long, for the resolver's per-path call
SYS_OPENAT2_C: Final = ctypes.c_long(SYS_OPENAT2)


class OpenHow(ctypes.Structure):
    """struct open_how (linux/openat2.h)"""

    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


#: sizeof(struct open_how), as openat2's size argument
OPEN_HOW_SIZE: Final = ctypes.c_size_t(ctypes.sizeof(OpenHow))


def openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """``openat2(dirfd, path, {flags, mode, resolve})``; raises OSError."""
    how = OpenHow(flags, mode, resolve)
    return _check(syscall(SYS_OPENAT2_C, dirfd, path, ctypes.byref(how), OPEN_HOW_SIZE))


# -- file systems, times, modes ----------------------------------------------------


class Statfs(ctypes.Structure):
    """struct statfs of the 64-bit Linux ABI (not a wire layout: the kernel's)"""

    _fields_ = (
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_uint64),
        ("f_bfree", ctypes.c_uint64),
        ("f_bavail", ctypes.c_uint64),
        ("f_files", ctypes.c_uint64),
        ("f_ffree", ctypes.c_uint64),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    )


_fstatfs = _libc.fstatfs
_fstatfs.argtypes = (ctypes.c_int, ctypes.POINTER(Statfs))
_fstatfs.restype = ctypes.c_int


def fstatfs(fd: int) -> Statfs:
    """fstatfs(2) on any fd, O_PATH included; raises OSError."""
    buf = Statfs()
    _check(_fstatfs(fd, ctypes.byref(buf)))
    return buf


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_long))


_utimensat = _libc.utimensat
_utimensat.restype = ctypes.c_int
_utimensat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int)


def utimensat(
    dirfd: int, name: bytes, atime: tuple[int, int], mtime: tuple[int, int], flags: int
) -> None:
    """utimensat(2) with raw (sec, nsec) pairs: ``UTIME_NOW``/``UTIME_OMIT`` pass
    through as the kernel knows them (``os.utime`` cannot express them)."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    _check(_utimensat(dirfd, name, times, flags))


SYS_FCHMODAT2: Final = 452  # Linux >= 6.6: the first chmod that takes an O_PATH fd
_SYS_FCHMODAT2_C: Final = ctypes.c_long(SYS_FCHMODAT2)


def fchmodat2(dirfd: int, name: bytes, mode: int, flags: int) -> None:
    """fchmodat2(2); OSError(ENOSYS) where the kernel lacks it."""
    _check(
        syscall(
            _SYS_FCHMODAT2_C,
            ctypes.c_int(dirfd),
            ctypes.c_char_p(name),
            ctypes.c_uint(mode),
            ctypes.c_int(flags),
        )
    )


# -- process attributes and capabilities ---------------------------------------------

_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); raises OSError."""
    return _check(int(_prctl(option, arg2, arg3, arg4, arg5)), f"prctl({option})")


def prctl_status(option: int, arg2: int = 0) -> int:
    """prctl(2) whose failure is an answer, not an error: the return value, -1 on failure."""
    return int(_prctl(option, arg2, 0, 0, 0))


_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_capget = _libc.capget
_capget.restype = ctypes.c_int
_capget.argtypes = (ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))
_capset = _libc.capset
_capset.restype = ctypes.c_int
_capset.argtypes = (ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))


def capget() -> tuple[int, int, int]:
    """capget(2) for the calling thread: (effective, permitted, inheritable), 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_capget(ctypes.byref(header), data), "capget")
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


def capset(effective: int, permitted: int, inheritable: int = 0) -> None:
    """capset(2) for the calling thread; the masks are 64-bit."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = effective >> shift & 0xFFFFFFFF
        data[i].permitted = permitted >> shift & 0xFFFFFFFF
        data[i].inheritable = inheritable >> shift & 0xFFFFFFFF
    _check(_capset(ctypes.byref(header), data), "capset")
