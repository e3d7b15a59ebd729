"""Round trips per second: QEMU 7.2's helper against ours, under two clients, interleaved.

Not a test. Both helpers run as they would in production (ours in its default
sandbox: namespaces, chrooted into a nodev view, Landlock and seccomp, as
``nobody``, with openat2 resolution), each on its own copy of a small export,
over a socketpair. Two clients drive each helper, on the same connection:

* ``conn``: the codec's :class:`~virtfs_proto.connection.ClientConnection`
  with plain ``sendall``/``recvmsg``; its own cost (request objects,
  encoding, decoding replies into objects) is part of every round trip;
* ``raw``: :class:`helperproc.StructClient`, request frames encoded once
  before the timed loop, replies checked as far as header and status, as
  QEMU's C client does; the client's cost dilutes the ratio least.

The batches alternate between helpers and between clients, so that load
from anything else on the machine falls on all alike. Besides ops/s it
reports each helper's CPU time per op (every process of the helper, from
``/proc``): on a shared machine that moves far less than wall time.

    .venv/bin/python benchmarks/bench_helper.py [--rounds 3] [--batches 40] [--batch 100]
    .venv/bin/python benchmarks/bench_helper.py --profile lstat   # CPU profile of our helper

``mix`` is one cycle of requests whose types follow the e2e guest
workload's frequencies (:data:`E2E_REQUEST_COUNTS`, from a trace).
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helperproc import (
    CONTROL_SPACE,
    Frame,
    HelperFailed,
    ProcessTree,
    StructClient,
    received_fds,
    spawn,
)

from virtfs_proto import messages as m
from virtfs_proto.connection import NEED_DATA, ClientConnection, ReplyReceived
from virtfs_proto.constants import MessageType
from virtfs_proto.launcher import QEMU_HELPER

#: The mix's name in the table, where it is counted per request, not per cycle.
MIX = "mix, per request"

#: A request and the errno it must fail with (0: it must succeed).
Step = tuple[m.Request, int]

#: Requests per type in one run of the e2e guest workload (tests/e2e/guest/checks.sh):
#: ``python -m tests.e2e.harness --trace t.jsonl`` through QEMU's helper, socketpair
#: mode, Linux 6.1.192 guest, 2026-11-29; counted with ``jq -r .request.type``.
#: 16,341 exchanges (tests/e2e/README.md says about 16,000).
E2E_REQUEST_COUNTS: dict[str, int] = {
    "T_LSTAT": 11515,
    "T_GETVERSION": 3962,
    "T_STATFS": 340,
    "T_CREATE": 316,
    "T_REMOVE": 115,
    "T_OPEN": 25,
    "T_LGETXATTR": 12,
    "T_MKDIR": 11,
    "T_READLINK": 8,
    "T_LSETXATTR": 6,
    "T_SYMLINK": 5,
    "T_RENAME": 4,
    "T_CHMOD": 4,
    "T_LLISTXATTR": 4,
    "T_CHOWN": 3,
    "T_UTIME": 3,
    "T_MKNOD": 3,
    "T_TRUNCATE": 2,
    "T_LREMOVEXATTR": 2,
    "T_LINK": 1,
}

#: The error replies among them (same trace): part of the counts above. The
#: mix reproduces those with a unit in :data:`MIX_UNITS`; the others (five
#: single errors) count as successes.
E2E_ERROR_COUNTS: dict[tuple[str, str], int] = {
    ("T_LSTAT", "ENOENT"): 358,
    ("T_LGETXATTR", "ENODATA"): 6,
    ("T_LSETXATTR", "EEXIST"): 1,
    ("T_LSETXATTR", "ENODATA"): 1,
    ("T_LREMOVEXATTR", "ENODATA"): 1,
    ("T_REMOVE", "ENOTEMPTY"): 1,
}

USER_XATTR = b"user.bench"
XATTR_VALUE = b"benchmark value"


def make_export(base: Path) -> Path:
    """The export every op works in; every op leaves it as it found it."""
    root = base / "export"
    root.mkdir()
    (root / "file.txt").write_bytes(b"hello\n")
    os.setxattr(root / "file.txt", USER_XATTR, XATTR_VALUE)
    os.symlink("file.txt", root / "link")
    (root / "ren_a").write_bytes(b"")
    return root


FILE = b"//file.txt\0"

OPS: dict[str, list[Step]] = {
    "lstat": [(m.LstatRequest(FILE), 0)],
    "open+close": [(m.OpenRequest(FILE, os.O_RDONLY), 0)],
    "mkdir+remove": [
        (m.MkdirRequest(1000, 1000, b"//bench_dir", 0o755), 0),
        (m.RemoveRequest(b"//bench_dir"), 0),
    ],
    "create+remove": [
        (m.CreateRequest(b"//bench_new", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644, 1000, 1000), 0),
        (m.RemoveRequest(b"//bench_new"), 0),
    ],
    "readlink": [(m.ReadlinkRequest(b"//link\0", 4096), 0)],
    "lgetxattr": [(m.LgetxattrRequest(256, FILE, USER_XATTR), 0)],
    "statfs": [(m.StatfsRequest(b"/\0"), 0)],
}

#: One unit per request type and outcome in the mix (errno 0: success): the
#: steps that issue it and leave the export as they found it. So a creation
#: comes with its T_REMOVE, and T_REMOVE has no unit of its own: the mix has
#: more removes than the guest's workload, which leaves most of what it
#: creates behind (336 against 115 in a whole-trace cycle).
MIX_UNITS: dict[tuple[MessageType, int], list[Step]] = {
    (MessageType.T_LSTAT, 0): OPS["lstat"],
    (MessageType.T_LSTAT, errno.ENOENT): [(m.LstatRequest(b"//absent\0"), errno.ENOENT)],
    (MessageType.T_GETVERSION, 0): [(m.GetversionRequest(FILE), 0)],
    (MessageType.T_OPEN, 0): OPS["open+close"],
    (MessageType.T_CREATE, 0): OPS["create+remove"],
    (MessageType.T_MKDIR, 0): OPS["mkdir+remove"],
    (MessageType.T_MKNOD, 0): [
        (m.MknodRequest(1000, 1000, b"//bench_fifo", stat.S_IFIFO | 0o644, 0), 0),
        (m.RemoveRequest(b"//bench_fifo"), 0),
    ],
    (MessageType.T_SYMLINK, 0): [
        (m.SymlinkRequest(1000, 1000, b"file.txt", b"//bench_sym"), 0),
        (m.RemoveRequest(b"//bench_sym"), 0),
    ],
    (MessageType.T_LINK, 0): [
        (m.LinkRequest(FILE, b"//bench_hard"), 0),
        (m.RemoveRequest(b"//bench_hard"), 0),
    ],
    (MessageType.T_READLINK, 0): OPS["readlink"],
    (MessageType.T_STATFS, 0): OPS["statfs"],
    (MessageType.T_CHMOD, 0): [(m.ChmodRequest(FILE, 0o644), 0)],
    (MessageType.T_CHOWN, 0): [(m.ChownRequest(FILE, 0, 0), 0)],
    (MessageType.T_TRUNCATE, 0): [(m.TruncateRequest(FILE, 6), 0)],
    (MessageType.T_UTIME, 0): [(m.UtimeRequest(FILE, 981173106, 0, 981173106, 0), 0)],
    (MessageType.T_RENAME, 0): [
        (m.RenameRequest(b"//ren_a", b"//ren_b"), 0),
        (m.RenameRequest(b"//ren_b", b"//ren_a"), 0),
    ],
    (MessageType.T_LGETXATTR, 0): OPS["lgetxattr"],
    (MessageType.T_LGETXATTR, errno.ENODATA): [
        (m.LgetxattrRequest(256, FILE, b"user.absent"), errno.ENODATA)
    ],
    (MessageType.T_LLISTXATTR, 0): [(m.LlistxattrRequest(0, FILE), 0)],
    (MessageType.T_LSETXATTR, 0): [
        (m.LsetxattrRequest(FILE, USER_XATTR, XATTR_VALUE, len(XATTR_VALUE), 0), 0)
    ],
    (MessageType.T_LREMOVEXATTR, 0): [
        (m.LsetxattrRequest(FILE, b"user.gone", b"x", 1, 0), 0),
        (m.LremovexattrRequest(FILE, b"user.gone"), 0),
    ],
}


def _mix_wanted(size: int) -> dict[tuple[MessageType, int], float]:
    """How many requests of each (type, errno) a cycle of ``size`` should hold."""
    total = sum(E2E_REQUEST_COUNTS.values())
    wanted = {(MessageType[t], 0): n * size / total for t, n in E2E_REQUEST_COUNTS.items()}
    for (t, name), n in E2E_ERROR_COUNTS.items():
        key = (MessageType[t], getattr(errno, name))
        if key in MIX_UNITS:
            wanted[key] = n * size / total
            wanted[(key[0], 0)] -= n * size / total
    return wanted


def mix_cycle(size: int) -> list[Step]:
    """About ``size`` requests whose types follow the e2e workload's counts.

    Each (type, outcome) gets units in proportion to its count, rounded: the
    rarest may get none, and :func:`composition` says what the cycle holds.
    Units that issue several requests go first, and the requests they issue
    (the T_LSETXATTR before a T_LREMOVEXATTR) count against those types' shares. The
    units are spread evenly through the cycle, not grouped by type.
    """
    wanted = _mix_wanted(size)
    units: Counter[tuple[MessageType, int]] = Counter()
    issued: Counter[tuple[MessageType, int]] = Counter()
    for key in sorted(wanted.keys() & MIX_UNITS.keys(), key=lambda k: (-len(MIX_UNITS[k]), k)):
        steps = MIX_UNITS[key]
        per_unit = sum((req.TYPE, err) == key for req, err in steps)
        count = max(0, round((wanted[key] - issued[key]) / per_unit))
        units[key] = count
        for req, err in steps:
            issued[(req.TYPE, err)] += count
    slots = sorted(((i + 0.5) / n, key) for key, n in units.items() for i in range(n))
    return [step for _, key in slots for step in MIX_UNITS[key]]


def composition(steps: Sequence[Step]) -> str:
    counts = Counter(req.TYPE.name[2:] + (f" {errno.errorcode[err]}" if err else "")
                     for req, err in steps)  # fmt: skip
    return ", ".join(f"{name} {n}" for name, n in counts.most_common())


class ConnClient:
    """One request at a time through the codec's ClientConnection, exact reads."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
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
            conn.receive_data(data, received_fds(ancdata))

    def run(self, steps: Sequence[Step], n: int) -> None:
        for _ in range(n):
            for request, expected in steps:
                reply = self.call(request)
                if isinstance(reply, m.FdReply):
                    os.close(reply.fd)
                    if expected == 0:
                        continue
                elif isinstance(reply, m.ErrorReply):
                    if reply.errno == expected:
                        continue
                elif expected == 0:
                    continue
                raise HelperFailed(
                    f"{self.name}: {request!r} -> {reply!r}, expected errno {expected}"
                )


@dataclass
class Helper:
    name: str
    sock: socket.socket
    proc: subprocess.Popen[bytes]
    tree: ProcessTree = field(init=False)

    def __post_init__(self) -> None:
        self.tree = ProcessTree(self.proc.pid)
        self.clients = {"conn": ConnClient(self.sock, self.name),
                        "raw": StructClient(self.sock, self.name)}  # fmt: skip

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(10)


#: What each client runs: the steps as objects (conn) or as frames encoded once (raw).
Prepared = dict[str, Any]


def prepare(steps: Sequence[Step]) -> Prepared:
    return {"conn": list(steps), "raw": [Frame(req, err) for req, err in steps]}


@dataclass
class Totals:
    ops: int = 0
    seconds: float = 0.0
    cpu: float = 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=40, help="alternations per op and round")
    parser.add_argument(
        "--batch", type=int, default=100, help="ops per batch (creations: a tenth; mix: one cycle)"
    )
    parser.add_argument("--mix-size", type=int, default=1000, help="requests in the mix's cycle")
    parser.add_argument("--warmup", type=int, default=200, help="ops of each kind before timing")
    parser.add_argument("--profile", choices=list(OPS), help="CPU-profile our helper on one op")
    parser.add_argument(
        "--ours-option",
        action="append",
        default=[],
        help="an extra option for our helper, e.g. --ours-option=--test-disable=seccomp to"
        " show a layer's share of the round trip (bench only: it weakens the helper)",
    )
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
    ours_cmd = [sys.executable, "-m", "virtfs_proto.server", *args.ours_option]
    mix = mix_cycle(args.mix_size)
    ops = {name: prepare(steps) for name, steps in OPS.items()}
    ops[MIX] = prepare(mix)
    # Ops per batch: the creations cost a disk write, the mix is a whole cycle.
    batch = {name: args.batch for name in ops}
    batch["mkdir+remove"] = batch["create+remove"] = max(1, args.batch // 10)
    batch[MIX] = max(1, args.batch // len(mix))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "q").mkdir()
        (base / "o").mkdir()
        if args.profile:
            n = args.rounds * args.batches * batch[args.profile]  # as many as one measurement
            return _profile(ours_cmd, make_export(base / "o"), base, ops[args.profile]["raw"], n)
        helpers = [
            Helper("qemu", *spawn([QEMU_HELPER], make_export(base / "q"))),
            Helper("ours", *spawn(ours_cmd, make_export(base / "o"))),
        ]
        try:
            results = _measure(helpers, ops, batch, args)
        finally:
            for h in helpers:
                h.close()
    _report(results, ops, batch, args, mix)
    return 0


#: (client, helper, op) -> one Totals per round
Results = dict[tuple[str, str, str], list[Totals]]


def _measure(
    helpers: list[Helper], ops: dict[str, Prepared], batch: dict[str, int], args: Any
) -> Results:
    for h in helpers:  # warm up (imports, page cache, dentries), then find the processes
        for client in ("conn", "raw"):
            for op_name, prepared in ops.items():
                h.clients[client].run(
                    prepared[client], max(1, args.warmup * batch[op_name] // args.batch)
                )
        h.tree.refresh()
    results: Results = {
        (client, h.name, op): [Totals() for _ in range(args.rounds)]
        for client in ("conn", "raw")
        for h in helpers
        for op in ops
    }
    clock = time.perf_counter
    for r in range(args.rounds):
        for op_name, prepared in ops.items():
            n = batch[op_name]
            for i in range(args.batches):
                # Alternate which helper and which client go first.
                order = helpers if (r + i) % 2 == 0 else helpers[::-1]
                clients = ("conn", "raw") if i % 4 < 2 else ("raw", "conn")
                for client in clients:
                    for h in order:
                        run = h.clients[client].run
                        steps = prepared[client]
                        cpu0 = h.tree.cpu_seconds()
                        t0 = clock()
                        run(steps, n)
                        t1 = clock()
                        cpu1 = h.tree.cpu_seconds()
                        tot = results[(client, h.name, op_name)][r]
                        tot.ops += n
                        tot.seconds += t1 - t0
                        tot.cpu += cpu1 - cpu0
    return results


def _rate(ts: Sequence[Totals]) -> float:
    return sum(t.ops for t in ts) / sum(t.seconds for t in ts)


def _report(
    results: Results, ops: dict[str, Prepared], batch: dict[str, int], args: Any, mix: list[Step]
) -> None:
    print(
        f"{args.rounds} rounds x {args.batches} batches per op, both helpers and both clients "
        f"interleaved; {'pinned to CPU ' + str(args.cpu) if args.cpu >= 0 else 'not pinned'}"
    )
    print("conn: ClientConnection (codec objects); raw: frames encoded once, struct header check")
    print("ops/s per client; ours/QEMU: ratio of ops/s (higher is better), [min-max of rounds]")
    print("CPU: helper's CPU time per op over both clients, us (every process of the helper)")
    head = (
        f"{'op':<18}"
        f"{'conn QEMU':>10}{'conn ours':>10}{'ours/QEMU':>17}"
        f"{'raw QEMU':>10}{'raw ours':>10}{'ours/QEMU':>17}"
        f"{'CPU QEMU':>10}{'CPU ours':>10}{'ours/QEMU':>10}"
    )
    print(head)
    for op_name in ops:
        per = len(mix) if op_name == MIX else 1
        row = f"{op_name:<18}"
        for client in ("conn", "raw"):
            q = results[(client, "qemu", op_name)]
            o = results[(client, "ours", op_name)]
            per_round = [_rate([b]) / _rate([a]) for a, b in zip(q, o, strict=True)]
            spread = f"[{min(per_round):.2f}-{max(per_round):.2f}]"
            row += (
                f"{_rate(q) * per:>10.0f}{_rate(o) * per:>10.0f}"
                f"{_rate(o) / _rate(q):>6.2f} {spread:>10}"
            )
        cpu = {}
        for name in ("qemu", "ours"):
            ts = results[("conn", name, op_name)] + results[("raw", name, op_name)]
            cpu[name] = sum(t.cpu for t in ts) / sum(t.ops for t in ts) / per * 1e6
        ratio = cpu["ours"] / cpu["qemu"] if cpu["qemu"] else float("nan")
        row += f"{cpu['qemu']:>10.1f}{cpu['ours']:>10.1f}{ratio:>10.2f}"
        print(row)
    print(f"mix: a cycle of {len(mix)} requests, by the e2e trace's counts: {composition(mix)}")


def _profile(ours_cmd: list[str], export: Path, base: Path, frames: list[Frame], n: int) -> int:
    """Run our helper under cProfile, timed in CPU time, for ``n`` ops; print the top.

    CPU time, not wall time: pinned to one CPU with the client, a wall-clock
    profile of the ``sendmsg`` that wakes the client includes the client's
    own run time. The helper's modules are imported before the profile
    starts. Without the sandbox, the uid change, Landlock and seccomp, so
    that the serving process itself (not a waiting parent) writes the
    profile at exit; the request path is the same (openat2 resolution
    inside the export).
    """
    out = base / "helper.prof"
    profiled = (  # imported first, so that the profile holds the serving, not the imports
        "import cProfile, sys, time\n"
        "from virtfs_proto.server.main import main\n"
        "p = cProfile.Profile(time.process_time)\n"
        "try:\n"
        "    p.runcall(main, sys.argv[1:])\n"
        "finally:\n"
        f"    p.dump_stats({str(out)!r})\n"
    )
    sock, proc = spawn(
        [ours_cmd[0], "-c", profiled],
        export,
        "--sandbox=none",
        "--test-disable=drop,landlock,seccomp",
    )
    client = StructClient(sock, "ours")
    try:
        client.run(frames, n)
    finally:
        sock.close()
        proc.wait(30)
    import pstats

    pstats.Stats(str(out)).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
