"""The standard fixture export that golden vectors are captured and replayed against.

Every vector is recorded against a fresh copy of this tree, so a replay must
build exactly the same one. Times are pinned so that stat replies differ
between machines only in the ranges a vector marks as machine-dependent.
Linux-only (FIFOs, user xattrs). Run as root, owners are 0:0 and a node's
``owner`` is given; built by any other user (the rootless kit), every object
is that user's: ``owner`` is not applied (chown to another id needs
CAP_CHOWN) and a device node cannot be made.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

#: Seconds since the epoch given to every fixture file's atime and mtime.
PINNED_TIME: Final = 1_600_000_000

#: What every sentinel outside an export holds (the vectors', the suite's and
#: the tests'): a confined helper never reads or changes it.
SENTINEL_CONTENT: Final = b"SENTINEL: outside the export; a confined helper never reads this\n"

#: Target of ``escape_abs``: an absolute host path, kept constant so readlink replies are.
ABSOLUTE_ESCAPE_TARGET: Final = "/etc/passwd"

#: gid given to the setgid directory (an ordinary user's group on Debian).
SETGID_DIR_GID: Final = 1000

NodeKind = Literal["file", "dir", "symlink", "fifo", "socket", "chardev"]


@dataclass(frozen=True)
class Node:
    """One object of an export tree, created by :func:`populate`."""

    name: str  #: path below the export; parents come earlier in the tree
    kind: NodeKind
    data: bytes | str = b""  #: a file's content, a symlink's target
    mode: int | None = None  #: permission bits (with setuid/setgid), after chown
    owner: tuple[int, int] | None = None  #: uid, gid
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Fixture:
    """Where a fixture was built."""

    root: Path  #: temporary directory holding both of the below
    export: Path  #: the directory a helper exports
    outside: Path  #: a sibling of the export with the sentinel file
    sentinel: Path  #: ``outside/secret.txt``


#: A tree is given the fixture's paths, so its symlinks can aim at the sentinel.
Tree = Callable[[Fixture], Iterable[Node]]


def populate(export: Path, nodes: Iterable[Node]) -> None:
    """Create ``nodes`` below ``export``, in order (owners only when root)."""
    chown = os.geteuid() == 0
    for node in nodes:
        path = export / node.name
        if node.kind == "file":
            path.write_bytes(node.data if isinstance(node.data, bytes) else node.data.encode())
        elif node.kind == "dir":
            path.mkdir()
        elif node.kind == "symlink":
            os.symlink(node.data, path)
        elif node.kind == "fifo":
            os.mkfifo(path)
        elif node.kind == "socket":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.bind(os.fsencode(path))
        elif node.kind == "chardev":
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
        if node.owner is not None and chown:
            os.chown(path, *node.owner, follow_symlinks=False)
        if node.mode is not None:
            path.chmod(node.mode)
        for name, value in node.xattrs:
            os.setxattr(path, name, value)


def pin_times(export: Path, when: int) -> None:
    """Give everything in ``export`` (and itself) atime and mtime ``when``."""
    # Bottom-up, so that setting a child's does not move its parent's mtime.
    for dirpath, dirnames, filenames in os.walk(export, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)
        os.utime(dirpath, (when, when))


def vector_tree(fixture: Fixture) -> list[Node]:
    """The tree every golden vector is recorded and replayed against (do not change:
    the vectors' stat replies hold its sizes, modes and link counts)."""
    return [
        Node("file.txt", "file", b"hello, proxy\n", 0o644),
        Node("empty", "file", b"", 0o600),
        Node("dir", "dir", mode=0o755),
        Node("dir/inner.txt", "file", b"inner\n", 0o644),
        Node("emptydir", "dir", mode=0o755),
        Node("sgid", "dir", mode=0o2775, owner=(0, SETGID_DIR_GID)),
        Node(
            "xattrs.txt",
            "file",
            b"has xattrs\n",
            0o644,
            xattrs=(("user.comment", b"a comment"), ("user.empty", b"")),
        ),
        Node("fifo", "fifo", mode=0o644),
        Node("link", "symlink", "file.txt"),
        Node("dirlink", "symlink", "dir"),
        Node("dangling", "symlink", "missing"),
        Node("escape_rel", "symlink", "../outside/secret.txt"),
        Node("escape_abs", "symlink", ABSOLUTE_ESCAPE_TARGET),
        Node("abs_inside", "symlink", "/file.txt"),
        Node("escape_dir", "symlink", "../outside"),
    ]


def build_fixture(
    root: Path, *, tree: Tree = vector_tree, pinned_time: int | None = PINNED_TIME
) -> Fixture:
    """Build an export and the sentinel beside it under ``root`` (an empty directory).

    ``tree`` says what the export holds (by default the vectors' tree);
    ``pinned_time`` is given to every object's times (``None``: leave them).
    """
    export = root / "export"
    outside = root / "outside"
    export.mkdir(mode=0o755)
    outside.mkdir(mode=0o755)
    sentinel = outside / "secret.txt"
    sentinel.write_bytes(SENTINEL_CONTENT)
    fixture = Fixture(root, export, outside, sentinel)
    populate(export, tree(fixture))
    if pinned_time is not None:
        pin_times(export, pinned_time)
    return fixture


def sentinel_state(fixture: Fixture) -> tuple[bytes, int, int]:
    """Content, mtime and ctime of the sentinel: a change means a helper escaped."""
    st = os.stat(fixture.sentinel)
    return fixture.sentinel.read_bytes(), st.st_mtime_ns, st.st_ctime_ns
