"""Landlock, applied in forked children (pytest itself is never confined)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from virtfs_proto.server import landlock
from virtfs_proto.server.oslib import open_own_fd_dir

from .forked import oserror, run_forked, set_no_new_privs

ABI = landlock.abi_version()

pytestmark = pytest.mark.skipif(ABI == 0, reason="this kernel has no Landlock")


def _restricted(root: Path, **kwargs: Any) -> tuple[int, landlock.LandlockReport]:
    set_no_new_privs()
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return root_fd, landlock.restrict(root_fd, **kwargs)


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    inside = tmp_path / "export"
    (inside / "dir").mkdir(parents=True)
    (inside / "file.txt").write_bytes(b"inside\n")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"SECRET\n")
    return inside, outside


def test_this_machine_has_abi_7_or_later() -> None:
    # the premise; should a CI kernel lack it, the report says so
    assert ABI >= 7


def test_files_beneath_the_root_only(tmp_path: Path) -> None:
    inside, outside = _tree(tmp_path)

    def body() -> dict[str, Any]:
        root, report = _restricted(inside)

        def read_inside() -> None:
            fd = os.open("file.txt", os.O_RDONLY, dir_fd=root)
            os.close(fd)

        def write_new() -> None:
            fd = os.open("new", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=root)
            os.close(fd)

        return {
            "read inside": oserror(read_inside),
            "create inside": oserror(write_new),
            "rename across dirs inside": oserror(
                lambda: os.rename("new", "dir/new", src_dir_fd=root, dst_dir_fd=root)
            ),
            "truncate inside": oserror(lambda: os.truncate(inside / "dir" / "new", 0)),
            "unlink inside": oserror(lambda: os.unlink("dir/new", dir_fd=root)),
            "list inside": oserror(lambda: os.listdir(inside)),
            "read outside": oserror(lambda: open(outside, "rb").close()),
            "write outside": oserror(lambda: open(tmp_path / "made", "wb").close()),
            "list outside": oserror(lambda: os.listdir(tmp_path)),
            "proc status": oserror(lambda: open("/proc/thread-self/status", "rb").close()),
            "lines": report.lines(),
        }

    got = run_forked(body).result
    lines = got.pop("lines")
    assert got == {
        "read inside": "ok",
        "create inside": "ok",
        "rename across dirs inside": "ok",
        "truncate inside": "ok",
        "unlink inside": "ok",
        "list inside": "ok",
        "read outside": "EACCES",
        "write outside": "EACCES",
        "list outside": "EACCES",
        "proc status": "EACCES",  # so the report reads /proc before restrict()
    }
    assert lines[0].startswith(f"landlock: ABI {ABI};")
    assert not (tmp_path / "made").exists()


@pytest.mark.parametrize("allow_device_nodes", [False, True])
def test_device_nodes_follow_the_option(tmp_path: Path, allow_device_nodes: bool) -> None:
    inside, _ = _tree(tmp_path)

    def body() -> dict[str, Any]:
        root, report = _restricted(inside, allow_device_nodes=allow_device_nodes)
        null = stat.S_IFCHR | 0o600
        return {
            "chr inside": oserror(lambda: os.mknod("null", null, os.makedev(1, 3), dir_fd=root)),
            "blk inside": oserror(
                lambda: os.mknod("loop", stat.S_IFBLK | 0o600, os.makedev(7, 0), dir_fd=root)
            ),
            "fifo inside": oserror(lambda: os.mkfifo("fifo", dir_fd=root)),
            "chr outside": oserror(lambda: os.mknod(tmp_path / "null", null, os.makedev(1, 3))),
            "allowed": list(report.allowed_fs),
            "handled": list(report.handled_fs),
        }

    got = run_forked(body).result
    devices = "ok" if allow_device_nodes else "EACCES"  # we are root: only Landlock refuses
    assert (got["chr inside"], got["blk inside"]) == (devices, devices)
    assert (got["fifo inside"], got["chr outside"]) == ("ok", "EACCES")
    assert ("MAKE_CHAR" in got["allowed"]) is allow_device_nodes
    assert {"EXECUTE", "IOCTL_DEV", "MAKE_CHAR", "MAKE_BLOCK", "REFER", "TRUNCATE"} <= set(
        got["handled"]
    )
    assert "EXECUTE" not in got["allowed"] and "IOCTL_DEV" not in got["allowed"]


def test_every_right_the_abi_knows_is_handled() -> None:
    known = [name for name, _, since in landlock.FS_RIGHTS if since <= ABI]
    assert len(known) == (16 if ABI >= 5 else len(known))

    def body() -> list[str]:
        _, report = _restricted(Path("/"))
        return list(report.handled_fs)

    assert run_forked(body).result == known


def test_device_ioctls_are_denied_file_ioctls_are_not(tmp_path: Path) -> None:
    import fcntl
    import termios

    from virtfs_proto.server.ops import FS_IOC_GETVERSION

    inside, _ = _tree(tmp_path)
    os.mknod(inside / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))

    def getversion() -> str:
        fd = os.open(inside / "file.txt", os.O_RDONLY)
        try:
            fcntl.ioctl(fd, FS_IOC_GETVERSION, bytearray(8), True)
        except OSError as exc:
            return f"errno {exc.errno}"
        finally:
            os.close(fd)
        return "ok"

    def body() -> dict[str, str]:
        before = getversion()
        _restricted(inside)
        fd = os.open(inside / "null", os.O_RDONLY)  # a device beneath the root: opens
        return {
            "getversion before": before,
            "getversion": getversion(),
            "device ioctl": oserror(lambda: fcntl.ioctl(fd, termios.FIONREAD, bytearray(4))),
        }

    got = run_forked(body).result
    assert got["getversion"] == got["getversion before"]  # Landlock does not change it
    assert got["device ioctl"] == "EACCES"


def test_the_procfs_reopen_works_inside_and_not_outside(tmp_path: Path) -> None:
    inside, outside = _tree(tmp_path)

    def body() -> dict[str, str]:
        fd_dir, _ = open_own_fd_dir()
        held_inside = os.open(inside / "file.txt", os.O_PATH)
        held_outside = os.open(outside, os.O_PATH)
        _restricted(inside)

        def reopen(held: int) -> str:
            try:
                fd = os.open(str(held), os.O_RDONLY, dir_fd=fd_dir)
            except OSError as exc:
                return f"errno {exc.errno}"
            try:
                return os.read(fd, 100).decode()
            finally:
                os.close(fd)

        return {"inside": reopen(held_inside), "outside": reopen(held_outside)}

    got = run_forked(body).result
    assert got == {"inside": "inside\n", "outside": "errno 13"}


@pytest.mark.skipif(ABI < landlock.NET_ABI, reason="TCP rules need Landlock ABI 4")
def test_tcp_connect_and_bind_are_refused(tmp_path: Path) -> None:
    inside, _ = _tree(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def body() -> dict[str, str]:
            _, report = _restricted(inside)
            connect = oserror(lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
            binding = oserror(lambda: socket.socket().bind(("127.0.0.1", 0)))
            return {"connect": connect, "bind": binding, "net": " ".join(report.handled_net)}

        got = run_forked(body).result
    assert got == {"connect": "EACCES", "bind": "EACCES", "net": "BIND_TCP CONNECT_TCP"}


@pytest.mark.skipif(ABI < landlock.SCOPE_ABI, reason="scopes need Landlock ABI 6")
def test_signals_and_abstract_sockets_are_scoped(tmp_path: Path) -> None:
    inside, _ = _tree(tmp_path)
    outsider = os.getpid()  # pytest: outside the child's domain, and the child is root
    with socket.socket(socket.AF_UNIX) as abstract:
        name = f"\0virtfs-proto-test-{os.getpid()}"
        abstract.bind(name)
        abstract.listen()

        def body() -> dict[str, str]:
            _restricted(inside)
            own = os.getpid()
            return {
                "kill outsider": oserror(lambda: os.kill(outsider, 0)),
                "kill self": oserror(lambda: os.kill(own, 0)),
                "abstract connect": oserror(lambda: socket.socket(socket.AF_UNIX).connect(name)),
            }

        got = run_forked(body).result
    assert got == {"kill outsider": "EPERM", "kill self": "ok", "abstract connect": "EPERM"}


def test_restrict_refuses_without_no_new_privs_unless_privileged(tmp_path: Path) -> None:
    """Root has CAP_SYS_ADMIN, which the kernel accepts instead of NO_NEW_PRIVS;
    a process without either is refused."""
    inside, _ = _tree(tmp_path)

    def body() -> str:
        fd = os.open(inside, os.O_PATH | os.O_DIRECTORY)
        os.setgid(65534)
        os.setuid(65534)
        return oserror(lambda: landlock.restrict(fd))

    assert run_forked(body).result == "EPERM"
