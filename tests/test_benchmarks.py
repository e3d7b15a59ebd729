"""The benchmark scripts still run and print their tables (not their figures: no timing here).

Each script runs in its quickest setting; what is checked is the shape of
the output, and that the benchmarks' own checks held (a helper's reply that
is not what a benchmark expects makes it fail).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_helper  # noqa: E402
from helperproc import Frame, StructClient, spawn  # noqa: E402

from virtfs_proto.launcher import QEMU_HELPER  # noqa: E402

NUMBER = r"\d+(?:\.\d+)?"


def run_script(name: str, *args: str, timeout: float = 300) -> str:
    out = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert out.returncode == 0, f"{name} {args} exited {out.returncode}:\n{out.stderr[-3000:]}"
    return out.stdout


def test_bench_codec_prints_its_table() -> None:
    out = run_script("bench_codec.py", "--seconds", "0.005", "--repeat", "1")
    row = rf"\s+[\d,]+\s+[\d,]+\s+[\d,]+\s+{NUMBER}x\s+{NUMBER}x$"
    for exchange in ("lstat + stat", "open + fd", "mkdir + status", "readlink + string",
                     "lsetxattr + status", "whole mix"):  # fmt: skip
        assert re.search(rf"^{re.escape(exchange)}{row}", out, re.M), out
    assert re.search(rf"^On the whole mix the fast path takes {NUMBER}x", out, re.M), out


@pytest.mark.root
@pytest.mark.qemu_helper
def test_bench_helper_prints_both_clients_and_cpu() -> None:
    out = run_script(
        "bench_helper.py", "--rounds", "1", "--batches", "1", "--batch", "10", "--warmup", "10",
        "--mix-size", "200",
    )  # fmt: skip
    assert "conn: ClientConnection" in out and "raw: frames encoded once" in out, out
    header = next(line for line in out.splitlines() if line.startswith("op "))
    assert header.split() == ["op", "conn", "QEMU", "conn", "ours", "ours/QEMU", "raw", "QEMU",
                              "raw", "ours", "ours/QEMU", "CPU", "QEMU", "CPU", "ours",
                              "ours/QEMU"]  # fmt: skip
    # One row per op: 2 clients x (QEMU, ours, ratio, [range]) and 3 CPU columns.
    row = rf"\s+{NUMBER}\s+{NUMBER}\s+{NUMBER} \[{NUMBER}-{NUMBER}\]"
    for op in [*bench_helper.OPS, bench_helper.MIX]:
        assert re.search(rf"^{re.escape(op)}{row}{row}(\s+{NUMBER}){{3}}$", out, re.M), (op, out)
    assert re.search(r"^mix: a cycle of \d+ requests, .*: LSTAT \d+", out, re.M), out


@pytest.mark.root
def test_bench_helper_profile_prints_a_cpu_profile() -> None:
    out = run_script("bench_helper.py", "--profile", "lstat", "--rounds", "1", "--batches", "1")
    assert "Ordered by: internal time" in out, out
    # the request loop ran under the profiler, the imports did not
    assert re.search(r"virtfs_proto/server/\w+\.py:\d+\(", out), out
    assert "_find_and_load" not in out, out


@pytest.mark.root
@pytest.mark.qemu_helper
def test_bench_startup_prints_its_table_and_ratios() -> None:
    out = run_script("bench_startup.py", "--runs", "1")
    timing = rf"\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}  "
    assert re.search(rf"^ours{timing}\S+/virtfs-proto helper$", out, re.M), out
    assert re.search(rf"^QEMU{timing}{re.escape(QEMU_HELPER)}$", out, re.M), out
    assert re.search(rf"^bare python{timing}\S+/python -c pass$", out, re.M), out
    assert re.search(rf"^python fork\+wait{timing}\S+/python -c <fork, wait>$", out, re.M), out
    floor = rf"^imports\+fork\+wait{timing}\S+/python -c <our imports, fork, wait>$"
    assert re.search(floor, out, re.M), out
    assert re.search(
        rf"imports\+fork\+wait / bare \(the pure-Python floor\): time {NUMBER}, CPU {NUMBER},"
        rf" PSS {NUMBER}, RSS {NUMBER}",
        out,
    ), out
    assert re.search(
        rf"ours / bare python: time {NUMBER} \(target <= 2.0\), RSS {NUMBER}, PSS {NUMBER}"
        r" \(target <= 1.5\)",
        out,
    ), out
    assert re.search(rf"ours / QEMU: +time {NUMBER}, RSS {NUMBER}, CPU {NUMBER}", out), out


@pytest.mark.root
def test_bench_startup_phases_decompose_a_start() -> None:
    out = run_script("bench_startup.py", "--phases", "--runs", "1")
    rows = {
        (process.strip(), name.strip()): (float(wall), cpu)
        for process, name, wall, cpu in re.findall(
            r"^(parent|parent, after fork|child) +(\S.*?) +(-?[\d.]+) +(-|[\d.]+)$", out, re.M
        )
    }
    for process, name in [
        ("parent", "interpreter"),
        ("parent", "imports"),
        ("parent", "options"),
        ("parent, after fork", "fork"),
        ("child", "sandbox: unshare"),
        ("child", "sandbox: pivot_root"),
        ("child", "privilege drop"),
        ("child", "landlock"),
        ("child", "seccomp: rules"),
        ("child", "seccomp: load"),
        ("child", "first request"),
    ]:
        assert (process, name) in rows, (process, name, out)
    # after seccomp the child's CPU clock is refused: the first request's row has the rest
    assert rows["child", "seccomp: load"][1] == "-", out
    assert rows["child", "first request"][1] != "-", out
    total = re.search(rf"^total +({NUMBER}) +({NUMBER})  \(exec to first reply", out, re.M)
    assert total, out
    assert float(total[1]) > 0 and float(total[2]) > 0, out
    assert re.search(r"^  ctypes +[\d.]+ ms +[\d.]+ %$", out, re.M), out


@pytest.mark.root
def test_bench_startup_importtime_lists_our_imports() -> None:
    out = run_script("bench_startup.py", "--importtime")
    rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+(\S.*)$", out, re.M)
    assert len(rows) == 15, out
    assert any(name.strip().startswith("virtfs_proto") for _, _, name in rows), out
    cumulative = [int(c) for _, c, _ in rows]
    assert cumulative == sorted(cumulative, reverse=True), out


@pytest.mark.root
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_bench_syscalls_counts_calls_per_op_of_both_helpers() -> None:
    out = run_script("bench_syscalls.py", "--n", "20", "--op", "lstat")
    rows = re.findall(rf"^  (QEMU|ours)\s+({NUMBER}): (.*)$", out, re.M)
    assert [r[0] for r in rows] == ["QEMU", "ours"], out
    for _, total, listed in rows:
        assert float(total) >= 2, out  # at least a receive and a send per op
        assert "fstatat" in listed or "newfstatat" in listed, out  # an lstat is made


@pytest.mark.root
def test_bench_syscalls_split_runs_both_floors_beside_the_helpers() -> None:
    """The floors answer as a helper does (the raw client checks every reply,
    an fd passed included), and the split prints a row for each of the four."""
    out = run_script(
        "bench_syscalls.py", "--n", "0", "--op", "lstat", "--op", "open+close", "--split", "300"
    )
    rows = re.findall(
        rf"^  (QEMU|ours|floor|loop)\s+CPU per cycle, us: user ({NUMBER}), kernel ({NUMBER})$",
        out,
        re.M,
    )
    assert [r[0] for r in rows] == ["QEMU", "ours", "floor", "loop"] * 2, out


@pytest.mark.root
def test_soak_runs_a_short_mix_cleanly() -> None:
    out = run_script("soak.py", "--ops", "200")
    assert "unexpected errors: none" in out, out
    assert "sentinels: unchanged" in out, out
    assert re.search(r"^200 operations \(\d+ requests\) in .* ops/s$", out, re.M), out


@pytest.mark.e2e
def test_bench_e2e_prints_the_ratio() -> None:
    out = run_script("bench_e2e.py", "--runs", "1", timeout=900)
    assert re.search(rf"^ratio  ours/qemu {NUMBER} ", out, re.M), out
    assert re.search(rf"^helper cpu  ours {NUMBER} s, qemu {NUMBER} s", out, re.M), out


# == the mix: what it holds, and that every unit can repeat ====================


def test_mix_follows_the_trace_counts() -> None:
    size = sum(bench_helper.E2E_REQUEST_COUNTS.values())  # the whole trace: every type
    cycle = bench_helper.mix_cycle(size)
    counts = Counter(req.TYPE.name for req, _ in cycle)
    creations = ("T_CREATE", "T_MKDIR", "T_MKNOD", "T_SYMLINK", "T_LINK")
    for name, n in bench_helper.E2E_REQUEST_COUNTS.items():
        if name == "T_REMOVE":  # each creation is undone, and nothing else removed
            assert counts[name] == sum(counts[c] for c in creations) > n, counts
        else:
            assert counts[name] == n, (name, counts)
    errors = Counter((req.TYPE.name, err) for req, err in cycle if err)
    assert errors[("T_LSTAT", 2)] == bench_helper.E2E_ERROR_COUNTS[("T_LSTAT", "ENOENT")]


def _listing(root: Path) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_uid, st.st_gid)
    return out


@pytest.mark.root
@pytest.mark.qemu_helper
@pytest.mark.parametrize("helper", ["qemu", "ours"])
def test_every_mix_unit_repeats_and_leaves_the_export_as_found(helper: str, tmp_path: Path) -> None:
    export = bench_helper.make_export(tmp_path)
    before = _listing(export)
    command = [QEMU_HELPER] if helper == "qemu" else [sys.executable, "-m", "virtfs_proto.server"]
    sock, proc = spawn(command, export)
    try:
        client = StructClient(sock, helper)
        for key, steps in bench_helper.MIX_UNITS.items():
            # Twice: a unit that left something behind fails the second time (EEXIST).
            client.run([Frame(req, err) for req, err in steps], 2)
            assert _listing(export) == before, key
    finally:
        sock.close()
        assert proc.wait(10) == 0
    assert os.getxattr(export / "file.txt", bench_helper.USER_XATTR) == bench_helper.XATTR_VALUE
