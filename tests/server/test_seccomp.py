"""The seccomp filter, installed in forked children (pytest itself is never filtered)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import stat
import termios
import threading
from pathlib import Path
from typing import Any

import pytest

from virtfs_proto.client import ProxyClient
from virtfs_proto.server import landlock, seccomp
from virtfs_proto.server.main import Log, serve
from virtfs_proto.server.ops import FS_IOC_GETVERSION, Operations
from virtfs_proto.server.oslib import open_own_fd_dir
from virtfs_proto.server.resolve import Resolver

from .conftest import Export
from .forked import oserror, run_forked, set_no_new_privs

_libc = ctypes.CDLL(None, use_errno=True)


def _installed(**kwargs: Any) -> seccomp.SeccompReport:
    set_no_new_privs()
    return seccomp.install(**kwargs)


def test_every_table_name_is_a_system_call_libseccomp_knows() -> None:
    names = (*seccomp.ALLOW_LIST, *seccomp.KILL_LIST, *seccomp.CONDITIONAL)
    unknown = [n for n in names if seccomp.syscall_number(n) < 0]
    assert unknown == []
    assert seccomp.syscall_number("no_such_call") < 0  # the check can fail
    assert len(set(names)) == len(names), "a name is in two tables"


def test_the_kill_list_is_the_issues_list() -> None:
    named = [
        "ptrace",
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "unshare",
        "setns",
        "clone",
        "clone3",
        "fork",
        "vfork",
        "bpf",
        "perf_event_open",
        "keyctl",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "open_by_handle_at",
    ]
    assert sorted(seccomp.KILL_LIST) == sorted(named)


def test_the_report_counts_the_rules_and_reads_back_filter_mode() -> None:
    def body() -> dict[str, Any]:
        r = _installed()
        return {
            "mode": r.mode,
            "filters": r.filters,
            "allowed": r.allowed,
            "killed": r.killed,
            "rules": r.rules,
            "lines": r.lines(),
        }

    got = run_forked(body).result
    assert (got["mode"], got["filters"]) == (2, 1)
    assert got["allowed"] == len(seccomp.ALLOW_LIST) + 3
    assert got["killed"] == len(seccomp.KILL_LIST) == 22
    # every name, plus socket and ioctl twice (allow / refuse), mknodat once per file type
    assert got["rules"] == len(seccomp.ALLOW_LIST) + 22 + 4 + len(seccomp.MKNOD_TYPES)
    assert "mode 2 (filter)" in got["lines"][0]


def test_install_refuses_without_no_new_privs() -> None:
    def body() -> str:
        try:
            seccomp.install()
        except Exception as exc:
            return type(exc).__name__
        return "installed"

    assert run_forked(body).result == "ConfinementError"


def test_file_operations_in_a_directory_work(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")

    def body() -> dict[str, Any]:
        _installed()
        dirfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
        fd = os.open("f", os.O_RDONLY, dir_fd=dirfd)
        data = os.read(fd, 10).decode()
        size = os.stat("f", dir_fd=dirfd).st_size
        os.mkdir("d", dir_fd=dirfd)
        os.rename("d", "e", src_dir_fd=dirfd, dst_dir_fd=dirfd)
        os.rmdir("e", dir_fd=dirfd)
        return {"data": data, "size": size}

    outcome = run_forked(body)
    assert outcome.result == {"data": "data", "size": 4}


@pytest.mark.parametrize("name", seccomp.KILL_LIST)
def test_a_killed_call_kills_the_process_with_sigsys(name: str) -> None:
    nr = seccomp.syscall_number(name)

    def body() -> str:
        _installed()
        # bogus arguments: should the filter let the call through, it fails
        # (and the child reports) rather than act
        _libc.syscall(nr, -1, -1, -1, -1, -1)
        return errno.errorcode.get(ctypes.get_errno(), "0")

    outcome = run_forked(body)
    assert outcome.killed_by_sigsys, outcome


def test_os_fork_kills() -> None:
    def body() -> str:
        _installed()
        if os.fork() == 0:  # glibc's fork() is clone()
            os._exit(0)
        return "forked"

    assert run_forked(body).killed_by_sigsys


def test_socket_other_than_af_unix_kills_af_unix_works() -> None:
    def unix() -> str:
        _installed()
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
        return "ok"

    def inet() -> str:
        _installed()
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        return "made"

    def netlink() -> str:
        _installed()
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
        return "made"

    assert run_forked(unix).result == "ok"
    assert run_forked(inet).killed_by_sigsys
    assert run_forked(netlink).killed_by_sigsys


def test_calls_outside_the_allowlist_fail_with_eperm(tmp_path: Path) -> None:
    other = os.getppid()

    def body() -> dict[str, str]:
        _installed()
        return {
            "kill": oserror(lambda: os.kill(other, 0)),
            "getdents": oserror(lambda: os.listdir(tmp_path)),
            "connect": oserror(
                lambda: socket.socket(socket.AF_UNIX).connect(str(tmp_path / "nothing"))
            ),
            "setuid": oserror(lambda: os.setuid(0)),
        }

    got = run_forked(body).result
    assert got == {"kill": "EPERM", "getdents": "EPERM", "connect": "EPERM", "setuid": "EPERM"}


def test_only_fs_ioc_getversion_passes_ioctl(export: Export) -> None:
    path = export.root / "file.txt"

    def getversion() -> str:
        fd = os.open(path, os.O_RDONLY)
        try:
            buf = bytearray(8)
            fcntl.ioctl(fd, FS_IOC_GETVERSION, buf, True)
            return buf.hex()
        except OSError as exc:
            return errno.errorcode[exc.errno or 0]
        finally:
            os.close(fd)

    def fionread(r: int) -> str:
        try:
            buf = bytearray(4)
            fcntl.ioctl(r, termios.FIONREAD, buf, True)
            return str(int.from_bytes(buf, "little"))
        except OSError as exc:
            return errno.errorcode[exc.errno or 0]

    def body() -> dict[str, str]:
        r, w = os.pipe()
        os.write(w, b"abc")
        before = {"getversion": getversion(), "fionread": fionread(r)}
        _installed()
        return {
            "getversion_before": before["getversion"],
            "getversion": getversion(),
            "fionread_before": before["fionread"],
            "fionread": fionread(r),
        }

    got = run_forked(body).result
    # whatever the kernel answers FS_IOC_GETVERSION (ENOTTY on tmpfs), the filter lets it by
    assert got["getversion"] == got["getversion_before"]
    assert got["fionread_before"] == "3"
    assert got["fionread"] == "ENOTTY"


@pytest.mark.parametrize("allow_device_nodes", [False, True])
def test_mknodat_makes_device_nodes_only_when_allowed(
    tmp_path: Path, allow_device_nodes: bool
) -> None:
    def body() -> dict[str, str]:
        _installed(allow_device_nodes=allow_device_nodes)
        dirfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
        return {
            "fifo": oserror(lambda: os.mkfifo("fifo", dir_fd=dirfd)),
            "sock": oserror(lambda: os.mknod("sock", stat.S_IFSOCK | 0o600, dir_fd=dirfd)),
            "reg": oserror(lambda: os.mknod("reg", stat.S_IFREG | 0o600, dir_fd=dirfd)),
            "chr": oserror(
                lambda: os.mknod("null", stat.S_IFCHR | 0o600, os.makedev(1, 3), dir_fd=dirfd)
            ),
            "blk": oserror(
                lambda: os.mknod("loop", stat.S_IFBLK | 0o600, os.makedev(7, 0), dir_fd=dirfd)
            ),
        }

    devices = "ok" if allow_device_nodes else "EPERM"  # we are root: only the filter says EPERM
    assert run_forked(body).result == {
        "fifo": "ok",
        "sock": "ok",
        "reg": "ok",
        "chr": devices,
        "blk": devices,
    }


def test_tsync_covers_threads_started_before() -> None:
    def body() -> str:
        ready, go = threading.Event(), threading.Event()
        seen: list[str] = []

        def worker() -> None:
            ready.set()
            go.wait()
            seen.append(oserror(lambda: os.kill(os.getppid(), 0)))

        t = threading.Thread(target=worker)
        t.start()
        ready.wait()
        _installed()
        go.set()
        t.join()
        return seen[0]

    assert run_forked(body).result == "EPERM"


@pytest.mark.parametrize("with_landlock", [False, True], ids=["seccomp", "landlock+seccomp"])
def test_the_helper_serves_every_operation_confined(export: Export, with_landlock: bool) -> None:
    """The serving loop and the handlers, filtered (and fenced by Landlock, in
    the order the helper applies them): the allowlist suffices, and Landlock
    lets every operation beneath the export through, reopens included."""
    if with_landlock and landlock.abi_version() == 0:
        pytest.skip("this kernel has no Landlock")
    ours, theirs = socket.socketpair()

    def body() -> int:
        ours.close()
        root = os.open(export.root, os.O_PATH | os.O_DIRECTORY)
        fd_dir, _ = open_own_fd_dir()  # in the serving process: "self" is resolved now
        ops = Operations(Resolver(root), get_version=True, log=lambda _: None, fd_dir=fd_dir)
        set_no_new_privs()
        if with_landlock:
            landlock.restrict(root)
        seccomp.install()
        return serve(theirs, ops.answer, Log())

    results: dict[str, Any] = {}

    def drive() -> None:
        theirs.close()
        with ProxyClient(ours, timeout=5) as c:
            fd = c.open("/file.txt")
            results["read"] = os.read(fd, 100)
            os.close(fd)
            fd = c.create("/new.txt", os.O_RDWR | os.O_CREAT, 0o640, os.getuid(), os.getgid())
            os.close(fd)
            c.mkdir("/newdir", 0o755)
            c.mknod("/newdir/fifo", stat.S_IFIFO | 0o600)
            c.symlink("new.txt", "/sym")
            c.link("/new.txt", "/hard")
            results["readlink"] = c.readlink("/sym")
            results["size"] = c.lstat("/file.txt").st_size
            results["statfs"] = c.statfs("/").f_bsize > 0
            c.chmod("/new.txt", 0o600)
            c.chown("/new.txt", 1, 2)
            c.truncate("/new.txt", 5)
            c.utime("/new.txt", (1, 0), (2, 0))
            c.rename("/hard", "/newdir/hard")
            c.remove("/newdir/hard")
            c.lsetxattr("/new.txt", "user.k", b"v")
            results["xattr"] = c.lgetxattr("/new.txt", "user.k")
            results["xattrs"] = c.llistxattr("/new.txt")
            c.lremovexattr("/new.txt", "user.k")
            results["version"] = c.getversion("/file.txt")
            with pytest.raises(FileNotFoundError):
                c.lstat("/missing")

    outcome = run_forked(body, while_running=drive)
    assert outcome.signal is None and outcome.result == 0
    st = os.lstat(export.root / "new.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_size) == (1, 2, 0o600, 5)
    assert results["read"] == b"hello\n"
    assert results["readlink"] == "new.txt"
    assert results["xattr"] == b"v"
    assert stat.S_ISFIFO(os.lstat(export.root / "newdir" / "fifo").st_mode)


def test_extra_allow_adds_calls_and_cannot_override_the_kill_list(tmp_path: Path) -> None:
    def body() -> dict[str, str]:
        set_no_new_privs()
        clash = "installed"
        try:
            seccomp.install(extra_allow=["getdents64", "unshare"])
        except ValueError as exc:
            clash = str(exc)
        seccomp.install(extra_allow=["getdents64"])
        return {"clash": clash, "listdir": oserror(lambda: os.listdir(tmp_path))}

    got = run_forked(body).result
    assert got == {"clash": "seccomp: cannot allow unshare outright", "listdir": "ok"}


@pytest.mark.parametrize("held", [True, False], ids=["status-fd", "no-proc"])
def test_the_mode_is_read_through_a_status_fd_held_before_a_chroot(
    tmp_path: Path, held: bool
) -> None:
    def body() -> dict[str, Any]:
        status_fd = os.open("/proc/thread-self/status", os.O_RDONLY) if held else None
        os.chroot(tmp_path)  # no /proc in here
        report = _installed(status_fd=status_fd)
        return {"mode": report.mode, "filters": report.filters, "line": report.lines()[0]}

    got = run_forked(body).result
    if held:
        assert (got["mode"], got["filters"]) == (2, 1)
        assert got["line"].startswith("seccomp: mode 2 (filter), 1 filter(s);")
    else:
        assert (got["mode"], got["filters"]) == (None, None)
        assert got["line"].startswith("seccomp: mode unread (no /proc);")
