"""Guest workload wall time: our helper against QEMU's, one run each.

Boots the e2e guest (tests/e2e) once per helper, socketpair mode, and prints
the host wall time between the guest's E2E-BEGIN and E2E-END markers (the
fixed workload only: boot and module loading are excluded), and the ratio
ours / QEMU's. The target is a ratio of at most 1.1. A benchmark, not a test:
it prints numbers and exits 0 unless a run failed. ``--runs N`` alternates N
boots per helper and takes medians: on a shared 2-core machine one run each
moves by +-30 %. It also prints each helper's own CPU time, which other load
hardly moves.

With ``--per-op`` both helpers run a second time through ``virtfs-proto
trace`` and the table gives, per request type, how many the guest caused and
the median round trip seen by the tracer (where the time goes, not the
headline number: the tracer itself slows both runs).

Usage (as root, from the repository root): .venv/bin/python benchmarks/bench_e2e.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.build_guest import ensure_guest
from tests.e2e.harness import QEMU_HELPER, GuestRun, our_helper, run_guest

TARGET = 1.1


def _line(label: str, run: GuestRun) -> str:
    passed = sum(v == "PASS" for v in run.results.values())
    workload = "-" if run.workload is None else f"{run.workload:6.2f} s"
    boot = "-" if run.boot is None else f"{run.boot:5.2f} s"
    return (
        f"{label:6} workload {workload}  boot {boot}  wall {run.wall:5.2f} s  "
        f"helper cpu {run.helper_cpu or 0:5.2f} s  "
        f"checks {passed}/{len(run.expected)}"
    )


def _per_op(trace: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = defaultdict(list)
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        if "us" in record and "type" in record["request"]:
            times[record["request"]["type"]].append(record["us"])
    return times


def per_op_table(mode: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        traces = {"qemu": Path(tmp) / "qemu.jsonl", "ours": Path(tmp) / "ours.jsonl"}
        run_guest(QEMU_HELPER, mode, trace=traces["qemu"])
        run_guest(our_helper(), mode, trace=traces["ours"])
        qemu, ours = _per_op(traces["qemu"]), _per_op(traces["ours"])
    print(f"{'request':15} {'count':>6} {'qemu us':>8} {'ours us':>8} {'ratio':>6}")
    for name in sorted(qemu, key=lambda n: -len(qemu[n])):
        q = statistics.median(qemu[name])
        o = statistics.median(ours[name]) if ours.get(name) else float("nan")
        print(f"{name:15} {len(qemu[name]):6} {q:8.1f} {o:8.1f} {o / q:6.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mode", choices=["fd", "socket"], default="fd")
    ap.add_argument(
        "--runs",
        type=int,
        default=1,
        help="boots per helper, alternating; the ratio is of the medians (default 1)",
    )
    ap.add_argument("--per-op", action="store_true", help="also a per-request-type table")
    args = ap.parse_args(argv)
    image = ensure_guest()
    times: dict[str, list[float]] = {"qemu": [], "ours": []}
    cpu: dict[str, list[float]] = {"qemu": [], "ours": []}
    for _ in range(args.runs):
        # Alternating spreads slow spells of a shared machine over both helpers.
        for label, helper in (("qemu", QEMU_HELPER), ("ours", our_helper())):
            run = run_guest(helper, args.mode, image=image)
            print(_line(label, run))
            if run.workload is None or not run.all_passed:
                print("bench_e2e: a run did not complete its workload; no ratio", file=sys.stderr)
                print(run.summary(), run.helper_stderr[-2000:], sep="\n", file=sys.stderr)
                return 1
            times[label].append(run.workload)
            cpu[label].append(run.helper_cpu or 0.0)
    qemu, ours = statistics.median(times["qemu"]), statistics.median(times["ours"])
    ratio = ours / qemu
    verdict = "within" if ratio <= TARGET else "OVER"
    how = "one run each" if args.runs == 1 else f"medians of {args.runs} runs each"
    print(
        f"ratio  ours/qemu {ratio:.3f} ({verdict} target {TARGET}; workload "
        f"{ours:.2f} s / {qemu:.2f} s, {how})"
    )
    # The helpers' own CPU time: what the ratio would be on an otherwise idle machine
    # is bounded by it, and it hardly moves with other load.
    qc, oc = statistics.median(cpu["qemu"]), statistics.median(cpu["ours"])
    print(f"helper cpu  ours {oc:.2f} s, qemu {qc:.2f} s (ours - qemu = {oc - qc:+.2f} s)")
    if args.per_op:
        per_op_table(args.mode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
