"""System calls per operation: QEMU 7.2's helper against ours, counted by strace.

Not a test. Each helper runs under ``strace -f -c`` (ours as in production:
chrooted, as ``nobody``, openat2) on a socketpair, driven by the raw struct
client (:class:`helperproc.StructClient`). A run of ``n`` ops less a run of
none (start-up and exit) leaves the calls of the ops; divided by ``n``,
the calls of one. ``close`` of an fd QEMU was sent is the client's, not the
helper's, so open+close counts the helper's side only.

``--split N`` then runs each helper without strace for N cycles and splits
its CPU time per cycle into user and kernel time (``utime``/``stime`` of
``/proc/PID/task/TID/stat``, 10 ms ticks: take N large): the kernel's
share is what no Python can save. Two floors run beside them
(:data:`FLOORS`): ``floor``, a Python loop that only receives, frames and
sends a canned reply, is what the interpreter costs any request; ``loop``
adds our serving loop's decode and dispatch.

    .venv/bin/python benchmarks/bench_syscalls.py [--n 200] [--op lstat ...] [--split 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench_helper import OPS, make_export
from helperproc import Frame, ProcessTree, StructClient, spawn

from virtfs_proto.launcher import QEMU_HELPER

_TICK = os.sysconf("SC_CLK_TCK")

_FLOOR = str(Path(__file__).with_name("floor_helper.py"))
#: Beside the two helpers in ``--split``: what any Python helper pays per
#: round trip (floor_helper.py): the bare receive-frame-reply loop, and our
#: own serving loop (decode, dispatch) with a canned answer. No sandbox.
FLOORS = {
    "floor": [sys.executable, _FLOOR, "--floor=bare"],
    "loop": [sys.executable, _FLOOR, "--floor=serve"],
}


def user_system(tree: ProcessTree) -> tuple[float, float]:
    """User and system CPU seconds of every thread of a helper's processes."""
    user = system = 0
    for pid in tree.refresh():
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / _TICK, system / _TICK


def split(command: list[str], export: Path, frames: list[Frame], n: int) -> tuple[float, float]:
    """User and kernel CPU time per cycle of ``frames``, in us, over ``n`` cycles."""
    sock, proc = spawn(command, export)
    try:
        client = StructClient(sock, "helper")
        client.run(frames, 200)  # warm up
        tree = ProcessTree(proc.pid)
        u0, s0 = user_system(tree)
        client.run(frames, n)
        u1, s1 = user_system(tree)
    finally:
        sock.close()
        proc.wait(30)
    return (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6


def counts(command: list[str], export: Path, frames: list[Frame], n: int) -> Counter[str]:
    """Calls per system call name of one helper run of ``n`` cycles of ``frames``."""
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        sock, proc = spawn(["strace", "-f", "-c", "-o", out.name, *command], export)
        try:
            if n:
                StructClient(sock, "helper").run(frames, n)
        finally:
            sock.close()
            proc.wait(30)
        calls: Counter[str] = Counter()
        for line in Path(out.name).read_text().splitlines():
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                calls[fields[-1]] += int(fields[3])
        return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="cycles of each op (0: no counts)")
    parser.add_argument("--op", action="append", choices=list(OPS), help="default: all")
    parser.add_argument(
        "--split", type=int, default=0, help="cycles for the user/kernel CPU split (0: none)"
    )
    parser.add_argument(
        "--cpu",
        type=int,
        default=0,
        help="pin the client and the helpers to this CPU (-1: do not pin), as bench_helper",
    )
    args = parser.parse_args(argv)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})  # the helpers inherit it
    helpers = {"QEMU": [QEMU_HELPER], "ours": [sys.executable, "-m", "virtfs_proto.server"]}
    with tempfile.TemporaryDirectory() as tmp:
        export = make_export(Path(tmp))
        for op in args.op or list(OPS):
            frames = [Frame(req, err) for req, err in OPS[op]]
            print(f"{op}: system calls per cycle ({len(frames)} request(s)), n = {args.n}")
            for name, command in helpers.items() if args.n else ():
                base = counts(command, export, frames, 0)
                run = counts(command, export, frames, args.n)
                per_op = {
                    call: (run[call] - base[call]) / args.n
                    for call in run
                    if (run[call] - base[call]) / args.n >= 0.05
                }
                total = sum(per_op.values())
                listed = ", ".join(
                    f"{call} {v:.3g}" for call, v in sorted(per_op.items(), key=lambda kv: -kv[1])
                )
                print(f"  {name:<5} {total:5.1f}: {listed}")
            if args.split:
                for name, command in {**helpers, **FLOORS}.items():
                    user, kernel = split(command, export, frames, args.split)
                    print(f"  {name:<5} CPU per cycle, us: user {user:.1f}, kernel {kernel:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
