"""Fixtures for the reference helper's tests: exports, and helpers run as subprocesses.

Privileges are only ever dropped in helper subprocesses, never in pytest.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtfs_proto.launcher import Helper, spawn_helper

QEMU_HELPER = "/usr/lib/qemu/virtfs-proxy-helper"
OURS = [sys.executable, "-m", "virtfs_proto.server"]
SECRET = b"SECRET outside the export\n"

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


def qemu_helper() -> str:
    """QEMU's helper, or a failure (never a silent skip) when it is missing."""
    if not os.access(QEMU_HELPER, os.X_OK):
        pytest.fail("install it: apt-get install -y qemu-system-common")
    return QEMU_HELPER


def spawn(command: list[str], export: Path | str, *extra: str) -> Helper:
    """``command`` (plus ``extra`` options) on one end of a socketpair, as libvirt
    starts it (:func:`~virtfs_proto.launcher.spawn_helper`). Its client waits
    at most 5 s for each reply; ``client.transport`` gives raw access."""
    return spawn_helper([*command, *extra], export, "fd", timeout=5.0)


def spawn_ours(export: Path | str, *extra: str) -> Helper:
    return spawn(OURS, export, *extra)


def spawn_qemu(export: Path | str) -> Helper:
    return spawn([qemu_helper()], export)


@dataclass
class Export:
    """A directory tree to export, with a secret beside it (outside)."""

    base: Path
    root: Path
    secret: Path


def build_export(base: Path) -> Export:
    """The same tree for every helper: files, dirs, symlinks that try to escape, a FIFO."""
    root = base / "export"
    root.mkdir()
    os.chmod(base, 0o755)
    secret = base / "outside_secret.txt"
    secret.write_bytes(SECRET)
    (root / "file.txt").write_bytes(b"hello\n")
    os.chmod(root / "file.txt", 0o644)
    (root / "dir").mkdir()
    (root / "dir" / "sub.txt").write_bytes(b"sub\n")
    (root / "a" / "b" / "c").mkdir(parents=True)
    os.symlink("/file.txt", root / "link_abs")
    os.symlink("../outside_secret.txt", root / "link_rel_escape")
    os.symlink(str(secret), root / "link_abs_host")
    os.symlink("..", root / "link_dotdot")
    os.symlink(str(base), root / "link_host_dir")
    os.symlink("dir", root / "link_dir")
    os.mkfifo(root / "fifo")
    return Export(base, root, secret)


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
