"""``ProxyClient``: QEMU's side of the proxy protocol, one method per operation.

Each method builds the request, exchanges it over a
:class:`~virtfs_proto.transport.Transport` and turns the reply into a Python
value, or an :class:`OSError` of the right subclass for the helper's errno
(``FileNotFoundError`` for ``ENOENT``, ...), as :mod:`os` would.

Like QEMU's ``proxy->mutex``, a lock lets one request at a time use the
connection, so a client can be shared between threads. :meth:`ProxyClient.pipeline`
sends several requests before reading their replies, which the helper
answers in order.

Paths may be ``str``, ``bytes`` or path-like. By default they go on the wire
the way QEMU 7.2 sends them (research notes §2): V9fsPath strings count a
trailing NUL in their length (open, lstat, readlink, statfs, chmod, chown,
truncate, utime, link's old path, the xattr paths, getversion), while
strings QEMU builds with ``v9fs_string_sprintf`` do not (the path of create,
mknod, mkdir and symlink, link's new path, both rename paths, remove, the
symlink target and xattr names). ``path_style`` changes that for testing a
helper's string handling.

After a transport failure (EOF, reset, a timeout that leaves a reply in
flight, garbage from the helper) the client is closed and every later call
raises :class:`~virtfs_proto.errors.ConnectionClosed`, as QEMU marks the
socket dead and answers ``EIO`` from then on.
"""

from __future__ import annotations

import enum
import errno as _errno
import os
import socket
import stat as _stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, TypeVar, overload

from . import messages as m
from .codec import encode_request
from .connection import ClientConnection
from .constants import COUNTED_NUL_FIELDS, MAX_STRING_LENGTH, UTIME_NOW, UTIME_OMIT, ByteOrder
from .errnos import oserror_for
from .errors import (
    AncillaryTruncated,
    BadFdCount,
    ConnectionClosed,
    LocalProtocolError,
    ProxyProtocolError,
    UnexpectedReply,
)
from .transport import DEFAULT_TIMEOUT, Timeout, Transport, close_fds

PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]

#: How paths are terminated on the wire: ``"qemu"`` as QEMU 7.2 does (see the
#: module docstring), ``"nul"`` always with a counted trailing NUL,
#: ``"bare"`` never.
PathStyle = Literal["qemu", "nul", "bare"]

#: The ``bufsize`` QEMU sends with ``T_READLINK`` (``PATH_MAX``).
READLINK_BUFSIZE: Final = 4096

#: The largest xattr value (or list) the protocol carries intact: the reply's
#: V9fsString length is a u16 and the whole reply must fit the helper's
#: 65544-byte buffer. QEMU's helper wraps 65536 to an empty string and fails
#: 65535 with ENOBUFS.
MAX_XATTR_SIZE: Final = 65534

_U32: Final = 0xFFFFFFFF
_S64_SIGN: Final = 1 << 63

_R = TypeVar("_R", bound=m.Reply)

#: Builds an xattr request for a buffer size (0: the probe).
_RequestMaker = Callable[[int], m.Request]


class Utime(enum.IntEnum):
    """The special ``tv_nsec`` values of ``utimensat()``, usable as times in ``utime()``."""

    NOW = UTIME_NOW  #: set the time to the current time
    OMIT = UTIME_OMIT  #: leave the time unchanged


#: A time for :meth:`ProxyClient.utime`: nanoseconds since the epoch,
#: :class:`Utime` (or the bare ``UTIME_NOW``/``UTIME_OMIT``), or a raw
#: ``(tv_sec, tv_nsec)`` pair sent verbatim.
TimeSpec = int | Utime | tuple[int, int]


def _signed64(value: int) -> int:
    return value - (1 << 64) if value & _S64_SIGN else value


@dataclass(frozen=True, slots=True)
class StatResult:
    """A ``T_LSTAT`` result, read like :class:`os.stat_result`.

    The wire carries times as u64 seconds; they are ``time_t`` (signed), so a
    time before 1970 comes back negative here, as :func:`os.lstat` gives it.
    """

    reply: m.StatReply  #: the decoded reply, field for field

    @property
    def st_mode(self) -> int:
        """File type and permission bits."""
        return self.reply.st_mode

    @property
    def st_ino(self) -> int:
        """Inode number."""
        return self.reply.st_ino

    @property
    def st_dev(self) -> int:
        """Device of the file system holding the file."""
        return self.reply.st_dev

    @property
    def st_nlink(self) -> int:
        """Number of hard links."""
        return self.reply.st_nlink

    @property
    def st_uid(self) -> int:
        """Owner uid."""
        return self.reply.st_uid

    @property
    def st_gid(self) -> int:
        """Owner gid."""
        return self.reply.st_gid

    @property
    def st_rdev(self) -> int:
        """Device number of a device node."""
        return self.reply.st_rdev

    @property
    def st_size(self) -> int:
        """Size in bytes."""
        return self.reply.st_size

    @property
    def st_blksize(self) -> int:
        """Preferred I/O block size."""
        return self.reply.st_blksize

    @property
    def st_blocks(self) -> int:
        """512-byte blocks allocated."""
        return self.reply.st_blocks

    @property
    def st_atime_ns(self) -> int:
        """Access time in nanoseconds since the epoch."""
        return _signed64(self.reply.st_atim_sec) * 10**9 + self.reply.st_atim_nsec

    @property
    def st_mtime_ns(self) -> int:
        """Modification time in nanoseconds since the epoch."""
        return _signed64(self.reply.st_mtim_sec) * 10**9 + self.reply.st_mtim_nsec

    @property
    def st_ctime_ns(self) -> int:
        """Status change time in nanoseconds since the epoch."""
        return _signed64(self.reply.st_ctim_sec) * 10**9 + self.reply.st_ctim_nsec

    @property
    def st_atime(self) -> float:
        """Access time in seconds (float)."""
        return self.st_atime_ns / 1e9

    @property
    def st_mtime(self) -> float:
        """Modification time in seconds (float)."""
        return self.st_mtime_ns / 1e9

    @property
    def st_ctime(self) -> float:
        """Status change time in seconds (float)."""
        return self.st_ctime_ns / 1e9

    def is_dir(self) -> bool:
        """Whether this is a directory."""
        return _stat.S_ISDIR(self.st_mode)

    def is_file(self) -> bool:
        """Whether this is a regular file."""
        return _stat.S_ISREG(self.st_mode)

    def is_symlink(self) -> bool:
        """Whether this is a symbolic link (lstat does not follow it)."""
        return _stat.S_ISLNK(self.st_mode)


@dataclass(frozen=True, slots=True)
class StatfsResult:
    """A ``T_STATFS`` result, read like :class:`os.statvfs_result` (plus ``f_type``)."""

    reply: m.StatfsReply  #: the decoded reply, field for field

    @property
    def f_type(self) -> int:
        """File system magic number (e.g. 0xEF53 for ext2/3/4)."""
        return self.reply.f_type

    @property
    def f_bsize(self) -> int:
        """Optimal transfer block size."""
        return self.reply.f_bsize

    @property
    def f_frsize(self) -> int:
        """Fragment size (the unit of the block counts)."""
        return self.reply.f_frsize

    @property
    def f_blocks(self) -> int:
        """Total data blocks."""
        return self.reply.f_blocks

    @property
    def f_bfree(self) -> int:
        """Free blocks."""
        return self.reply.f_bfree

    @property
    def f_bavail(self) -> int:
        """Free blocks available to unprivileged users."""
        return self.reply.f_bavail

    @property
    def f_files(self) -> int:
        """Total inodes."""
        return self.reply.f_files

    @property
    def f_ffree(self) -> int:
        """Free inodes."""
        return self.reply.f_ffree

    @property
    def f_favail(self) -> int:
        """Free inodes for unprivileged users (statfs has no such field: same as f_ffree)."""
        return self.reply.f_ffree

    @property
    def f_namemax(self) -> int:
        """Maximum file name length."""
        return self.reply.f_namelen

    @property
    def f_fsid(self) -> int:
        """The file system id as glibc's ``statvfs()`` combines it.

        Each half travels as an ``int`` sign-extended to 64 bits (notes §7);
        only its low 32 bits are the value. (QEMU's own client takes the
        second half from the *high* bits, and so loses it.)
        """
        return (self.reply.f_fsid0 & _U32) | ((self.reply.f_fsid1 & _U32) << 32)


def encode_path(path: PathArg, *, nul: bool) -> bytes:
    """A path as wire bytes: fs-encoded, optionally with a counted trailing NUL.

    Raises :class:`LocalProtocolError` for an embedded NUL (the helper would
    silently cut the path there) or a string too long for its u16 length.
    """
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise LocalProtocolError(f"embedded NUL in {raw!r}: the helper would truncate it")
    if nul:
        raw += b"\0"
    if len(raw) > MAX_STRING_LENGTH:
        raise LocalProtocolError(f"a string of {len(raw)} bytes does not fit a V9fsString")
    return raw


def _owner_id(value: int) -> int:
    # -1 means "unchanged" (chown) in C; the wire field is a u32.
    return value & _U32 if value == -1 else value


def _timespec(value: TimeSpec) -> tuple[int, int]:
    if isinstance(value, tuple):
        return value
    if value in (UTIME_NOW, UTIME_OMIT):
        # The kernel ignores tv_sec then; 0 is what a careful client sends.
        return 0, int(value)
    sec, nsec = divmod(value, 10**9)
    return sec, nsec


def _decode_like(template: object, raw: bytes) -> str | bytes:
    """Return ``raw`` as ``str`` when the caller gave a ``str`` path, as :mod:`os` does."""
    if isinstance(template, bytes) or (
        isinstance(template, os.PathLike) and isinstance(os.fspath(template), bytes)
    ):
        return raw
    return os.fsdecode(raw)


class ProxyClient:
    """A client for one connection to a proxy helper.

    ``sock`` is a connected AF_UNIX stream socket (one end of a socketpair
    or a connection to a helper's named socket); the client owns it.
    ``timeout`` bounds each reply (None waits forever, as QEMU does).
    """

    def __init__(
        self,
        sock: socket.socket | Transport,
        *,
        timeout: float | None = None,
        path_style: PathStyle = "qemu",
        byteorder: ByteOrder | None = None,
    ) -> None:
        self.transport = sock if isinstance(sock, Transport) else Transport(sock, timeout=timeout)
        if isinstance(sock, Transport) and timeout is not None:
            self.transport.timeout = timeout
        self.path_style: PathStyle = path_style
        self._conn = ClientConnection(byteorder)
        self._lock = threading.Lock()
        #: why the connection became unusable, once it has
        self.failure: ProxyProtocolError | None = None
        #: Set by whoever started the helper (see :mod:`~virtfs_proto.launcher`):
        #: called when the connection drops, its answer (e.g. "killed by
        #: SIGABRT") is added to the :class:`ConnectionClosed` message.
        self.peer_status: Callable[[], str | None] | None = None

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Close the socket; the helper sees EOF and exits. Idempotent."""
        self.transport.close(self._conn)

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by :meth:`close` or after a failure)."""
        return self.transport.closed

    def __enter__(self) -> ProxyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- requests --------------------------------------------------------------

    def _path(self, path: PathArg, request: type[m.Request], field: str = "path") -> bytes:
        """``path`` as ``request``'s ``field``: with QEMU's counted NUL where it sends one
        (:data:`~virtfs_proto.constants.COUNTED_NUL_FIELDS`), unless ``path_style`` says."""
        style = self.path_style
        qemu_nul = (request.TYPE, field) in COUNTED_NUL_FIELDS
        return encode_path(path, nul=qemu_nul if style == "qemu" else style == "nul")

    def _check_open(self) -> None:
        if self.failure is not None:
            raise ConnectionClosed(
                f"the connection is unusable after an earlier failure: {self.failure}"
            )
        if self.transport.closed:
            raise ConnectionClosed("the client is closed")

    def _fail(self, exc: ProxyProtocolError) -> None:
        # Anything but a fully consumed reply leaves the stream out of step
        # (or the helper gone): stop using it, as QEMU does.
        self.failure = exc
        self.transport.close(self._conn)
        if isinstance(exc, ConnectionClosed) and self.peer_status is not None:
            status = self.peer_status()
            if status:
                exc.message = f"{exc.message}; the helper {status}"
                exc.args = (exc.message,)

    def request(self, request: m.Request, *, timeout: Timeout = DEFAULT_TIMEOUT) -> m.Reply:
        """Exchange one request and return the decoded reply, ``ErrorReply`` included.

        The low-level entry point the operation methods use; the caller owns
        the descriptor of an :class:`~virtfs_proto.messages.FdReply`.
        """
        with self._lock:
            self._check_open()
            try:
                return self.transport.exchange(self._conn, request, timeout=timeout).reply
            except (BadFdCount, AncillaryTruncated):
                raise  # the reply was consumed: still in step
            except LocalProtocolError:
                raise  # refused before anything was sent (e.g. too large to encode)
            except ProxyProtocolError as exc:
                self._fail(exc)
                raise

    def pipeline(
        self,
        requests: Iterable[m.Request],
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        window: int = 32,
    ) -> list[m.Reply]:
        """Send requests without waiting for each reply; return the replies in order.

        Errors come back as :class:`~virtfs_proto.messages.ErrorReply` (use
        :meth:`check` to raise them); the caller owns every
        :class:`~virtfs_proto.messages.FdReply` descriptor. At most
        ``window`` requests are in flight, so neither side can fill the
        other's socket buffer and deadlock. ``timeout`` applies per reply.
        Any failure closes every received descriptor and the connection (the
        replies still in flight would answer later requests).
        """
        if window < 1:
            raise LocalProtocolError("the pipeline window must be at least 1")
        pending = list(requests)
        replies: list[m.Reply] = []
        with self._lock:
            self._check_open()
            conn, transport = self._conn, self.transport
            # Refuse an unencodable request before sending anything: halfway
            # through, the replies in flight would leave the stream unusable.
            for request in pending:
                encode_request(request, byteorder=conn.byteorder)
            sent = 0
            try:
                while len(replies) < len(pending):
                    while sent < len(pending) and conn.outstanding < window:
                        transport.send(conn.send_request(pending[sent]), timeout=timeout)
                        sent += 1
                    replies.append(transport.read_event(conn, timeout=timeout).reply)
            except BaseException as exc:
                close_replies(replies)
                self._fail(
                    exc
                    if isinstance(exc, ProxyProtocolError)
                    else ConnectionClosed(f"pipeline interrupted: {exc!r}")
                )
                raise
        return replies

    @staticmethod
    def check(reply: m.Reply, filename: PathArg | None = None) -> m.Reply:
        """Return ``reply``, or raise the :class:`OSError` an ``ErrorReply`` stands for."""
        if isinstance(reply, m.ErrorReply):
            raise oserror_for(reply.errno, None if filename is None else os.fspath(filename))
        return reply

    def _call(
        self,
        request: m.Request,
        expect: type[_R],
        filename: PathArg,
        filename2: PathArg | None = None,
    ) -> _R:
        reply = self.request(request)
        if isinstance(reply, m.ErrorReply):
            exc = oserror_for(reply.errno, os.fspath(filename))
            if filename2 is not None:
                exc.filename2 = os.fspath(filename2)
            raise exc
        if not isinstance(reply, expect):  # pragma: no cover - the codec decodes by request
            close_replies([reply])
            raise UnexpectedReply(f"{type(reply).__name__} answering {request.TYPE.name}")
        return reply

    # -- the 20 operations -----------------------------------------------------

    def open(self, path: PathArg, flags: int = os.O_RDONLY) -> int:
        """``T_OPEN``: open ``path`` with host ``open(2)`` ``flags``; return a descriptor you own.

        The helper follows symlinks (inside the export) and refuses anything
        but regular files and directories with ``ENXIO``. ``O_CREAT`` here
        would create a mode-0000 file: use :meth:`create`.
        """
        return self._call(m.OpenRequest(self._path(path, m.OpenRequest), flags), m.FdReply, path).fd

    def create(
        self,
        path: PathArg,
        flags: int = os.O_RDWR | os.O_EXCL,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
    ) -> int:
        """``T_CREATE``: create ``path`` owned by ``uid:gid`` with exactly ``mode``; return its fd.

        ``O_CREAT`` is added to ``flags``, as QEMU's ``lcreate`` does. The
        helper runs with umask 0, so ``mode`` lands as given.

        QEMU 7.2's helper mishandles ``uid == 0`` with ``gid != 0`` (it is
        left without most capabilities; notes §8): avoid it against that helper.
        """
        request = m.CreateRequest(
            self._path(path, m.CreateRequest), flags | os.O_CREAT, mode, uid, gid
        )
        return self._call(request, m.FdReply, path).fd

    def mknod(self, path: PathArg, mode: int, rdev: int = 0, uid: int = 0, gid: int = 0) -> None:
        """``T_MKNOD``: ``mode`` includes the file type (``stat.S_IFIFO | 0o644``...)."""
        request = m.MknodRequest(uid, gid, self._path(path, m.MknodRequest), mode, rdev)
        self._call(request, m.StatusReply, path)

    def mkdir(self, path: PathArg, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        """``T_MKDIR``: make a directory owned by ``uid:gid`` with exactly ``mode``."""
        self._call(
            m.MkdirRequest(uid, gid, self._path(path, m.MkdirRequest), mode), m.StatusReply, path
        )

    def symlink(self, target: PathArg, linkpath: PathArg, uid: int = 0, gid: int = 0) -> None:
        """``T_SYMLINK``: make ``linkpath`` point to ``target`` (as :func:`os.symlink`)."""
        # The target is stored verbatim: never NUL-terminated, whatever the style.
        request = m.SymlinkRequest(
            uid,
            gid,
            encode_path(target, nul=False),
            self._path(linkpath, m.SymlinkRequest, "linkpath"),
        )
        self._call(request, m.StatusReply, linkpath, target)

    def link(self, oldpath: PathArg, newpath: PathArg) -> None:
        """``T_LINK``: hard link ``newpath`` to ``oldpath`` (done as root by QEMU's helper)."""
        request = m.LinkRequest(
            self._path(oldpath, m.LinkRequest, "oldpath"),
            self._path(newpath, m.LinkRequest, "newpath"),
        )
        self._call(request, m.StatusReply, oldpath, newpath)

    def lstat(self, path: PathArg) -> StatResult:
        """``T_LSTAT``: stat without following a final symlink."""
        return StatResult(
            self._call(m.LstatRequest(self._path(path, m.LstatRequest)), m.StatReply, path)
        )

    @overload
    def readlink(self, path: str | os.PathLike[str], bufsize: int = ...) -> str: ...
    @overload
    def readlink(self, path: bytes | os.PathLike[bytes], bufsize: int = ...) -> bytes: ...

    def readlink(self, path: PathArg, bufsize: int = READLINK_BUFSIZE) -> str | bytes:
        """``T_READLINK``: the link's target (``str`` for a ``str`` path, as :func:`os.readlink`).

        The helper silently truncates to ``bufsize - 1`` bytes; QEMU sends 4096.
        """
        request = m.ReadlinkRequest(self._path(path, m.ReadlinkRequest), bufsize)
        return _decode_like(path, self._call(request, m.ReadlinkReply, path).target)

    def statfs(self, path: PathArg = "/") -> StatfsResult:
        """``T_STATFS``: statistics of the file system holding ``path``."""
        return StatfsResult(
            self._call(m.StatfsRequest(self._path(path, m.StatfsRequest)), m.StatfsReply, path)
        )

    def chmod(self, path: PathArg, mode: int) -> None:
        """``T_CHMOD``: follows symlinks (contained by the helper's chroot)."""
        self._call(m.ChmodRequest(self._path(path, m.ChmodRequest), mode), m.StatusReply, path)

    def chown(self, path: PathArg, uid: int = -1, gid: int = -1) -> None:
        """``T_CHOWN``: ``lchown``; -1 leaves an id unchanged."""
        request = m.ChownRequest(self._path(path, m.ChownRequest), _owner_id(uid), _owner_id(gid))
        self._call(request, m.StatusReply, path)

    def truncate(self, path: PathArg, length: int) -> None:
        """``T_TRUNCATE``: set the file's length."""
        self._call(
            m.TruncateRequest(self._path(path, m.TruncateRequest), length), m.StatusReply, path
        )

    def utime(
        self, path: PathArg, atime: TimeSpec = Utime.NOW, mtime: TimeSpec = Utime.NOW
    ) -> None:
        """``T_UTIME``: set access and modification times without following a symlink.

        Each time is nanoseconds since the epoch, :class:`Utime` ``NOW`` or
        ``OMIT`` (the bare ``UTIME_NOW``/``UTIME_OMIT`` constants too), or a
        raw ``(tv_sec, tv_nsec)`` pair. Unlike QEMU 7.2's client (which puts
        the mtime's nanoseconds in the atime slot, notes §6) each slot
        carries its own value.
        """
        (asec, ansec), (msec, mnsec) = _timespec(atime), _timespec(mtime)
        request = m.UtimeRequest(self._path(path, m.UtimeRequest), asec, ansec, msec, mnsec)
        self._call(request, m.StatusReply, path)

    def rename(self, oldpath: PathArg, newpath: PathArg) -> None:
        """``T_RENAME``: rename, replacing ``newpath`` if it exists."""
        request = m.RenameRequest(
            self._path(oldpath, m.RenameRequest, "oldpath"),
            self._path(newpath, m.RenameRequest, "newpath"),
        )
        self._call(request, m.StatusReply, oldpath, newpath)

    def remove(self, path: PathArg) -> None:
        """``T_REMOVE``: unlink a file or remove an empty directory (``remove(3)``)."""
        self._call(m.RemoveRequest(self._path(path, m.RemoveRequest)), m.StatusReply, path)

    def lgetxattr_size(self, path: PathArg, name: str | bytes) -> int:
        """``T_LGETXATTR`` with size 0: the length of the attribute's value."""
        request = m.LgetxattrRequest(
            0, self._path(path, m.LgetxattrRequest), encode_path(name, nul=False)
        )
        return self._call(request, m.XattrSizeReply, path).size

    def lgetxattr(self, path: PathArg, name: str | bytes, size: int | None = None) -> bytes:
        """``T_LGETXATTR``: an extended attribute's value (a final symlink is not followed).

        With ``size`` None, probe the length first (size 0), then fetch it,
        retrying if it grew in between (``ERANGE``). With a ``size``, fetch
        once with that buffer (``OSError(ERANGE)`` if too small).
        """
        wire_name = encode_path(name, nul=False)
        wire_path = self._path(path, m.LgetxattrRequest)
        if size is not None:
            if size <= 0:
                raise LocalProtocolError("size must be positive (0 is the probe: lgetxattr_size)")
            request = m.LgetxattrRequest(size, wire_path, wire_name)
            return self._call(request, m.XattrValueReply, path).value
        return self._probe_then_fetch(
            path,
            lambda n: m.LgetxattrRequest(n, wire_path, wire_name),
        )

    def _probe_then_fetch(self, path: PathArg, make: _RequestMaker) -> bytes:
        for _ in range(8):
            length = self._call(make(0), m.XattrSizeReply, path).size
            if length == 0:
                return b""
            if length > MAX_XATTR_SIZE:
                raise oserror_for(_errno.E2BIG, os.fspath(path))
            try:
                return self._call(make(length), m.XattrValueReply, path).value
            except OSError as exc:
                if exc.errno != _errno.ERANGE:
                    raise
                # It grew between the probe and the fetch: probe again.
        raise oserror_for(_errno.ERANGE, os.fspath(path))

    def llistxattr_size(self, path: PathArg) -> int:
        """``T_LLISTXATTR`` with size 0: the length of the NUL-separated name list."""
        request = m.LlistxattrRequest(0, self._path(path, m.LlistxattrRequest))
        return self._call(request, m.XattrSizeReply, path).size

    @overload
    def llistxattr(self, path: str | os.PathLike[str], size: int | None = ...) -> list[str]: ...
    @overload
    def llistxattr(
        self, path: bytes | os.PathLike[bytes], size: int | None = ...
    ) -> list[bytes]: ...

    def llistxattr(self, path: PathArg, size: int | None = None) -> list[str] | list[bytes]:
        """``T_LLISTXATTR``: the attribute names, a final symlink not followed.

        ``str`` names for a ``str`` path, as :func:`os.listxattr`. Probes the
        length then fetches, like :meth:`lgetxattr`.
        """
        wire_path = self._path(path, m.LlistxattrRequest)
        if size is not None:
            if size <= 0:
                raise LocalProtocolError("size must be positive (0 is the probe: llistxattr_size)")
            raw = self._call(m.LlistxattrRequest(size, wire_path), m.XattrValueReply, path).value
        else:
            raw = self._probe_then_fetch(path, lambda n: m.LlistxattrRequest(n, wire_path))
        names = [n for n in raw.split(b"\0") if n]
        if isinstance(_decode_like(path, b""), bytes):
            return names
        return [os.fsdecode(n) for n in names]

    def lsetxattr(
        self,
        path: PathArg,
        name: str | bytes,
        value: bytes,
        flags: int = 0,
        size: int | None = None,
    ) -> None:
        """``T_LSETXATTR``: set an attribute (a final symlink is not followed).

        ``flags``: 0, ``os.XATTR_CREATE`` or ``os.XATTR_REPLACE``.
        ``size`` (default ``len(value)``) is what the helper stores: it is
        authoritative on the wire, not the string's length.
        """
        if len(value) > MAX_STRING_LENGTH:
            raise LocalProtocolError(f"a {len(value)}-byte value does not fit a V9fsString")
        request = m.LsetxattrRequest(
            self._path(path, m.LsetxattrRequest),
            encode_path(name, nul=False),
            bytes(value),
            len(value) if size is None else size,
            flags,
        )
        self._call(request, m.StatusReply, path)

    def lremovexattr(self, path: PathArg, name: str | bytes) -> None:
        """``T_LREMOVEXATTR``: remove an attribute (``ENODATA`` if it is not set)."""
        request = m.LremovexattrRequest(
            self._path(path, m.LremovexattrRequest), encode_path(name, nul=False)
        )
        self._call(request, m.StatusReply, path)

    def getversion(self, path: PathArg, *, raw: bool = False) -> int:
        """``T_GETVERSION``: the inode generation number.

        Only the low 32 bits are meaningful: QEMU 7.2's helper leaves the
        high half uninitialised (stack bytes, notes §11). They are masked off
        unless ``raw``. On exports that are not ext2/3/4, btrfs, reiserfs or
        xfs, QEMU's helper answers 0 without looking at ``path``.
        """
        version = self._call(
            m.GetversionRequest(self._path(path, m.GetversionRequest)), m.VersionReply, path
        )
        return version.version if raw else version.version & _U32


def close_replies(replies: Sequence[m.Reply]) -> None:
    """Close the descriptors of every :class:`~virtfs_proto.messages.FdReply` in ``replies``."""
    close_fds([r.fd for r in replies if isinstance(r, m.FdReply)])
