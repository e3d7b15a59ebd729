"""Fixtures for the reference helper's tests: exports, and helpers run as subprocesses.

Privileges are only ever dropped in helper subprocesses, never in pytest.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import OUR_HELPER, require_qemu_helper

from virtfs_proto.kit.fixture import Fixture, Node, build_fixture
from virtfs_proto.launcher import Helper, spawn_helper

#: The path-containment layer configurations: each alone, and all together.
#: (a) the resolver, (b) the chroot, (ns) the namespaces' view of the export
#: (a tmpfs root holding only the export's bind mount); all: the default.
#: Landlock is off in each: it is not a path-containment layer on its own
#: (it does not cover stat, chmod, chown, utimes or xattrs: Landlock ABI 7
#: has no right for metadata), so "alone" means without it.
LAYER_A_OPENAT2 = ("--sandbox=none", "--test-disable=landlock", "--resolver=openat2")
LAYER_A_WALK = ("--sandbox=none", "--test-disable=landlock", "--resolver=walk")
LAYER_B_CHROOT = ("--sandbox=chroot", "--test-disable=landlock", "--resolver=none")
LAYER_NS_VIEW = ("--test-disable=chroot,landlock", "--resolver=none")
ALL_LAYERS: tuple[str, ...] = ()
LAYERS = {
    "a-openat2": LAYER_A_OPENAT2,
    "a-walk": LAYER_A_WALK,
    "b-chroot": LAYER_B_CHROOT,
    "ns-view": LAYER_NS_VIEW,
    "all": ALL_LAYERS,
}
#: every layer off: the escapes must then succeed (so the tests can fail)
NO_LAYER = ("--sandbox=none", "--test-disable=landlock", "--resolver=none")


def spawn(command: list[str], export: Path | str, *extra: str) -> Helper:
    """``command`` (plus ``extra`` options) on one end of a socketpair, as libvirt
    starts it (:func:`~virtfs_proto.launcher.spawn_helper`). Its client waits
    at most 5 s for each reply; ``client.transport`` gives raw access."""
    return spawn_helper([*command, *extra], export, "fd", timeout=5.0)


def spawn_ours(export: Path | str, *extra: str) -> Helper:
    return spawn(OUR_HELPER, export, *extra)


def spawn_qemu(export: Path | str) -> Helper:
    return spawn([require_qemu_helper()], export)


@dataclass
class Export:
    """A directory tree to export, with a secret beside it (outside)."""

    base: Path
    root: Path
    secret: Path


def server_tree(fixture: Fixture) -> list[Node]:
    """The same tree for every helper: files, dirs, symlinks that try to escape, a FIFO."""
    return [
        Node("file.txt", "file", b"hello\n", 0o644),
        Node("dir", "dir"),
        Node("dir/sub.txt", "file", b"sub\n"),
        Node("a", "dir"),
        Node("a/b", "dir"),
        Node("a/b/c", "dir"),
        Node("link_abs", "symlink", "/file.txt"),
        Node("link_rel_escape", "symlink", "../outside/secret.txt"),
        Node("link_abs_host", "symlink", str(fixture.sentinel)),
        Node("link_dotdot", "symlink", ".."),
        Node("link_host_dir", "symlink", str(fixture.root)),
        Node("link_dir", "symlink", "dir"),
        Node("fifo", "fifo"),
    ]


def build_export(base: Path) -> Export:
    """:func:`server_tree` in ``base/export``, the sentinel in ``base/outside``."""
    os.chmod(base, 0o755)
    fixture = build_fixture(base, tree=server_tree, pinned_time=None)
    return Export(base, fixture.export, fixture.sentinel)


@pytest.fixture
def export(tmp_path: Path) -> Export:
    return build_export(tmp_path)


@pytest.fixture
def shm_export() -> Iterator[Export]:
    """An export on tmpfs: 64 KiB user xattrs, and no FS_IOC_GETVERSION."""
    base = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="virtfs-proto-test-"))
    try:
        yield build_export(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def helpers() -> Iterator[list[Helper]]:
    """Collects helpers a test starts, and kills whatever is left at the end."""
    started: list[Helper] = []
    yield started
    for h in started:
        h.client.close()
        if h.process.poll() is None:
            h.process.kill()
        h.close()
