"""Layer (a) in-process: openat2 and the user-space walk resolve alike, inside the root."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Iterator

import pytest

from virtfs_proto.kit.conformance.workspace import deep_dir
from virtfs_proto.server import resolve
from virtfs_proto.server.resolve import (
    MAX_SYMLINKS,
    PATH_MAX,
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


# -- paths too long for one system call ------------------------------------------
#
# Both resolvers serve them (openat2 hands them to the walk); the walk is
# checked to keep its rules at that length: ".." (clamped at the root),
# symlinks anywhere, one symlink budget for the whole path, NAME_MAX.

RESOLVERS = [
    pytest.param({"use_openat2": True}, id="openat2"),
    pytest.param({"use_openat2": False}, id="walk"),
]
#: 25 directories of 200 bytes: their path alone is 5025 bytes, over PATH_MAX
DEEP = [b"%03d" % i + b"d" * 197 for i in range(25)]
DEEP_PATH = b"/" + b"/".join(DEEP)
UP_TO_ROOT = b"/.." * len(DEEP)


@pytest.fixture
def deep_fd(export: Export, root_fd: int) -> Iterator[int]:
    """An O_PATH fd of the deepest directory of ``DEEP``, made below the root."""
    fd = deep_dir(root_fd, DEEP, create=True)
    yield fd
    os.close(fd)


def _ino(dirfd: int, name: str | bytes = ".") -> int:
    """The inode of ``name`` in ``dirfd`` on the host (not followed)."""
    return os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_ino


def _found(r: Resolver, path: bytes, flags: int) -> int | str:
    """The inode ``path`` opens to, or the errno's name."""
    outcome = _outcome(r, path, flags)
    return outcome if isinstance(outcome, str) else outcome[1]


def _parent_outcome(r: Resolver, path: bytes) -> tuple[int, bytes] | str:
    try:
        fd, name = r.parent(path)
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    try:
        return os.fstat(fd).st_ino, name
    finally:
        r.release(fd)


def test_deep_path_is_over_path_max() -> None:
    assert len(DEEP_PATH) >= PATH_MAX


@pytest.mark.parametrize("kw", RESOLVERS)
def test_long_path_open_create_parent(
    export: Export, root_fd: int, deep_fd: int, kw: dict[str, bool]
) -> None:
    r = Resolver(root_fd, **kw)
    os.close(os.open(b"file", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=deep_fd))
    for flags in (os.O_RDONLY, os.O_PATH, os.O_PATH | os.O_NOFOLLOW, os.O_WRONLY | os.O_TRUNC):
        assert _found(r, DEEP_PATH + b"/file\0", flags | os.O_CLOEXEC) == _ino(deep_fd, "file")
    assert _found(r, DEEP_PATH + b"/", os.O_RDONLY | os.O_DIRECTORY) == _ino(deep_fd)
    excl, mode = normalize_open_flags(os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640)
    fd = r.open(DEEP_PATH + b"/new", excl, mode)
    try:
        assert os.fstat(fd).st_ino == _ino(deep_fd, "new")
    finally:
        os.close(fd)
    with pytest.raises(FileExistsError):
        r.open(DEEP_PATH + b"/new", excl, mode)
    assert _parent_outcome(r, DEEP_PATH + b"/new\0") == (_ino(deep_fd), b"new")
    assert _parent_outcome(r, DEEP_PATH + b"/..") == (_ino(deep_fd, ".."), b".")
    assert _found(r, DEEP_PATH + b"/missing/x", os.O_PATH) == "ENOENT"
    assert _found(r, DEEP_PATH + b"/file/x", os.O_PATH) == "ENOTDIR"


@pytest.mark.parametrize("kw", RESOLVERS)
def test_long_path_resolves_as_its_short_form(
    export: Export, root_fd: int, deep_fd: int, kw: dict[str, bool]
) -> None:
    """Going down DEEP and back up with '..' changes nothing: every short path
    resolves (and fails) as it does with openat2 from the root."""
    kernel = Resolver(root_fd, use_openat2=True)
    r = Resolver(root_fd, **kw)
    detour = DEEP_PATH + UP_TO_ROOT + b"/"
    for path in PATHS:
        for flags in (os.O_PATH, os.O_PATH | os.O_NOFOLLOW, os.O_RDONLY | os.O_NONBLOCK):
            assert _outcome(r, detour + path, flags) == _outcome(kernel, path, flags), path
        assert _parent_outcome(r, detour + path) == _parent_outcome(kernel, path), path


@pytest.mark.parametrize("kw", RESOLVERS)
def test_long_path_dotdot_stays_inside(
    export: Export, root_fd: int, deep_fd: int, kw: dict[str, bool]
) -> None:
    r = Resolver(root_fd, **kw)
    root_file = (export.root / "file.txt").stat().st_ino
    for extra in (0, 1, 30):  # more '..' than depth: clamped at the root
        up = DEEP_PATH + UP_TO_ROOT + b"/.." * extra
        assert _found(r, up + b"/file.txt", os.O_RDONLY) == root_file
        assert _found(r, up + b"/../outside/secret.txt", os.O_RDONLY) == "ENOENT"
    # one '..' in the middle goes one level up
    assert _found(r, DEEP_PATH + b"/../" + DEEP[-1] + b"/..", os.O_PATH) == _ino(deep_fd, "..")


@pytest.mark.parametrize("kw", RESOLVERS)
def test_long_path_symlinks(
    export: Export, root_fd: int, deep_fd: int, kw: dict[str, bool]
) -> None:
    r = Resolver(root_fd, **kw)
    links = {
        "rel_here": "../" + DEEP[-1].decode(),  # relative: up and back down
        "abs_dir": "/dir",  # absolute: restarts at the export root
        "abs_file": "/file.txt",
        "escape_rel": "../" * 40 + "outside/secret.txt",
        "escape_abs": str(export.secret),
        "escape_host_dir": str(export.base),
        "dangling": "/dir/made_via_deep_link",
    }
    for name, target in links.items():
        os.symlink(target, name, dir_fd=deep_fd)
    dir_ino = (export.root / "dir").stat().st_ino
    sub = (export.root / "dir" / "sub.txt").stat().st_ino
    # in the middle
    assert _found(r, DEEP_PATH + b"/rel_here/rel_here/abs_dir/sub.txt", os.O_RDONLY) == sub
    assert _found(r, DEEP_PATH + b"/abs_dir/../dir/sub.txt", os.O_RDONLY) == sub
    assert _parent_outcome(r, DEEP_PATH + b"/abs_dir/sub.txt") == (dir_ino, b"sub.txt")
    # final: followed, or not with O_NOFOLLOW
    assert _found(r, DEEP_PATH + b"/abs_file", os.O_RDONLY) == _ino(root_fd, "file.txt")
    assert _found(r, DEEP_PATH + b"/abs_file", os.O_PATH | os.O_NOFOLLOW) == _ino(
        deep_fd, "abs_file"
    )
    assert _found(r, DEEP_PATH + b"/abs_file", os.O_RDONLY | os.O_NOFOLLOW) == "ELOOP"
    # escapes stay inside, where the secret does not exist
    for name in (b"escape_rel", b"escape_abs", b"escape_host_dir/outside/secret.txt"):
        assert _found(r, DEEP_PATH + b"/" + name, os.O_RDONLY) == "ENOENT", name
    # creating through a final symlink lands inside the export
    flags, mode = normalize_open_flags(os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(r.open(DEEP_PATH + b"/dangling", flags, mode))
    assert (export.root / "dir" / "made_via_deep_link").exists()


@pytest.mark.parametrize("kw", RESOLVERS)
def test_long_path_one_symlink_budget(
    export: Export, root_fd: int, deep_fd: int, kw: dict[str, bool]
) -> None:
    """40 symlinks in a whole path are followed, in the middle and at the end
    together; one more is ELOOP."""
    r = Resolver(root_fd, **kw)
    os.symlink(".", "here", dir_fd=deep_fd)
    os.symlink("file", "final", dir_fd=deep_fd)
    os.symlink("loop", "loop", dir_fd=deep_fd)
    os.close(os.open(b"file", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=deep_fd))
    file_ino = _ino(deep_fd, "file")
    assert _found(r, DEEP_PATH + b"/here" * 40 + b"/file", os.O_RDONLY) == file_ino
    assert _found(r, DEEP_PATH + b"/here" * 39 + b"/final", os.O_RDONLY) == file_ino
    assert _found(r, DEEP_PATH + b"/here" * 40 + b"/final", os.O_RDONLY) == "ELOOP"
    assert _found(r, DEEP_PATH + b"/here" * 41 + b"/file", os.O_RDONLY) == "ELOOP"
    assert _found(r, DEEP_PATH + b"/loop", os.O_RDONLY) == "ELOOP"
    assert _found(r, DEEP_PATH + b"/loop/x", os.O_PATH) == "ELOOP"


@pytest.mark.parametrize("kw", RESOLVERS)
def test_long_path_component_over_name_max(
    export: Export, root_fd: int, deep_fd: int, kw: dict[str, bool]
) -> None:
    r = Resolver(root_fd, **kw)
    for long in (b"x" * 256, b"y" * 5000):
        for path in (DEEP_PATH + b"/" + long, DEEP_PATH + b"/" + long + b"/z", long + DEEP_PATH):
            assert _found(r, path, os.O_PATH) == "ENAMETOOLONG"
            assert _parent_outcome(r, path + b"/w") == "ENAMETOOLONG"
    os.mkdir(b"n" * 255, dir_fd=deep_fd)  # NAME_MAX itself is a name
    assert _found(r, DEEP_PATH + b"/" + b"n" * 255, os.O_PATH) == _ino(deep_fd, b"n" * 255)


@pytest.mark.parametrize("kw", RESOLVERS)
def test_long_path_depth_not_bound_by_fd_limit(
    export: Export, root_fd: int, kw: dict[str, bool]
) -> None:
    """200 levels resolve with 64 descriptors allowed: the walk holds one at a time."""
    names = [b"%019d" % i for i in range(200)]
    os.close(deep_dir(root_fd, names, create=True))
    middle = deep_dir(root_fd, names[:100])
    path = b"/".join(names) + b"/.." * 100
    assert len(path) >= PATH_MAX
    r = Resolver(root_fd, **kw)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        found = _found(r, path, os.O_PATH)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert found == os.fstat(middle).st_ino
    os.close(middle)


def test_walk_dotdot_refuses_a_moved_directory(
    export: Export, root_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk's '..' must land where it came from. Here c moves from a/b to the
    root just before it: the physical '..' is then the root, and one more '..'
    from there would be the directory above the export. The walk starts again
    instead, and finds a/b/c gone."""
    r = Resolver(root_fd, use_openat2=False)
    moves = [(export.root / "a" / "b" / "c", export.root / "c")]
    dotdot = resolve._dotdot

    def moved_first(dirfd: int, want: tuple[int, int]) -> int:
        if moves:
            os.rename(*moves.pop())
        return dotdot(dirfd, want)

    monkeypatch.setattr(resolve, "_dotdot", moved_first)
    assert _found(r, b"a/b/c/../..", os.O_PATH) == "ENOENT"
    assert not moves and (export.root / "c").is_dir()


def test_uncontained_long_path_follows_the_kernels_rules(
    export: Export, root_fd: int, deep_fd: int
) -> None:
    """--resolver=none (tests of the chroot alone) takes long paths too, a run of
    whole components at a time: '..' across a run's end is the kernel's '..'."""
    r = Resolver(root_fd, contain=False)
    os.close(os.open(b"file", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=deep_fd))
    relative = DEEP_PATH.lstrip(b"/")
    assert _found(r, relative + b"/file", os.O_RDONLY) == _ino(deep_fd, "file")
    assert _found(r, relative + UP_TO_ROOT + b"/file.txt", os.O_PATH) == _ino(root_fd, "file.txt")
    # uncontained: '..' at the export root goes above it, as the kernel's does
    assert _found(r, relative + UP_TO_ROOT + b"/../outside/secret.txt", os.O_PATH) == (
        export.secret.stat().st_ino
    )
    assert _found(r, relative + b"/" + b"x" * 5000, os.O_PATH) == "ENAMETOOLONG"
    assert _parent_outcome(r, relative + b"/file") == (_ino(deep_fd), b"file")
