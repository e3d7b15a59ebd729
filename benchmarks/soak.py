"""Soak test (not CI): a million mixed operations against one helper process.

Prints ops/s, and the helper's descriptor count and RSS at the start and the
end (a leak shows as growth), plus how many replies were not what the mix
expects and whether the sentinels outside the export stayed untouched.

    sudo .venv/bin/python benchmarks/soak.py                      # our helper, 1e6 ops
    sudo .venv/bin/python benchmarks/soak.py --ops 100000
    sudo .venv/bin/python benchmarks/soak.py --helper /usr/lib/qemu/virtfs-proxy-helper

``--batch N`` pipelines N requests per write (QEMU itself sends one at a time:
the default).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import time
from collections import Counter

from virtfs_proto import messages as m
from virtfs_proto import procfs
from virtfs_proto.kit.conformance.paths import qemu, qpath
from virtfs_proto.kit.conformance.session import HelperSession
from virtfs_proto.kit.conformance.workspace import Workspace

#: (weight, name) of each operation in the mix
MIX = [
    (30, "lstat"),
    (20, "open_close"),
    (10, "readlink"),
    (10, "getxattr"),
    (5, "statfs"),
    (5, "create_remove"),
    (5, "mkdir_remove"),
    (5, "chmod"),
    (5, "utime"),
    (5, "getversion"),
]


def requests_for(op: str, i: int) -> list[m.Request]:
    """The requests one operation sends (two for create/mkdir + remove)."""
    if op == "lstat":
        return [qemu(m.LstatRequest, qpath("dir/nested.txt"))]
    if op == "open_close":
        return [qemu(m.OpenRequest, qpath("file.txt"), os.O_RDONLY)]
    if op == "readlink":
        return [qemu(m.ReadlinkRequest, qpath("link_file"), 4096)]
    if op == "getxattr":
        return [qemu(m.LgetxattrRequest, 100, qpath("file.txt"), b"user.comment")]
    if op == "statfs":
        return [qemu(m.StatfsRequest, qpath(""))]
    if op == "create_remove":
        name = f"soak{i % 64}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        return [
            qemu(m.CreateRequest, qpath(name), flags, 0o644, 1000, 1000),
            qemu(m.RemoveRequest, qpath(name)),
        ]
    if op == "mkdir_remove":
        name = f"soakdir{i % 64}"
        return [
            qemu(m.MkdirRequest, 1000, 1000, qpath(name), 0o755),
            qemu(m.RemoveRequest, qpath(name)),
        ]
    if op == "chmod":
        return [qemu(m.ChmodRequest, qpath("empty.txt"), 0o600 | (i & 0o44))]
    if op == "utime":
        return [qemu(m.UtimeRequest, qpath("empty.txt"), i, 0, i, 0)]
    return [qemu(m.GetversionRequest, qpath("file.txt"))]


def state(helper: HelperSession) -> str:
    return f"fds {procfs.settled_fd_count(helper.pid)}, RSS {procfs.rss_kib(helper.pid)} KiB"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helper", default=f"{sys.executable} -m virtfs_proto.server")
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--mode", choices=("fd", "socket"), default="fd")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    ops = [name for weight, name in MIX for _ in range(weight)]
    ws = Workspace()
    try:
        ws.build_export()
        before = ws.snapshot()
        helper = HelperSession(shlex.split(args.helper), ws.export, args.mode, rundir=ws.rundir)
        helper.call(qemu(m.LstatRequest, qpath("")))  # started and serving
        print(f"helper {args.helper} (pid {helper.pid}, {args.mode} mode)")
        print(f"start: {state(helper)}")
        done = 0
        unexpected: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        t0 = time.perf_counter()
        step = max(1, args.ops // 10)
        while done < args.ops:
            batch = [rng.choice(ops) for _ in range(min(args.batch, args.ops - done))]
            reqs = [r for k, op in enumerate(batch) for r in requests_for(op, done + k)]
            helper.pipeline(reqs)
            for req in reqs:
                reply = helper.next_reply(timeout=10.0)
                if isinstance(reply, m.FdReply):
                    os.close(reply.fd)
                elif isinstance(reply, m.ErrorReply):
                    unexpected[f"{req.TYPE.name} {reply.errno}"] += 1
            counts.update(batch)
            before_done = done
            done += len(batch)
            if done // step != before_done // step:
                rate = done / (time.perf_counter() - t0)
                print(f"  {done:>9} ops  {rate:8.0f} ops/s  {state(helper)}", flush=True)
        elapsed = time.perf_counter() - t0
        print(f"end:   {state(helper)}")
        print(
            f"{done} operations ({sum(len(requests_for(o, 0)) * n for o, n in counts.items())}"
            f" requests) in {elapsed:.1f} s: {done / elapsed:.0f} ops/s"
        )
        print(f"mix: {dict(counts)}")
        print(f"unexpected errors: {dict(unexpected) or 'none'}")
        changes = ws.differences(before, ws.snapshot())
        print(f"sentinels: {changes if changes else 'unchanged'}")
        status = helper.close()
        print(f"helper exit: {status}")
        return 0 if not unexpected and not changes and status == 0 else 1
    finally:
        ws.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
