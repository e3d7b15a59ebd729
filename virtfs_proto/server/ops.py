"""One function per request: what the helper does, answered as QEMU 7.2's helper answers.

Every path goes through :class:`~virtfs_proto.server.resolve.Resolver`, so
each operation is contained by layer (a) on its own. Operations on the last
component use the parent directory fd and a single name with a
``*at(..., AT_SYMLINK_NOFOLLOW)`` call (or one that never follows); operations
that follow symlinks (open, chmod, truncate, statfs, getversion) resolve the
whole path, symlinks included, inside the root first.

Deviations from QEMU 7.2's helper, all on inputs QEMU itself never sends or
where QEMU's answer is a defect:

* a special file (FIFO, socket, device) is never opened for I/O, even while
  another process swaps it in under the name: T_OPEN, T_CREATE and
  T_GETVERSION answer ``ENXIO`` (QEMU's T_OPEN/T_CREATE open it first and
  can hang on a FIFO; its T_GETVERSION hangs on a FIFO). An existing object
  is opened ``O_PATH``, checked with ``fstat``, and that inode reopened
  through procfs (:meth:`Operations._reopen`);
* a file counts as created only when an ``O_CREAT|O_EXCL`` open (or
  ``O_TMPFILE``) made it; it then gets the requested owner, whatever path
  shape led there (spec: security.rst, "Owners of created objects"). An
  fd passed back for ``O_NOFOLLOW`` does not show ``O_NOFOLLOW`` in
  ``F_GETFL`` (it is the reopened inode, not a lookup of the name);
* T_GETVERSION's high 32 bits are 0, not stack garbage;
* an embedded NUL in a path or name is ``EINVAL`` (QEMU truncates there);
* a negative T_READLINK or xattr size is ``EINVAL`` (QEMU dies on SIGTRAP);
* an xattr value or list too long for the reply's u16 length (65535 or
  65536 bytes) is ``ENOBUFS``; QEMU answers an *empty* value for 65536;
* T_LSETXATTR with ``size`` larger than the value sent is ``EINVAL`` (QEMU
  reads past its buffer);
* credentials (T_CREATE, T_MKNOD, T_MKDIR, T_SYMLINK) are applied by chown
  after creation, through an fd of the new object, never by set*id. In a
  set-group-ID directory QEMU's node would get the directory's group; ours
  gets the requested gid (QEMU's client sends the directory's group in that
  case anyway);
* rootless (:mod:`.userns`): a uid or gid outside the user namespace's
  map in T_CREATE, T_MKNOD, T_MKDIR, T_SYMLINK or T_CHOWN is ``EPERM``
  (the kernel says ``EINVAL``, which guests take badly), refused before
  anything is made; nothing is made in a set-gid directory whose group the
  map leaves out (the node would keep that group: EPERM), and a node whose
  requested owner cannot be given is removed again;
  S_ISUID/S_ISGID are cleared from every mode a request
  sets (creation, T_CHMOD) unless ``--allow-setid``; T_OPEN with O_CREAT
  leaves the file the helper's own (QEMU's: root's);
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

import fcntl
import os
import stat
import struct
import sys
from collections.abc import Callable
from errno import (
    EAGAIN,
    EEXIST,
    EINVAL,
    EIO,
    EISDIR,
    ELOOP,
    ENOBUFS,
    ENOSYS,
    ENXIO,
    EPERM,
    ERANGE,
)

from .. import _fastpath_generated as wire
from ..constants import MAX_STRING_LENGTH, REPLY_KIND, V9FS_FD_VALID, MessageType, ReplyKind
from . import oslib
from .resolve import (
    MAX_EAGAIN_RETRIES,
    MAX_SYMLINKS,
    Resolver,
    clean_name,
    clean_path,
    final_name,
    normalize_open_flags,
)

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:  # the serving path imports neither: see _fastpath_generated
    from typing import Any, Final

    from .. import messages as m
    from .userns import IdMap

#: ``_IOR('v', 1, long)`` (0x80087601 on x86-64, in the generic ioctl
#: encoding); the kernel writes only a 32-bit int through it.
FS_IOC_GETVERSION: Final = (2 << 30) | (struct.calcsize("l") << 16) | (ord("v") << 8) | 1

#: File systems on which QEMU's helper asks FS_IOC_GETVERSION at all
#: (ext2/3/4, btrfs, reiserfs, xfs), decided once from the export root.
GETVERSION_FS_TYPES: Final = frozenset({0xEF53, 0x9123683E, 0x52654973, 0x58465342})

AT_SYMLINK_NOFOLLOW: Final = oslib.AT_SYMLINK_NOFOLLOW
AT_EMPTY_PATH: Final = oslib.AT_EMPTY_PATH

_U32: Final = 0xFFFFFFFF
_U64: Final = 0xFFFFFFFFFFFFFFFF
_NS: Final = 1_000_000_000
_PROBE: Final = os.O_PATH | os.O_CLOEXEC
_REGULAR_OR_DIR: Final = (stat.S_IFREG, stat.S_IFDIR)
#: an O_PATH fd of a name itself, never following it
_LINK_PATH: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: what a reopen leaves out: the object exists and the fd it goes through is
#: procfs's magic link, which O_NOFOLLOW would refuse
_REOPEN_DROPPED: Final = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
_O_TMPFILE: Final = getattr(os, "O_TMPFILE", 0o20200000)

#: The one answer type, from a handler, from :meth:`Operations.answer` and into
#: the serving loop alike: a reply's bytes, header included (built with the
#: generated ``frame_*`` codecs), or for T_OPEN/T_CREATE's success the fd to
#: pass (the reply is then :data:`FD_VALID`, and whoever sends it closes the
#: fd). A handler raises OSError for a failure; :meth:`Operations.answer`
#: turns it into the error reply's bytes. Nothing is wrapped per request.
Answer = bytes | int

_T_SUCCESS: Final = wire.T_SUCCESS
_STATUS_OK: Final = wire.frame_status(_T_SUCCESS, 0)
#: the reply that goes with an fd an :data:`Answer` passes
FD_VALID: Final = wire.FD_REPLY.pack(V9FS_FD_VALID)
_STAT_SIZE: Final = wire.FRAME_STAT.size - wire.HEADER.size
_VERSION_ZERO: Final = wire.frame_version(_T_SUCCESS, 0)


def _error(err: int) -> OSError:
    return OSError(err, os.strerror(err))


def _id(value: int) -> int:
    """QEMU's ``d`` uid/gid: 0xffffffff is -1, "leave unchanged"."""
    return -1 if value == _U32 else value


def stat_frame(st: os.stat_result) -> bytes:
    """The T_LSTAT success reply (ProxyStat) for an ``os.stat_result``.

    time_t goes on the wire as u64. Items 7-9 of a stat_result are the whole
    seconds (``tv_sec``) and ``tv_nsec`` is the ``*_ns`` field's remainder;
    taking them beats ``divmod`` of the ``*_ns`` fields (measured: 440 against
    600 ns a reply, most of it dividing the 61-bit ``*_ns`` values).
    """
    a_sec: int  # typeshed types every tuple item float; 7-9 are ints
    m_sec: int
    c_sec: int
    mode, ino, dev, nlink, uid, gid, size, a_sec, m_sec, c_sec = st  # type: ignore[assignment]
    return wire.FRAME_STAT.pack(
        _T_SUCCESS,
        _STAT_SIZE,
        dev,
        ino,
        nlink,
        mode,
        uid,
        gid,
        st.st_rdev,
        size,
        st.st_blksize,
        st.st_blocks,
        a_sec & _U64,
        st.st_atime_ns % _NS,
        m_sec & _U64,
        st.st_mtime_ns % _NS,
        c_sec & _U64,
        st.st_ctime_ns % _NS,
    )


def error_frame(message_type: int, errno: int) -> bytes:
    """The reply that reports ``errno`` to a request of ``message_type``."""
    if message_type in _FD_TYPES:
        return wire.FD_REPLY.pack(-errno)
    return wire.frame_error(wire.T_ERROR, -errno)


_FD_TYPES: Final = frozenset(int(t) for t, kind in REPLY_KIND.items() if kind is ReplyKind.FD)


class Operations:
    """The helper's request handlers over one :class:`Resolver`.

    A handler takes the request's field values in the wire's order (as the
    generated decoders give them) and returns its :data:`Answer` or raises
    ``OSError``; :meth:`answer`, the one entry point, returns the same
    :data:`Answer`, a failure as its error reply's bytes.
    ``get_version`` is decided once from the export root's file system;
    ``allow_device_nodes`` lets T_MKNOD make device nodes (the helper then
    keeps CAP_MKNOD). ``id_maps`` (rootless) are the user namespace's uid and
    gid maps: a request naming another id is refused EPERM. ``clear_setid``
    strips S_ISUID/S_ISGID from every mode a request sets.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        get_version: bool,
        log: Callable[[str], Any],
        fd_dir: int | None = None,
        allow_device_nodes: bool = False,
        id_maps: tuple[IdMap, IdMap] | None = None,
        clear_setid: bool = False,
    ) -> None:
        self.resolver = resolver
        self._id_maps = id_maps
        #: the mode bits a request may set
        self._mode_mask = 0o1777 if clear_setid else 0o7777
        #: T_OPEN with O_CREAT: QEMU's helper (root) makes the file root's; a
        #: rootless helper leaves it its own (-1: the invoking user's)
        self._open_owner = (0, 0) if id_maps is None else (_U32, _U32)
        #: this process's fd directory in a procfs no client path reaches
        #: (:func:`~.oslib.open_own_fd_dir`; opened here if not given)
        self._fd_dir = oslib.open_own_fd_dir()[0] if fd_dir is None else fd_dir
        self._root_fd = resolver.root_fd
        #: who made what a request creates: final once the operations exist
        #: (built after every privilege change), so not asked per request
        self._euid = os.geteuid()
        self.get_version = get_version
        #: T_MKNOD may make character and block devices (for uid == gid == 0)
        self.allow_device_nodes = allow_device_nodes
        self._log = log
        self._warned_special = False
        self._have_fchmodat2 = True
        T = MessageType
        #: request type code -> handler
        self.handlers: dict[int, Callable[..., Answer]] = {
            T.T_OPEN: self.open,
            T.T_CREATE: self.create,
            T.T_MKNOD: self.mknod,
            T.T_MKDIR: self.mkdir,
            T.T_SYMLINK: self.symlink,
            T.T_LINK: self.link,
            T.T_LSTAT: self.lstat,
            T.T_READLINK: self.readlink,
            T.T_STATFS: self.statfs,
            T.T_CHMOD: self.chmod,
            T.T_CHOWN: self.chown,
            T.T_TRUNCATE: self.truncate,
            T.T_UTIME: self.utime,
            T.T_RENAME: self.rename,
            T.T_REMOVE: self.remove,
            T.T_LGETXATTR: self.lgetxattr,
            T.T_LLISTXATTR: self.llistxattr,
            T.T_LSETXATTR: self.lsetxattr,
            T.T_LREMOVEXATTR: self.lremovexattr,
            T.T_GETVERSION: self.getversion,
        }

    def answer(self, message_type: int, values: tuple[Any, ...]) -> Answer:
        """Run one decoded request; every failure is answered (as bytes)."""
        try:
            return self.handlers[message_type](*values)
        except OSError as exc:
            return error_frame(message_type, exc.errno or EINVAL)
        except (ValueError, OverflowError):
            # e.g. an id or device number out of the C type's range
            return error_frame(message_type, EINVAL)
        except struct.error as exc:
            # a reply our own code cannot encode: a bug, but not one that may
            # cost the client its connection
            self._log(f"cannot encode the reply to request type {message_type}: {exc}")
            return error_frame(message_type, EIO)

    def handle(self, request: m.Request) -> m.Reply:
        """:meth:`answer` for a request object, decoded back into a reply object
        (for tests and library users: the helper itself never builds either)."""
        from ..codec import codecs_for, decode_reply

        names = codecs_for().requests[request.TYPE].names
        reply = self.answer(request.TYPE, tuple(getattr(request, n) for n in names))
        if isinstance(reply, int):
            return decode_reply(request, FD_VALID, fds=[reply])
        return decode_reply(request, reply, fds=[])

    # -- opening -------------------------------------------------------------
    #
    # Every decision is taken on the object an fd holds, never on a name
    # looked at earlier: another process may change the export at any
    # instant. A file counts as created only when an O_CREAT|O_EXCL open
    # made it (that open can make nothing but a new regular file), and an
    # existing object is opened O_PATH (which opens nothing: no FIFO wakes,
    # no device is touched), its type checked on that fd, and then that very
    # inode is opened again with the client's flags through procfs
    # (:meth:`_reopen`), so no name is looked up twice.

    def _refuse_special(self) -> OSError:
        if not self._warned_special:
            self._warned_special = True
            self._log(
                "9p: broken or compromised client detected; attempt to open special file "
                "(i.e. neither regular file, nor directory)"
            )
        return _error(ENXIO)

    def _reopen(self, fd: int, flags: int) -> int:
        """Open the object the O_PATH fd ``fd`` holds again, with ``flags``.

        ``openat(fd_dir, "<fd>")`` follows procfs's magic link to the inode
        itself; the number is the helper's own, never a client's string.
        """
        return os.open(str(fd), flags | os.O_NOCTTY, dir_fd=self._fd_dir)

    def _open_checked(self, path: bytes, flags: int) -> int:
        """An O_PATH fd of what ``path`` names, refused unless a regular file or
        directory. ``flags`` may carry O_NOFOLLOW and O_DIRECTORY, or be a
        client's whole O_PATH flags."""
        open_clean = self.resolver.open_clean
        follow = False
        if flags & os.O_PATH:
            fd = open_clean(path, flags, 0)  # the client's own O_PATH open, passed as it is
        else:
            # The last component is not followed at first: most names are no
            # symlink, and one just below the root then needs no openat2
            # (Resolver._openat2); a symlink costs a second lookup.
            follow = not flags & os.O_NOFOLLOW
            probe = _PROBE | os.O_NOFOLLOW | flags & os.O_DIRECTORY
            try:
                fd = open_clean(path, probe, 0)
            except NotADirectoryError:
                if not follow:
                    raise
                follow = False  # perhaps a symlink to a directory
                fd = open_clean(path, probe & ~os.O_NOFOLLOW, 0)
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind == stat.S_IFLNK and follow:
            os.close(fd)
            fd = open_clean(path, _PROBE | flags & os.O_DIRECTORY, 0)  # inside the root
            kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind in _REGULAR_OR_DIR:
            return fd
        os.close(fd)
        if kind == stat.S_IFLNK:  # only with O_NOFOLLOW, which open(2) answers so
            raise _error(ELOOP)
        raise self._refuse_special()

    def _give_owner(
        self, fd: int, mode: int, owner: tuple[int, int], made: tuple[int, bytes] | None = None
    ) -> int:
        """Finish a file this request created: the requested owner, then any
        set-id bits (the file was made without them, so it never exists
        set-id with the helper's own uid, and chown would clear them).

        ``made`` is the ``(dirfd, name)`` it was created as (None for an
        O_TMPFILE, which closing removes): if the owner cannot be given, the
        file is removed and the request fails, so nothing is left with an
        owner nobody asked for.
        """
        mode &= self._mode_mask
        try:
            os.fchown(fd, _id(owner[0]), _id(owner[1]))
            if mode & 0o6000:
                os.fchmod(fd, mode & 0o7777)
        except BaseException:
            if made is not None:
                _remove_created(*made, os.fstat(fd))
            os.close(fd)
            raise
        return fd

    def _check_setgid_parent(self, dirfd: int, name: bytes) -> None:
        """EPERM, before anything is made, in a set-gid directory whose group
        the user namespace does not map (rootless only).

        A node made there takes that group, and chown cannot take it away
        again: the kernel lets CAP_CHOWN act only on an inode whose uid and
        gid are both mapped. An unmapped gid reads as the overflow gid
        (65534); where the map covers 65534 this cannot tell, and the
        fix-up's failure (which removes the node) decides instead. A mode or
        group changed after this look is caught there too. A ``name`` that
        exists is EEXIST, as the creation would say (T_CREATE then opens it).
        """
        maps = self._id_maps
        if maps is not None:
            st = os.fstat(dirfd)
            if st.st_mode & stat.S_ISGID and not maps[1].maps_inside(st.st_gid):
                try:
                    os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except FileNotFoundError:
                    raise _error(EPERM) from None
                raise _error(EEXIST)

    def _dangling_target(self, path: bytes) -> bytes | None:
        """Where O_CREAT through ``path`` would create a file, if its last
        component is a symlink to nothing (else None: ``path`` exists, or it
        was removed since O_EXCL saw it, which the open that follows finds)."""
        try:
            fd = self.resolver.open_clean(path, _LINK_PATH, 0)
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                return None
            target = os.readlink(b"", dir_fd=fd)
        finally:
            os.close(fd)
        try:
            os.close(self.resolver.open_clean(path, _PROBE, 0))
        except FileNotFoundError:
            pass
        else:
            return None
        if target.startswith(b"/"):
            return target  # resolved inside the root like any path
        head, sep, _ = path.rpartition(b"/")
        return head + sep + target

    def _create(self, path: bytes, flags: int, mode: int, owner: tuple[int, int]) -> int | None:
        """Create ``path`` as a new regular file owned by ``owner``; None if it
        already exists (and the client did not ask for O_EXCL)."""
        exclusive = flags | os.O_EXCL | os.O_NOCTTY
        for _ in range(MAX_SYMLINKS + 1):
            try:
                fd = self._create_once(path, exclusive, mode, owner)
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                target = self._dangling_target(path)
                if target is None:
                    return None
                path = target  # follow a dangling symlink by hand, inside the root
                continue
            return fd
        raise _error(ELOOP)

    def _create_once(self, path: bytes, flags: int, mode: int, owner: tuple[int, int]) -> int:
        """One O_CREAT|O_EXCL open of ``path``, made in its parent held as an fd
        (the directory checked, and the one a failed fix-up removes it from)."""
        if final_name(path) is None:  # names a directory: the kernel's answer, nothing made
            return self.resolver.open_clean(path, flags, mode & 0o1777)
        dirfd, name = self.resolver.parent_clean(path)
        try:
            self._check_setgid_parent(dirfd, name)
            fd = os.open(name, flags, mode & 0o1777, dir_fd=dirfd)
            return self._give_owner(fd, mode, owner, (dirfd, name))
        finally:
            self.resolver.release(dirfd)

    def _open_file(self, path: bytes, flags: int, mode: int, owner: tuple[int, int]) -> int:
        """Open a regular file or directory for the client; never a special file.

        ``owner`` (and set-id bits of ``mode``) are applied exactly when this
        call created the file: an O_CREAT|O_EXCL open succeeded, or O_TMPFILE.
        """
        flags, mode = normalize_open_flags(flags, mode)
        path = clean_path(path)
        if flags & _O_TMPFILE == _O_TMPFILE:
            fd = self.resolver.open_clean(path, flags | os.O_NOCTTY, mode & 0o1777)
            return self._give_owner(fd, mode, owner)
        # Another process may remove the name between our create and our
        # open, again and again: bounded, so it cannot keep the helper busy.
        for _ in range(MAX_EAGAIN_RETRIES):
            if flags & os.O_CREAT:
                created = self._create(path, flags, mode, owner)
                if created is not None:
                    return created
            try:
                fd = self._open_checked(path, flags)
            except FileNotFoundError:
                if flags & os.O_CREAT:
                    continue  # removed between our create and our open: create it
                raise
            if flags & os.O_PATH:
                return fd
            try:
                return self._reopen(fd, flags & ~_REOPEN_DROPPED)
            finally:
                os.close(fd)
        raise _error(EAGAIN)

    def open(self, path: bytes, flags: int) -> int:
        # QEMU's T_OPEN with O_CREAT creates a 0000 file owned by root.
        return self._open_file(path, flags, 0, self._open_owner)

    def create(self, path: bytes, flags: int, mode: int, uid: int, gid: int) -> int:
        self._check_mapped(uid, gid)
        return self._open_file(path, flags, mode, (uid, gid))

    # -- creating named nodes --------------------------------------------------

    def _check_mapped(self, uid: int, gid: int) -> None:
        """EPERM for an id the user namespace does not map (rootless only).

        The maps are written once before the helper serves and never change,
        so refusing here, before anything is made, leaves nothing behind.
        """
        maps = self._id_maps
        if maps is not None and not (
            (uid == _U32 or maps[0].maps_inside(uid)) and (gid == _U32 or maps[1].maps_inside(gid))
        ):
            raise _error(EPERM)

    def _own_created(self, dirfd: int, name: bytes, kind: int, uid: int, gid: int) -> None:
        """Give the node just made as ``name`` the requested owner.

        Decided on an fd: the name is opened O_PATH without following, and
        only a node of the kind just made, still owned by the helper's own
        uid (so not one another process swapped in), is chowned, through the
        fd. A node renamed away in between keeps the helper's uid; no other
        object ever gets the requested owner.
        """
        fd = os.open(name, _LINK_PATH, dir_fd=dirfd)
        try:
            st = os.fstat(fd)
            if stat.S_IFMT(st.st_mode) != kind or st.st_uid != self._euid:
                raise _error(EAGAIN)  # replaced before its owner could be set
            try:
                oslib.fchown_fd(fd, _id(uid), _id(gid))
            except OSError:
                _remove_created(dirfd, name, st)
                raise
        finally:
            os.close(fd)

    def mknod(self, uid: int, gid: int, path: bytes, mode: int, rdev: int) -> bytes:
        kind = stat.S_IFMT(mode)
        if kind in (stat.S_IFCHR, stat.S_IFBLK) and (
            not self.allow_device_nodes or (uid, gid) != (0, 0)
        ):
            # Refused before trying: by default we lack CAP_MKNOD. When allowed,
            # only for 0:0, as QEMU's helper (CAP_MKNOD effective only then).
            raise _error(EPERM)
        self._check_mapped(uid, gid)
        dirfd, name = self.resolver.parent(path)
        try:
            if name == b".":
                raise _error(EEXIST)
            self._check_setgid_parent(dirfd, name)
            if kind in (stat.S_IFREG, 0):
                # a regular file through the open that proves it created it
                fd = os.open(
                    name,
                    os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    mode & 0o1777,
                    dir_fd=dirfd,
                )
                os.close(self._give_owner(fd, mode, (uid, gid), (dirfd, name)))
            else:
                os.mknod(name, mode & ~0o6000, rdev, dir_fd=dirfd)
                self._own_created(dirfd, name, kind, uid, gid)
        finally:
            self.resolver.release(dirfd)
        return _STATUS_OK

    def mkdir(self, uid: int, gid: int, path: bytes, mode: int) -> bytes:
        self._check_mapped(uid, gid)
        dirfd, name = self.resolver.parent(path)
        try:
            if name == b".":
                raise _error(EEXIST)
            self._check_setgid_parent(dirfd, name)
            os.mkdir(name, mode & self._mode_mask, dir_fd=dirfd)
            self._own_created(dirfd, name, stat.S_IFDIR, uid, gid)
        finally:
            self.resolver.release(dirfd)
        return _STATUS_OK

    def symlink(self, uid: int, gid: int, target: bytes, linkpath: bytes) -> bytes:
        target = clean_name(target)
        self._check_mapped(uid, gid)
        dirfd, name = self.resolver.parent(linkpath)
        try:
            if name == b".":
                raise _error(EEXIST)
            self._check_setgid_parent(dirfd, name)
            os.symlink(target, name, dir_fd=dirfd)
            self._own_created(dirfd, name, stat.S_IFLNK, uid, gid)
        finally:
            self.resolver.release(dirfd)
        return _STATUS_OK

    def link(self, oldpath: bytes, newpath: bytes) -> bytes:
        old_dir, old_name = self.resolver.parent(oldpath)
        try:
            new_dir, new_name = self.resolver.parent(newpath)
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
        return _STATUS_OK

    # -- reading metadata ------------------------------------------------------

    def lstat(self, path: bytes) -> bytes:
        dirfd, name = self.resolver.parent(path)
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return stat_frame(st)

    def readlink(self, path: bytes, bufsize: int) -> bytes:
        if bufsize <= 1:
            # QEMU: readlink(..., bufsize - 1) is EINVAL for 0 and 1 and a
            # fatal g_malloc of a negative size: we answer EINVAL for all.
            raise _error(EINVAL)
        dirfd, name = self.resolver.parent(path)
        try:
            target = os.readlink(name, dir_fd=dirfd)
        finally:
            self.resolver.release(dirfd)
        return wire.frame_readlink(_T_SUCCESS, target[: bufsize - 1])

    def statfs(self, path: bytes) -> bytes:
        path = clean_path(path)
        if self.resolver.contain and not path.strip(b"/"):
            # the export's root, which we hold: no lookup (a guest asks this most)
            sfs = oslib.fstatfs(self._root_fd)
        else:
            fd = self.resolver.open_clean(path, _PROBE, 0)
            try:
                sfs = oslib.fstatfs(fd)
            finally:
                os.close(fd)
        return wire.frame_statfs(
            _T_SUCCESS,
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
        try:
            oslib.fchmodat2(dirfd, name, mode, flags)
        except OSError as exc:
            if exc.errno != ENOSYS:
                raise
            self._have_fchmodat2 = False
            return False
        return True

    def chmod(self, path: bytes, mode: int) -> bytes:
        mode &= self._mode_mask
        fd = self.resolver.open(path, _PROBE)  # follows symlinks, inside the root
        try:
            if self._fchmodat2(fd, b"", mode & 0o7777, AT_EMPTY_PATH):
                return _STATUS_OK
            # Linux < 6.6 cannot chmod an O_PATH fd: open that inode for real
            # (never a special file) and fchmod it.
            if stat.S_IFMT(os.fstat(fd).st_mode) not in _REGULAR_OR_DIR:
                raise _error(ENOSYS)
            real = self._reopen(fd, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fchmod(real, mode & 0o7777)
            finally:
                os.close(real)
        finally:
            os.close(fd)
        return _STATUS_OK

    def chown(self, path: bytes, uid: int, gid: int) -> bytes:
        self._check_mapped(uid, gid)
        dirfd, name = self.resolver.parent(path)
        try:
            os.chown(name, _id(uid), _id(gid), dir_fd=dirfd, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return _STATUS_OK

    def truncate(self, path: bytes, length: int) -> bytes:
        fd = self.resolver.open(path, _PROBE)
        try:
            kind = stat.S_IFMT(os.fstat(fd).st_mode)
            if kind == stat.S_IFDIR:
                raise _error(EISDIR)
            if kind != stat.S_IFREG:
                raise _error(EINVAL)  # truncate(2) of a non-regular file
            real = self._reopen(fd, os.O_WRONLY | os.O_CLOEXEC | os.O_LARGEFILE)
        finally:
            os.close(fd)
        try:
            os.ftruncate(real, length)
        finally:
            os.close(real)
        return _STATUS_OK

    def utime(
        self, path: bytes, atime_sec: int, atime_nsec: int, mtime_sec: int, mtime_nsec: int
    ) -> bytes:
        dirfd, name = self.resolver.parent(path)
        try:
            oslib.utimensat(
                dirfd, name, (atime_sec, atime_nsec), (mtime_sec, mtime_nsec), AT_SYMLINK_NOFOLLOW
            )
        finally:
            self.resolver.release(dirfd)
        return _STATUS_OK

    def rename(self, oldpath: bytes, newpath: bytes) -> bytes:
        old_dir, old_name = self.resolver.parent(oldpath)
        try:
            new_dir, new_name = self.resolver.parent(newpath)
            try:
                os.rename(old_name, new_name, src_dir_fd=old_dir, dst_dir_fd=new_dir)
            finally:
                self.resolver.release(new_dir)
        finally:
            self.resolver.release(old_dir)
        return _STATUS_OK

    def remove(self, path: bytes) -> bytes:
        dirfd, name = self.resolver.parent(path)
        try:
            try:
                os.unlink(name, dir_fd=dirfd)
            except IsADirectoryError:  # remove(3): then it is rmdir
                os.rmdir(name, dir_fd=dirfd)
        finally:
            self.resolver.release(dirfd)
        return _STATUS_OK

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
    def _sized(data: bytes, size: int) -> bytes:
        if size < 0:
            raise _error(EINVAL)  # QEMU: fatal g_malloc of a negative size
        if size == 0:
            return wire.frame_xattr_size(_T_SUCCESS, len(data))
        if len(data) > size:
            raise _error(ERANGE)
        if len(data) > MAX_STRING_LENGTH - 1:
            # The reply string's length is a u16 and the payload at most
            # 65536 bytes: 65535 and 65536 do not fit (QEMU wraps 65536 to 0).
            raise _error(ENOBUFS)
        return wire.frame_xattr_value(_T_SUCCESS, data)

    def lgetxattr(self, size: int, path: bytes, name: bytes) -> bytes:
        if size < 0:
            raise _error(EINVAL)
        attr = clean_name(name)
        dirfd, last = self._at_parent(path)
        try:
            value = os.getxattr(last, attr, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return self._sized(value, size)

    def llistxattr(self, size: int, path: bytes) -> bytes:
        if size < 0:
            raise _error(EINVAL)
        dirfd, name = self._at_parent(path)
        try:
            names = os.listxattr(name, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return self._sized(b"".join(os.fsencode(n) + b"\0" for n in names), size)

    def lsetxattr(self, path: bytes, name: bytes, value: bytes, size: int, flags: int) -> bytes:
        if not 0 <= size <= len(value):
            # QEMU reads past the value's buffer when size is larger
            raise _error(EINVAL)
        attr = clean_name(name)
        dirfd, last = self._at_parent(path)
        try:
            os.setxattr(last, attr, value[:size], flags, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return _STATUS_OK

    def lremovexattr(self, path: bytes, name: bytes) -> bytes:
        attr = clean_name(name)
        dirfd, last = self._at_parent(path)
        try:
            os.removexattr(last, attr, follow_symlinks=False)
        finally:
            self.resolver.release(dirfd)
        return _STATUS_OK

    # -- inode generation ------------------------------------------------------

    def getversion(self, path: bytes) -> bytes:
        if not self.get_version:
            return _VERSION_ZERO  # as QEMU: not even looked up
        fd = self._open_checked(clean_path(path), 0)
        try:
            real = self._reopen(fd, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(fd)
        try:
            buf = bytearray(8)  # zeroed: the kernel fills only the low int
            fcntl.ioctl(real, FS_IOC_GETVERSION, buf, True)
        finally:
            os.close(real)
        return wire.frame_version(_T_SUCCESS, int.from_bytes(buf[:4], sys.byteorder))


def _remove_created(dirfd: int, name: bytes, made: os.stat_result) -> None:
    """Remove ``name`` from ``dirfd`` if it is still the node ``made`` (stat of
    the fd this request holds); a node renamed away or replaced is left.

    There is no unlink by fd: the name is opened without following and
    compared by identity first. Whoever swaps the name in the instant left
    can write that directory, so what it loses is an entry it could remove
    itself.
    """
    try:
        fd = os.open(name, _LINK_PATH, dir_fd=dirfd)
    except OSError:
        return
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if (st.st_dev, st.st_ino) != (made.st_dev, made.st_ino):
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=dirfd)
        else:
            os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass  # e.g. a directory something was made in meanwhile: the request fails anyway


def export_supports_getversion(root_fd: int) -> bool:
    """QEMU's start-up test: FS_IOC_GETVERSION only on these root file systems."""
    return int(oslib.fstatfs(root_fd).f_type) & _U32 in GETVERSION_FS_TYPES
