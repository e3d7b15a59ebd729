"""Round trips per second against a helper, and the codec's cost per message.

Prints two tables:

* the codec: microseconds to encode a request and decode a reply, through
  the compiled fast path (what the client and helper use) and through the
  plain construct definitions it is derived from;
* a helper: operations per second over a socketpair for ``T_LSTAT``,
  ``T_OPEN`` + ``close``, and ``T_MKDIR`` + ``T_REMOVE``, one request at a
  time as QEMU sends them, for QEMU's helper (if installed) and ours.

Usage (as root, from the repository root)::

    .venv/bin/python examples/bench_roundtrips.py [--seconds 2] [--codec-only]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from virtfs_proto import layouts
from virtfs_proto import messages as m
from virtfs_proto.codec import decode_reply, encode_reply, encode_request
from virtfs_proto.launcher import QEMU_HELPER, spawn_helper

OURS = [sys.executable, "-m", "virtfs_proto.cli", "helper"]


def codec_figures(number: int = 20000) -> list[tuple[str, float]]:
    lstat = m.LstatRequest(b"//dir/file.txt\0")
    stat = m.StatReply(*range(1, 17))
    stat_bytes = encode_reply(lstat, stat)
    definition = layouts.LAYOUTS.replies["stat"]
    header = layouts.LAYOUTS.header
    cases: list[tuple[str, Callable[[], object]]] = [
        ("encode T_LSTAT request (fast path)", lambda: encode_request(lstat)),
        ("decode 116-byte stat reply (fast path)", lambda: decode_reply(lstat, stat_bytes)),
        ("parse 116-byte stat payload (construct)", lambda: definition.parse(stat_bytes[8:])),
        ("parse 8-byte header (construct)", lambda: header.parse(stat_bytes[:8])),
    ]
    return [(name, timeit.timeit(fn, number=number) / number * 1e6) for name, fn in cases]


def rate(fn: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            fn()
        count += 100
    return count / (time.perf_counter() - start)


def helper_figures(argv: list[str], seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        export = Path(tmp)
        (export / "file.txt").write_text("x")
        with spawn_helper(argv, export, timeout=10) as h:
            c = h.client

            def open_close() -> None:
                os.close(c.open("//file.txt", os.O_RDONLY))

            def mkdir_remove() -> None:
                c.mkdir("//d", 0o755)
                c.remove("//d")

            return {
                "lstat": rate(lambda: c.lstat("//file.txt"), seconds),
                "open + close": rate(open_close, seconds),
                "mkdir + remove": rate(mkdir_remove, seconds),
            }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--codec-only", action="store_true", help="skip the helper round trips")
    args = ap.parse_args(argv)
    print(
        f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, Linux {platform.release()}"
    )
    print("\ncodec                                      us/op")
    for name, us in codec_figures():
        print(f"  {name:40} {us:7.2f}")
    if args.codec_only:
        return 0
    helpers = {"ours": OURS}
    if os.access(QEMU_HELPER, os.X_OK):
        helpers = {"qemu": [QEMU_HELPER], **helpers}
    results = {name: helper_figures(cmd, args.seconds) for name, cmd in helpers.items()}
    print("\nround trips per second   " + "".join(f"{n:>12}" for n in results))
    for op in next(iter(results.values())):
        print(f"  {op:22} " + "".join(f"{r[op]:12,.0f}" for r in results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
