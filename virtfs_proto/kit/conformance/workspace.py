"""The fixture export and the sentinel files outside it.

Layout of a workspace (a fresh temporary directory per run)::

    ROOT/export/    the directory the helper exports, rebuilt before every case
    ROOT/outside/   sentinels: must be neither read nor changed by any case
    ROOT/run/       helper logs and named sockets (not part of the check)

"Unread" is checked through atime: every sentinel gets an atime years in the
past, so that any read through a relatime mount moves it. The suite itself
only ever opens sentinels with ``O_NOATIME``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..fixture import SENTINEL_CONTENT, Node, populate

#: What the fixture's regular files contain (the wire cases read them through fds).
FILE_CONTENT: Final = b"hello, virtfs\n"
NESTED_CONTENT: Final = b"nested file\n"
DECOY_CONTENT: Final = b"decoy inside the export\n"

#: A sentinel's times: atime in 2000, mtime in 2001 (both far from "now").
SENTINEL_ATIME: Final = 946684800
SENTINEL_MTIME: Final = 978307200

SGID_DIR_GID: Final = 1234
USER_ID: Final = 1000
COMMENT: Final = b"a comment"

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH: Final = 2
_DIR_STEP: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _mount(source: str, target: Path, fstype: str, data: str = "") -> None:
    if _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), 0, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _umount(target: Path) -> None:
    _libc.umount2(os.fsencode(target), _MNT_DETACH)


@dataclass(frozen=True, slots=True)
class Entry:
    """What the check records of one object outside the export."""

    kind: str
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    digest: str  # content hash (files), listing (dirs), target (symlinks)
    xattrs: tuple[tuple[str, bytes], ...]


Snapshot = dict[str, Entry]


def _digest(path: Path, st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(path)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return ""
    flags = os.O_RDONLY | os.O_NOATIME | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags | (os.O_DIRECTORY if stat.S_ISDIR(st.st_mode) else 0))
    try:
        if stat.S_ISDIR(st.st_mode):
            return "\0".join(sorted(os.listdir(fd)))
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 16):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def _walk(directory: Path) -> list[Path]:
    """Everything below ``directory``, listed without moving any atime."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME | os.O_CLOEXEC)
    try:
        names = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    out = []
    for name in names:
        p = directory / name
        out.append(p)
        if stat.S_ISDIR(os.lstat(p).st_mode):
            out.extend(_walk(p))
    return out


def _xattrs(path: Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))
    except OSError:
        return ()


def deep_dir(parent: int, names: Sequence[bytes], *, create: bool = False) -> int:
    """An ``O_PATH`` fd of the directory ``names`` lead to below the directory
    fd ``parent``, following no symlink; ``create`` makes the missing ones.
    Each step is relative to a directory fd, so the whole path may be far
    longer than ``PATH_MAX``, which no single host path can name."""
    fd = os.dup(parent)
    try:
        for name in names:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
            fd, above = os.open(name, _DIR_STEP, dir_fd=fd), fd
            os.close(above)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Workspace:
    """A temporary directory with an export and sentinels; remove it with :meth:`cleanup`.

    ``rootless``: built by a user without root, so everything is that user's
    and the export has no device node (the cases that need them declare it).
    """

    def __init__(self, parent: str | None = None, *, rootless: bool = False) -> None:
        self.rootless = rootless
        self.root = Path(tempfile.mkdtemp(prefix="virtfs-conformance-", dir=parent))
        os.chmod(self.root, 0o755)
        self.export = self.root / "export"
        self.outside = self.root / "outside"
        self.rundir = self.root / "run"
        self.secret = self.outside / "secret.txt"
        self.secret_dir = self.outside / "secret_dir"
        for d in (self.export, self.outside, self.rundir):
            d.mkdir()
        self.mounts: list[Path] = []
        self.build_sentinels()

    # -- sentinels ------------------------------------------------------------

    def build_sentinels(self) -> None:
        """(Re)create every sentinel with its known content and old times."""
        shutil.rmtree(self.outside)
        self.outside.mkdir()
        self.secret.write_bytes(SENTINEL_CONTENT)
        os.chmod(self.secret, 0o600)
        os.setxattr(self.secret, "user.sentinel", b"untouched")
        self.secret_dir.mkdir(mode=0o700)
        (self.secret_dir / "inner.txt").write_bytes(SENTINEL_CONTENT)
        (self.outside / "setuid.bin").write_bytes(b"#!/bin/sh\n")
        os.chmod(self.outside / "setuid.bin", 0o4755)
        for p in (
            self.secret,
            self.secret_dir / "inner.txt",
            self.outside / "setuid.bin",
            self.secret_dir,
            self.outside,
        ):
            os.utime(p, (SENTINEL_ATIME, SENTINEL_MTIME))

    def snapshot(self) -> Snapshot:
        """Everything outside the export that a case must leave alone."""
        snap: Snapshot = {}
        paths = [self.root, self.outside, *_walk(self.outside)]
        for p in paths:
            st = os.lstat(p)
            digest = _digest(p, st)
            if p == self.root:
                # the run directory's contents change with every helper
                digest = "\0".join(n for n in digest.split("\0") if n != "run")
            snap[str(p.relative_to(self.root.parent))] = Entry(
                kind=stat.filemode(st.st_mode)[0],
                mode=st.st_mode,
                uid=st.st_uid,
                gid=st.st_gid,
                nlink=st.st_nlink,
                size=st.st_size,
                atime_ns=st.st_atime_ns if p != self.root else 0,
                mtime_ns=st.st_mtime_ns,
                ctime_ns=st.st_ctime_ns,
                digest=digest,
                xattrs=_xattrs(p),
            )
        return snap

    @staticmethod
    def differences(before: Snapshot, after: Snapshot) -> list[str]:
        """Human-readable changes between two snapshots (empty: unread and unchanged)."""
        out = []
        for path in sorted(before.keys() | after.keys()):
            a, b = before.get(path), after.get(path)
            if a is None:
                out.append(f"{path} appeared")
            elif b is None:
                out.append(f"{path} disappeared")
            elif a != b:
                changed = [f for f in a.__dataclass_fields__ if getattr(a, f) != getattr(b, f)]
                what = ", ".join("read (atime moved)" if f == "atime_ns" else f for f in changed)
                out.append(f"{path}: {what}")
        return out

    # -- the export -------------------------------------------------------------

    def clear_export(self) -> None:
        for m in reversed(self.mounts):
            _umount(m)
        self.mounts.clear()
        for child in list(self.export.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def export_tree(self) -> list[Node]:
        """Files, dirs, symlinks (some pointing outside), a FIFO, a socket, a device
        node (not when rootless), user xattrs, a setgid directory and a setuid file."""
        links = {
            "link_file": "file.txt",
            "link_abs_inside": "/file.txt",
            "link_dir": "dir",
            "escape_rel": "../outside/secret.txt",
            "escape_abs": str(self.secret),
            "escape_dir": "../outside",
            "escape_dir_abs": str(self.outside),
            "escape_deep": "../../../../../../../../../../../..",
            "escape_dangling": "../outside/planted.txt",
            "escape_dangling_abs": str(self.outside / "planted_abs.txt"),
            "loop": "loop",
            "link_fifo": "fifo",
        }
        devices = [] if self.rootless else [Node("chardev", "chardev")]
        return [
            Node("file.txt", "file", FILE_CONTENT, 0o644, xattrs=(("user.comment", COMMENT),)),
            Node("empty.txt", "file"),
            Node("dir", "dir"),
            Node("dir/nested.txt", "file", NESTED_CONTENT),
            Node("dir/sub", "dir"),
            Node("emptydir", "dir"),
            *(Node(name, "symlink", target) for name, target in links.items()),
            Node("fifo", "fifo", mode=0o644),
            Node("sock", "socket"),
            *devices,
            Node("sgid_dir", "dir", mode=0o2775, owner=(0, SGID_DIR_GID)),
            Node("suid.bin", "file", b"#!/bin/sh\nexit 0\n", 0o6755, owner=(USER_ID, USER_ID)),
        ]

    def build_export(self) -> None:
        """A fresh export (:meth:`export_tree`)."""
        self.clear_export()
        os.chmod(self.export, 0o755)
        populate(self.export, self.export_tree())
        if not self.rootless:  # trusted.* needs CAP_SYS_ADMIN (cases declare it)
            with contextlib.suppress(OSError):
                os.setxattr(self.export / "file.txt", "trusted.hidden", b"only for CAP_SYS_ADMIN")

    def mount_tmpfs(self, name: str) -> Path:
        """A tmpfs inside the export (ext4 cannot hold 64 KiB xattr values)."""
        target = self.export / name
        target.mkdir()
        _mount("tmpfs", target, "tmpfs", "size=4m,mode=0755")
        self.mounts.append(target)
        return target

    def mount_proc(self, name: str = "proc") -> Path:
        """procfs inside the export, to reach magic links through the helper."""
        target = self.export / name
        target.mkdir()
        _mount("proc", target, "proc")
        self.mounts.append(target)
        return target

    def cleanup(self) -> None:
        with contextlib.suppress(OSError):
            self.clear_export()
        shutil.rmtree(self.root, ignore_errors=True)
