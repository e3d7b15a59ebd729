"""No traceback reaches a user: every sub-command's errors and signals end in one line.

Each test runs the ``virtfs-proto`` console script in a subprocess, as a user
would, and reads its stderr and exit status.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from virtfs_proto.client import ProxyClient
from virtfs_proto.errors import LocalProtocolError, NotAProxySocket
from virtfs_proto.transport import Transport

SCRIPT = str(Path(sys.executable).with_name("virtfs-proto"))
#: a descriptor number no test process has open (subprocess closes inherited fds)
CLOSED_FD = "57"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(stderr: str) -> str:
    """stderr's only line (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes (not zombies) that contain ``text``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def helper_started(helper: str, tmp: Path) -> bool:
    """A process running ``helper`` on something in ``tmp`` (the suite's own
    command line names the helper too, after --helper)."""
    return any(p.split(": ", 1)[1].startswith(helper) for p in processes_mentioning(str(tmp)))


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """An empty directory with a short path (sockets below it: 108-byte limit)."""
    d = Path(tempfile.mkdtemp(prefix="vfs-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    e = tmp_path / "export"
    e.mkdir()
    (e / "file.txt").write_bytes(b"x")
    return e


@pytest.fixture
def not_executable(tmp_path: Path) -> Path:
    f = tmp_path / "helper.txt"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o644)
    return f


# == bad input: one line, non-zero exit ==========================================


@pytest.mark.parametrize("fd", ["-1", CLOSED_FD])
def test_helper_fd_that_is_no_socket(export: Path, fd: str) -> None:
    out = cli("helper", "-f", fd, "-p", str(export), "-n")
    assert out.returncode != 0
    assert one_line(out.stderr) == (
        f"socket descriptor {fd}: " + ("not a descriptor" if fd == "-1" else "Bad file descriptor")
    )


@pytest.mark.parametrize("fd", ["-1", CLOSED_FD])
def test_trace_listen_fd_that_is_no_socket(fd: str) -> None:
    out = cli("trace", "--listen-fd", fd, "--", "/bin/true")
    assert out.returncode != 0
    assert one_line(out.stderr).startswith(f"trace: --listen-fd {fd}: ")


@pytest.mark.parametrize("command", ["conformance", "capture"])
def test_unterminated_quote_in_helper(command: str, tmp_path: Path) -> None:
    out_dir = ["--out", str(tmp_path)] if command == "capture" else []
    out = cli(command, "--helper", "/usr/bin/helper '-x", *out_dir)
    assert out.returncode == 2
    assert "No closing quotation" in one_line(out.stderr)


@pytest.mark.parametrize("command", ["conformance", "capture", "trace"])
@pytest.mark.parametrize("kind", ["directory", "not executable"])
def test_a_helper_that_cannot_be_run(
    command: str, kind: str, tmp_path: Path, not_executable: Path
) -> None:
    helper = str(tmp_path if kind == "directory" else not_executable)
    args = ["--helper", helper] if command != "trace" else ["--listen-fd", "0", "--", helper]
    if command == "capture":
        args += ["--out", str(tmp_path / "vectors")]
    out = cli(command, *args)
    assert out.returncode != 0
    line = one_line(out.stderr)
    assert line.startswith(f"{command}: ") and line.endswith(
        f"{helper!r} is a {kind}".replace("is a not executable", "is not executable")
    )


def test_proxy_client_given_no_socket_says_so() -> None:
    for thing in (3, None, "/run/helper.sock"):
        with pytest.raises(NotAProxySocket, match="expected a connected AF_UNIX stream socket"):
            ProxyClient(thing)  # type: ignore[arg-type]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(TypeError):
        Transport(s)
    assert issubclass(NotAProxySocket, LocalProtocolError)


def test_closed_stdout_exits_quietly(tmp_path: Path) -> None:
    """`virtfs-proto decode < vectors | head -1`: no "Exception ignored", status 1."""
    line = json.dumps({"request": "0c0000000500000000000000", "reply": None})
    (tmp_path / "in.jsonl").write_text((line + "\n") * 20000)  # far more than a pipe holds
    out = subprocess.run(
        [
            "bash",
            "-c",
            '"$0" decode < "$1" | head -1 > /dev/null; echo "${PIPESTATUS[0]}"',
            SCRIPT,
            str(tmp_path / "in.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.stderr == ""
    assert out.stdout.strip() == "1"


# == a helper that does not serve: one error, no "passed" cases ================


@pytest.mark.root
@pytest.mark.parametrize(
    ("helper", "mode"), [("/bin/false", "fd"), ("/bin/true", "fd"), ("/bin/false", "socket")]
)
def test_conformance_refuses_a_helper_that_exits_at_once(helper: str, mode: str) -> None:
    out = cli("conformance", "--helper", helper, "--mode", mode)
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert line.startswith("conformance: the helper exited at once instead of "), line
    assert line.endswith(f"[exit status {0 if helper == '/bin/true' else 1}]"), line
    assert "passed" not in out.stdout


# == signals: helpers stopped, temporary files removed, one line ================


def _interrupt(
    args: list[str], ready: Callable[[], object], sig: signal.Signals, env_tmp: Path
) -> subprocess.CompletedProcess[str]:
    """Start ``args``, wait until ``ready()``, send ``sig``; the finished process."""
    env = {**os.environ, "TMPDIR": str(env_tmp)}
    proc = subprocess.Popen(
        [SCRIPT, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_for(lambda: ready() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
SAID = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


@pytest.mark.root
@pytest.mark.qemu_helper
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_conformance_run_stops_its_helpers(
    qemu_helper: str, short_tmp: Path, sig: signal.Signals
) -> None:
    """Killed mid-run (a CI timeout): no helper left listening, no temporary export left."""
    tmp = short_tmp

    def helper_running() -> bool:
        return helper_started(qemu_helper, tmp)

    args = ["conformance", "--helper", qemu_helper, "--mode", "socket", "--only", "wire"]
    out = _interrupt(args, helper_running, sig, tmp)
    assert out.returncode == EXIT[sig]
    assert one_line(out.stderr) == f"virtfs-proto conformance: {SAID[sig]}"
    assert processes_mentioning(str(tmp)) == []
    assert list(tmp.iterdir()) == []


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_helper_waiting_for_its_client(
    export: Path, short_tmp: Path, sig: signal.Signals
) -> None:
    path = short_tmp / "helper.sock"
    args = ["helper", "-s", str(path), "-u", "0", "-g", "0", "-p", str(export), "-n"]
    out = _interrupt(args, path.exists, sig, short_tmp)
    assert out.returncode == EXIT[sig]
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"virtfs-proto helper: {SAID[sig]}"


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_helper_serving_in_its_jail(export: Path, sig: signal.Signals) -> None:
    """Chrooted into the export, without /proc: the signal still ends it in one line."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        args = ["helper", "-f", str(theirs.fileno()), "-p", str(export), "-n"]
        proc = subprocess.Popen(
            [SCRIPT, *args],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(theirs.fileno(),),
        )
        try:
            client = ProxyClient(ours, timeout=10)  # closed with ``ours``, after the signal
            assert client.lstat("file.txt").st_size == 1  # it serves: jailed, unprivileged
            proc.send_signal(sig)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == EXIT[sig]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"virtfs-proto helper: {SAID[sig]}"


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_trace_stops_its_helper(
    export: Path, short_tmp: Path, sig: signal.Signals
) -> None:
    path = short_tmp / "qemu.sock"
    args = ["trace", "--listen", str(path), "--", SCRIPT, "helper", "-p", str(export), "-n"]
    out = _interrupt(args, path.exists, sig, short_tmp)
    assert out.returncode == EXIT[sig]
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"virtfs-proto trace: {SAID[sig]}"
    wait_for(lambda: processes_mentioning(str(export)) == [], timeout=5)


@pytest.mark.root
@pytest.mark.qemu_helper
def test_interrupted_capture(qemu_helper: str, short_tmp: Path) -> None:
    tmp = short_tmp

    def helper_running() -> bool:
        return helper_started(qemu_helper, tmp)

    out_dir = tmp / "vectors"
    argv = ["capture", "--helper", qemu_helper, "--out", str(out_dir)]
    out = _interrupt(argv, helper_running, signal.SIGTERM, tmp)
    assert out.returncode == 143
    assert one_line(out.stderr) == "virtfs-proto capture: terminated"
    assert processes_mentioning(str(tmp)) == []
    # what was recorded before the signal stays; nothing else is left behind
    assert [p.name for p in tmp.iterdir()] in ([], ["vectors"])
