"""The rootless helper (issue 14): started by an unprivileged user, confined in a
user namespace of its own.

Run as root, these start the helper as the CI's user (uid 2345, created by
``scripts/bootstrap``) through ``setpriv --reuid --regid --clear-groups
--inh-caps=-all``: no capability at all. A missing user or setpriv FAILS,
never skips. Run as any other user (marker ``rootless``), they start the
helper as that user directly; the tests that need the CI user's exact ids or
root on the host are not marked.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ciuser
import pytest
from helpers import OUR_HELPER

from virtfs_proto import messages as m
from virtfs_proto import procfs
from virtfs_proto.client import ProxyClient
from virtfs_proto.kit.conformance.cases.security.races import ForkedLoop
from virtfs_proto.launcher import Helper, spawn_helper
from virtfs_proto.server.userns import IdMap, IdRange, UserNamespaceError, subid_ranges

from .conftest import NO_LAYER, Export, build_export
from .test_containment import (
    _assert_not_secret,
    _assert_outside_untouched,
    magic_link_escapes,
    mounted_proc,
    read_escapes,
    write_escapes,
)
from .test_sandbox import ACTIONS, CLAIMS, inside_outcomes

#: The CI's non-root user (scripts/bootstrap) and its /etc/subuid range.
CI_USER = ciuser.NAME
CI_UID = ciuser.UID
CI_SUBIDS = (ciuser.SUBID_START, ciuser.SUBID_COUNT)
TESTING = {**os.environ, "VIRTFS_PROTO_TESTING": "1"}


@dataclass(frozen=True)
class User:
    """Who the helper runs as, and the argv prefix that makes it so."""

    uid: int
    gid: int
    prefix: tuple[str, ...]

    def helper(self, *extra: str) -> list[str]:
        return [*self.prefix, *OUR_HELPER, *extra]


@pytest.fixture(scope="session")
def user() -> User:
    if os.getuid() != 0:
        return User(os.getuid(), os.getgid(), ())
    why = ciuser.missing()
    if why is not None:  # a failure, not a skip: CI creates the user
        pytest.fail(why, pytrace=False)
    prefix = ciuser.SETPRIV
    return User(CI_UID, CI_UID, prefix)


def _needs_ci_user(user: User) -> None:
    if user.uid != CI_UID:
        pytest.fail(f"this test needs the CI user {CI_USER} (run it as root)", pytrace=False)


def _chown_tree(base: Path, uid: int, gid: int) -> None:
    os.chown(base, uid, gid)
    for top, dirs, files in os.walk(base):
        for name in dirs + files:
            os.chown(os.path.join(top, name), uid, gid, follow_symlinks=False)


@pytest.fixture
def rl_export(user: User) -> Iterator[Export]:
    """The server tests' tree, all of it (the outside too) the user's: an escape
    would succeed on permissions alone, so only the confinement stops it."""
    base = Path(tempfile.mkdtemp(prefix="virtfs-rootless-"))
    try:
        export = build_export(base)
        _chown_tree(base, user.uid, user.gid)
        yield export
    finally:
        shutil.rmtree(base, ignore_errors=True)


#: start(*options, mode="fd"): a rootless helper on ``rl_export``, with a client
Starter = Callable[..., Helper]


@pytest.fixture
def start(user: User, rl_export: Export, helpers: list[Helper]) -> Iterator[Starter]:
    """start(*options, mode="fd"): a rootless helper on ``rl_export`` with a client."""
    sockdirs: list[str] = []

    def _start(*options: str, mode: str = "fd") -> Helper:
        socket_path = None
        if mode == "socket":
            sockdir = tempfile.mkdtemp(prefix="virtfs-rootless-sock-")
            os.chown(sockdir, user.uid, user.gid)
            sockdirs.append(sockdir)
            socket_path = os.path.join(sockdir, "proxy.sock")
        h = spawn_helper(
            user.helper(*options), rl_export.root, "socket" if mode == "socket" else "fd",
            user.uid, user.gid, timeout=5.0, socket_path=socket_path,
        )  # fmt: skip
        helpers.append(h)
        return h

    yield _start
    for d in sockdirs:
        shutil.rmtree(d, ignore_errors=True)


def _lstat_ids(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


# -- every operation ---------------------------------------------------------------


def _every_operation(
    client: ProxyClient, root: Path, ids: tuple[int, int], host: tuple[int, int], invoker: int
) -> None:
    """Each operation once through ``client``; ``ids`` are the guest's (requested)
    ids, ``host`` what they are on the host (read back with lstat), ``invoker``
    the uid that started the helper."""
    uid, gid = ids
    fd = client.create("/new.txt", os.O_RDWR | os.O_EXCL, 0o640, uid, gid)
    try:
        os.write(fd, b"written")
    finally:
        os.close(fd)
    st = os.lstat(root / "new.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (*host, 0o640)
    fd = client.open("/new.txt")
    try:
        assert os.read(fd, 100) == b"written"
    finally:
        os.close(fd)
    client.mknod("/fifo2", stat.S_IFIFO | 0o620, 0, uid, gid)
    assert stat.S_ISFIFO(os.lstat(root / "fifo2").st_mode)
    assert _lstat_ids(root / "fifo2") == host
    client.mknod("/plain", stat.S_IFREG | 0o600, 0, uid, gid)
    assert _lstat_ids(root / "plain") == host
    client.mkdir("/d", 0o750, uid, gid)
    assert _lstat_ids(root / "d") == host
    client.symlink("new.txt", "/ln", uid, gid)
    assert _lstat_ids(root / "ln") == host
    assert client.readlink("/ln") == "new.txt"
    client.link("/new.txt", "/d/hard")
    assert os.lstat(root / "d" / "hard").st_ino == os.lstat(root / "new.txt").st_ino
    seen = client.lstat("/new.txt")
    assert (seen.st_uid, seen.st_gid) == ids  # the guest sees its own ids
    assert client.statfs("/").f_bsize == os.statvfs(root).f_bsize
    client.chmod("/new.txt", 0o604)
    assert stat.S_IMODE(os.lstat(root / "new.txt").st_mode) == 0o604
    client.chown("/plain", uid, gid)
    assert _lstat_ids(root / "plain") == host
    client.truncate("/new.txt", 3)
    assert (root / "new.txt").read_bytes() == b"wri"
    client.utime("/new.txt", (1, 0), (2, 0))
    assert os.lstat(root / "new.txt").st_mtime == 2
    client.lsetxattr("/new.txt", "user.k", b"v")
    assert client.lgetxattr("/new.txt", "user.k") == b"v"
    assert "user.k" in client.llistxattr("/new.txt")
    client.lremovexattr("/new.txt", "user.k")
    assert os.listxattr(root / "new.txt") == []
    client.getversion("/new.txt")
    client.rename("/new.txt", "/d/moved.txt")
    assert (root / "d" / "moved.txt").read_bytes() == b"wri"
    client.remove("/d/moved.txt")
    assert not (root / "d" / "moved.txt").exists()
    # T_OPEN with O_CREAT makes the file the helper's own: the invoking user's
    os.close(client.open("/opened", os.O_RDWR | os.O_CREAT))
    assert os.lstat(root / "opened").st_uid == invoker


@pytest.mark.rootless
@pytest.mark.parametrize("mode", ["fd", "socket"])
def test_every_operation_identity_map(
    start: Starter, rl_export: Export, user: User, mode: str
) -> None:
    h = start(mode=mode)
    ids = (user.uid, user.gid)
    _every_operation(h.client, rl_export.root, ids, ids, user.uid)


@pytest.mark.parametrize("mode", ["fd", "socket"])
def test_every_operation_subids(start: Starter, rl_export: Export, user: User, mode: str) -> None:
    """--subids: guest 1000 is 200999 on the host, guest 0 the invoking user."""
    _needs_ci_user(user)
    h = start("--subids", mode=mode)
    first, count = CI_SUBIDS
    host = (first + 999, first + 999)
    _every_operation(h.client, rl_export.root, (1000, 1000), host, CI_UID)
    h.client.mkdir("/root_dir", 0o755, 0, 0)
    assert _lstat_ids(rl_export.root / "root_dir") == (CI_UID, CI_UID)
    with pytest.raises(PermissionError):  # past the range: unmapped
        h.client.mkdir("/beyond", 0o755, count + 1, 0)
    assert not (rl_export.root / "beyond").exists()


# -- ids outside the map ------------------------------------------------------------


@pytest.mark.rootless
def test_unmapped_owner_is_eperm_and_nothing_is_left(
    start: Starter, rl_export: Export, user: User
) -> None:
    h = start()
    root = rl_export.root
    other = user.uid + 1  # not in the identity map
    before = sorted(p.name for p in root.iterdir())
    requests: list[m.Request] = [
        m.CreateRequest(b"c", os.O_RDWR | os.O_CREAT, 0o644, other, user.gid),
        m.CreateRequest(b"c", os.O_RDWR | os.O_CREAT, 0o644, user.uid, other),
        m.MknodRequest(other, user.gid, b"n", stat.S_IFIFO | 0o644, 0),
        m.MknodRequest(other, user.gid, b"r", stat.S_IFREG | 0o644, 0),
        m.MkdirRequest(user.uid, other, b"d", 0o755),
        m.SymlinkRequest(other, other, b"file.txt", b"s"),
        m.ChownRequest(b"file.txt", other, 0xFFFFFFFF),
        m.ChownRequest(b"file.txt", 0xFFFFFFFF, other),
        m.ChownRequest(b"file.txt", 0, 0),
    ]
    for request in requests:
        reply = h.client.request(request)
        assert reply == m.ErrorReply(errno.EPERM), request
    assert sorted(p.name for p in root.iterdir()) == before
    assert _lstat_ids(root / "file.txt") == (user.uid, user.gid)
    # -1 ("leave it") is always allowed
    assert h.client.request(m.ChownRequest(b"file.txt", 0xFFFFFFFF, 0xFFFFFFFF)) == (
        m.StatusReply()
    )


# -- a set-gid directory whose group the namespace does not map -------------------------

#: a host group no map of the CI user's covers
FOREIGN_GID = 4242


@pytest.fixture
def setgid_dir(rl_export: Export, user: User) -> Path:
    """The user's own directory, set-gid, its group one the user namespace does
    not map (e.g. a shared group the user belongs to on the host)."""
    _needs_ci_user(user)  # giving it a foreign group needs root on the host
    d = rl_export.root / "sg"
    d.mkdir()
    os.chown(d, user.uid, FOREIGN_GID)
    os.chmod(d, 0o2777)
    return d


def _creations(uid: int, gid: int, tag: str = "") -> list[tuple[str, m.Request]]:
    """Every request that makes a node in ``sg``, as (name, request)."""
    creat = os.O_RDWR | os.O_CREAT
    return [
        (f"c{tag}", m.CreateRequest(f"sg/c{tag}".encode(), creat, 0o644, uid, gid)),
        (f"x{tag}", m.CreateRequest(f"sg/x{tag}".encode(), os.O_RDWR | os.O_CREAT | os.O_EXCL,
                                    0o644, uid, gid)),
        (f"n{tag}", m.MknodRequest(uid, gid, f"sg/n{tag}".encode(), stat.S_IFIFO | 0o644, 0)),
        (f"r{tag}", m.MknodRequest(uid, gid, f"sg/r{tag}".encode(), stat.S_IFREG | 0o644, 0)),
        (f"d{tag}", m.MkdirRequest(uid, gid, f"sg/d{tag}".encode(), 0o755)),
        (f"s{tag}", m.SymlinkRequest(uid, gid, b"c", f"sg/s{tag}".encode())),
    ]  # fmt: skip


def _close_fd(reply: m.Reply) -> None:
    if isinstance(reply, m.FdReply):
        os.close(reply.fd)


def test_setgid_parent_unmapped_group_identity(
    start: Starter, setgid_dir: Path, user: User
) -> None:
    """Identity map: the directory's group reads as unmapped, so nothing is made
    there (the node would take that group): EPERM, before anything is created."""
    h = start()
    for name, request in _creations(user.uid, user.gid):
        reply = h.client.request(request)
        _close_fd(reply)
        assert reply == m.ErrorReply(errno.EPERM), (name, reply)
    assert os.listdir(setgid_dir) == []
    # what exists there already is what it is: opened, or EEXIST
    (setgid_dir / "old").write_bytes(b"old")
    os.chown(setgid_dir / "old", user.uid, user.gid)
    fd = h.client.create("/sg/old", os.O_RDWR, 0o644, user.uid, user.gid)
    try:
        assert os.read(fd, 10) == b"old"
    finally:
        os.close(fd)
    for request in (
        m.CreateRequest(b"sg/old", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644, user.uid, user.gid),
        m.MkdirRequest(user.uid, user.gid, b"sg/old", 0o755),
        m.SymlinkRequest(user.uid, user.gid, b"x", b"sg/old"),
    ):
        assert h.client.request(request) == m.ErrorReply(errno.EEXIST), request
    assert os.listdir(setgid_dir) == ["old"]
    (setgid_dir / "old").unlink()
    # the same directory without S_ISGID: the nodes are the user's
    os.chmod(setgid_dir, 0o777)
    for name, request in _creations(user.uid, user.gid):
        _close_fd(h.client.request(request))
        assert _lstat_ids(setgid_dir / name) == (user.uid, user.gid), name


def test_setgid_parent_unmapped_group_subids(start: Starter, setgid_dir: Path, user: User) -> None:
    """--subids maps 65534, the overflow gid an unmapped group reads as, so the
    look before creating cannot tell: the owner's fix-up fails (CAP_CHOWN acts
    only on inodes whose ids are all mapped) and the node is removed again."""
    h = start("--subids")
    for name, request in _creations(1000, 1000):
        reply = h.client.request(request)
        _close_fd(reply)
        assert reply == m.ErrorReply(errno.EPERM), (name, reply)
    assert os.listdir(setgid_dir) == []
    # guest root is the user: chgrp to one's own group needs no capability,
    # so these end with the requested owner and the request succeeds
    for name, request in _creations(0, 0):
        reply = h.client.request(request)
        _close_fd(reply)
        assert not isinstance(reply, m.ErrorReply), (name, reply)
        assert _lstat_ids(setgid_dir / name) == (user.uid, user.gid), name


def test_setgid_parent_flipped_while_creating(start: Starter, setgid_dir: Path, user: User) -> None:
    """A host process flips the directory's S_ISGID while nodes are made there,
    with maps that do not cover 65534 (so the look before creating decides
    when the bit is on then): each request either made a node with the
    requested owner or failed EPERM and left nothing."""
    first, _ = CI_SUBIDS
    h = start(
        "--uid-map", f"0:{CI_UID}:1", "--uid-map", f"1:{first}:1000",
        "--gid-map", f"0:{CI_UID}:1", "--gid-map", f"1:{first}:1000",
    )  # fmt: skip
    host = (first + 4, first + 4)

    def flip() -> None:
        os.chmod(setgid_dir, 0o2777)
        os.chmod(setgid_dir, 0o777)

    made: set[str] = set()
    refused = 0
    with ForkedLoop(flip) as flipper:
        for i in range(150):
            for name, request in _creations(5, 5, str(i)):
                reply = h.client.request(request)
                _close_fd(reply)
                if isinstance(reply, m.ErrorReply):
                    assert reply.errno == errno.EPERM, (name, reply)
                    refused += 1
                else:
                    made.add(name)
    assert flipper.steps > 0
    assert set(os.listdir(setgid_dir)) == made
    for name in made:
        assert _lstat_ids(setgid_dir / name) == host, name
    print(f"made {len(made)}, refused {refused}, flips {flipper.steps}")


# -- set-uid and set-gid bits -------------------------------------------------------


@pytest.mark.rootless
@pytest.mark.parametrize("allow", [False, True], ids=["cleared", "allow-setid"])
def test_setid_bits(start: Starter, rl_export: Export, user: User, allow: bool) -> None:
    h = start(*(["--allow-setid"] if allow else []))
    c: ProxyClient = h.client
    root = rl_export.root
    uid, gid = user.uid, user.gid
    os.close(c.create("/created", os.O_RDWR | os.O_EXCL, 0o6755, uid, gid))
    c.mknod("/made", stat.S_IFREG | 0o6755, 0, uid, gid)
    c.chmod("/file.txt", 0o6755)
    c.chmod("/dir", 0o2755)
    expected = {"created": 0o6755, "made": 0o6755, "file.txt": 0o6755, "dir": 0o2755}
    for name, mode in expected.items():
        got = stat.S_IMODE(os.lstat(root / name).st_mode)
        assert got == (mode if allow else mode & 0o1777), (name, oct(got))
    # mkdir(2) itself takes no set-id bit from a mode (only a set-gid parent's)
    c.mkdir("/made_dir", 0o2755, uid, gid)
    assert stat.S_IMODE(os.lstat(root / "made_dir").st_mode) == 0o755


# -- the escapes ---------------------------------------------------------------------


@pytest.mark.rootless
def test_escapes_stay_inside(start: Starter, rl_export: Export, user: User) -> None:
    h = start()
    for request in read_escapes():
        _assert_not_secret(rl_export, h.client.request(request))
    secret_times = rl_export.secret.stat().st_mtime_ns
    # mapped ids: the requests reach the file system, not just the id check
    for request in write_escapes(user.uid, user.gid, chown_to=user.uid):
        _assert_not_secret(rl_export, h.client.request(request))
    _assert_outside_untouched(rl_export)
    assert rl_export.secret.stat().st_mtime_ns == secret_times


@pytest.mark.rootless
def test_with_no_layer_the_escapes_succeed(start: Starter, rl_export: Export) -> None:
    """The control: the same user's helper with every layer off does escape (so
    the test above can fail; the user's own permissions do not stop it)."""
    h = start(*NO_LAYER)
    fd = h.client.open("link_rel_escape")
    try:
        assert os.read(fd, 100) == rl_export.secret.read_bytes()
    finally:
        os.close(fd)


def test_magic_links_stay_inside(start: Starter, rl_export: Export) -> None:
    """procfs inside the export (mounting it needs root on the host)."""
    with mounted_proc(rl_export):
        h = start()
        for request in magic_link_escapes(rl_export):
            _assert_not_secret(rl_export, h.client.request(request))
    _assert_outside_untouched(rl_export)


# -- the confinement, seen from the host --------------------------------------------------


def _ns(pid: int | str, name: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{name}").st_ino


def _confinement_seen_by_root(parent: int, serving: int, rl_export: Export) -> None:
    """What only root may read of the (non-dumpable) serving process: its
    namespaces and its root."""
    for ns in ("user", "mnt", "pid", "net", "ipc", "uts"):
        assert _ns(serving, ns) != _ns("self", ns), ns
    # the parent and the serving process share the one user namespace
    assert _ns(parent, "user") == _ns(serving, "user")
    root = os.stat(f"/proc/{serving}/root")
    assert (root.st_dev, root.st_ino) == procfs.object_id(rl_export.root)


@pytest.mark.rootless
def test_confinement_seen_from_the_host(start: Starter, rl_export: Export, user: User) -> None:
    h = start()
    assert isinstance(h.client.request(m.LstatRequest(b"/\0")), m.StatReply)
    serving = h.serving_pid
    assert serving != h.pid and procfs.children(h.pid) == [serving]
    if os.geteuid() != 0:
        # not dumpable: its own user may not look into it, only root can
        for where in (f"/proc/{serving}/ns/user", f"/proc/{serving}/root"):
            with pytest.raises(PermissionError):
                os.stat(where)
        assert _ns(h.pid, "user") != _ns("self", "user")
    else:
        _confinement_seen_by_root(h.pid, serving, rl_export)
    # the host sees the invoking user's ids (the kernel translates into our namespace)
    for t in procfs.confinement_report(serving):
        assert t.uid == (user.uid,) * 4 and t.gid == (user.gid,) * 4
        # capabilities are over its own user namespace only (read in that one)
        assert t.cap_eff == t.cap_prm == t.cap_bnd == 0b11011
        assert t.no_new_privs == 1
    for tid in os.listdir(f"/proc/{serving}/task"):  # seccomp on every thread
        assert procfs.status_field(f"{serving}/task/{tid}", "Seccomp") == "2"
    # the namespace is owned by the user: nothing in it has power over the host
    with open(f"/proc/{serving}/uid_map") as f:
        assert IdMap.parse(f.read()).ranges == IdMap.parse(f"{user.uid} {user.uid} 1").ranges
    # the waiting parent holds no capability, and no fd but its stdio and the
    # pipe that tells the child it is alive: not the export, not the client
    for t in procfs.confinement_report(h.pid):
        assert t.cap_eff == t.cap_prm == t.cap_bnd == 0 and t.no_new_privs == 1
    held = {
        int(fd): os.readlink(f"/proc/{h.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{h.pid}/fd")
    }
    assert [
        target for fd, target in held.items() if fd > 2 and not target.startswith("pipe:")
    ] == []


@pytest.fixture
def user_targets(user: User) -> Iterator[dict[str, str]]:
    """A TCP listener and processes of the helper's own user to signal and ptrace."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    sleeps = [subprocess.Popen([*user.prefix, "sleep", "600"]) for _ in range(3)]
    try:
        yield {
            "tcp": f"tcp:{listener.getsockname()[1]}",
            "kill": f"kill:{sleeps[0].pid}",
            "ptrace": f"ptrace:{sleeps[1].pid}",
            "open:/proc/PID/root/etc/passwd": f"open:/proc/{sleeps[2].pid}/root/etc/passwd",
        }
    finally:
        listener.close()
        for s in sleeps:
            s.kill()
            s.wait()


@pytest.mark.rootless
def test_from_inside_every_attempt_is_contained(
    rl_export: Export, user: User, user_targets: dict[str, str]
) -> None:
    """The sandbox tests' subverted-helper actions, from a rootless helper with
    every layer: each fails or kills it (the targets are the user's own)."""
    actions = [user_targets.get(a, a) for a in ACTIONS]
    outcomes = inside_outcomes(rl_export.root, (), actions, command=user.helper())
    contained = {a for a, b in zip(ACTIONS, actions, strict=True) if outcomes[b][0] != "ok"}
    assert CLAIMS["all"] <= contained, outcomes


# -- the command line -----------------------------------------------------------------------


def _run(user: User, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        user.helper(*args), capture_output=True, text=True, timeout=30, env=TESTING
    )


@pytest.mark.rootless
def test_print_confinement(rl_export: Export, user: User) -> None:
    out = _run(user, "-p", str(rl_export.root), "--print-confinement")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == (
        f"confinement: mode: rootless (real uid {user.uid} is not 0): in a user namespace of"
        " its own, capabilities over it only"
    )
    assert f'uid_map: "{user.uid} {user.uid} 1"' in out.stdout
    assert f'gid_map: "{user.gid} {user.gid} 1"' in out.stdout
    assert "namespaces: mnt=new pid=new net=new ipc=new uts=new user=new" in out.stdout
    assert (
        "capabilities: CAP_CHOWN,CAP_DAC_OVERRIDE,CAP_FOWNER,CAP_FSETID (effective, over its"
        " own user namespace)"
    ) in out.stdout
    assert "NoNewPrivs=1" in out.stdout and "(jailed in export)" in out.stdout
    assert "export mount: nodev,nosuid" in out.stdout
    assert "landlock: observed: a file outside the export cannot be opened" in out.stdout
    assert "seccomp: mode 2 (filter)" in out.stdout
    assert "mode: rootless" in out.stderr  # the start-up log says it too


def test_print_confinement_subids(rl_export: Export, user: User) -> None:
    _needs_ci_user(user)
    out = _run(user, "-p", str(rl_export.root), "--print-confinement", "--subids")
    assert out.returncode == 0, out.stderr
    first, count = CI_SUBIDS
    assert f'uid_map: "0 {CI_UID} 1", "1 {first} {count}"' in out.stdout
    assert f"the helper is uid 0 inside, {CI_UID} outside" in out.stdout
    assert "tid=1 uid=0,0,0,0 gid=0,0,0,0 CapEff=000000000000001b" in out.stdout


def test_explicit_maps_through_newuidmap(rl_export: Export, user: User) -> None:
    _needs_ci_user(user)
    first, _ = CI_SUBIDS
    out = _run(
        user, "-p", str(rl_export.root), "--print-confinement",
        "--uid-map", f"0:{first}:1000", "--uid-map", f"1000:{CI_UID}:1",
        "--gid-map", f"1000:{CI_UID}:1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f'uid_map: "0 {first} 1000", "1000 {CI_UID} 1"' in out.stdout
    assert f'gid_map: "1000 {CI_UID} 1"' in out.stdout
    assert "tid=1 uid=1000,1000,1000,1000" in out.stdout
    # a range /etc/subuid does not grant: newuidmap refuses, the helper says so
    out = _run(user, "-p", str(rl_export.root), "--print-confinement",
               "--uid-map", f"0:{CI_UID}:1", "--uid-map", "1:100:10")  # fmt: skip
    assert out.returncode == 1 and out.stdout == ""
    assert "newuidmap" in out.stderr, out.stderr
    # the invoking uid must be mapped
    out = _run(user, "-p", str(rl_export.root), "--print-confinement",
               "--uid-map", f"0:{first}:10")  # fmt: skip
    assert out.returncode == 1 and f"must map your own uid {CI_UID}" in out.stderr


def test_newuidmap_is_never_taken_from_the_callers_path(
    rl_export: Export, user: User, tmp_path: Path
) -> None:
    """A PATH that names a newuidmap of someone else's first: the helper runs
    the system's (the fake one would fail the start)."""
    _needs_ci_user(user)
    fake = Path(tempfile.mkdtemp(prefix="virtfs-fakebin-"))
    try:
        os.chmod(fake, 0o755)
        for name in ("newuidmap", "newgidmap"):
            (fake / name).write_text("#!/bin/sh\necho fake >&2\nexit 7\n")
            os.chmod(fake / name, 0o755)
        env = {**TESTING, "PATH": f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        out = subprocess.run(
            user.helper("-p", str(rl_export.root), "--print-confinement", "--subids"),
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
    finally:
        shutil.rmtree(fake)
    assert out.returncode == 0, out.stderr
    assert f'uid_map: "0 {CI_UID} 1", "1 {CI_SUBIDS[0]} {CI_SUBIDS[1]}"' in out.stdout


def test_maps_under_no_new_privs_are_one_clear_line(rl_export: Export, user: User) -> None:
    """Started under NO_NEW_PRIVS, newuidmap's set-uid bit would be ignored: the
    helper says why it cannot map before trying (the identity map still works)."""
    _needs_ci_user(user)
    nnp = User(user.uid, user.gid, (user.prefix[0], "--no-new-privs", *user.prefix[1:]))
    out = _run(nnp, "-p", str(rl_export.root), "--print-confinement", "--subids")
    assert out.returncode == 1 and out.stdout == "", out.stderr
    assert "cannot work under NO_NEW_PRIVS" in out.stderr.splitlines()[-1], out.stderr
    out = _run(nnp, "-p", str(rl_export.root), "--print-confinement")
    assert out.returncode == 0, out.stderr


@pytest.mark.rootless
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--allow-device-nodes"], "no CAP_MKNOD in the initial user namespace"),
        (["--user", "nobody"], "stays the invoking user"),
        (["--subids", "--uid-map", "0:1:1"], "exclude each other"),
        (["--uid-map", "x"], "INSIDE:OUTSIDE:COUNT"),
    ],
)
def test_refused_options(rl_export: Export, user: User, options: list[str], message: str) -> None:
    out = _run(user, "-p", str(rl_export.root), "--print-confinement", *options)
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert out.stdout == ""


def test_root_cannot_ask_for_rootless_or_its_options(rl_export: Export) -> None:
    if os.getuid() != 0:
        pytest.fail("needs root", pytrace=False)
    for options, message in (
        (["--rootless"], "not as root"),
        (["--subids"], "are for a rootless helper"),
        (["--allow-setid"], "are for a rootless helper"),
    ):
        out = subprocess.run(
            [*OUR_HELPER, "-p", str(rl_export.root), "--print-confinement", *options],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 1 and message in out.stderr, out.stderr


# -- named-socket mode ----------------------------------------------------------------------


@pytest.mark.rootless
def test_socket_is_the_users(rl_export: Export, user: User, helpers: list[Helper]) -> None:
    sockdir = tempfile.mkdtemp(prefix="virtfs-rootless-sock-")
    os.chown(sockdir, user.uid, user.gid)
    try:
        h = spawn_helper(
            user.helper(), rl_export.root, "socket", user.uid, user.gid, timeout=5.0,
            socket_path=os.path.join(sockdir, "s"), keep_socket=True,
        )  # fmt: skip
        helpers.append(h)
        assert isinstance(h.client.request(m.LstatRequest(b"/\0")), m.StatReply)
        # looked at once it answered: it accepts only after the chown (the
        # connect alone can come between its listen and its chown)
        seen = os.lstat(os.path.join(sockdir, "s"))
        assert (seen.st_uid, seen.st_gid) == (user.uid, user.gid)
        assert stat.S_ISSOCK(seen.st_mode)
        # an owner the user cannot give: a clear error before anything is bound
        out = subprocess.run(
            user.helper("-s", os.path.join(sockdir, "t"), "-u", "0", "-g", "0", "-n",
                        "-p", str(rl_export.root)),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 1
        assert "can give its socket only to your own uid" in out.stderr, out.stderr
        assert not os.path.exists(os.path.join(sockdir, "t"))
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.rootless
def test_sigterm_ends_a_rootless_helper(start: Starter) -> None:
    h = start()
    assert isinstance(h.client.request(m.LstatRequest(b"/\0")), m.StatReply)
    serving = h.serving_pid
    os.kill(h.pid, signal.SIGTERM)
    assert h.process.wait(10) == 128 + signal.SIGTERM
    assert not os.path.exists(f"/proc/{serving}")


#: Run as the helper's own host user: what it can do to the serving process,
#: one ``name outcome`` line each (outcome ``ok`` or the errno's name).
_REACH_IN = """
import ctypes, errno, os, sys
pid = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def outcome(call):
    try:
        call()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"
def seize():
    if libc.ptrace(0x4206, int(pid), 0, 0) != 0:  # PTRACE_SEIZE; the exit detaches
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
print("ptrace", outcome(seize))
print("root", outcome(lambda: os.listdir(f"/proc/{pid}/root")))
print("fd", outcome(lambda: os.listdir(f"/proc/{pid}/fd")))
print("mem", outcome(lambda: os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR))))
print("environ", outcome(lambda: open(f"/proc/{pid}/environ", "rb").read()))
"""


@pytest.mark.rootless
def test_the_users_other_processes_cannot_reach_into_the_helper(start: Starter, user: User) -> None:
    """The serving process runs as its user on the host: left dumpable, any
    process of that user could ptrace it or write its memory (its guest
    connection, its export fd, its capabilities over the namespace) and open
    its fds and root through /proc. It is made non-dumpable."""
    h = start("--subids")
    assert isinstance(h.client.request(m.LstatRequest(b"/\0")), m.StatReply)
    out = subprocess.run(
        [*user.prefix, sys.executable, "-c", _REACH_IN, str(h.serving_pid)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    outcomes = dict(line.split() for line in out.stdout.splitlines())
    assert outcomes == {
        "ptrace": "EPERM", "root": "EACCES", "fd": "EACCES", "mem": "EACCES", "environ": "EACCES"
    }, outcomes  # fmt: skip
    # and it still serves (its own /proc reads and reopens go on)
    assert isinstance(h.client.request(m.LstatRequest(b"/\0")), m.StatReply)


_NO_USERNS = """
import os, sys
from virtfs_proto.server import oslib
unshared_r, unshared_w = os.pipe()
mapped_r, mapped_w = os.pipe()
child = os.fork()
if child == 0:
    oslib.unshare(oslib.CLONE_NEWUSER)
    os.write(unshared_w, b"x")
    os.read(mapped_r, 1)
    # root of this namespace: forbid namespaces to everything beneath it
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.execvp(sys.argv[1], sys.argv[1:])
os.read(unshared_r, 1)
for name, text in (("uid_map", "0 0 1\\n{uid} {uid} 1\\n"), ("setgroups", "allow"),
                   ("gid_map", "0 0 1\\n{gid} {gid} 1\\n")):
    with open(f"/proc/{{child}}/{{name}}", "w") as f:
        f.write(text)
os.write(mapped_w, b"x")
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_user_namespaces_disabled_is_one_clear_line(rl_export: Export, user: User) -> None:
    """With user.max_user_namespaces=0 (set in a user namespace of root's, which
    limits everything beneath it) the rootless helper refuses to start and says why."""
    _needs_ci_user(user)
    script = _NO_USERNS.format(uid=user.uid, gid=user.gid)
    out = subprocess.run(
        [sys.executable, "-c", script, *user.helper("-p", str(rl_export.root),
                                                      "--print-confinement")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1 and out.stdout == "", out.stderr
    assert out.stderr.splitlines()[-1] == (
        "unprivileged user namespaces are disabled (user.max_user_namespaces=0)"
    ), out.stderr


def test_id_maps_and_sub_id_ranges(tmp_path: Path) -> None:
    ids = IdMap.parse("         0       2345          1\n         1     200000      65536\n")
    assert [ids.to_outside(i) for i in (0, 1, 1000, 65536, 65537)] == [
        2345, 200000, 200999, 265535, None,
    ]  # fmt: skip
    assert ids.to_inside(200999) == 1000 and ids.to_inside(2344) is None
    assert ids.maps_inside(65536) and not ids.maps_inside(65537)
    with pytest.raises(ValueError, match="INSIDE:OUTSIDE:COUNT"):
        IdRange.parse_option("1:2", "--uid-map")
    # (uid_t)-1 is in no map: a range may end just before it, not include it
    assert IdRange.parse_option("0:4294967294:1", "--uid-map") == IdRange(0, 4294967294, 1)
    for value in ("0:4294967295:2", "0:4294967295:1", "4294967295:2345:1", "4294967290:0:6"):
        with pytest.raises(ValueError, match="out of range"):
            IdRange.parse_option(value, "--uid-map")
    # ASCII decimal only: int() takes other scripts' digits, '_' and blanks
    for value in ("\u0661:2345:1", "0:2_345:1", " 0:2345:1", "0:2345:+1"):
        with pytest.raises(ValueError, match="INSIDE:OUTSIDE:COUNT"):
            IdRange.parse_option(value, "--uid-map")


def test_sub_id_files(tmp_path: Path) -> None:
    """/etc/subuid: names or uids, every range of the user's (placed one after
    the other from inside 1), others' lines not judged, the user's own bad
    lines named."""
    subuid = tmp_path / "subuid"
    subuid.write_text(
        "other:100000:65536\nbroken\nx:y\n\n# a comment\n2345:300000:10\n me:400000:5 \nthem:zz:1\n"
    )
    path = str(subuid)
    assert subid_ranges(path, "me", 2345) == (IdRange(1, 300000, 10), IdRange(11, 400000, 5))
    assert subid_ranges(path, "me", 99) == (IdRange(1, 400000, 5),)
    assert subid_ranges(path, "nobody-here", 99) == ()
    assert subid_ranges(str(tmp_path / "missing"), "me", 2345) == ()
    for line, message in (
        ("me:400000", "is not NAME:START:COUNT"),
        ("me:400000:5:6", "is not NAME:START:COUNT"),
        ("me:-1:5", "is not NAME:START:COUNT"),
        ("me:4e5:5", "is not NAME:START:COUNT"),
        ("me:400000:0", "ids out of range"),
        ("me:4294967290:10", "ids out of range"),
    ):
        subuid.write_text(f"other:100000:65536\n{line}\n")
        named = re.escape(f"{path}:2: '{line}'")
        with pytest.raises(UserNamespaceError, match=f"{named}:? {message}"):
            subid_ranges(path, "me", 2345)
