"""spawn_helper: the socketpair and named-socket flows, and helpers that fail to start."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import OUR_HELPER

from virtfs_proto.errors import HelperStartError
from virtfs_proto.launcher import describe_exit, helper_args, spawn_helper
from virtfs_proto.procfs import children


def test_helper_args() -> None:
    assert helper_args("/srv", fd=7) == ["-f", "7", "-p", "/srv", "-n"]
    assert helper_args(Path("/srv"), socket_path="/run/s", uid=1, gid=2, nodaemon=False) == [
        "-s", "/run/s", "-u", "1", "-g", "2", "-p", "/srv",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        helper_args("/srv")
    with pytest.raises(ValueError):
        helper_args("/srv", fd=3, socket_path="/s")


def test_describe_exit() -> None:
    assert describe_exit(0) == "exited with status 0"
    assert describe_exit(-6) == "was killed by SIGABRT"


@pytest.mark.qemu_helper
@pytest.mark.parametrize("mode", ["fd", "socket"])
def test_qemu_helper_both_modes(qemu_helper: str, export: Path, mode: str) -> None:
    with spawn_helper([qemu_helper], export, mode, timeout=10) as helper:  # type: ignore[arg-type]
        assert helper.mode == mode
        assert helper.client.lstat("/file.txt").st_size == len(b"hello from the export\n")
        fd = helper.client.open("/file.txt")
        os.close(fd)
        assert ("-f" in helper.argv) == (mode == "fd")
        assert ("-s" in helper.argv) == (mode == "socket")
    assert helper.process.returncode == 0
    assert "Started" in helper.stderr


@pytest.mark.qemu_helper
def test_named_socket_is_unlinked_after_connect(
    qemu_helper: str, export: Path, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.sock"
    with spawn_helper(
        [qemu_helper], export, "socket", uid=1000, gid=1000, socket_path=str(path)
    ) as helper:
        assert helper.socket_path == str(path)
        # QEMU's helper never unlinks it; the launcher does, as QEMU does.
        assert not path.exists()
        assert helper.client.statfs().f_bsize > 0


@pytest.mark.qemu_helper
def test_named_socket_that_exists_already(qemu_helper: str, export: Path, tmp_path: Path) -> None:
    path = tmp_path / "taken"
    path.touch()
    with pytest.raises(HelperStartError) as info:
        spawn_helper([qemu_helper], export, "socket", socket_path=str(path), start_timeout=5)
    # QEMU's helper logs this and exits with status 0 (not a failure status).
    assert "socket already exists" in info.value.stderr
    assert info.value.returncode == 0
    assert path.exists()  # not ours to remove


@pytest.mark.qemu_helper
@pytest.mark.parametrize("mode", ["fd", "socket"])
def test_missing_export_reports_stderr(qemu_helper: str, tmp_path: Path, mode: str) -> None:
    with pytest.raises(HelperStartError) as info:
        spawn_helper([qemu_helper], tmp_path / "nope", mode)  # type: ignore[arg-type]
    assert info.value.returncode == 1
    assert "invalid path" in info.value.stderr
    assert "invalid path" in str(info.value)


@pytest.mark.qemu_helper
def test_export_not_a_directory(qemu_helper: str, export: Path) -> None:
    with pytest.raises(HelperStartError, match="is not directory"):
        spawn_helper([qemu_helper], export / "file.txt")


def test_missing_binary(export: Path) -> None:
    with pytest.raises(HelperStartError, match="cannot run"):
        spawn_helper(["/nonexistent/helper"], export)


def test_helper_that_exits_at_once(export: Path) -> None:
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"]
    with pytest.raises(HelperStartError) as info:
        spawn_helper(argv, export, settle=5)
    assert info.value.returncode == 3 and info.value.stderr == "boom"


def test_helper_that_never_listens(export: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(HelperStartError, match="did not listen") as info:
        spawn_helper(argv, export, "socket", start_timeout=0.3)
    # we killed it: our SIGKILL is not the helper's exit status (no "crash")
    assert info.value.returncode is None


@pytest.mark.parametrize("mode", ["fd", "socket"])
def test_interrupted_start_stops_the_helper(tmp_path: Path, mode: str) -> None:
    """Ctrl-C while waiting for a helper to start (fd: its "Started"; socket: its
    listen) leaves no helper running."""
    pid_file = tmp_path / "pid"
    stand_in = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )

    def interrupt_once_started(signum: int, frame: object) -> None:
        if not pid_file.exists() or not pid_file.read_text():
            return  # not yet: the next tick
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt_once_started)
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
    try:
        with pytest.raises(KeyboardInterrupt):
            spawn_helper(
                [sys.executable, "-c", stand_in], tmp_path, mode, settle=60, start_timeout=60
            )  # type: ignore[arg-type]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # reaped, not only killed: the pid is gone
    assert _state(int(pid_file.read_text())) == "gone"


@pytest.mark.parametrize("mode", ["fd", "socket"])
def test_our_own_helper(export: Path, mode: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("the reference helper needs root to confine itself", pytrace=False)
    with spawn_helper(OUR_HELPER, export, mode, timeout=10) as helper:  # type: ignore[arg-type]
        c = helper.client
        assert c.lstat("/file.txt").is_file()
        fd = c.create("/made", mode=0o640, uid=1000, gid=1000)
        os.write(fd, b"through our helper")
        os.close(fd)
        st = (export / "made").stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o640)
        c.lsetxattr("/made", "user.k", b"v")
        assert c.lgetxattr("/made", "user.k") == b"v"
        with pytest.raises(FileNotFoundError):
            c.open("/missing")
    assert helper.process.returncode == 0


def test_missing_qemu_helper_fails_the_tests_loudly() -> None:
    """Without QEMU's helper the interop tests FAIL with how to install it, never skip."""
    env = dict(os.environ, VIRTFS_QEMU_HELPER="/nonexistent/virtfs-proxy-helper")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{__file__}::test_export_not_a_directory"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "install it: apt-get install -y qemu-system-common" in result.stdout
    assert "1 error" in result.stdout or "1 failed" in result.stdout


FORKER = """
import os, sys, time
if os.fork() == 0:
    time.sleep(60)  # a serving child the helper leaves behind
    os._exit(0)
sys.stderr.write("Started\\n"); sys.stderr.flush()
time.sleep(60)
"""


@pytest.mark.parametrize("new_session", [False, True])
def test_stopping_a_helper_stops_the_child_it_forked(tmp_path: Path, new_session: bool) -> None:
    """A stand-in helper that forks: closing it leaves neither it nor its child running."""
    helper = spawn_helper(
        [sys.executable, "-c", FORKER], tmp_path, "fd", settle=5, new_session=new_session
    )
    deadline = time.monotonic() + 5
    while not (forked := children(helper.pid)):
        assert time.monotonic() < deadline, "the stand-in never forked"
        time.sleep(0.01)
    helper.close(timeout=0.1)
    (child,) = forked
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{child}") and _state(child) != "Z":
        assert time.monotonic() < deadline, f"the forked child {child} survived close()"
        time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_extra_fds_reach_the_helper(tmp_path: Path) -> None:
    r, w = os.pipe()
    stand_in = "import os, time; os.write(int(os.environ['EXTRA_FD']), b'inherited'); time.sleep(9)"
    try:
        env = dict(os.environ, EXTRA_FD=str(w))
        with spawn_helper([sys.executable, "-c", stand_in], tmp_path, "fd", env=env, extra_fds=[w]):
            os.close(w)
            w = -1
            assert os.read(r, 100) == b"inherited"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_the_hook_before_unlink_and_keep_socket(tmp_path: Path) -> None:
    """``before_unlink`` sees the socket file; ``keep_socket`` leaves it; by default it goes."""
    seen: list[int] = []
    with spawn_helper(
        OUR_HELPER,
        tmp_path,
        "socket",
        socket_path=str(tmp_path / "kept.sock"),
        keep_socket=True,
        before_unlink=lambda path: seen.append(os.lstat(path).st_mode),
        timeout=10,
    ) as helper:
        assert helper.socket_path is not None
        assert len(seen) == 1 and stat.S_ISSOCK(seen[0])
        assert os.path.exists(helper.socket_path)
    with spawn_helper(OUR_HELPER, tmp_path, "socket", timeout=10) as helper:
        assert helper.socket_path is not None
        assert not os.path.exists(helper.socket_path)
