"""seccomp: the serving process may make only the system calls serving needs.

The sandbox layer's system-call filter, built with libseccomp (never
hand-assembled BPF) and installed last, after every import and all set-up.
Calls outside the allowlist fail with EPERM; a short list of calls that only
an attacker would make (new processes, namespaces, mounts, tracing, kernel
modules, io_uring, file handles, sockets other than AF_UNIX) kill the whole
process with SIGSYS, and the kernel logs each kill (an audit ``type=1326``
line with ``sig=31`` and the call's number, in ``dmesg`` / ``journalctl -k``).

The allowlist was measured, not guessed: strace over a full conformance run
of this helper (both modes), keeping the calls made after the first request
was received, plus the few the runtime makes on paths a run does not take
(a signal handler returning, memory growing). See ``ALLOW_GROUPS``.

The libseccomp binding lives here rather than in :mod:`.oslib`: it is one
library with its own API (a filter context, rules, load), used by this module
alone; it is loaded once, when this module is imported.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
from collections.abc import Iterable

from .. import phase
from .._record import Record
from . import privileges
from .ops import FS_IOC_GETVERSION

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    from typing import Final

#: (why, system calls): the allowlist, one group per reason.
ALLOW_GROUPS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        "receive requests and send replies (and fds, SCM_RIGHTS) on the connected socket",
        ("recvfrom", "recvmsg", "sendto", "sendmsg", "getsockname", "getpeername"),
    ),
    (
        "resolve a path beneath the root fd (openat2 or the O_NOFOLLOW walk), check the"
        " object by fstat, reopen it through the procfs fd directory, hand it back",
        ("openat", "openat2", "newfstatat", "fstat", "statx", "readlinkat", "fchdir", "close"),
    ),
    (
        "make, link, rename and remove objects (mknodat: mode-checked, see below)",
        ("mkdirat", "symlinkat", "linkat", "renameat", "renameat2", "unlinkat"),
    ),
    (
        "change attributes; chmod of an O_PATH fd is fchmodat2 (Linux >= 6.6) or fchmod",
        (
            "fchown",
            "fchownat",
            "fchmod",
            "fchmodat",
            "fchmodat2",
            "utimensat",
            "ftruncate",
            "fstatfs",
        ),
    ),
    (
        "extended attributes, asked of a name beneath the cwd without following it",
        ("lgetxattr", "llistxattr", "lsetxattr", "lremovexattr"),
    ),
    ("ownership checks (a made object must be ours before we chown it)", ("geteuid",)),
    ("the log: stderr, or syslog's already connected socket", ("write",)),
    (
        "read a status text back (this filter's mode in /proc/thread-self/status)",
        ("read", "pread64"),
    ),
    (
        "the Python runtime: memory, locks, signal handlers (and returning from them), exit",
        (
            "brk",
            "mmap",
            "munmap",
            "mremap",
            "madvise",
            "futex",
            "rt_sigaction",
            "rt_sigprocmask",
            "rt_sigreturn",
            "getpid",
            "gettid",
            "exit",
            "exit_group",
            "restart_syscall",
        ),
    ),
)

#: Every unconditionally allowed system call.
ALLOW_LIST: Final[tuple[str, ...]] = tuple(name for _, names in ALLOW_GROUPS for name in names)

#: Made only by an attacker: the whole process is killed (SIGSYS).
KILL_LIST: Final[tuple[str, ...]] = (
    "ptrace",  # reach into another process
    "mount",  # change the mount table, leave the chroot
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",  # a new (user) namespace
    "setns",
    "clone",  # new processes or threads: the serving process has one thread
    "clone3",
    "fork",
    "vfork",
    "bpf",  # kernel attack surface the helper never needs
    "perf_event_open",
    "keyctl",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "io_uring_setup",  # io_uring performs system calls seccomp does not see
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",  # opens any inode of the file system by number
)

#: Allowed only with the arguments :func:`install` checks.
CONDITIONAL: Final[tuple[str, ...]] = ("socket", "ioctl", "mknodat")

#: What an ioctl other than FS_IOC_GETVERSION gets. ENOTTY, not EPERM: it is
#: what the kernel answers for an ioctl an object lacks, and callers take it
#: as "not supported" (CPython's set_inheritable() falls back from
#: ioctl(FIOCLEX) to fcntl() on ENOTTY, but raises on EPERM).
IOCTL_DENIED_ERRNO: Final = errno.ENOTTY

#: The file types mknodat may make unless device nodes are allowed; a char or
#: block device gets the default EPERM (what the kernel says without CAP_MKNOD).
MKNOD_TYPES: Final = (0, stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK)
_S_IFMT_MASK: Final = 0o170000  # the file-type bits of a mode (stat.S_IFMT is a function)

# libseccomp's ABI (seccomp.h, libseccomp 2.5)
SCMP_ACT_KILL_PROCESS: Final = 0x80000000
SCMP_ACT_ALLOW: Final = 0x7FFF0000
_SCMP_ACT_ERRNO: Final = 0x00050000
SCMP_FLTATR_ACT_BADARCH: Final = 2
SCMP_FLTATR_CTL_NNP: Final = 3
SCMP_FLTATR_CTL_TSYNC: Final = 4
SCMP_CMP_NE: Final = 1
SCMP_CMP_EQ: Final = 4
SCMP_CMP_MASKED_EQ: Final = 7
_NR_SCMP_ERROR: Final = -1


def scmp_act_errno(err: int) -> int:
    return _SCMP_ACT_ERRNO | (err & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    # struct scmp_arg_cmp
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def _load() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_release.restype = None
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    # the array form: a variadic call cannot pass structs by value through ctypes
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    return lib


_lib: Final = _load()


def _libseccomp() -> ctypes.CDLL:
    if _lib is None:
        raise OSError(errno.ENOSYS, "libseccomp.so.2 not found (apt-get install libseccomp2)")
    return _lib


def syscall_number(name: str) -> int:
    """The native number of system call ``name``; -1 if libseccomp does not know it."""
    return int(_libseccomp().seccomp_syscall_resolve_name(name.encode()))


def _check(rc: int, what: str) -> None:
    if rc < 0:  # libseccomp returns -errno
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


class SeccompReport(Record):
    """What :func:`install` loaded, and what the kernel says about it."""

    __slots__ = ("allowed", "device_nodes", "filters", "killed", "mode", "rules")
    allowed: int  # system calls allowed, CONDITIONAL ones included
    killed: int  # system calls that kill the process
    rules: int  # every rule, argument-checked ones included
    device_nodes: bool  # whether mknodat may make char/block nodes
    mode: int | None  # "Seccomp:" of the thread's status (2 = filter); None: unread
    filters: int | None  # "Seccomp_filters:"

    def __init__(
        self,
        allowed: int,
        killed: int,
        rules: int,
        device_nodes: bool,
        mode: int | None = None,
        filters: int | None = None,
    ) -> None:
        self._set(
            allowed=allowed,
            killed=killed,
            rules=rules,
            device_nodes=device_nodes,
            mode=mode,
            filters=filters,
        )

    def read(self, status_text: str) -> SeccompReport:
        """This report with the mode and filter count a ``/proc/.../status`` text gives."""
        fields = dict(line.split(":", 1) for line in status_text.splitlines() if ":" in line)
        mode = fields.get("Seccomp")
        filters = fields.get("Seccomp_filters")
        return self.replace(
            mode=int(mode) if mode is not None else None,
            filters=int(filters) if filters is not None else None,
        )

    def lines(self) -> list[str]:
        if self.mode is None:
            state = "mode unread (no /proc)"
        else:
            name = {0: "disabled", 1: "strict", 2: "filter"}.get(self.mode, "?")
            state = f"mode {self.mode} ({name}), {self.filters} filter(s)"
        nodes = "any file type" if self.device_nodes else "no char/block devices"
        return [
            f"seccomp: {state}; {self.rules} rules:"
            f" {self.allowed} system calls allowed ({len(CONDITIONAL)} argument-checked),"
            f" {self.killed} kill the process,"
            " others fail with EPERM",
            f"seccomp: socket(AF_UNIX) only (any other family kills); ioctl only"
            f" FS_IOC_GETVERSION (others {errno.errorcode[IOCTL_DENIED_ERRNO]}); mknodat: {nodes}",
        ]


def install(
    *,
    allow_device_nodes: bool = False,
    extra_allow: Iterable[str] = (),
    status_fd: int | None = None,
) -> SeccompReport:
    """Build the filter and load it for every thread of the process (TSYNC).

    ``NO_NEW_PRIVS`` must already be set (the privilege drop sets it); this
    refuses otherwise rather than lean on CAP_SYS_ADMIN. ``extra_allow``
    names further system calls to allow. The report's mode is read back from
    ``status_fd`` (an fd of ``/proc/thread-self/status`` opened before a
    chroot or Landlock) or else from ``/proc/thread-self/status``; it stays
    None where neither can be read.
    """
    lib = _libseccomp()
    if privileges.prctl(privileges.PR_GET_NO_NEW_PRIVS) != 1:
        raise privileges.ConfinementError("seccomp: NO_NEW_PRIVS must be set first")
    allow = tuple(dict.fromkeys((*ALLOW_LIST, *extra_allow)))
    clash = sorted(set(allow) & {*KILL_LIST, *CONDITIONAL})
    if clash:  # one action per call: an allow rule cannot override these
        raise ValueError(f"seccomp: cannot allow {', '.join(clash)} outright")
    numbers: dict[str, int] = {}
    for name in (*allow, *KILL_LIST, *CONDITIONAL):
        nr = syscall_number(name)
        if nr < 0:
            raise OSError(errno.EINVAL, f"seccomp: libseccomp does not know {name!r}")
        numbers[name] = nr
    phase("seccomp: names")

    ctx = lib.seccomp_init(scmp_act_errno(errno.EPERM))
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    rules = 0

    def rule(action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nonlocal rules
        array = (_ArgCmp * len(cmps))(*(_ArgCmp(*c) for c in cmps)) if cmps else None
        _check(
            lib.seccomp_rule_add_array(ctx, action, numbers[name], len(cmps), array),
            f"seccomp_rule_add({name})",
        )
        rules += 1

    try:
        _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0), "seccomp_attr_set(NNP)")
        _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1), "seccomp_attr_set(TSYNC)")
        # a call through another ABI (int 0x80, x32) is an attack: no table applies
        _check(
            lib.seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS),
            "seccomp_attr_set(BADARCH)",
        )
        for name in allow:
            rule(SCMP_ACT_ALLOW, name)
        for name in KILL_LIST:
            rule(SCMP_ACT_KILL_PROCESS, name)
        rule(SCMP_ACT_ALLOW, "socket", (0, SCMP_CMP_EQ, socket.AF_UNIX, 0))
        rule(SCMP_ACT_KILL_PROCESS, "socket", (0, SCMP_CMP_NE, socket.AF_UNIX, 0))
        # the full 64-bit value: a sign-extended request number is refused too
        rule(SCMP_ACT_ALLOW, "ioctl", (1, SCMP_CMP_EQ, FS_IOC_GETVERSION, 0))
        rule(scmp_act_errno(IOCTL_DENIED_ERRNO), "ioctl", (1, SCMP_CMP_NE, FS_IOC_GETVERSION, 0))
        if allow_device_nodes:
            rule(SCMP_ACT_ALLOW, "mknodat")
        else:
            for kind in MKNOD_TYPES:
                rule(SCMP_ACT_ALLOW, "mknodat", (2, SCMP_CMP_MASKED_EQ, _S_IFMT_MASK, kind))
        phase("seccomp: rules")
        _check(lib.seccomp_load(ctx), "seccomp_load")
        phase("seccomp: load")
    finally:
        lib.seccomp_release(ctx)

    report = SeccompReport(
        allowed=len(allow) + len(CONDITIONAL),
        killed=len(KILL_LIST),
        rules=rules,
        device_nodes=allow_device_nodes,
    )
    try:
        if status_fd is not None:
            text = os.pread(status_fd, 1 << 16, 0)
        else:
            fd = os.open("/proc/thread-self/status", os.O_RDONLY | os.O_CLOEXEC)
            try:
                text = os.pread(fd, 1 << 16, 0)
            finally:
                os.close(fd)
    except OSError:
        return report
    return report.read(text.decode())
