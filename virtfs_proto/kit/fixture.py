"""The standard fixture export that golden vectors are captured and replayed against.

Every vector is recorded against a fresh copy of this tree, so a replay must
build exactly the same one. Times are pinned so that stat replies differ
between machines only in the ranges a vector marks as machine-dependent.
Linux-only (FIFOs, user xattrs); run as root so owners are 0:0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Seconds since the epoch given to every fixture file's atime and mtime.
PINNED_TIME: Final = 1_600_000_000

#: Content of the sentinel file outside the export; a helper must never read or change it.
SENTINEL_CONTENT: Final = b"outside the export: a confined helper never reads this\n"

#: Target of ``escape_abs``: an absolute host path, kept constant so readlink replies are.
ABSOLUTE_ESCAPE_TARGET: Final = "/etc/passwd"

#: gid given to the setgid directory (an ordinary user's group on Debian).
SETGID_DIR_GID: Final = 1000


@dataclass(frozen=True)
class Fixture:
    """Where a fixture was built."""

    root: Path  #: temporary directory holding both of the below
    export: Path  #: the directory a helper exports
    outside: Path  #: a sibling of the export with the sentinel file
    sentinel: Path  #: ``outside/secret.txt``


def build_fixture(root: Path) -> Fixture:
    """Build the fixture under ``root`` (an empty directory) and return where it is."""
    export = root / "export"
    outside = root / "outside"
    export.mkdir(mode=0o755)
    outside.mkdir(mode=0o755)
    sentinel = outside / "secret.txt"
    sentinel.write_bytes(SENTINEL_CONTENT)

    def write(name: str, data: bytes, mode: int) -> None:
        path = export / name
        path.write_bytes(data)
        path.chmod(mode)

    write("file.txt", b"hello, proxy\n", 0o644)
    write("empty", b"", 0o600)
    (export / "dir").mkdir(mode=0o755)
    write("dir/inner.txt", b"inner\n", 0o644)
    (export / "emptydir").mkdir(mode=0o755)
    (export / "sgid").mkdir()
    os.chown(export / "sgid", 0, SETGID_DIR_GID)
    (export / "sgid").chmod(0o2775)
    write("xattrs.txt", b"has xattrs\n", 0o644)
    os.setxattr(export / "xattrs.txt", "user.comment", b"a comment")
    os.setxattr(export / "xattrs.txt", "user.empty", b"")
    os.mkfifo(export / "fifo", 0o644)
    (export / "fifo").chmod(0o644)
    os.symlink("file.txt", export / "link")
    os.symlink("dir", export / "dirlink")
    os.symlink("missing", export / "dangling")
    os.symlink("../outside/secret.txt", export / "escape_rel")
    os.symlink(ABSOLUTE_ESCAPE_TARGET, export / "escape_abs")
    os.symlink("/file.txt", export / "abs_inside")
    os.symlink("../outside", export / "escape_dir")

    # Pin times bottom-up so setting a child's does not move its parent's mtime.
    for dirpath, dirnames, filenames in os.walk(export, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (PINNED_TIME, PINNED_TIME), follow_symlinks=False)
        os.utime(dirpath, (PINNED_TIME, PINNED_TIME))
    return Fixture(root, export, outside, sentinel)


def sentinel_state(fixture: Fixture) -> tuple[bytes, int, int]:
    """Content, mtime and ctime of the sentinel: a change means a helper escaped."""
    st = os.stat(fixture.sentinel)
    return fixture.sentinel.read_bytes(), st.st_mtime_ns, st.st_ctime_ns
