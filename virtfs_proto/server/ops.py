"""One function per request: what the helper does, answered as QEMU 7.2's helper answers.

Every path goes through :class:`~virtfs_proto.server.resolve.Resolver`, so
each operation is contained by layer (a) on its own. Operations on the last
component use the parent directory fd and a single name with a
``*at(..., AT_SYMLINK_NOFOLLOW)`` call (or one that never follows); operations
that follow symlinks (open, chmod, truncate, statfs, getversion) resolve the
whole path, symlinks included, inside the root first.

Deviations from QEMU 7.2's helper, all on inputs QEMU itself never sends or
where QEMU's answer is a defect:

* a special file (FIFO, socket, device) is never opened for I/O: T_OPEN,
  T_CREATE and T_GETVERSION answer ``ENXIO`` at once (QEMU's T_OPEN/T_CREATE
  open it first and can hang on a FIFO; its T_GETVERSION hangs on a FIFO);
* T_GETVERSION's high 32 bits are 0, not stack garbage;
* an embedded NUL in a path or name is ``EINVAL`` (QEMU truncates there);
* a negative T_READLINK or xattr size is ``EINVAL`` (QEMU dies on SIGTRAP);
* an xattr value or list too long for the reply's u16 length (65535 or
  65536 bytes) is ``ENOBUFS``; QEMU answers an *empty* value for 65536;
* T_LSETXATTR with ``size`` larger than the value sent is ``EINVAL`` (QEMU
  reads past its buffer);
* credentials (T_CREATE, T_MKNOD, T_MKDIR, T_SYMLINK) are applied by chown
  after creation, never by set*id. In a set-group-ID directory QEMU's node
  would get the directory's group; ours gets the requested gid (QEMU's client
  sends the directory's group in that case anyway);
* T_MKNOD of a character or block device is ``EPERM``, whatever the uid and
  gid: a device node names any host device, and whoever holds a directory fd
  from us can open it. Only with ``allow_device_nodes`` (``--allow-device-nodes``)
  is one made, and then only for uid == gid == 0, the only case QEMU's
  helper could make them;
* a path whose last component is ``.`` or ``..`` or that ends in ``/`` names
  that directory itself, so e.g. T_REMOVE of ``/`` is ``EINVAL`` (rmdir of
  ``.``) where QEMU's is ``EBUSY``.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat
import sys
from collections.abc import Callable
from errno import (
    EEXIST,
    EINVAL,
    EISDIR,
    ELOOP,
    ENOBUFS,
    ENOENT,
    ENOSYS,
    ENXIO,
    EPERM,
    ERANGE,
)
from typing import Any, Final

from .. import messages as m
from ..constants import MAX_STRING_LENGTH
from .resolve import Resolver, clean_name, clean_path, fstatfs, normalize_open_flags

#: ``_IOR('v', 1, long)`` (0x80087601 on x86-64, in the generic ioctl
#: encoding); the kernel writes only a 32-bit int through it.
FS_IOC_GETVERSION: Final = (2 << 30) | (ctypes.sizeof(ctypes.c_long) << 16) | (ord("v") << 8) | 1

#: File systems on which QEMU's helper asks FS_IOC_GETVERSION at all
#: (ext2/3/4, btrfs, reiserfs, xfs), decided once from the export root.
GETVERSION_FS_TYPES: Final = frozenset({0xEF53, 0x9123683E, 0x52654973, 0x58465342})

AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_EMPTY_PATH: Final = 0x1000
SYS_FCHMODAT2: Final = 452  # Linux >= 6.6: the first chmod that takes an O_PATH fd

_U32: Final = 0xFFFFFFFF
_U64: Final = 0xFFFFFFFFFFFFFFFF
_NS: Final = 1_000_000_000
_PROBE: Final = os.O_PATH | os.O_CLOEXEC
_REGULAR_OR_DIR: Final = (stat.S_IFREG, stat.S_IFDIR)
#: the status flags F_SETFL can change (fs/fcntl.c SETFL_MASK)
_SETFL_FLAGS: Final = os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME | 0o20000
#: the request whose handler answers with bare field values, and its reply
_FIELDS_REPLY: Final[dict[type[Any], Callable[..., m.Reply]]] = {m.LstatRequest: m.StatReply}


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_long))


_libc = ctypes.CDLL(None, use_errno=True)
_utimensat = _libc.utimensat
_utimensat.restype = ctypes.c_int
_utimensat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _check(rc: int) -> None:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _error(err: int) -> OSError:
    return OSError(err, os.strerror(err))


def _id(value: int) -> int:
    """QEMU's ``d`` uid/gid: 0xffffffff is -1, "leave unchanged"."""
    return -1 if value == _U32 else value


def stat_reply(st: os.stat_result) -> m.StatReply:
    """ProxyStat from an ``os.stat_result`` (time_t goes on the wire as u64)."""
    return m.StatReply(*stat_fields(st))


def stat_fields(st: os.stat_result) -> tuple[int, ...]:
    """:func:`stat_reply`'s field values, in order, without the reply object."""
    a_sec, a_nsec = divmod(st.st_atime_ns, _NS)
    m_sec, m_nsec = divmod(st.st_mtime_ns, _NS)
    c_sec, c_nsec = divmod(st.st_ctime_ns, _NS)
    return (
        st.st_dev,
        st.st_ino,
        st.st_nlink,
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_rdev,
        st.st_size,
        st.st_blksize,
        st.st_blocks,
        a_sec & _U64,
        a_nsec,
        m_sec & _U64,
        m_nsec,
        c_sec & _U64,
        c_nsec,
    )


class Operations:
    """The helper's request handlers over one :class:`Resolver`.

    Each handler returns the reply or raises ``OSError``; :meth:`handle`
    turns the latter into an :class:`~virtfs_proto.messages.ErrorReply`.
    ``get_version`` is decided once from the export root's file system;
    ``allow_device_nodes`` lets T_MKNOD make device nodes (the helper then
    keeps CAP_MKNOD).
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        get_version: bool,
        log: Callable[[str], Any],
        allow_device_nodes: bool = False,
    ) -> None:
        self.resolver = resolver
        self._root_fd = resolver.root_fd
        self.get_version = get_version
        #: T_MKNOD may make character and block devices (for uid == gid == 0)
        self.allow_device_nodes = allow_device_nodes
        self._log = log
        self._warned_special = False
        self._have_fchmodat2 = True
        #: request class -> handler; a handler returns a reply, or the field
        #: values of the success reply (see :meth:`answer`)
        self.handlers: dict[type[Any], Callable[[Any], m.Reply | tuple[Any, ...]]] = {
            m.OpenRequest: self.open,
            m.CreateRequest: self.create,
            m.MknodRequest: self.mknod,
            m.MkdirRequest: self.mkdir,
            m.SymlinkRequest: self.symlink,
            m.LinkRequest: self.link,
            m.LstatRequest: self.lstat_fields,
            m.ReadlinkRequest: self.readlink,
            m.StatfsRequest: self.statfs,
            m.ChmodRequest: self.chmod,
            m.ChownRequest: self.chown,
            m.TruncateRequest: self.truncate,
            m.UtimeRequest: self.utime,
            m.RenameRequest: self.rename,
            m.RemoveRequest: self.remove,
            m.LgetxattrRequest: self.lgetxattr,
            m.LlistxattrRequest: self.llistxattr,
            m.LsetxattrRequest: self.lsetxattr,
            m.LremovexattrRequest: self.lremovexattr,
            m.GetversionRequest: self.getversion,
        }

    def handle(self, request: m.Request) -> m.Reply:
        """Run one request; every failure becomes an ErrorReply."""
        answer = self.answer(request)
        if type(answer) is tuple:
            return _FIELDS_REPLY[type(request)](*answer)
        return answer  # type: ignore[return-value]

    def answer(self, request: m.Request) -> m.Reply | tuple[Any, ...]:
        """:meth:`handle` for the request loop: a T_LSTAT success is answered
        with the reply's field values, in order, so that no reply object is
        built (``ServerConnection.send_fields`` encodes them); any other
        answer is a reply."""
        try:
            return self.handlers[type(request)](request)
        except OSError as exc:
            return m.ErrorReply(exc.errno or EINVAL)
        except (ValueError, OverflowError):
            # e.g. an id or device number out of the C type's range
            return m.ErrorReply(EINVAL)

    # -- opening -------------------------------------------------------------

    def _refuse_special(self) -> OSError:
        if not self._warned_special:
            self._warned_special = True
            self._log(
                "9p: broken or compromised client detected; attempt to open special file "
                "(i.e. neither regular file, nor directory)"
            )
        return _error(ENXIO)

    def _probe_kind(self, path: bytes, flags: int) -> int | None:
        """The file type ``path`` names (None if absent), opening nothing.

        A look at the last component without following it (one fstatat on
        the parent) settles everything but a symlink; only then is the whole
        path resolved with ``O_PATH``, following it inside the root.
        ``path`` has been through :func:`~.resolve.clean_path`.
        """
        resolver = self.resolver
        try:
            dirfd, name = resolver.parent_clean(path)
        except FileNotFoundError:
            return None
        try:
            kind = stat.S_IFMT(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return None
        finally:
            if dirfd != self._root_fd:
                os.close(dirfd)
        if kind != stat.S_IFLNK or flags & os.O_NOFOLLOW:
            return kind
        try:
            fd = resolver.open_clean(path, _PROBE, 0)
        except FileNotFoundError:
            return None
        try:
            return stat.S_IFMT(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

    def _open_file(self, path: bytes, flags: int, mode: int, owner: tuple[int, int]) -> int:
        """Open a regular file or directory for the client; never a special file.

        A special file is refused after a look at its type (:meth:`_probe_kind`,
        which opens nothing), and the real open adds ``O_NONBLOCK`` so that a
        FIFO swapped in between cannot block us; the type is checked again on
        the opened fd. ``owner`` is applied only if this call created the file.
        """
        flags, mode = normalize_open_flags(flags, mode)
        path = clean_path(path)
        kind = self._probe_kind(path, flags)
        if kind is None:
            if not flags & os.O_CREAT:
                raise _error(ENOENT)
        elif kind not in _REGULAR_OR_DIR:
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise _error(EEXIST)
            if kind == stat.S_IFLNK:  # only seen with O_NOFOLLOW
                raise _error(ELOOP)
            raise self._refuse_special()
        elif flags & os.O_CREAT and flags & os.O_EXCL:
            raise _error(EEXIST)
        open_clean = self.resolver.open_clean
        # O_PATH takes no other flags (openat2 refuses them) and opens nothing
        real = flags if flags & os.O_PATH else flags | os.O_NONBLOCK | os.O_NOCTTY
        created = False
        if kind is None and not flags & os.O_EXCL:
            # O_EXCL tells us whether the file is ours to chown.
            try:
                fd = open_clean(path, real | os.O_EXCL, mode)
                created = True
            except FileExistsError:
                fd = open_clean(path, real, mode)
        else:
            fd = open_clean(path, real, mode)
            created = kind is None
        try:
            if stat.S_IFMT(os.fstat(fd).st_mode) not in _REGULAR_OR_DIR:
                raise self._refuse_special()
            if created:
                os.fchown(fd, _id(owner[0]), _id(owner[1]))
                if mode & 0o6000:  # chown cleared them; the requester asked for them
                    os.fchmod(fd, mode)
            if not flags & (os.O_NONBLOCK | os.O_PATH):
                # F_SETFL replaces exactly the flags it can change
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & _SETFL_FLAGS)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open(self, req: m.OpenRequest) -> m.Reply:
        # QEMU's T_OPEN with O_CREAT creates a 0000 file owned by root.
        return m.FdReply(self._open_file(req.path, req.flags, 0, (0, 0)))

    def create(self, req: m.CreateRequest) -> m.Reply:
        return m.FdReply(self._open_file(req.path, req.flags, req.mode, (req.uid, req.gid)))

    # -- creating named nodes --------------------------------------------------

    def _chown_created(self, dirfd: int, name: bytes, uid: int, gid: int) -> None:
        os.chown(name, _id(uid), _id(gid), dir_fd=dirfd, follow_symlinks=False)

    def mknod(self, req: m.MknodRequest) -> m.Reply:
        kind = stat.S_IFMT(req.mode)
        if kind in (stat.S_IFCHR, stat.S_IFBLK) and (
            not self.allow_device_nodes or (req.uid, req.gid) != (0, 0)
        ):
            # Refused before trying: by default we lack CAP_MKNOD. When allowed,
            # only for 0:0, as QEMU's helper (CAP_MKNOD effective only then).
            raise _error(EPERM)
        dirfd, name = self.resolver.parent(req.path)
        try:
            if name == b".":
                raise _error(EEXIST)
            os.mknod(name, req.mode, req.rdev, dir_fd=dirfd)
            self._chown_created(dirfd, name, req.uid, req.gid)
            if req.mode & 0o6000 and kind in (stat.S_IFREG, 0):
                self._chmod_nofollow(dirfd, name, req.mode & 0o7777)
        finally:
            self.resolver.release(dirfd)
        return m.StatusReply()

    def mkdir(self, req: m.MkdirRequest) -> m.Reply:
        dirfd, name = self.resolver.parent(req.path)
        try:
            if name == b".":
                raise _error(EEXIST)
            os.mkdir(name, req.mode & 0o7777, dir_fd=dirfd)
            self._chown_created(dirfd, name, req.uid, req.gid)
        finally:
            self.resolver.release(dirfd)
        return m.StatusReply()

    def symlink(self, req: m.SymlinkRequest) -> m.Reply:
        target = clean_name(req.target)
        dirfd, name = self.resolver.parent(req.linkpath)
        try:
            if name == b".":
                raise _error(EEXIST)
            os.symlink(target, name, dir_fd=dirfd)
            self._chown_created(dirfd, name, req.uid, req.gid)
        finally:
            self.resolver.release(dirfd)
        return m.StatusReply()

    def link(self, req: m.LinkRequest) -> m.Reply:
        old_dir, old_name = self.resolver.parent(req.oldpath)
        try:
            new_dir, new_name = self.resolver.parent(req.newpath)
            try:
                os.link(
                    old_name,
                    new_name,
                    src_dir_fd=old_dir,
                    dst_dir_fd=new_dir,
                    follow_symlinks=False,
                )
            finally:
                self.resolver.release(new_dir)
        finally:
            self.resolver.release(old_dir)
        return m.StatusReply()

    # -- reading metadata ------------------------------------------------------

    def lstat(self, req: m.LstatRequest) -> m.Reply:
        return m.StatReply(*self.lstat_fields(req))

    def lstat_fields(self, req: m.LstatRequest) -> tuple[int, ...]:
        dirfd, name = self.resolver.parent(req.path)
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        finally:
            if dirfd != self._root_fd:
                os.close(dirfd)
        return stat_fields(st)

    def readlink(self, req: m.ReadlinkRequest) -> m.Reply:
        if req.bufsize <= 1:
            # QEMU: readlink(..., bufsize - 1) is EINVAL for 0 and 1 and a
            # fatal g_malloc of a negative size: we answer EINVAL for all.
            raise _error(EINVAL)
        dirfd, name = self.resolver.parent(req.path)
        try:
            target = os.readlink(name, dir_fd=dirfd)
        finally:
            self.resolver.release(dirfd)
        return m.ReadlinkReply(target[: req.bufsize - 1])

    def statfs(self, req: m.StatfsRequest) -> m.Reply:
        fd = self.resolver.open(req.path, _PROBE)
        try:
            sfs = fstatfs(fd)
        finally:
            os.close(fd)
        return m.StatfsReply(
            sfs.f_type & _U64,
            sfs.f_bsize & _U64,
            sfs.f_blocks,
            sfs.f_bfree,
            sfs.f_bavail,
            sfs.f_files,
            sfs.f_ffree,
            # QEMU copies the two int halves into u64: sign-extended
            sfs.f_fsid[0] & _U64,
            sfs.f_fsid[1] & _U64,
            sfs.f_namelen & _U64,
            sfs.f_frsize & _U64,
        )

    # -- changing metadata -----------------------------------------------------

    def _fchmodat2(self, dirfd: int, name: bytes, mode: int, flags: int) -> bool:
        """fchmodat2(2); False (remembered) where the kernel lacks it (Linux < 6.6)."""
        if not self._have_fchmodat2:
            return False
        rc = _syscall(
            ctypes.c_long(SYS_FCHMODAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(name),
            ctypes.c_uint(mode),
            ctypes.c_int(flags),
        )
        if rc < 0 and ctypes.get_errno() == ENOSYS:
            self._have_fchmodat2 = False
            return False
        _check(rc)
        return True

    def _chmod_nofollow(self, dirfd: int, name: bytes, mode: int) -> None:
        """chmod a name we just created (not a symlink), without following one."""
        if self._fchmodat2(dirfd, name, mode, AT_SYMLINK_NOFOLLOW):
            return
        # Linux < 6.6: glibc's nofollow chmod needs /proc, absent in the jail;
        # the name was created by us an instant ago, so follow mode is used.
        os.chmod(name, mode, dir_fd=dirfd)

    def chmod(self, req: m.ChmodRequest) -> m.Reply:
        fd = self.resolver.open(req.path, _PROBE)  # follows symlinks, inside the root
        try:
            if self._fchmodat2(fd, b"", req.mode & 0o7777, AT_EMPTY_PATH):
                return m.StatusReply()
            # Linux < 6.6 cannot chmod an O_PATH fd: reopen a regular file or
            # directory for real (never a special file) and fchmod that.
            if stat.S_IFMT(os.fstat(fd).st_mode) not in _REGULAR_OR_DIR:
                raise _error(ENOSYS)
            real = self.resolver.open(
                req.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            )
            try:
                if os.fstat(real).st_ino != os.fstat(fd).st_ino:
                    raise _error(EINVAL)
                os.fchmod(real, req.mode & 0o7777)
            finally:
                os.close(real)
        finally:
            os.close(fd)
        return m.StatusReply()

    def chown(self, req: m.ChownRequest) -> m.Reply:
        dirfd, name = self.resolver.parent(req.path)
        try:
            os.chown(name, _id(req.uid), _id(req.gid), dir_fd=dirfd, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return m.StatusReply()

    def truncate(self, req: m.TruncateRequest) -> m.Reply:
        kind = self._probe_kind(clean_path(req.path), 0)
        if kind is None:
            raise _error(ENOENT)
        if kind == stat.S_IFDIR:
            raise _error(EISDIR)
        if kind != stat.S_IFREG:
            raise _error(EINVAL)  # truncate(2) of a non-regular file
        fd = self.resolver.open(
            req.path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | os.O_LARGEFILE
        )
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _error(EINVAL)
            os.ftruncate(fd, req.length)
        finally:
            os.close(fd)
        return m.StatusReply()

    def utime(self, req: m.UtimeRequest) -> m.Reply:
        times = (_Timespec * 2)(
            _Timespec(req.atime_sec, req.atime_nsec), _Timespec(req.mtime_sec, req.mtime_nsec)
        )
        dirfd, name = self.resolver.parent(req.path)
        try:
            _check(_utimensat(dirfd, name, times, AT_SYMLINK_NOFOLLOW))
        finally:
            self.resolver.release(dirfd)
        return m.StatusReply()

    def rename(self, req: m.RenameRequest) -> m.Reply:
        old_dir, old_name = self.resolver.parent(req.oldpath)
        try:
            new_dir, new_name = self.resolver.parent(req.newpath)
            try:
                os.rename(old_name, new_name, src_dir_fd=old_dir, dst_dir_fd=new_dir)
            finally:
                self.resolver.release(new_dir)
        finally:
            self.resolver.release(old_dir)
        return m.StatusReply()

    def remove(self, req: m.RemoveRequest) -> m.Reply:
        dirfd, name = self.resolver.parent(req.path)
        try:
            try:
                os.unlink(name, dir_fd=dirfd)
            except IsADirectoryError:  # remove(3): then it is rmdir
                os.rmdir(name, dir_fd=dirfd)
        finally:
            self.resolver.release(dirfd)
        return m.StatusReply()

    # -- extended attributes ---------------------------------------------------
    #
    # Linux has no fd-relative l*xattr call that works on a symlink, and the
    # /proc/self/fd route needs /proc (absent in the jail, and a magic link).
    # So the helper fchdir()s to the parent directory fd and passes the single
    # final name to l*xattr: a name without '/' and never '..' cannot leave
    # that directory, the final symlink is not followed, and no file is opened
    # (so a FIFO or device is never touched). The cwd is used by nothing else.

    def _at_parent(self, path: bytes) -> tuple[int, bytes]:
        dirfd, name = self.resolver.parent(path)
        try:
            os.fchdir(dirfd)
        except BaseException:
            self.resolver.release(dirfd)
            raise
        return dirfd, name

    @staticmethod
    def _sized(data: bytes, size: int) -> m.Reply:
        if size < 0:
            raise _error(EINVAL)  # QEMU: fatal g_malloc of a negative size
        if size == 0:
            return m.XattrSizeReply(len(data))
        if len(data) > size:
            raise _error(ERANGE)
        if len(data) > MAX_STRING_LENGTH - 1:
            # The reply string's length is a u16 and the payload at most
            # 65536 bytes: 65535 and 65536 do not fit (QEMU wraps 65536 to 0).
            raise _error(ENOBUFS)
        return m.XattrValueReply(data)

    def lgetxattr(self, req: m.LgetxattrRequest) -> m.Reply:
        if req.size < 0:
            raise _error(EINVAL)
        attr = clean_name(req.name)
        dirfd, name = self._at_parent(req.path)
        try:
            value = os.getxattr(name, attr, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return self._sized(value, req.size)

    def llistxattr(self, req: m.LlistxattrRequest) -> m.Reply:
        if req.size < 0:
            raise _error(EINVAL)
        dirfd, name = self._at_parent(req.path)
        try:
            names = os.listxattr(name, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return self._sized(b"".join(os.fsencode(n) + b"\0" for n in names), req.size)

    def lsetxattr(self, req: m.LsetxattrRequest) -> m.Reply:
        if not 0 <= req.size <= len(req.value):
            # QEMU reads past the value's buffer when size is larger
            raise _error(EINVAL)
        attr = clean_name(req.name)
        dirfd, name = self._at_parent(req.path)
        try:
            os.setxattr(name, attr, req.value[: req.size], req.flags, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return m.StatusReply()

    def lremovexattr(self, req: m.LremovexattrRequest) -> m.Reply:
        attr = clean_name(req.name)
        dirfd, name = self._at_parent(req.path)
        try:
            os.removexattr(name, attr, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return m.StatusReply()

    # -- inode generation ------------------------------------------------------

    def getversion(self, req: m.GetversionRequest) -> m.Reply:
        if not self.get_version:
            return m.VersionReply(0)  # as QEMU: not even looked up
        kind = self._probe_kind(clean_path(req.path), 0)
        if kind is None:
            raise _error(ENOENT)
        if kind not in _REGULAR_OR_DIR:
            raise self._refuse_special()  # QEMU hangs on a FIFO here
        fd = self.resolver.open(req.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if stat.S_IFMT(os.fstat(fd).st_mode) not in _REGULAR_OR_DIR:
                raise self._refuse_special()
            buf = bytearray(8)  # zeroed: the kernel fills only the low int
            fcntl.ioctl(fd, FS_IOC_GETVERSION, buf, True)
        finally:
            os.close(fd)
        return m.VersionReply(int.from_bytes(buf[:4], sys.byteorder))


def export_supports_getversion(root_fd: int) -> bool:
    """QEMU's start-up test: FS_IOC_GETVERSION only on these root file systems."""
    return int(fstatfs(root_fd).f_type) & _U32 in GETVERSION_FS_TYPES
