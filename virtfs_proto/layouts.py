"""The construct definitions of every proxy-protocol layout.

This module is the single source of truth. The codec's fast path
(:mod:`virtfs_proto.fastpath`), the dataclasses' field order
(:mod:`virtfs_proto.messages`, checked by the tests), the documentation's
field tables and the CLI all read these definitions.

Every integer is in the host's byte order (QEMU marshals with ``bswap = 0``),
so the definitions are built per byte order by :func:`layouts_for`;
:data:`LAYOUTS` is the running host's. Fields are packed back to back: there is
no padding anywhere. Field names are the wire's names and the dataclasses'.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from construct import (
    Construct,
    GreedyBytes,
    Int16ub,
    Int16ul,
    Int32sb,
    Int32sl,
    Int32ub,
    Int32ul,
    Int64sb,
    Int64sl,
    Int64ub,
    Int64ul,
    Prefixed,
    Struct,
)

from .constants import HOST_BYTE_ORDER, ByteOrder, MessageType

_INTS: Final = {
    "little": (Int16ul, Int32ul, Int32sl, Int64ul, Int64sl),
    "big": (Int16ub, Int32ub, Int32sb, Int64ub, Int64sb),
}


@dataclass(frozen=True)
class Layouts:
    """All layouts for one byte order."""

    byteorder: ByteOrder
    #: ``struct ProxyHeader``: starts every request and STATUS/RESPONSE reply.
    header: Any
    #: A V9fsString: u16 length, then that many bytes, no terminator.
    string: Any
    #: Request payloads (after the header), by type.
    requests: Mapping[MessageType, Any]
    #: Reply payloads by name: ``fd`` (whole FD reply, no header), ``status``,
    #: ``error``, ``stat``, ``statfs``, ``readlink``, ``xattr_size``,
    #: ``xattr_value``, ``version``.
    replies: Mapping[str, Any]


def _build(byteorder: ByteOrder) -> Layouts:
    u16, u32, s32, u64, s64 = _INTS[byteorder]

    # ``s`` in QEMU's marshaller: the receiver appends a NUL and uses a C
    # string, so an embedded NUL truncates. QEMU counts the trailing NUL in
    # V9fsPath strings but not in others; the bytes here are kept verbatim.
    string = Prefixed(u16, GreedyBytes)

    def path(doc: str) -> Construct:
        return string * doc

    uid = u32 * "owner uid to create as (QEMU's ``d``; 0xffffffff is -1)"
    gid = u32 * "owner gid to create as"
    mode = u32 * "mode_t, including the S_IFMT file type bits where relevant"

    header = Struct(
        "type" / u32 * "MessageType: a request code, or T_SUCCESS/T_ERROR in a reply",
        "size" / u32 * "payload bytes after this header (at most PROXY_MAX_IO_SZ)",
    )

    T = MessageType
    requests: dict[MessageType, Any] = {
        T.T_OPEN: Struct(
            "path" / path("file to open"),
            "flags" / s32 * "host open(2) flags (O_CREAT makes a 0000 file)",
        ),
        T.T_CREATE: Struct(
            "path" / path("file to create"),
            "flags" / s32 * "host open(2) flags",
            "mode" / mode,
            "uid" / uid,
            "gid" / gid,
        ),
        T.T_MKNOD: Struct(
            "uid" / uid,
            "gid" / gid,
            "path" / path("node to create"),
            "mode" / mode,
            "rdev" / u64 * "device number as the host's dev_t (glibc makedev)",
        ),
        T.T_MKDIR: Struct(
            "uid" / uid,
            "gid" / gid,
            "path" / path("directory to create"),
            "mode" / mode,
        ),
        T.T_SYMLINK: Struct(
            "uid" / uid,
            "gid" / gid,
            "target" / path("what the link points to (stored verbatim)"),
            "linkpath" / path("the link to create"),
        ),
        T.T_LINK: Struct(
            "oldpath" / path("existing file"),
            "newpath" / path("new name for it"),
        ),
        T.T_LSTAT: Struct("path" / path("file to stat; a final symlink is not followed")),
        T.T_READLINK: Struct(
            "path" / path("symbolic link to read"),
            "bufsize" / s32 * "buffer size; at most bufsize-1 bytes come back",
        ),
        T.T_STATFS: Struct("path" / path("any file on the file system")),
        T.T_CHMOD: Struct(
            "path" / path("file whose mode changes (follows symlinks)"),
            "mode" / mode,
        ),
        T.T_CHOWN: Struct(
            "path" / path("file whose owner changes (does not follow symlinks)"),
            "uid" / u32 * "new uid; 0xffffffff leaves it unchanged",
            "gid" / u32 * "new gid; 0xffffffff leaves it unchanged",
        ),
        T.T_TRUNCATE: Struct(
            "path" / path("file to truncate"),
            "length" / s64 * "new length (off_t)",
        ),
        T.T_UTIME: Struct(
            "path" / path("file whose times change (does not follow symlinks)"),
            "atime_sec" / s64 * "access time, seconds",
            "atime_nsec" / s64 * "access time, nanoseconds, or UTIME_NOW / UTIME_OMIT",
            "mtime_sec" / s64 * "modification time, seconds",
            "mtime_nsec" / s64 * "modification time, nanoseconds, or UTIME_NOW / UTIME_OMIT",
        ),
        T.T_RENAME: Struct(
            "oldpath" / path("existing name"),
            "newpath" / path("new name (replaced if it exists)"),
        ),
        T.T_REMOVE: Struct("path" / path("file or empty directory to remove")),
        T.T_LGETXATTR: Struct(
            "size" / s32 * "buffer size; 0 asks only for the value's length",
            "path" / path("file (a final symlink is not followed)"),
            "name" / string * "attribute name, e.g. user.comment",
        ),
        T.T_LLISTXATTR: Struct(
            "size" / s32 * "buffer size; 0 asks only for the list's length",
            "path" / path("file (a final symlink is not followed)"),
        ),
        T.T_LSETXATTR: Struct(
            "path" / path("file (a final symlink is not followed)"),
            "name" / string * "attribute name",
            "value" / string * "attribute value",
            "size" / s32 * "bytes of value to store: authoritative, not the string length",
            "flags" / s32 * "0, XATTR_CREATE (1) or XATTR_REPLACE (2)",
        ),
        T.T_LREMOVEXATTR: Struct(
            "path" / path("file (a final symlink is not followed)"),
            "name" / string * "attribute name",
        ),
        T.T_GETVERSION: Struct("path" / path("file whose inode generation is asked")),
    }

    replies: dict[str, Any] = {
        "fd": Struct(
            "status" / s32 * "V9FS_FD_VALID (0x7fffffff) with one SCM_RIGHTS fd, or -errno",
        ),
        "status": Struct("status" / s32 * "0: success"),
        "error": Struct("status" / s32 * "-errno (negative Linux errno)"),
        "stat": Struct(
            "st_dev" / u64 * "device of the file system",
            "st_ino" / u64 * "inode number",
            "st_nlink" / u64 * "hard link count",
            "st_mode" / u32 * "file type and mode bits",
            "st_uid" / u32 * "owner uid",
            "st_gid" / u32 * "owner gid",
            "st_rdev" / u64 * "device number, for device nodes",
            "st_size" / u64 * "size in bytes",
            "st_blksize" / u64 * "preferred I/O block size",
            "st_blocks" / u64 * "512-byte blocks allocated",
            "st_atim_sec" / u64 * "access time, seconds",
            "st_atim_nsec" / u64 * "access time, nanoseconds",
            "st_mtim_sec" / u64 * "modification time, seconds",
            "st_mtim_nsec" / u64 * "modification time, nanoseconds",
            "st_ctim_sec" / u64 * "status change time, seconds",
            "st_ctim_nsec" / u64 * "status change time, nanoseconds",
        ),
        "statfs": Struct(
            "f_type" / u64 * "file system magic number",
            "f_bsize" / u64 * "optimal transfer block size",
            "f_blocks" / u64 * "total data blocks",
            "f_bfree" / u64 * "free blocks",
            "f_bavail" / u64 * "free blocks for unprivileged users",
            "f_files" / u64 * "total inodes",
            "f_ffree" / u64 * "free inodes",
            "f_fsid0" / u64 * "f_fsid.__val[0], an int sign-extended to 64 bits",
            "f_fsid1" / u64 * "f_fsid.__val[1], an int sign-extended to 64 bits",
            "f_namelen" / u64 * "maximum name length",
            "f_frsize" / u64 * "fragment size",
        ),
        "readlink": Struct("target" / string * "link target, no terminating NUL"),
        "xattr_size": Struct("size" / s32 * "length of the value or list (size-0 probe)"),
        "xattr_value": Struct("value" / string * "value, or the NUL-separated name list"),
        "version": Struct(
            "version" / u64 * "inode generation; only the low 32 bits are meaningful"
        ),
    }
    return Layouts(byteorder, header, string, requests, replies)


@functools.cache
def layouts_for(byteorder: ByteOrder | None = None) -> Layouts:
    """The layouts for one byte order (``None``: the running host's)."""
    order = byteorder or HOST_BYTE_ORDER
    if order not in _INTS:
        raise ValueError(f"byteorder must be 'little' or 'big', not {order!r}")
    return _build(order)


#: The layouts in the running host's byte order.
LAYOUTS: Final = layouts_for(HOST_BYTE_ORDER)
