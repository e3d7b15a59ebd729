"""Layer (a) in-process: openat2 and the user-space walk resolve alike, inside the root."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

import pytest

from virtfs_proto.server.resolve import (
    MAX_SYMLINKS,
    Resolver,
    clean_name,
    clean_path,
    normalize_open_flags,
    openat2_available,
)

from .conftest import Export

PATHS = [
    b"file.txt",
    b"/file.txt\0",
    b"//dir/sub.txt\0",
    b"/",
    b"//",
    b".",
    b"..",
    b"../..",
    b"dir/",
    b"dir/.",
    b"dir/..",
    b"dir/../..",
    b"link_abs",
    b"link_abs/",
    b"link_dir/sub.txt",
    b"link_dir/../file.txt",
    b"link_dotdot/link_dotdot/file.txt",
    b"link_rel_escape",
    b"link_abs_host",
    b"link_host_dir",
    b"missing",
    b"missing/x",
    b"file.txt/x",
    b"a/b/c/../../../../file.txt",
    b"fifo",
]


@pytest.fixture
def root_fd(export: Export) -> Iterator[int]:
    fd = os.open(export.root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _outcome(resolver: Resolver, path: bytes, flags: int) -> tuple[int, int] | str:
    try:
        fd = resolver.open(path, flags)
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    st = os.fstat(fd)
    os.close(fd)
    return (st.st_dev, st.st_ino)


def test_openat2_is_available_here() -> None:
    assert openat2_available()


@pytest.mark.parametrize(
    "flags",
    [os.O_PATH, os.O_PATH | os.O_NOFOLLOW, os.O_RDONLY | os.O_NONBLOCK, os.O_PATH | os.O_DIRECTORY],
    ids=["path", "path-nofollow", "rdonly", "directory"],
)
def test_walk_matches_openat2(export: Export, root_fd: int, flags: int) -> None:
    kernel = Resolver(root_fd, use_openat2=True)
    walk = Resolver(root_fd, use_openat2=False)
    assert kernel.uses_openat2 and not walk.uses_openat2
    for path in PATHS:
        assert _outcome(walk, path, flags) == _outcome(kernel, path, flags), path


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
def test_symlink_limit_is_40(export: Export, root_fd: int, use_openat2: bool) -> None:
    os.symlink("file.txt", export.root / "chain0")
    for i in range(1, MAX_SYMLINKS + 1):
        os.symlink(f"/chain{i - 1}", export.root / f"chain{i}")
    r = Resolver(root_fd, use_openat2=use_openat2)
    assert isinstance(_outcome(r, f"chain{MAX_SYMLINKS - 1}".encode(), os.O_RDONLY), tuple)
    assert _outcome(r, f"chain{MAX_SYMLINKS}".encode(), os.O_RDONLY) == "ELOOP"
    os.symlink("self_loop", export.root / "self_loop")
    assert _outcome(r, b"self_loop/x", os.O_PATH) == "ELOOP"


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
def test_creation_through_symlinks_lands_inside(
    export: Export, root_fd: int, use_openat2: bool
) -> None:
    os.symlink("/dir/made_via_link", export.root / "dangling")
    os.symlink(str(export.base / "made_outside"), export.root / "dangling_host")
    r = Resolver(root_fd, use_openat2=use_openat2)
    flags, mode = normalize_open_flags(os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(r.open(b"dangling", flags, mode))
    assert (export.root / "dir" / "made_via_link").exists()
    with pytest.raises(FileNotFoundError):
        r.open(b"dangling_host", flags, mode)  # its directory does not exist inside
    assert not (export.base / "made_outside").exists()
    with pytest.raises(FileExistsError):  # O_EXCL never follows
        r.open(b"dangling", flags | os.O_EXCL, mode)


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
def test_parent_gives_one_component(export: Export, root_fd: int, use_openat2: bool) -> None:
    r = Resolver(root_fd, use_openat2=use_openat2)
    dir_ino = (export.root / "dir").stat().st_ino
    root_ino = export.root.stat().st_ino
    cases = {
        b"//file.txt\0": (root_ino, b"file.txt"),
        b"file.txt": (root_ino, b"file.txt"),
        b"//dir/sub.txt\0": (dir_ino, b"sub.txt"),
        b"link_dir/sub.txt": (dir_ino, b"sub.txt"),
        b"/": (root_ino, b"."),
        b"dir/": (dir_ino, b"."),
        b"dir/.": (dir_ino, b"."),
        b"dir/..": (root_ino, b"."),
        b"..": (root_ino, b"."),
        b"link_dotdot/dir/sub.txt": (dir_ino, b"sub.txt"),
    }
    for path, (ino, name) in cases.items():
        fd, got = r.parent(path)
        try:
            assert (os.fstat(fd).st_ino, got) == (ino, name), path
            assert (fd == root_fd) == (path in (b"//file.txt\0", b"file.txt"))
        finally:
            r.release(fd)
    with pytest.raises(NotADirectoryError):
        r.parent(b"file.txt/x")


def test_nul_handling() -> None:
    assert clean_path(b"/a\0") == b"/a"
    assert clean_path(b"/a") == b"/a"
    assert clean_name(b"user.x\0") == b"user.x"
    for bad in (b"/a\0\0", b"/a\0b", b"\0/a"):
        with pytest.raises(OSError) as info:
            clean_path(bad)
        assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        clean_path(b"\0")
    assert info.value.errno == errno.ENOENT


def test_normalize_open_flags() -> None:
    stray = 0x40000000  # no such open(2) flag: open ignores it, openat2 would refuse
    flags, mode = normalize_open_flags(os.O_RDONLY | stray, 0o777)
    assert flags == os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC and mode == 0
    flags, mode = normalize_open_flags(os.O_CREAT | os.O_WRONLY, 0o170644)
    assert mode == 0o644
    flags, _ = normalize_open_flags(os.O_PATH | os.O_RDWR | os.O_TRUNC | os.O_NOFOLLOW, 0)
    assert flags == os.O_PATH | os.O_NOFOLLOW | os.O_LARGEFILE | os.O_CLOEXEC


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
def test_no_fd_leaks(export: Export, root_fd: int, use_openat2: bool) -> None:
    r = Resolver(root_fd, use_openat2=use_openat2)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        for path in PATHS:
            _outcome(r, path, os.O_PATH)
            with contextlib.suppress(OSError):
                r.release(r.parent(path)[0])
    assert len(os.listdir("/proc/self/fd")) == before
