"""The command line: QEMU's options, validation and messages; non-zero on every failure."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import OUR_HELPER, require_qemu_helper

from virtfs_proto import messages as m
from virtfs_proto import procfs
from virtfs_proto.connection import ClientConnection
from virtfs_proto.server import main
from virtfs_proto.server.main import USAGE
from virtfs_proto.transport import Transport

from .conftest import Export


def _run(cmd: list[str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
        cwd=cwd,
    )  # fmt: skip


BAD_ARGS = {
    "nothing": [],
    "no-path": ["-f", "3"],
    "no-socket": ["-p", "/tmp"],
    "both-sockets": ["-p", "/tmp", "-s", "/tmp/x.sock", "-f", "3"],
    "socket-without-owner": ["-p", "/tmp", "-s", "/tmp/x.sock", "-u", "0"],
    "missing-path": ["-p", "/nonexistent/dir", "-f", "3", "-n"],
    "path-is-a-file": ["-p", "/etc/passwd", "-f", "3", "-n"],
    "help": ["-h"],
    "unknown-option": ["-p", "/tmp", "-f", "3", "-x"],
}


@pytest.mark.qemu_helper
@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_validation_like_qemu(case: str) -> None:
    args = BAD_ARGS[case]
    qemu = _run([require_qemu_helper()], *args)
    ours = _run(OUR_HELPER, *args)
    assert ours.returncode == qemu.returncode != 0
    # QEMU's words, line for line; ours adds its own options after QEMU's usage
    # and names itself in getopt's message.
    q_lines = qemu.stderr.replace(require_qemu_helper(), "virtfs-proto helper").splitlines()
    o_lines = ours.stderr.splitlines()
    assert o_lines[: len(q_lines)] == q_lines
    assert all(line.startswith(" [--") for line in o_lines[len(q_lines) :])


def test_usage_is_qemus() -> None:
    assert USAGE.startswith("usage: virtfs-proxy-helper\n -p|--path <path> 9p path to export\n")
    assert "uid:gid combination to give  access" in USAGE  # QEMU's double space


@pytest.mark.parametrize("args", [["-f", "abc"], ["-f", "99"], ["-f", "0"]], ids=str)
def test_unusable_socket_fd_is_an_error(export: Export, args: list[str]) -> None:
    out = _run(OUR_HELPER, "-p", str(export.root), "-n", *args)
    assert out.returncode == 1
    assert out.stderr.strip()


@pytest.mark.parametrize(
    "args",
    [
        ["-u", "4294969641", "-g", "0"],  # 2**32 + 2345: was uid 2345's socket
        ["-u", "99999999999999999999", "-g", "0"],
        ["-u", "0", "-g", "-2"],
        ["-u", "\u0663", "-g", "0"],  # an Arabic-Indic 3: int() takes it
        ["-u", "1_000", "-g", "0"],
        ["-u", " 7", "-g", "0"],
    ],
    ids=str,
)
def test_owner_ids_that_are_no_uid_t_are_refused(tmp_path: Path, args: list[str]) -> None:
    """-u/-g must be a uid_t (or -1): a larger number silently wrapped to
    another owner of the socket file (it was chowned to the number mod 2**32)."""
    sock = tmp_path / "proxy.sock"
    out = _run(OUR_HELPER, "-p", str(tmp_path), "-n", "-s", str(sock), *args)
    assert out.returncode == 1
    assert "invalid uid" in out.stderr or "invalid gid" in out.stderr, out.stderr
    assert not sock.exists()


@pytest.mark.parametrize("fd", ["99999999999999999999", "2147483648", "-2147483649", "\u0663"])
def test_socket_descriptor_that_is_no_int_is_a_usage_error(export: Export, fd: str) -> None:
    """Was an internal error (OverflowError) for a number beyond a C int."""
    out = _run(OUR_HELPER, "-p", str(export.root), "-n", "-f", fd)
    assert out.returncode == 1
    assert out.stderr.strip() == f"invalid socket descriptor {fd!r}", out.stderr


def test_named_socket_mode(export: Export, tmp_path: Path) -> None:
    path = tmp_path / "proxy.sock"
    nobody = pwd.getpwnam("nobody")
    proc = subprocess.Popen(
        [*OUR_HELPER, "-p", str(export.root), "-s", str(path), "-u", str(nobody.pw_uid),
         "-g", str(nobody.pw_gid), "-n"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:  # until it listens (the file exists from bind on)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        t = Transport(sock, timeout=5)
        reply = t.exchange(ClientConnection(), m.LstatRequest(b"/\0")).reply
        assert isinstance(reply, m.StatReply)
        # an answer means it accepted us, which it does only after the chown
        # (it listens before: connecting alone proves nothing about the owner)
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o770
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
        t.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    # like QEMU's, it refuses a socket path that exists
    out = _run(OUR_HELPER, "-p", str(export.root), "-s", str(path), "-u", "0", "-g", "0", "-n")
    assert out.returncode == 1 and "socket already exists" in out.stderr


def test_daemon_mode_returns_at_once_and_serves(export: Export) -> None:
    ours_end, helper_end = socket.socketpair()
    start = time.monotonic()
    launcher = subprocess.run(
        [*OUR_HELPER, "-p", str(export.root), "-f", str(helper_end.fileno())],
        pass_fds=[helper_end.fileno()],
        capture_output=True,
        timeout=20,
    )
    helper_end.close()
    assert launcher.returncode == 0 and launcher.stderr == b""  # stderr is /dev/null now
    t = Transport(ours_end, timeout=5)
    reply = t.exchange(ClientConnection(), m.LstatRequest(b"//file.txt\0")).reply
    assert isinstance(reply, m.StatReply) and reply.st_size == 6
    t.close()
    assert time.monotonic() - start < 15


def test_relative_path_is_relative_to_the_start_directory(export: Export) -> None:
    out = _run(OUR_HELPER, "-p", "export", "--print-confinement", cwd=export.base)
    assert out.returncode == 0, out.stderr
    assert "(jailed in export)" in out.stdout


def test_top_level_cli_dispatches_to_the_helper(export: Export) -> None:
    out = _run(
        [sys.executable, "-m", "virtfs_proto.cli"], "helper", "-p", str(export.root),
        "--print-confinement",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("confinement: mode: root (real uid 0)\n")


def test_inherited_descriptors_are_closed(export: Export) -> None:
    leaked = os.open(export.base, os.O_RDONLY | os.O_DIRECTORY)  # a way out of the jail
    try:
        ours_end, helper_end = socket.socketpair()
        proc = subprocess.Popen(
            [*OUR_HELPER, "-p", str(export.root), "-f", str(helper_end.fileno()), "-n"],
            pass_fds=[helper_end.fileno(), leaked],
            stderr=subprocess.DEVNULL,
        )
        helper_end.close()
        t = Transport(ours_end, timeout=5)
        assert isinstance(t.exchange(ClientConnection(), m.LstatRequest(b"/\0")).reply, m.StatReply)
        serving = procfs.serving_pid(proc.pid)
        assert serving != proc.pid  # the process model: a serving child
        # the parent holds no directory at all; the serving process only the
        # export (the jail's root) and its own fd table (told by object, not
        # by the link's text: its mounts are not ours)
        assert _directory_fds(proc.pid) == []
        dirs = _directory_fds(serving)
        exports = [fd for fd in dirs if procfs.same_object(f"/proc/{serving}/fd/{fd}", export.root)]
        assert len(exports) == 1
        others = [fd for fd in dirs if fd not in exports]
        assert others == [fd for fd in others if procfs.is_own_fd_table(serving, fd)]
        t.close()
        assert proc.wait(10) == 0
    finally:
        os.close(leaked)


def _directory_fds(pid: int) -> list[int]:
    return [
        int(fd)
        for fd in os.listdir(f"/proc/{pid}/fd")
        if stat.S_ISDIR(os.stat(f"/proc/{pid}/fd/{fd}").st_mode)
    ]


@pytest.mark.parametrize(
    ("options", "missing"),
    [("nodev,nosuid", None), ("nosuid", "nodev"), ("nodev", "nosuid"), ("", "nodev, nosuid")],
    ids=str,
)
def test_warns_when_the_exports_mount_lacks_nodev_or_nosuid(
    tmp_path: Path, options: str, missing: str | None
) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(filter(None, [options, "size=1m"])), "tmpfs",
         str(tmp_path)],
        check=True,
    )  # fmt: skip
    try:
        out = _run(OUR_HELPER, "-p", str(tmp_path), "--print-confinement")
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    if missing is None:
        assert warnings == []
    else:
        assert warnings and f"lacks {missing}:" in warnings[0]


def test_log_priorities_are_syslogs() -> None:
    """main.py names syslog's priorities without importing it (only daemons log there)."""
    import syslog

    assert (main.LOG_ERR, main.LOG_WARNING, main.LOG_INFO) == (
        syslog.LOG_ERR,
        syslog.LOG_WARNING,
        syslog.LOG_INFO,
    )
