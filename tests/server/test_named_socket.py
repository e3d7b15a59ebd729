"""Named-socket mode (-s): the socket's chown cannot be steered to another file.

Whoever can write the socket's directory can replace the socket by a symlink
(or by another socket) between the helper's bind() and its chown. These
tests race a swapper against real helper starts, and read the system calls
the helper makes; QEMU's helper, which chowns the path by name, is run through
the same tests to show that they can fail.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import OUR_HELPER, require_qemu_helper

from virtfs_proto import messages as m
from virtfs_proto.codec import encode_request
from virtfs_proto.kit.conformance.cases.commandline import SOCKET_OWNER, swap_when_bound
from virtfs_proto.launcher import spawn_helper

STRACE = "/usr/bin/strace"

#: The race is bounded by both: a start of our helper takes about 0.5 s on
#: a loaded 2-core machine, one of QEMU's a few milliseconds.
RACE_STARTS = 200
RACE_SECONDS = 20.0

#: accept() and accept4() system call numbers: a helper blocked in one of
#: them is past its chown (or whatever it does instead).
_ACCEPT_SYSCALLS = {"x86_64": {"43", "288"}, "aarch64": {"202", "242"}}


@dataclass
class RaceResult:
    starts: int = 0
    #: starts in which the socket was found replaced by the symlink afterwards
    swapped: int = 0
    #: starts the helper ended by exiting non-zero
    refused: int = 0
    #: starts after which the victim had changed owner (restored each time)
    victim_chowned: int = 0


def _wait_past_chown(
    proc: subprocess.Popen[bytes], timeout: float = 10.0, *, traced: bool = False
) -> int:
    """Until the helper has exited or waits in accept(); returns its pid.

    ``traced``: ``proc`` is strace, and the helper is its child.
    """
    accepts = _ACCEPT_SYSCALLS[platform.machine()]
    deadline = time.monotonic() + timeout
    pid = proc.pid
    while proc.poll() is None and time.monotonic() < deadline:
        if traced and pid == proc.pid:
            try:
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                    pid = int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                time.sleep(0.0005)
                continue
        try:
            with open(f"/proc/{pid}/syscall") as f:
                if f.read().split(" ", 1)[0] in accepts:
                    return pid
        except OSError:
            pass
        time.sleep(0.0005)
    return pid


def race(
    argv: list[str], tmp_path: Path, *, stop_on_loss: bool = False, widen_bind: bool = False
) -> RaceResult:
    """Start the helper in -s mode again and again while a forked swapper replaces
    the socket by a symlink to a root-owned victim the instant it appears.

    ``widen_bind`` runs the helper under strace, which holds up each return
    from bind() by 5 ms: a loaded machine can otherwise schedule the
    swapper too late, every time, for QEMU's microseconds-wide window.
    """
    if widen_bind:
        argv = [
            STRACE,
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=bind",
            "-e",
            "inject=bind:delay_exit=5000",
            *argv,
        ]
    export = tmp_path / "export"
    export.mkdir()
    rundir = tmp_path / "run"
    rundir.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's\n")
    os.chmod(victim, 0o600)
    dirfd = os.open(rundir, os.O_PATH | os.O_DIRECTORY)
    name, spare = "proxy.sock", "spare"

    def respare() -> None:
        os.symlink(victim, spare, dir_fd=dirfd)

    respare()
    deadline = time.monotonic() + RACE_SECONDS
    swapper = os.fork()
    if swapper == 0:  # pragma: no cover - the child
        try:
            swap_when_bound(dirfd, name, spare, until=deadline + 5, respare=respare)
        finally:
            os._exit(0)
    result = RaceResult()
    owner, path = str(SOCKET_OWNER), str(rundir / name)
    try:
        while result.starts < RACE_STARTS and time.monotonic() < deadline:
            proc = subprocess.Popen(
                [*argv, "-p", str(export), "-s", path, "-u", owner, "-g", owner, "-n"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            helper = _wait_past_chown(proc, traced=widen_bind)
            if helper != proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(helper, signal.SIGKILL)  # strace's death would detach it
            if proc.poll() is None:
                proc.kill()
            result.refused += proc.wait() > 0
            result.starts += 1
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            result.swapped += stat.S_ISLNK(st.st_mode)
            os.unlink(name, dir_fd=dirfd)
            if victim.stat().st_uid != 0:
                result.victim_chowned += 1
                os.chown(victim, 0, 0)
                if stop_on_loss:
                    break
    finally:
        os.kill(swapper, signal.SIGKILL)
        os.waitpid(swapper, 0)
        os.close(dirfd)
    return result


@pytest.mark.root
@pytest.mark.parametrize("widen_bind", [False, True], ids=["as-is", "bind-held-5ms"])
def test_a_racing_swapper_never_gets_the_victim_chowned(tmp_path: Path, widen_bind: bool) -> None:
    result = race(OUR_HELPER, tmp_path, widen_bind=widen_bind)
    assert result.swapped > 0, result  # the swapper did race
    assert result.victim_chowned == 0, result
    # a swap that landed before the chown made the helper refuse to start
    assert result.refused <= result.swapped, result


@pytest.mark.root
@pytest.mark.qemu_helper
def test_qemu_helper_loses_the_race(tmp_path: Path) -> None:
    """Documents QEMU's defect: chown(path) after bind() follows the swapped-in symlink."""
    result = race([require_qemu_helper()], tmp_path, stop_on_loss=True, widen_bind=True)
    assert result.victim_chowned == 1, result


# -- the system calls -------------------------------------------------------

_CHOWN_CALL = re.compile(r"\b(chown|lchown|fchownat)\((.*?)(?:\) += |<unfinished|$)")
_FCHOWNAT_ARGS = re.compile(r'^[^,]+, "((?:[^"\\]|\\.)*)", [^,]+, [^,]+, (.*)$')


def following_chowns(trace: str, name: str) -> list[str]:
    """The chown calls in an strace log that look ``name`` up and may follow a symlink:
    ``chown("…/name")``, or ``fchownat(…, "…/name", …)`` without
    ``AT_SYMLINK_NOFOLLOW`` (``AT_EMPTY_PATH`` with ``""`` looks nothing up)."""
    found = []
    for line in trace.splitlines():
        match = _CHOWN_CALL.search(line)
        if match is None:
            continue
        call, args = match.groups()
        if call == "chown" and args.split(",", 1)[0].strip('"').endswith(name):
            found.append(line)
        elif call == "fchownat":
            at = _FCHOWNAT_ARGS.match(args)
            if at is None or (at[1].endswith(name) and "AT_SYMLINK_NOFOLLOW" not in at[2]):
                found.append(line)
    return found


def strace_socket_start(argv: list[str], tmp_path: Path) -> str:
    """The file and chown system calls of one -s start, served and ended by a client."""
    export = tmp_path / "export"
    export.mkdir()
    log = tmp_path / "strace.log"
    traced = [STRACE, "-f", "-qq", "-o", str(log)]
    traced += ["-e", "trace=%file,chown,fchownat,lchown,fchown", *argv]
    with spawn_helper(
        traced,
        export,
        "socket",
        SOCKET_OWNER,
        SOCKET_OWNER,
        socket_path=str(tmp_path / "proxy.sock"),
        timeout=10.0,
    ) as helper:
        helper.client.lstat("/")
    return log.read_text()


@pytest.mark.root
def test_no_chown_of_ours_follows_a_symlink(tmp_path: Path) -> None:
    trace = strace_socket_start(OUR_HELPER, tmp_path)
    assert following_chowns(trace, "proxy.sock") == []
    # the one chown of the socket: an fd, no name
    owner = f"{SOCKET_OWNER}, {SOCKET_OWNER}"
    flags = r"(AT_SYMLINK_NOFOLLOW\|)?AT_EMPTY_PATH"
    assert re.search(rf'fchownat\(\d+, "", {owner}, {flags}\) += 0', trace), trace


@pytest.mark.root
@pytest.mark.qemu_helper
def test_qemu_helper_chowns_the_socket_by_its_path(tmp_path: Path) -> None:
    """Documents QEMU's defect, and that the check above can fail."""
    trace = strace_socket_start([require_qemu_helper()], tmp_path)
    assert [
        line
        for line in following_chowns(trace, "proxy.sock")
        if f'chown("{tmp_path}/proxy.sock", {SOCKET_OWNER}, {SOCKET_OWNER})' in line
    ], trace


def test_following_chowns_reads_strace_lines() -> None:
    trace = "\n".join(
        [
            '12 chown("/run/x/proxy.sock", 1000, 1000) = 0',
            '12 fchownat(3, "proxy.sock", 1000, 1000, 0) = 0',
            '12 fchownat(3, "proxy.sock", 1000, 1000, AT_SYMLINK_NOFOLLOW) = 0',
            '12 fchownat(5, "", 1000, 1000, AT_EMPTY_PATH) = 0',
            '12 lchown("/run/x/proxy.sock", 1000, 1000) = 0',
            '12 chown("/run/x/other", 1000, 1000) = 0',
            '12 chown("/run/x/proxy.sock", 1000, 1000 <unfinished ...>',
        ]
    )
    assert following_chowns(trace, "proxy.sock") == [
        '12 chown("/run/x/proxy.sock", 1000, 1000) = 0',
        '12 fchownat(3, "proxy.sock", 1000, 1000, 0) = 0',
        '12 chown("/run/x/proxy.sock", 1000, 1000 <unfinished ...>',
    ]


# -- refusing an existing path ------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("kind", ["file", "dangling symlink"])
def test_an_existing_path_is_refused_by_name(tmp_path: Path, kind: str) -> None:
    export = tmp_path / "export"
    export.mkdir()
    path = tmp_path / "taken.sock"
    if kind == "file":
        path.write_bytes(b"")
    else:
        path.symlink_to(tmp_path / "nowhere")
    out = subprocess.run(
        [*OUR_HELPER, "-p", str(export), "-s", str(path), "-u", "0", "-g", "0", "-n"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1
    assert f"socket already exists: {path}" in out.stderr


# -- leaving no socket behind -------------------------------------------------

#: through the console script, whose signal handling makes SIGTERM/SIGINT an exit
CLI = [str(Path(sys.executable).with_name("virtfs-proto")), "helper"]


@pytest.mark.root
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_waiting_for_the_client_removes_the_socket(
    tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    path = tmp_path / "proxy.sock"
    proc = subprocess.Popen(
        [*CLI, "-p", str(export), "-s", str(path), "-u", "0", "-g", "0", "-n"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_past_chown(proc)
        assert stat.S_ISSOCK(path.lstat().st_mode)
        proc.send_signal(sig)
        assert proc.wait(10) == status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not path.exists(), "the socket file was left behind"
    assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()
    proc.stderr.close()


@pytest.mark.root
def test_root_clients_queued_before_the_chown_do_not_stop_the_start(tmp_path: Path) -> None:
    """Root may connect between bind and chown (the file is root's, 0770). Clients
    that fill the listen backlog then must not make the ownership probe fail: they
    are taken off the queue, the probe goes through, the first client is served."""
    export = tmp_path / "export"
    export.mkdir()
    path = tmp_path / "proxy.sock"
    # listen() returns 0.5 s late: time for the clients to queue up first
    delayed = [STRACE, "-f", "-qq", "-o", "/dev/null", "-e", "inject=listen:delay_exit=500000"]
    owner = ["-u", "1000", "-g", "1000"]
    proc = subprocess.Popen(
        [*delayed, *OUR_HELPER, "-p", str(export), "-s", str(path), *owner, "-n"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10
        while len(clients) < 3 and time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError, BlockingIOError):
                s.close()  # not bound or not listening yet, or the backlog is full
                time.sleep(0.005)
                continue
            s.setblocking(True)
            clients.append(s)
        assert len(clients) >= 2, "no client got into the backlog before the chown"
        first = clients[0]
        first.settimeout(10)
        first.sendall(encode_request(m.LstatRequest(b"/\0")))
        assert len(first.recv(8 + 116)) > 8  # a T_SUCCESS header and a stat
        assert proc.poll() is None
    finally:
        for s in clients:
            s.close()
        proc.terminate()
        stderr = proc.communicate(timeout=10)[1]
    assert b"tampered" not in stderr, stderr
