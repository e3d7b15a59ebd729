"""Escape attempts, each run with one path-containment layer alone, and all.

Layer (a) is path resolution inside the export's root fd (openat2, or the
user-space walk); layer (b) is the chroot; ``ns-view`` the namespace
sandbox's root (a tmpfs holding only the export), without the chroot.
Nothing a client sends may read, stat, create, change or link anything
outside the export.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtfs_proto import messages as m
from virtfs_proto.kit.fixture import SENTINEL_CONTENT
from virtfs_proto.launcher import Helper

from .conftest import LAYER_NS_VIEW, LAYERS, NO_LAYER, Export, spawn_ours

READ_ESCAPES = [
    b"../outside/secret.txt",
    b"/../outside/secret.txt",
    b"//../../outside/secret.txt\0",
    b"dir/../../outside/secret.txt",
    b"a/b/c/../../../../outside/secret.txt",
    b"link_rel_escape",
    b"link_abs_host",
    b"link_dotdot/outside/secret.txt",
    b"link_host_dir/outside/secret.txt",
    b"link_dir/../../outside/secret.txt",
    b"link_dotdot/link_dotdot/outside/secret.txt",
]


@pytest.fixture(params=list(LAYERS), ids=list(LAYERS))
def layer(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return LAYERS[request.param]


def _is_secret(ex: Export, st: os.stat_result | m.StatReply) -> bool:
    secret = ex.secret.stat()
    if isinstance(st, m.StatReply):
        return (st.st_dev, st.st_ino) == (secret.st_dev, secret.st_ino)
    return (st.st_dev, st.st_ino) == (secret.st_dev, secret.st_ino)


def _assert_outside_untouched(ex: Export) -> None:
    assert sorted(p.name for p in ex.base.iterdir()) == ["export", "outside"]
    assert [p.name for p in ex.secret.parent.iterdir()] == ["secret.txt"]
    assert ex.secret.read_bytes() == SENTINEL_CONTENT
    assert stat.S_IMODE(ex.secret.stat().st_mode) == 0o644
    assert ex.secret.stat().st_nlink == 1
    assert os.listxattr(ex.secret) == []


def _assert_not_secret(ex: Export, reply: m.Reply) -> None:
    if isinstance(reply, m.FdReply):
        try:
            assert not _is_secret(ex, os.fstat(reply.fd))
            assert os.pread(reply.fd, 100, 0) != SENTINEL_CONTENT
        finally:
            os.close(reply.fd)
    elif isinstance(reply, m.StatReply):
        assert not _is_secret(ex, reply)


@pytest.fixture
def ours(export: Export, layer: tuple[str, ...], helpers: list[Helper]) -> Helper:
    h = spawn_ours(export.root, *layer)
    helpers.append(h)
    return h


def read_escapes() -> list[m.Request]:
    """Requests that would read or stat the secret if a layer let :data:`READ_ESCAPES` out."""
    return [
        request
        for path in READ_ESCAPES
        for request in (
            m.OpenRequest(path, os.O_RDONLY),
            m.LstatRequest(path),
            m.StatfsRequest(path),
            m.GetversionRequest(path),
            m.LgetxattrRequest(0, path, b"user.x"),
        )
    ]


def test_reads_stay_inside(export: Export, ours: Helper, layer: tuple[str, ...]) -> None:
    for request in read_escapes():
        _assert_not_secret(export, ours.client.request(request))
    # the ones that do resolve, resolve to the export's own files (the
    # namespaces' view alone has the tmpfs holding the export as its root:
    # ".." there finds no file.txt)
    if layer != LAYER_NS_VIEW:
        assert isinstance(ours.client.request(m.LstatRequest(b"link_dotdot/file.txt")), m.StatReply)


def write_escapes(uid: int = 0, gid: int = 0, chown_to: int = 1234) -> list[m.Request]:
    """Requests that would create, change or remove something outside the export
    if a layer let them out; created objects are owned ``uid:gid``."""
    return [
        m.CreateRequest(b"link_dotdot/created_outside", os.O_RDWR | os.O_CREAT, 0o644, uid, gid),
        m.CreateRequest(b"link_host_dir/created_outside", os.O_RDWR | os.O_CREAT, 0o644, uid, gid),
        m.OpenRequest(b"../created_outside", os.O_RDWR | os.O_CREAT),
        m.MkdirRequest(uid, gid, b"link_host_dir/evil_dir", 0o755),
        m.MkdirRequest(uid, gid, b"../evil_dir", 0o755),
        m.MknodRequest(uid, gid, b"link_dotdot/evil_fifo", stat.S_IFIFO | 0o644, 0),
        m.SymlinkRequest(uid, gid, b"/", b"link_dotdot/evil_link"),
        m.RenameRequest(b"file.txt", b"link_dotdot/stolen.txt"),
        m.RenameRequest(b"../outside/secret.txt", b"stolen.txt"),
        m.LinkRequest(b"../outside/secret.txt", b"hard_secret"),
        m.LinkRequest(b"link_host_dir/outside/secret.txt", b"hard_secret2"),
        m.LinkRequest(b"file.txt", b"link_dotdot/hard_out"),
        m.ChmodRequest(b"link_abs_host", 0o777),
        m.ChmodRequest(b"link_rel_escape", 0o777),
        m.ChownRequest(b"link_dotdot/outside/secret.txt", chown_to, chown_to),
        m.TruncateRequest(b"link_rel_escape", 0),
        m.TruncateRequest(b"link_host_dir/outside/secret.txt", 0),
        m.UtimeRequest(b"../outside/secret.txt", 0, 0, 0, 0),
        m.LsetxattrRequest(b"link_dotdot/outside/secret.txt", b"user.evil", b"x", 1, 0),
        m.RemoveRequest(b"link_dotdot/outside/secret.txt"),
        m.RemoveRequest(b"../outside/secret.txt"),
    ]


def test_writes_stay_inside(export: Export, ours: Helper, layer: tuple[str, ...]) -> None:
    requests = write_escapes()
    secret_times = export.secret.stat().st_mtime_ns
    for request in requests:
        _assert_not_secret(export, ours.client.request(request))
    _assert_outside_untouched(export)
    assert export.secret.stat().st_mtime_ns == secret_times
    assert os.stat(export.secret).st_uid == 0
    # a hard link to a symlink is a symlink: reading through it stays inside
    assert not any(
        _is_secret(export, p.lstat()) for p in export.root.rglob("*") if not p.is_symlink()
    )
    # "link_dotdot" is ".." of the root, i.e. the root: the rename stayed inside
    # (in the namespaces' view alone, ".." is the read-only tmpfs: refused)
    if layer != LAYER_NS_VIEW:
        assert (export.root / "stolen.txt").read_bytes() == b"hello\n"


@contextlib.contextmanager
def mounted_proc(export: Export) -> Iterator[Path]:
    """procfs mounted inside the export (the home of magic links), and two
    symlinks into it."""
    proc = export.root / "proc"
    proc.mkdir()
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        os.symlink(f"/proc/self/root{export.secret}", export.root / "magic_root")
        os.symlink("/proc/self/cwd/../outside/secret.txt", export.root / "magic_cwd")
        yield proc
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=True)


def magic_link_escapes(export: Export) -> list[m.Request]:
    """Requests through the magic links of :func:`mounted_proc`."""
    paths = [
        f"proc/self/root{export.secret}".encode(),
        f"/proc/1/root{export.secret}".encode(),
        b"/proc/self/cwd/../outside/secret.txt",
        b"proc/self/root/../outside/secret.txt",
        b"magic_root",
        b"magic_cwd",
    ] + [f"/proc/self/fd/{fd}/../outside/secret.txt".encode() for fd in range(12)]
    return [
        request
        for path in paths
        for request in (m.OpenRequest(path, os.O_RDONLY), m.LstatRequest(path))
    ]


@pytest.fixture
def proc_in_export(export: Export) -> Iterator[Path]:
    with mounted_proc(export) as proc:
        yield proc


def test_proc_magic_links_stay_inside(
    export: Export, proc_in_export: Path, layer: tuple[str, ...], helpers: list[Helper]
) -> None:
    h = spawn_ours(export.root, *layer)
    helpers.append(h)
    for request in magic_link_escapes(export):
        _assert_not_secret(export, h.client.request(request))
    _assert_outside_untouched(export)


def test_renames_racing_lookups_stay_inside(export: Export, ours: Helper) -> None:
    """A host process moves directories around while the helper walks through them."""
    deep = export.root / "a" / "b" / "c"
    moved = export.root / "c_moved"
    stop = threading.Event()

    def mover() -> None:
        while not stop.is_set():
            for src, dst in ((deep, moved), (moved, deep)):
                with contextlib.suppress(OSError):
                    os.rename(src, dst)

    thread = threading.Thread(target=mover)
    thread.start()
    try:
        for _ in range(300):
            for path in (
                b"a/b/c/../../../../outside/secret.txt",
                b"c_moved/../../outside/secret.txt",
            ):
                _assert_not_secret(export, ours.client.request(m.OpenRequest(path, os.O_RDONLY)))
                _assert_not_secret(export, ours.client.request(m.LstatRequest(path)))
    finally:
        stop.set()
        thread.join()
    _assert_outside_untouched(export)


def test_with_no_layer_the_escapes_succeed(export: Export, helpers: list[Helper]) -> None:
    """The checks above can fail: with both layers off, the same paths escape."""
    h = spawn_ours(export.root, *NO_LAYER)
    helpers.append(h)
    escaped = []
    for path in READ_ESCAPES:
        try:
            _assert_not_secret(export, h.client.request(m.OpenRequest(path, os.O_RDONLY)))
        except AssertionError:
            escaped.append(path)
    assert b"link_rel_escape" in escaped
    assert b"dir/../../outside/secret.txt" in escaped
    assert b"link_abs_host" in escaped
