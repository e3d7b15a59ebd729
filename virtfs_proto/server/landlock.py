"""Landlock: the serving process may touch files beneath the export only.

The sandbox layer's file-system and network fence, where the kernel has it
(Linux >= 5.13). :func:`restrict` handles every right the running kernel's
Landlock ABI knows and allows the file-system ones beneath the export root
fd only: a subverted helper that reaches a host path (a bug in the resolver,
an fd that leaked in) still cannot open, make or remove anything there.
TCP bind and connect are handled and never allowed (ABI >= 4); signals and
abstract unix sockets are scoped to the domain (ABI >= 6), so the helper
cannot signal another process of its uid nor reach an abstract socket.

A Landlock domain only adds restrictions; it needs ``NO_NEW_PRIVS`` (set by
the privilege drop) and applies to the calling thread and the threads it
starts later: the helper is single-threaded when it calls :func:`restrict`.
Landlock checks a file when it is opened, so fds opened before (the procfs
fd directory the helper reopens files through, a ``/proc`` status fd for
the report) keep working; a *new* open outside the export fails with
EACCES, /proc included. Read what the report needs from /proc before.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .._record import Record
from . import oslib

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    from typing import Final

LANDLOCK_CREATE_RULESET_VERSION: Final = 1 << 0
LANDLOCK_RULE_PATH_BENEATH: Final = 1

#: Every file-system right, with the ABI version that introduced it.
FS_RIGHTS: Final[tuple[tuple[str, int, int], ...]] = (
    ("EXECUTE", 1 << 0, 1),
    ("WRITE_FILE", 1 << 1, 1),
    ("READ_FILE", 1 << 2, 1),
    ("READ_DIR", 1 << 3, 1),
    ("REMOVE_DIR", 1 << 4, 1),
    ("REMOVE_FILE", 1 << 5, 1),
    ("MAKE_CHAR", 1 << 6, 1),
    ("MAKE_DIR", 1 << 7, 1),
    ("MAKE_REG", 1 << 8, 1),
    ("MAKE_SOCK", 1 << 9, 1),
    ("MAKE_FIFO", 1 << 10, 1),
    ("MAKE_BLOCK", 1 << 11, 1),
    ("MAKE_SYM", 1 << 12, 1),
    ("REFER", 1 << 13, 2),  # rename/link across directories
    ("TRUNCATE", 1 << 14, 3),
    ("IOCTL_DEV", 1 << 15, 5),  # ioctl on character/block devices only
)

#: Handled and never allowed: the helper executes nothing; it needs no device
#: ioctl (FS_IOC_GETVERSION is asked of regular files and directories, which
#: IOCTL_DEV does not cover). MAKE_CHAR and MAKE_BLOCK follow --allow-device-nodes.
NEVER_ALLOWED: Final = frozenset({"EXECUTE", "IOCTL_DEV"})
DEVICE_NODE_RIGHTS: Final = frozenset({"MAKE_CHAR", "MAKE_BLOCK"})

#: Network rights (ABI >= 4): handled, never allowed.
NET_RIGHTS: Final[tuple[tuple[str, int], ...]] = (("BIND_TCP", 1 << 0), ("CONNECT_TCP", 1 << 1))
NET_ABI: Final = 4

#: Scopes (ABI >= 6): the domain may not signal, nor connect to an abstract
#: unix socket of, a process outside it.
SCOPES: Final[tuple[tuple[str, int], ...]] = (
    ("ABSTRACT_UNIX_SOCKET", 1 << 0),
    ("SIGNAL", 1 << 1),
)
SCOPE_ABI: Final = 6


class _RulesetAttr(ctypes.Structure):
    # struct landlock_ruleset_attr; the kernel takes a prefix of it by size,
    # so older ABIs get the fields they know.
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # struct landlock_path_beneath_attr is __attribute__((packed))
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def abi_version() -> int:
    """The running kernel's Landlock ABI version; 0 if it has none (or it is disabled)."""
    try:
        return oslib.landlock_create_ruleset(None, LANDLOCK_CREATE_RULESET_VERSION)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


class LandlockReport(Record):
    """What :func:`restrict` enforced (for the start-up log and --print-confinement)."""

    __slots__ = ("abi", "allowed_fs", "handled_fs", "handled_net", "scoped")
    abi: int
    handled_fs: tuple[str, ...]
    allowed_fs: tuple[str, ...]  # beneath the export; everything handled is denied elsewhere
    handled_net: tuple[str, ...]  # handled and allowed nowhere
    scoped: tuple[str, ...]

    def __init__(
        self,
        abi: int,
        handled_fs: tuple[str, ...],
        allowed_fs: tuple[str, ...],
        handled_net: tuple[str, ...],
        scoped: tuple[str, ...],
    ) -> None:
        self._set(
            abi=abi,
            handled_fs=handled_fs,
            allowed_fs=allowed_fs,
            handled_net=handled_net,
            scoped=scoped,
        )

    @property
    def enforced(self) -> bool:
        return self.abi > 0

    def lines(self) -> list[str]:
        if not self.enforced:
            return ["landlock: not available in this kernel (ABI 0): nothing enforced"]
        denied = [r for r in self.handled_fs if r not in self.allowed_fs]
        return [
            f"landlock: ABI {self.abi}; file-system rights handled: {' '.join(self.handled_fs)}",
            f"landlock: allowed beneath the export only: {' '.join(self.allowed_fs)}",
            f"landlock: denied everywhere: {' '.join(denied) or '-'}",
            f"landlock: network handled, allowed nowhere: {' '.join(self.handled_net) or '-'}"
            + ("" if self.handled_net else f" (needs ABI {NET_ABI})"),
            f"landlock: scoped to the domain: {' '.join(self.scoped) or '-'}"
            + ("" if self.scoped else f" (needs ABI {SCOPE_ABI})"),
        ]


def _mask(names: tuple[str, ...]) -> int:
    bits = {name: bit for name, bit, _ in FS_RIGHTS}
    mask = 0
    for name in names:
        mask |= bits[name]
    return mask


def restrict(root_fd: int, *, allow_device_nodes: bool = False) -> LandlockReport:
    """Confine the calling thread (and threads it starts later) to ``root_fd``.

    Needs ``NO_NEW_PRIVS`` already set (or CAP_SYS_ADMIN). On a kernel
    without Landlock it enforces nothing and says so in the report (ABI 0);
    any other failure raises OSError.
    """
    abi = abi_version()
    if abi == 0:
        return LandlockReport(0, (), (), (), ())
    handled = tuple(name for name, _, since in FS_RIGHTS if since <= abi)
    excluded = NEVER_ALLOWED | (frozenset() if allow_device_nodes else DEVICE_NODE_RIGHTS)
    allowed = tuple(name for name in handled if name not in excluded)
    net = NET_RIGHTS if abi >= NET_ABI else ()
    scopes = SCOPES if abi >= SCOPE_ABI else ()
    attr = _RulesetAttr(
        handled_access_fs=_mask(handled),
        handled_access_net=sum(bit for _, bit in net),
        scoped=sum(bit for _, bit in scopes),
    )
    ruleset_fd = oslib.landlock_create_ruleset(attr)
    try:
        oslib.landlock_add_rule(
            ruleset_fd,
            LANDLOCK_RULE_PATH_BENEATH,
            _PathBeneathAttr(allowed_access=_mask(allowed), parent_fd=root_fd),
        )
        oslib.landlock_restrict_self(ruleset_fd)
    finally:
        os.close(ruleset_fd)
    return LandlockReport(
        abi=abi,
        handled_fs=handled,
        allowed_fs=allowed,
        handled_net=tuple(name for name, _ in net),
        scoped=tuple(name for name, _ in scopes),
    )
