"""Containment layer (a): every client path is resolved inside one export-root fd.

The kernel does the work when it can: ``openat2(2)`` with
``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` treats the root fd as ``/`` for
absolute paths, absolute symlinks and ``..``, and refuses procfs magic links.
Where the kernel lacks openat2 (``ENOSYS``, Linux < 5.6), when a test forces
it, and for a path too long for one system call (``PATH_MAX``: the payload can
carry 16 times more, and a local file system serves any depth), a
per-component ``O_NOFOLLOW`` walk emulates the same rules in user space: each
symlink is read and its text re-resolved inside the root, and more than 40
links in the whole path give ``ELOOP``. ``..`` goes back to the directory the
walk came from, never above the root: the walk remembers the identity
(device, inode) of every directory it entered and holds only the current
one's fd (so depth is not bounded by the fd limit); the physical ``..`` it
opens must be the directory remembered, else a rename moved the tree under
it and the walk starts again (as openat2 answers ``EAGAIN``). At the root,
``..`` is the root without asking the kernel. The walk opens the last
component with ``O_NOFOLLOW`` too (following a symlink there by hand), so
``F_GETFL`` on an fd it opened shows ``O_NOFOLLOW``; with openat2 the flags
are exactly the client's. Each component is still bounded by ``NAME_MAX``:
the kernel answers ``ENAMETOOLONG`` for a longer one.

Paths arrive as raw wire bytes. QEMU counts a trailing NUL in the length of
most paths, so exactly one trailing NUL is stripped. An *embedded* NUL is
rejected with ``EINVAL``: QEMU's helper silently truncates the string there,
which lets a path name a different file than the client's bytes say.

Two kinds of lookup serve the operations:

* :meth:`Resolver.open` opens the object a path names (following the final
  symlink or not), e.g. for T_OPEN, T_STATFS, T_CHMOD.
* :meth:`Resolver.parent` returns a directory fd and one final component, for
  operations that act on the last component itself (mkdir, mknod, symlink,
  link, rename, remove, lstat, lchown, utimensat nofollow, readlink, xattrs).
  The name is a single component, so passing it to a ``*at()`` call with
  ``AT_SYMLINK_NOFOLLOW`` (or an op that never follows) cannot leave the
  directory. A path whose last component is ``.`` or ``..``, that ends in
  ``/``, or that is the root itself is resolved as a directory and returned as
  ``(dirfd, b".")``: the op then acts on that directory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable

from . import oslib

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    from typing import Final

RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10

#: the kernel's own bound on symlinks followed in one lookup (MAXSYMLINKS)
MAX_SYMLINKS: Final = 40
#: the kernel's bound on one path argument, its NUL included: a longer path is
#: resolved by the walk, which passes the kernel one component at a time
PATH_MAX: Final = 4096
#: openat2 answers EAGAIN when a ``..`` raced a rename or mount; retry this often
MAX_EAGAIN_RETRIES: Final = 64
#: statfs f_type of procfs: symlinks there may be magic links
PROC_SUPER_MAGIC: Final = 0x9FA0

_O_TMPFILE_BITS: Final = getattr(os, "O_TMPFILE", 0o20200000)
#: open(2) silently drops unknown flag bits, openat2(2) refuses them with EINVAL;
#: masking keeps T_OPEN's answer to a stray bit the same as QEMU's helper.
VALID_OPEN_FLAGS: Final = (
    os.O_RDONLY
    | os.O_WRONLY
    | os.O_RDWR
    | os.O_CREAT
    | os.O_EXCL
    | os.O_NOCTTY
    | os.O_TRUNC
    | os.O_APPEND
    | os.O_NONBLOCK
    | os.O_DSYNC
    | os.O_SYNC
    | getattr(os, "O_ASYNC", 0o20000)
    | os.O_DIRECT
    | os.O_LARGEFILE
    | os.O_DIRECTORY
    | os.O_NOFOLLOW
    | os.O_NOATIME
    | os.O_CLOEXEC
    | os.O_PATH
    | _O_TMPFILE_BITS
)
#: what open(2) keeps of the flags when O_PATH is given (openat2 refuses the rest)
O_PATH_FLAGS: Final = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_PATH | os.O_CLOEXEC

_DIR_PATH: Final = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
#: one step of the walk: whatever the name is, never following it
_STEP: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class _Moved(Exception):
    """The walk's ``..`` was not the directory it came from: a rename raced it."""


def openat2_available() -> bool:
    """True when the running kernel implements openat2(2)."""
    try:
        fd = oslib.openat2(oslib.AT_FDCWD, b"/", _DIR_PATH, 0, 0)
    except OSError as exc:
        return exc.errno != errno.ENOSYS
    os.close(fd)
    return True


def clean_path(path: bytes) -> bytes:
    """Strip QEMU's one trailing NUL; refuse embedded NULs and empty paths."""
    nul = path.find(b"\0")
    if nul >= 0:
        if nul != len(path) - 1:
            raise OSError(errno.EINVAL, "embedded NUL in path")
        path = path[:nul]
    if not path:
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    return path


def clean_name(name: bytes) -> bytes:
    """Strip one trailing NUL from a non-path string (xattr name, symlink target)."""
    if name.endswith(b"\0"):
        name = name[:-1]
    if b"\0" in name:
        raise OSError(errno.EINVAL, "embedded NUL in string")
    return name


def normalize_open_flags(flags: int, mode: int) -> tuple[int, int]:
    """Reduce client flags and mode to what open(2) itself would act on."""
    flags &= VALID_OPEN_FLAGS
    if flags & os.O_PATH:
        flags &= O_PATH_FLAGS
    # open(2) on 64-bit always sets O_LARGEFILE; openat2 does not, and the
    # flag is visible to the receiver through F_GETFL.
    flags |= os.O_LARGEFILE | os.O_CLOEXEC
    if flags & os.O_CREAT or flags & _O_TMPFILE_BITS == _O_TMPFILE_BITS:
        mode &= 0o7777
    else:
        mode = 0
    return flags, mode


class Resolver:
    """Resolves client paths inside the export whose root is ``root_fd``.

    ``use_openat2=None`` probes the kernel; ``False`` forces the user-space
    walk (so tests exercise both). ``contain=False`` turns layer (a) off:
    paths are then resolved by the kernel's ordinary rules relative to
    ``root_fd`` (absolute paths from the process root), for tests of the
    chroot layer on its own. Every mode serves paths of any length.
    """

    def __init__(
        self, root_fd: int, *, use_openat2: bool | None = None, contain: bool = True
    ) -> None:
        self.root_fd = root_fd
        self.contain = contain
        self.uses_openat2 = contain and (
            openat2_available() if use_openat2 is None else use_openat2
        )
        self._how = oslib.OpenHow(0, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        self._how_ref = ctypes.byref(self._how)
        root = os.fstat(root_fd)
        self._root_id = (root.st_dev, root.st_ino)
        #: :meth:`open` for a path already passed through :func:`clean_path`
        #: (bound once to the resolution in use)
        self.open_clean: Callable[[bytes, int, int], int]
        if not contain:
            self.open_clean = self._open_uncontained
        elif self.uses_openat2:
            self.open_clean = self._openat2
        else:
            self.open_clean = self._walk

    # -- opening whole paths --------------------------------------------

    def open(self, path: bytes, flags: int, mode: int = 0, *, follow: bool = True) -> int:
        """Open ``path`` inside the root. ``flags``/``mode`` must already be
        normalized (see :func:`normalize_open_flags`); ``follow=False`` adds
        ``O_NOFOLLOW``. Raises OSError with the kernel's errno.
        """
        path = clean_path(path)
        if not follow:
            flags |= os.O_NOFOLLOW
        return self.open_clean(path, flags, mode)

    def _open_uncontained(self, path: bytes, flags: int, mode: int) -> int:
        if len(path) < PATH_MAX:
            return os.open(path, flags, mode, dir_fd=self.root_fd)
        # The kernel's own rules, a run of whole components at a time: each
        # run continues from the directory the one before it reached.
        runs = _runs(path)
        fd = self.root_fd
        try:
            for run in runs[:-1]:
                fd, held = os.open(run, _DIR_PATH, dir_fd=fd), fd
                self.release(held)
            return os.open(runs[-1], flags, mode, dir_fd=fd)
        finally:
            self.release(fd)

    def _openat2(self, path: bytes, flags: int, mode: int) -> int:
        if flags & os.O_NOFOLLOW:
            name = path.lstrip(b"/")
            if name and b"/" not in name and name != b"." and name != b"..":
                # One component below the root, not followed: RESOLVE_IN_ROOT
                # has nothing to do, and os.open costs 460 ns less than the
                # ctypes call (measured: 750 against 1210 ns with the close).
                return os.open(name, flags, mode, dir_fd=self.root_fd)
        how = self._how
        how.flags = flags
        how.mode = mode
        retries = MAX_EAGAIN_RETRIES
        while True:
            # syscall(2) with exact C types, no argtypes (see oslib.syscall)
            fd: int = oslib.syscall(
                oslib.SYS_OPENAT2_C, self.root_fd, path, self._how_ref, oslib.OPEN_HOW_SIZE
            )
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            if err == errno.ENAMETOOLONG and len(path) >= PATH_MAX:
                # too long for one call (the kernel counts the NUL), not for us
                return self._walk(path, flags, mode)
            if err != errno.EAGAIN:
                raise OSError(err, os.strerror(err))
            retries -= 1
            if not retries:
                raise OSError(errno.EAGAIN, "lookup kept racing renames")

    def _walk(self, path: bytes, flags: int, mode: int) -> int:
        """RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, one component at a time."""
        for _ in range(MAX_EAGAIN_RETRIES):
            try:
                return self._walk_once(path, flags, mode)
            except _Moved:
                continue
        raise OSError(errno.EAGAIN, "lookup kept racing renames")

    def _walk_once(self, path: bytes, flags: int, mode: int) -> int:
        todo = _components(path)
        # cur is the directory we are in: the root, or the one fd we hold;
        # trail[i] is the identity of the directory i levels below the root
        # on the way to it, so ".." knows where it must land.
        cur = self.root_fd
        trail = [self._root_id]
        links = 0
        try:
            while True:
                name = todo.pop() if todo else b"."
                if name in (b".", b".."):
                    if name == b".." and len(trail) > 1:
                        trail.pop()
                        # the root itself is never asked of the kernel
                        up = _dotdot(cur, trail[-1]) if len(trail) > 1 else self.root_fd
                        self.release(cur)
                        cur = up
                    if todo:
                        continue
                    name = b"."  # the path ends here: open the directory we are in
                if todo:  # an intermediate component: a directory or a symlink
                    fd = os.open(name, _STEP, dir_fd=cur)
                    st = os.fstat(fd)
                    if stat.S_ISDIR(st.st_mode):
                        self.release(cur)
                        cur = fd
                        trail.append((st.st_dev, st.st_ino))
                        continue
                    if not stat.S_ISLNK(st.st_mode):
                        os.close(fd)
                        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                else:
                    fd, is_link = _open_last(cur, name, flags, mode)
                    if not is_link:
                        return fd
                try:  # fd is a symlink to follow
                    links += 1
                    target = _link_text(fd, links)
                finally:
                    os.close(fd)
                if target.startswith(b"/"):
                    self.release(cur)
                    cur = self.root_fd
                    del trail[1:]
                todo.extend(_components(target))
        finally:
            self.release(cur)

    # -- parent directory + final name -----------------------------------

    def parent(self, path: bytes) -> tuple[int, bytes]:
        """Return ``(dirfd, name)`` for an op on the last component of ``path``.

        ``name`` is one component (never containing ``/``, never ``..``);
        ``b"."`` means the op applies to ``dirfd`` itself. Release the fd with
        :meth:`release`: it may be :attr:`root_fd`, which must stay open.
        """
        return self.parent_clean(clean_path(path))

    def parent_clean(self, path: bytes) -> tuple[int, bytes]:
        """:meth:`parent` for a path already passed through :func:`clean_path`."""
        if final_name(path) is None:
            return self.open_clean(path.rstrip(b"/") or b"/", _DIR_PATH, 0), b"."
        head, _, name = path.rpartition(b"/")
        if not head.strip(b"/"):
            return self.root_fd, name
        try:  # most heads are no symlink: not following lets one below the root skip openat2
            return self.open_clean(head, _DIR_PATH | os.O_NOFOLLOW, 0), name
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
        return self.open_clean(head, _DIR_PATH, 0), name  # a symlink: followed inside the root

    def release(self, dirfd: int) -> None:
        """Close an fd returned by :meth:`parent` unless it is the root."""
        if dirfd != self.root_fd:
            os.close(dirfd)


def final_name(path: bytes) -> bytes | None:
    """The last component of a clean ``path`` when it is a plain name (an
    object made by that path is made in its parent, as that name); None
    when the path names a directory itself (the root, a trailing ``/``,
    ``.`` or ``..``)."""
    stripped = path.rstrip(b"/")
    name = stripped.rpartition(b"/")[2]
    if not stripped or len(stripped) != len(path) or name in (b".", b".."):
        return None
    return name


def _components(path: bytes) -> list[bytes]:
    """Components in *reverse* order (pop() yields the next), "." for a trailing '/'."""
    parts = [p for p in path.split(b"/") if p]
    if path.endswith(b"/") and parts:
        parts.append(b".")
    parts.reverse()
    return parts


def _runs(path: bytes) -> list[bytes]:
    """``path`` cut at slashes into runs the kernel takes one at a time, each
    continuing from where the one before it ended (a component longer than
    PATH_MAX stays whole: the kernel answers ENAMETOOLONG for it)."""
    runs: list[bytes] = []
    rest = path
    while len(rest) >= PATH_MAX:
        cut = rest.rfind(b"/", 1, PATH_MAX)
        if cut < 0:
            break
        runs.append(rest[:cut])
        rest = rest[cut:].lstrip(b"/") or b"."  # relative: it continues, never restarts
    runs.append(rest)
    return runs


def _dotdot(dirfd: int, want: tuple[int, int]) -> int:
    """The directory above ``dirfd``, which must be the one identified by ``want``."""
    fd = os.open(b"..", _DIR_PATH, dir_fd=dirfd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != want:
        os.close(fd)
        raise _Moved
    return fd


def _open_last(dirfd: int, name: bytes, flags: int, mode: int) -> tuple[int, bool]:
    """Open the last component, never following it: ``(fd, False)`` for the
    object, or ``(fd, True)``: an ``O_PATH`` fd of a symlink ``flags`` asks
    to follow."""
    follow = not flags & os.O_NOFOLLOW
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=dirfd)
    except OSError as exc:
        # O_NOFOLLOW on a symlink fails with ELOOP (ENOTDIR with O_DIRECTORY,
        # EEXIST with O_CREAT|O_EXCL, which is right).
        if not follow or exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        fd = os.open(name, _STEP, dir_fd=dirfd)
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return fd, True
        os.close(fd)
        raise
    # O_PATH|O_NOFOLLOW opens a symlink itself rather than failing
    return fd, follow and bool(flags & os.O_PATH) and stat.S_ISLNK(os.fstat(fd).st_mode)


def _link_text(fd: int, links: int) -> bytes:
    """The target of the symlink ``fd`` (``O_PATH|O_NOFOLLOW``), the ``links``-th
    followed in this lookup; ELOOP past the budget or on procfs."""
    if links > MAX_SYMLINKS:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
    if _on_procfs(fd):
        # procfs symlinks may be magic links: refuse them as openat2's
        # RESOLVE_NO_MAGICLINKS does (stricter: /proc/self is refused too).
        raise OSError(errno.ELOOP, "refusing a procfs link")
    # read through the fd: the name may already be something else
    return os.readlink(b"", dir_fd=fd)


def _on_procfs(dirfd: int) -> bool:
    return int(oslib.fstatfs(dirfd).f_type) == PROC_SUPER_MAGIC
