"""Protocol constants: message type codes, reply kinds, limits and markers.

Values come from QEMU 7.2's ``hw/9pfs/9p-proxy.h``; each bound sits beside the
reason it exists.
"""

from __future__ import annotations

import enum
import sys

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    from typing import Final, Literal

#: Byte order of every integer on the wire. QEMU marshals with ``bswap = 0``,
#: so the wire carries the *host's* order (little-endian on x86-64); both peers
#: always run on the same host. (At run time, where typing is not imported, a
#: plain ``str``.)
if TYPE_CHECKING:
    ByteOrder = Literal["little", "big"]
else:
    ByteOrder = str

#: The byte order of the running host, the default everywhere.
HOST_BYTE_ORDER: Final[ByteOrder] = "little" if sys.byteorder == "little" else "big"

#: Size of the ``{u32 type; u32 size}`` header that starts every request and
#: every STATUS/RESPONSE reply (FD replies have none).
HEADER_SIZE: Final = 8

#: ``PROXY_MAX_IO_SZ``: both peers allocate ``8 + 65536``-byte buffers, so a
#: payload may be at most this long. QEMU's helper exits (no reply) on a
#: request that announces more; QEMU drains a longer reply and fails it with
#: ``ENOBUFS``. Decoders refuse a larger frame *before* buffering it, which
#: bounds the memory an untrusted peer can make us hold.
PROXY_MAX_IO_SZ: Final = 65536

#: ``V9FS_FD_VALID``: the 4-byte FD reply that accompanies a passed fd.
V9FS_FD_VALID: Final = 0x7FFFFFFF

#: glibc's ``UTIME_NOW`` and ``UTIME_OMIT``, sent raw in the ``*_nsec`` slots
#: of ``T_UTIME``; the kernel then ignores the ``*_sec`` slot.
UTIME_NOW: Final = (1 << 30) - 1
UTIME_OMIT: Final = (1 << 30) - 2

#: The largest string a V9fsString can carry: its length prefix is a u16.
MAX_STRING_LENGTH: Final = 0xFFFF


class MessageType(enum.IntEnum):
    """The ``type`` field of the header (``enum`` in 9p-proxy.h, from 0)."""

    T_SUCCESS = 0  #: reply only: the request succeeded
    T_ERROR = 1  #: reply only: the payload is ``-errno``
    T_OPEN = 2  #: open a file; the reply passes an fd
    T_CREATE = 3  #: create and open a file as uid:gid; the reply passes an fd
    T_MKNOD = 4  #: make a node (FIFO, socket, device, regular) as uid:gid
    T_MKDIR = 5  #: make a directory as uid:gid
    T_SYMLINK = 6  #: make a symbolic link as uid:gid
    T_LINK = 7  #: make a hard link
    T_LSTAT = 8  #: stat without following a final symlink
    T_READLINK = 9  #: read a symbolic link
    T_STATFS = 10  #: file system statistics
    T_CHMOD = 11  #: change mode (follows symlinks)
    T_CHOWN = 12  #: change owner (does not follow symlinks)
    T_TRUNCATE = 13  #: set a file's length
    T_UTIME = 14  #: set access and modification times (nofollow)
    T_RENAME = 15  #: rename
    T_REMOVE = 16  #: remove a file or an empty directory
    T_LGETXATTR = 17  #: read an extended attribute (or probe its size)
    T_LLISTXATTR = 18  #: list extended attribute names (or probe the size)
    T_LSETXATTR = 19  #: set an extended attribute
    T_LREMOVEXATTR = 20  #: remove an extended attribute
    T_GETVERSION = 21  #: inode generation number (FS_IOC_GETVERSION)


class ReplyKind(enum.Enum):
    """How the helper answers a request: the reply does not say, the request does."""

    #: No header: a bare int32, ``V9FS_FD_VALID`` with one SCM_RIGHTS fd, or ``-errno``.
    FD = "fd"
    #: Header ``T_SUCCESS``/``T_ERROR``, size 4, int32 ``0`` or ``-errno``.
    STATUS = "status"
    #: Header ``T_SUCCESS`` with an op-specific payload, or ``T_ERROR`` with ``-errno``.
    RESPONSE = "response"


#: Which reply shape answers each request type.
REPLY_KIND: Final[dict[MessageType, ReplyKind]] = {
    MessageType.T_OPEN: ReplyKind.FD,
    MessageType.T_CREATE: ReplyKind.FD,
    MessageType.T_MKNOD: ReplyKind.STATUS,
    MessageType.T_MKDIR: ReplyKind.STATUS,
    MessageType.T_SYMLINK: ReplyKind.STATUS,
    MessageType.T_LINK: ReplyKind.STATUS,
    MessageType.T_LSTAT: ReplyKind.RESPONSE,
    MessageType.T_READLINK: ReplyKind.RESPONSE,
    MessageType.T_STATFS: ReplyKind.RESPONSE,
    MessageType.T_CHMOD: ReplyKind.STATUS,
    MessageType.T_CHOWN: ReplyKind.STATUS,
    MessageType.T_TRUNCATE: ReplyKind.STATUS,
    MessageType.T_UTIME: ReplyKind.STATUS,
    MessageType.T_RENAME: ReplyKind.STATUS,
    MessageType.T_REMOVE: ReplyKind.STATUS,
    MessageType.T_LGETXATTR: ReplyKind.RESPONSE,
    MessageType.T_LLISTXATTR: ReplyKind.RESPONSE,
    MessageType.T_LSETXATTR: ReplyKind.STATUS,
    MessageType.T_LREMOVEXATTR: ReplyKind.STATUS,
    MessageType.T_GETVERSION: ReplyKind.RESPONSE,
}

#: The request types (everything but the two reply codes).
REQUEST_TYPES: Final[tuple[MessageType, ...]] = tuple(REPLY_KIND)


#: The string fields QEMU 7.2 sends as a V9fsPath, whose length counts a
#: trailing NUL (research notes §2): (request type, field name). Every other
#: string (create/mknod/mkdir/symlink paths, link's new path, both rename
#: paths, remove, the symlink target, xattr names) is built with
#: ``v9fs_string_sprintf`` and has none. The client, the capture scenarios and
#: the suite send paths by this table.
COUNTED_NUL_FIELDS: Final[frozenset[tuple[MessageType, str]]] = frozenset(
    {
        (MessageType.T_OPEN, "path"),
        (MessageType.T_LINK, "oldpath"),
        (MessageType.T_LSTAT, "path"),
        (MessageType.T_READLINK, "path"),
        (MessageType.T_STATFS, "path"),
        (MessageType.T_CHMOD, "path"),
        (MessageType.T_CHOWN, "path"),
        (MessageType.T_TRUNCATE, "path"),
        (MessageType.T_UTIME, "path"),
        (MessageType.T_LGETXATTR, "path"),
        (MessageType.T_LLISTXATTR, "path"),
        (MessageType.T_LSETXATTR, "path"),
        (MessageType.T_LREMOVEXATTR, "path"),
        (MessageType.T_GETVERSION, "path"),
    }
)
