"""virtfs-proto: QEMU's 9p proxy protocol (virtfs-proxy-helper), specified and implemented.

The codec (:mod:`~virtfs_proto.layouts`, :mod:`~virtfs_proto.messages`,
:mod:`~virtfs_proto.codec`, :mod:`~virtfs_proto.connection`) is sans-I/O and
imports on any OS. Sockets, fd passing and privileges live in
:mod:`~virtfs_proto.transport`, :mod:`~virtfs_proto.client` and
:mod:`~virtfs_proto.server`.
"""

from .constants import (
    HEADER_SIZE,
    PROXY_MAX_IO_SZ,
    UTIME_NOW,
    UTIME_OMIT,
    V9FS_FD_VALID,
    MessageType,
    ReplyKind,
)
from .errors import LocalProtocolError, ProxyProtocolError, RemoteProtocolError

__version__ = "0.1.0"

__all__ = [
    "HEADER_SIZE",
    "PROXY_MAX_IO_SZ",
    "UTIME_NOW",
    "UTIME_OMIT",
    "V9FS_FD_VALID",
    "LocalProtocolError",
    "MessageType",
    "ProxyProtocolError",
    "RemoteProtocolError",
    "ReplyKind",
    "__version__",
]
