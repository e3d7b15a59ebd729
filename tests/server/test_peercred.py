"""Named-socket mode: only root or the socket's -u/-g may be the one client (SO_PEERCRED)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers import OUR_HELPER

from virtfs_proto import messages as m
from virtfs_proto.client import ProxyClient
from virtfs_proto.codec import encode_request
from virtfs_proto.server.main import peer_allowed

# A peer that gets past the socket file's 0770 mode without being its owner:
# uid/gid 2000 keeping CAP_DAC_OVERRIDE. It connects, then reports whether the
# helper hung up on it (EOF where a reply should be).
INTRUDER = r"""
import socket, sys
from virtfs_proto.server import privileges
privileges.drop_privileges(2000, 2000, keep=[privileges.CAP_DAC_OVERRIDE])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.settimeout(5)
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    print("EOF" if s.recv(64) == b"" else "ANSWERED")
# hung up on before we sent (EPIPE), or with our request unread (a reset, not a FIN)
except (BrokenPipeError, ConnectionResetError):
    print("EOF")
"""


def test_peer_allowed_is_root_or_the_sockets_owner_or_group() -> None:
    assert peer_allowed((1, 0, 0), 1000, 1000)
    assert peer_allowed((1, 1000, 5), 1000, 1000)
    assert peer_allowed((1, 5, 1000), 1000, 1000)
    assert not peer_allowed((1, 2000, 2000), 1000, 1000)


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert time.monotonic() < deadline, "the helper never made its socket"
        time.sleep(0.01)


def test_an_unauthorised_peer_is_hung_up_on_and_the_owner_still_gets_in(
    tmp_path: Path,
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "f").write_bytes(b"x")
    path = tmp_path / "proxy.sock"
    proc = subprocess.Popen(
        [*OUR_HELPER, "-p", str(export), "-s", str(path), "-u", "1000", "-g", "1000", "-n"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(path, proc)
        lstat = encode_request(m.LstatRequest(b"/f\0")).hex()
        intruder = subprocess.run(
            [sys.executable, "-c", INTRUDER, str(path), lstat],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert intruder.stdout.strip() == "EOF", intruder.stderr
        # The helper is still listening for its one client: root gets in.
        assert proc.poll() is None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        os.unlink(path)
        with ProxyClient(sock, timeout=5) as client:
            assert client.lstat("/f").st_size == 1
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    with proc.stderr:
        stderr = proc.stderr.read().decode()
    assert "refused a connection from pid" in stderr
    assert "uid 2000 gid 2000" in stderr
