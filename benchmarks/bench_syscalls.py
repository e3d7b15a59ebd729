"""System calls per operation: QEMU 7.2's helper against ours, counted by strace.

Not a test. Each helper runs under ``strace -f -c`` (ours as in production:
chrooted, as ``nobody``, openat2) on a socketpair, driven by the raw struct
client (:class:`helperproc.StructClient`). A run of ``n`` ops less a run of
none (start-up and exit) leaves the calls of the ops; divided by ``n``,
the calls of one. ``close`` of an fd QEMU was sent is the client's, not the
helper's, so open+close counts the helper's side only.

    .venv/bin/python benchmarks/bench_syscalls.py [--n 200] [--op lstat ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench_helper import OPS, make_export
from helperproc import QEMU_HELPER, Frame, StructClient, spawn


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
    parser.add_argument("--n", type=int, default=200, help="cycles of each op")
    parser.add_argument("--op", action="append", choices=list(OPS), help="default: all")
    args = parser.parse_args(argv)
    helpers = {"QEMU": [QEMU_HELPER], "ours": [sys.executable, "-m", "virtfs_proto.server"]}
    with tempfile.TemporaryDirectory() as tmp:
        export = make_export(Path(tmp))
        for op in args.op or list(OPS):
            frames = [Frame(req, err) for req, err in OPS[op]]
            print(f"{op}: system calls per cycle ({len(frames)} request(s)), n = {args.n}")
            for name, command in helpers.items():
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
