"""Typed messages: one frozen dataclass per request and per reply payload.

Field names and order are those of :mod:`virtfs_proto.layouts` (a test holds
the two together). Strings are raw ``bytes`` exactly as on the wire: QEMU
counts a trailing NUL in the length of V9fsPath strings, and a decoded
message keeps it so it re-encodes byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .constants import MessageType


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """``T_OPEN``: open a file; answered by an FD reply."""

    TYPE: ClassVar[MessageType] = MessageType.T_OPEN
    path: bytes
    flags: int


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """``T_CREATE``: create and open a file owned by uid:gid; answered by an FD reply."""

    TYPE: ClassVar[MessageType] = MessageType.T_CREATE
    path: bytes
    flags: int
    mode: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class MknodRequest:
    """``T_MKNOD``: note the credentials come *first* (unlike ``T_CREATE``)."""

    TYPE: ClassVar[MessageType] = MessageType.T_MKNOD
    uid: int
    gid: int
    path: bytes
    mode: int
    rdev: int


@dataclass(frozen=True, slots=True)
class MkdirRequest:
    """``T_MKDIR``: make a directory owned by uid:gid."""

    TYPE: ClassVar[MessageType] = MessageType.T_MKDIR
    uid: int
    gid: int
    path: bytes
    mode: int


@dataclass(frozen=True, slots=True)
class SymlinkRequest:
    """``T_SYMLINK``: the first string is the *target*, the second the new link."""

    TYPE: ClassVar[MessageType] = MessageType.T_SYMLINK
    uid: int
    gid: int
    target: bytes
    linkpath: bytes


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """``T_LINK``: hard link ``newpath`` to ``oldpath``."""

    TYPE: ClassVar[MessageType] = MessageType.T_LINK
    oldpath: bytes
    newpath: bytes


@dataclass(frozen=True, slots=True)
class LstatRequest:
    """``T_LSTAT``: answered by a :class:`StatReply`."""

    TYPE: ClassVar[MessageType] = MessageType.T_LSTAT
    path: bytes


@dataclass(frozen=True, slots=True)
class ReadlinkRequest:
    """``T_READLINK``: answered by a :class:`ReadlinkReply` of at most ``bufsize - 1`` bytes."""

    TYPE: ClassVar[MessageType] = MessageType.T_READLINK
    path: bytes
    bufsize: int


@dataclass(frozen=True, slots=True)
class StatfsRequest:
    """``T_STATFS``: answered by a :class:`StatfsReply`."""

    TYPE: ClassVar[MessageType] = MessageType.T_STATFS
    path: bytes


@dataclass(frozen=True, slots=True)
class ChmodRequest:
    """``T_CHMOD``: follows symlinks (contained by the export)."""

    TYPE: ClassVar[MessageType] = MessageType.T_CHMOD
    path: bytes
    mode: int


@dataclass(frozen=True, slots=True)
class ChownRequest:
    """``T_CHOWN``: ``lchown``; 0xffffffff leaves an id unchanged."""

    TYPE: ClassVar[MessageType] = MessageType.T_CHOWN
    path: bytes
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class TruncateRequest:
    """``T_TRUNCATE``: set a file's length."""

    TYPE: ClassVar[MessageType] = MessageType.T_TRUNCATE
    path: bytes
    length: int


@dataclass(frozen=True, slots=True)
class UtimeRequest:
    """``T_UTIME``: ``utimensat(..., AT_SYMLINK_NOFOLLOW)``; nsec may be UTIME_NOW/UTIME_OMIT."""

    TYPE: ClassVar[MessageType] = MessageType.T_UTIME
    path: bytes
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int


@dataclass(frozen=True, slots=True)
class RenameRequest:
    """``T_RENAME``."""

    TYPE: ClassVar[MessageType] = MessageType.T_RENAME
    oldpath: bytes
    newpath: bytes


@dataclass(frozen=True, slots=True)
class RemoveRequest:
    """``T_REMOVE``: ``remove(3)``: unlink a file or rmdir an empty directory."""

    TYPE: ClassVar[MessageType] = MessageType.T_REMOVE
    path: bytes


@dataclass(frozen=True, slots=True)
class LgetxattrRequest:
    """``T_LGETXATTR``: ``size == 0`` probes the length (:class:`XattrSizeReply`)."""

    TYPE: ClassVar[MessageType] = MessageType.T_LGETXATTR
    size: int
    path: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class LlistxattrRequest:
    """``T_LLISTXATTR``: ``size == 0`` probes the length (:class:`XattrSizeReply`)."""

    TYPE: ClassVar[MessageType] = MessageType.T_LLISTXATTR
    size: int
    path: bytes


@dataclass(frozen=True, slots=True)
class LsetxattrRequest:
    """``T_LSETXATTR``: ``size``, not the string's length, says how much of ``value`` to store."""

    TYPE: ClassVar[MessageType] = MessageType.T_LSETXATTR
    path: bytes
    name: bytes
    value: bytes
    size: int
    flags: int


@dataclass(frozen=True, slots=True)
class LremovexattrRequest:
    """``T_LREMOVEXATTR``."""

    TYPE: ClassVar[MessageType] = MessageType.T_LREMOVEXATTR
    path: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class GetversionRequest:
    """``T_GETVERSION``: answered by a :class:`VersionReply`."""

    TYPE: ClassVar[MessageType] = MessageType.T_GETVERSION
    path: bytes


Request = (
    OpenRequest
    | CreateRequest
    | MknodRequest
    | MkdirRequest
    | SymlinkRequest
    | LinkRequest
    | LstatRequest
    | ReadlinkRequest
    | StatfsRequest
    | ChmodRequest
    | ChownRequest
    | TruncateRequest
    | UtimeRequest
    | RenameRequest
    | RemoveRequest
    | LgetxattrRequest
    | LlistxattrRequest
    | LsetxattrRequest
    | LremovexattrRequest
    | GetversionRequest
)

#: The request class for each request type.
REQUEST_CLASSES: dict[MessageType, type[Request]] = {
    cls.TYPE: cls
    for cls in (
        OpenRequest,
        CreateRequest,
        MknodRequest,
        MkdirRequest,
        SymlinkRequest,
        LinkRequest,
        LstatRequest,
        ReadlinkRequest,
        StatfsRequest,
        ChmodRequest,
        ChownRequest,
        TruncateRequest,
        UtimeRequest,
        RenameRequest,
        RemoveRequest,
        LgetxattrRequest,
        LlistxattrRequest,
        LsetxattrRequest,
        LremovexattrRequest,
        GetversionRequest,
    )
}


# -- replies ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FdReply:
    """Success of ``T_OPEN``/``T_CREATE``: ``V9FS_FD_VALID`` and one passed fd.

    When decoded, ``fd`` is the received descriptor and the caller owns it.
    When encoded, ``fd`` is the descriptor to pass; it is not in the bytes.
    """

    LAYOUT: ClassVar[str] = "fd"
    fd: int


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """Failure of any request: ``errno`` is positive, the wire carries ``-errno``.

    For ``T_OPEN``/``T_CREATE`` the wire form is the bare int32; for every
    other request a ``T_ERROR`` header with size 4 precedes it.
    """

    LAYOUT: ClassVar[str] = "error"
    errno: int


@dataclass(frozen=True, slots=True)
class StatusReply:
    """Success of a STATUS request: ``T_SUCCESS``, size 4, int32 ``0``."""

    LAYOUT: ClassVar[str] = "status"


@dataclass(frozen=True, slots=True)
class StatReply:
    """``T_LSTAT`` success: ProxyStat, 116 bytes."""

    LAYOUT: ClassVar[str] = "stat"
    st_dev: int
    st_ino: int
    st_nlink: int
    st_mode: int
    st_uid: int
    st_gid: int
    st_rdev: int
    st_size: int
    st_blksize: int
    st_blocks: int
    st_atim_sec: int
    st_atim_nsec: int
    st_mtim_sec: int
    st_mtim_nsec: int
    st_ctim_sec: int
    st_ctim_nsec: int


@dataclass(frozen=True, slots=True)
class StatfsReply:
    """``T_STATFS`` success: ProxyStatFS, 88 bytes."""

    LAYOUT: ClassVar[str] = "statfs"
    f_type: int
    f_bsize: int
    f_blocks: int
    f_bfree: int
    f_bavail: int
    f_files: int
    f_ffree: int
    f_fsid0: int
    f_fsid1: int
    f_namelen: int
    f_frsize: int


@dataclass(frozen=True, slots=True)
class ReadlinkReply:
    """``T_READLINK`` success: the target, without a NUL."""

    LAYOUT: ClassVar[str] = "readlink"
    target: bytes


@dataclass(frozen=True, slots=True)
class XattrSizeReply:
    """``T_LGETXATTR``/``T_LLISTXATTR`` success when the request's size was 0."""

    LAYOUT: ClassVar[str] = "xattr_size"
    size: int


@dataclass(frozen=True, slots=True)
class XattrValueReply:
    """``T_LGETXATTR``/``T_LLISTXATTR`` success when the request's size was not 0."""

    LAYOUT: ClassVar[str] = "xattr_value"
    value: bytes


@dataclass(frozen=True, slots=True)
class VersionReply:
    """``T_GETVERSION`` success."""

    LAYOUT: ClassVar[str] = "version"
    version: int


Reply = (
    FdReply
    | ErrorReply
    | StatusReply
    | StatReply
    | StatfsReply
    | ReadlinkReply
    | XattrSizeReply
    | XattrValueReply
    | VersionReply
)

#: The reply class for each reply layout name.
REPLY_CLASSES: dict[str, type[Reply]] = {
    cls.LAYOUT: cls
    for cls in (
        FdReply,
        ErrorReply,
        StatusReply,
        StatReply,
        StatfsReply,
        ReadlinkReply,
        XattrSizeReply,
        XattrValueReply,
        VersionReply,
    )
}
