"""Round trips per second: QEMU 7.2's helper against ours, one client, interleaved.

Not a test. Both helpers run as they would in production (ours in its default
sandbox: namespaces, chrooted into a nodev view, Landlock and seccomp, as
``nobody``, with openat2 resolution), each on its own copy of a small export,
over a socketpair. The same raw client (the codec's ``ClientConnection`` and
plain ``sendall``/``recvmsg``) drives both; the rounds alternate between the
two helpers so that machine noise falls on both alike.

    .venv/bin/python benchmarks/bench_helper.py [--rounds 3] [--batches 40] [--batch 100]
    .venv/bin/python benchmarks/bench_helper.py --profile lstat   # cProfile our helper

Prints ops/s for lstat, open+close and mkdir+remove, and ours/QEMU's.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from virtfs_proto import messages as m
from virtfs_proto.connection import NEED_DATA, ClientConnection, ReplyReceived

QEMU_HELPER = "/usr/lib/qemu/virtfs-proxy-helper"
CONTROL_SPACE = socket.CMSG_SPACE(4 * 4)


class RawClient:
    """The smallest correct client: one request at a time, exact reads."""

    def __init__(self, name: str, command: list[str], export: Path, *extra: str) -> None:
        self.name = name
        ours_end, helper_end = socket.socketpair()
        fd = helper_end.fileno()
        self.proc = subprocess.Popen(
            [*command, "-p", str(export), "-f", str(fd), "-n", *extra],
            pass_fds=[fd],
            stderr=subprocess.DEVNULL,
        )
        helper_end.close()
        self.sock = ours_end
        self.conn = ClientConnection()

    def call(self, request: m.Request) -> m.Reply:
        conn = self.conn
        self.sock.sendall(conn.send_request(request))
        while True:
            event = conn.next_event()
            if isinstance(event, ReplyReceived):
                return event.reply
            if event is not NEED_DATA:
                raise ConnectionError(f"{self.name}: connection closed")
            data, ancdata, _, _ = self.sock.recvmsg(conn.bytes_wanted(), CONTROL_SPACE)
            if not data:
                conn.receive_eof()
                continue
            fds: list[int] = []
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(int.from_bytes(payload[i : i + 4], sys.byteorder)
                               for i in range(0, len(payload) - len(payload) % 4, 4))  # fmt: skip
            conn.receive_data(data, fds)

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(10)


def _expect(reply: m.Reply, kind: type) -> m.Reply:
    if not isinstance(reply, kind):
        raise RuntimeError(f"unexpected reply {reply!r}")
    return reply


def op_lstat(c: RawClient) -> None:
    _expect(c.call(m.LstatRequest(b"//file.txt\0")), m.StatReply)


def op_open_close(c: RawClient) -> None:
    reply = _expect(c.call(m.OpenRequest(b"//file.txt\0", os.O_RDONLY)), m.FdReply)
    assert isinstance(reply, m.FdReply)
    os.close(reply.fd)


def op_mkdir_remove(c: RawClient) -> None:
    _expect(c.call(m.MkdirRequest(1000, 1000, b"//bench_dir", 0o755)), m.StatusReply)
    _expect(c.call(m.RemoveRequest(b"//bench_dir")), m.StatusReply)


OPS: dict[str, Callable[[RawClient], None]] = {
    "lstat": op_lstat,
    "open+close": op_open_close,
    "mkdir+remove": op_mkdir_remove,
}


def _batch(client: RawClient, op: Callable[[RawClient], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        op(client)
    return time.perf_counter() - start


def make_export(base: Path) -> Path:
    root = base / "export"
    root.mkdir()
    (root / "file.txt").write_bytes(b"hello\n")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=40, help="alternations per op and round")
    parser.add_argument("--batch", type=int, default=100, help="ops per batch (mkdir: a tenth)")
    parser.add_argument("--profile", choices=list(OPS), help="profile our helper on one op")
    parser.add_argument(
        "--cpu",
        type=int,
        default=0,
        help="pin the client and both helpers to this CPU (-1: do not pin); on a shared "
        "2-core machine, cross-core wake-ups otherwise dominate the noise",
    )
    args = parser.parse_args(argv)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})  # the helpers inherit it
    if not os.access(QEMU_HELPER, os.X_OK):
        print("install it: apt-get install -y qemu-system-common", file=sys.stderr)
        return 1
    ours_cmd = [sys.executable, "-m", "virtfs_proto.server"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "q").mkdir()
        (base / "o").mkdir()
        if args.profile:
            return _profile(ours_cmd, make_export(base / "o"), base, args.profile)
        clients = [
            RawClient("qemu", [QEMU_HELPER], make_export(base / "q")),
            RawClient("ours", ours_cmd, make_export(base / "o")),
        ]
        try:
            for c in clients:  # warm up both (imports, page cache, dentries)
                for op in OPS.values():
                    _batch(c, op, 200)
            totals = {(c.name, op): [0, 0.0] for c in clients for op in OPS}
            # Small batches, alternating helpers: load from anything else on
            # the machine falls on both alike.
            for r in range(args.rounds):
                for op_name, op in OPS.items():
                    n = args.batch // 10 if op_name == "mkdir+remove" else args.batch
                    for i in range(args.batches):
                        order = clients if (r + i) % 2 == 0 else clients[::-1]
                        for c in order:
                            totals[(c.name, op_name)][0] += n
                            totals[(c.name, op_name)][1] += _batch(c, op, n)
        finally:
            for c in clients:
                c.close()
    print(f"{'op':<14}{'QEMU ops/s':>12}{'ours ops/s':>12}{'ours/QEMU':>11}")
    for op_name in OPS:
        rates = {}
        for name in ("qemu", "ours"):
            n, dt = totals[(name, op_name)]
            rates[name] = n / dt
        print(
            f"{op_name:<14}{rates['qemu']:>12.0f}{rates['ours']:>12.0f}"
            f"{rates['ours'] / rates['qemu']:>11.2f}"
        )
    return 0


def _profile(ours_cmd: list[str], export: Path, base: Path, op_name: str) -> int:
    """Run our helper under cProfile for one op and print the top of the profile.

    Without the sandbox, the uid change, Landlock and seccomp, so the profile can be written at
    exit; the request path is the same (openat2 resolution inside the export).
    """
    out = base / "helper.prof"
    client = RawClient("ours", [sys.executable, "-m", "cProfile", "-o", str(out),
                                "-m", "virtfs_proto.server"], export,
                       "--sandbox=none", "--test-disable=drop,landlock,seccomp")  # fmt: skip
    try:
        _batch(client, OPS[op_name], 50_000 if op_name != "mkdir+remove" else 5_000)
    finally:
        client.close()
    import pstats

    pstats.Stats(str(out)).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
