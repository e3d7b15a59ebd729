"""virtfs-proto: QEMU's 9p proxy protocol (virtfs-proxy-helper), specified and implemented.

The codec (:mod:`~virtfs_proto.layouts`, :mod:`~virtfs_proto.messages`,
:mod:`~virtfs_proto.codec`, :mod:`~virtfs_proto.connection`) is sans-I/O and
imports on any OS. Sockets, fd passing and privileges live in
:mod:`~virtfs_proto.transport`, :mod:`~virtfs_proto.client` and
:mod:`~virtfs_proto.server`.
"""

import os as _os

#: ``benchmarks/bench_startup.py --phases`` sets it: then :func:`phase` writes
#: one line per start-up phase to stderr. Off (always, in production), a mark
#: costs one call and one test; no clock is read, nothing is imported.
_PHASES = _os.environ.get("VIRTFS_PROTO_PHASES") == "1"


def phase(name: str) -> None:
    """Mark the end of start-up phase ``name`` (a no-op unless tracing is on).

    The line: ``phase <pid> <CLOCK_MONOTONIC ns> <process CPU ns> <name>``;
    CPU -1 where the clock is refused (seccomp allows no clock_gettime that
    the vDSO does not answer).
    """
    if _PHASES:
        import time  # built in: no file to open (after Landlock)

        try:
            cpu = time.process_time_ns()
        except OSError:
            cpu = -1
        line = f"phase {_os.getpid()} {time.monotonic_ns()} {cpu} {name}\n"
        _os.write(2, line.encode())


phase("interpreter")  # the package is the first of ours a start imports

from .constants import (  # noqa: E402 (after the interpreter's mark)
    HEADER_SIZE,
    PROXY_MAX_IO_SZ,
    UTIME_NOW,
    UTIME_OMIT,
    V9FS_FD_VALID,
    MessageType,
    ReplyKind,
)
from .errors import LocalProtocolError, ProxyProtocolError, RemoteProtocolError  # noqa: E402

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
