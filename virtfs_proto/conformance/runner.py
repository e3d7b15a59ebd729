"""Run the cases against a helper and report: ``virtfs-proto conformance``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import HelperStartError, ProxyProtocolError
from ..kit import vectors_dir
from . import cases as _cases  # noqa: F401  (registers every case)
from .cases import wire
from .fixture import Workspace
from .model import (
    CASES,
    GROUPS,
    Case,
    CaseResult,
    CheckFailed,
    Context,
    Deviation,
    Report,
    Verdict,
    select,
)
from .session import (
    EXIT_TIMEOUT,
    HelperGone,
    HelperHung,
    HelperSession,
    describe_status,
)

MODES = ("fd", "socket")


class _Runner:
    """Runs cases in one mode, reusing a helper until a case kills or taints it."""

    def __init__(self, argv: Sequence[str], mode: str, ws: Workspace) -> None:
        self.argv = list(argv)
        self.mode = mode
        self.ws = ws
        self.helper: HelperSession | None = None

    def _start(self) -> HelperSession:
        return HelperSession(self.argv, self.ws.export, self.mode, rundir=self.ws.rundir)

    def _dispose(self) -> None:
        if self.helper is not None:
            self.helper.close()
            self.helper = None

    def _helper(self) -> HelperSession:
        if self.helper is not None and not self.helper.alive():
            self._dispose()
        if self.helper is None:
            self.helper = self._start()
        return self.helper

    def run_case(self, case: Case) -> CaseResult:
        result = CaseResult(case.name, case.group, case.cls, self.mode, Verdict.PASS)
        start = time.monotonic()
        if case.fresh:
            self._dispose()
        self.ws.build_export()
        before = self.ws.snapshot()
        ctx = Context(self.ws, self._helper, self.mode, self.argv)
        tainted = case.fresh
        try:
            case.func(ctx)
        except CheckFailed as exc:
            result.verdict, result.detail = Verdict.FAIL, str(exc)
        except Deviation as exc:
            result.verdict, result.detail = Verdict.DEVIATION, exc.detail
            result.deviation = exc.name
        except HelperStartError as exc:
            result.verdict, result.detail = Verdict.FAIL, f"helper did not start: {exc}"
            tainted = True
        except HelperHung as exc:
            result.verdict, result.detail = Verdict.FAIL, f"helper blocked: {exc}"
            tainted = True
        except HelperGone as exc:
            result.verdict, result.detail = Verdict.FAIL, f"helper died or hung up: {exc}"
            tainted = True
        except ProxyProtocolError as exc:
            result.verdict, result.detail = Verdict.FAIL, f"malformed reply: {exc}"
            tainted = True
        except Exception as exc:  # a bug in the case: reported, the run goes on
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            result.verdict, result.detail = Verdict.FAIL, f"suite error: {tb}"
            tainted = True
        finally:
            ctx.close_fds()
        if ctx.notes and not result.detail:
            result.detail = "; ".join(ctx.notes)
        helper = ctx.used_helper
        if helper is not None:
            self._check_end_state(case, helper, result)
            if tainted or case.fatal or helper.conn.outstanding or not helper.alive():
                helper.kill()
                self._dispose()
        problems = self.ws.differences(before, self.ws.snapshot())
        if problems:
            result.verdict = Verdict.FAIL
            result.detail = ("SENTINEL " + "; ".join(problems[:4]) + ". " + result.detail).strip()
            self.ws.build_sentinels()
        result.seconds = time.monotonic() - start
        return result

    @staticmethod
    def _check_end_state(case: Case, helper: HelperSession, result: CaseResult) -> None:
        """Alive after an ordinary case; exited (not by a signal) after a fatal one."""
        if result.verdict is Verdict.FAIL:
            return
        if case.fatal:
            status = helper.wait_exit(EXIT_TIMEOUT)
            if status is None:
                result.verdict = Verdict.FAIL
                result.detail = "the helper did not exit after a fatal frame"
            elif status < 0:
                result.verdict = Verdict.FAIL
                result.detail = f"the helper {describe_status(status)} instead of exiting"
        elif not helper.alive():
            result.verdict = Verdict.FAIL
            result.detail = f"the helper {helper.status()} during the case"

    def close(self) -> None:
        self._dispose()


def run(
    helper_argv: Sequence[str],
    mode: str,
    only: str | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run every case (or those matching ``only``) against ``helper_argv``.

    ``mode`` is "fd", "socket" or "both". ``progress`` gets one line per group.
    """
    modes = list(MODES) if mode == "both" else [mode]
    if any(m not in MODES for m in modes):
        raise ValueError(f"mode must be fd, socket or both, not {mode!r}")
    report = Report(list(helper_argv), modes)
    selected = select(CASES, only)
    ws = Workspace()
    try:
        for md in modes:
            runner = _Runner(helper_argv, md, ws)
            try:
                for group in GROUPS:
                    cases = [c for c in selected if c.group == group and md in c.modes]
                    t0 = time.monotonic()
                    results = [runner.run_case(c) for c in cases]
                    report.results.extend(results)
                    if progress:
                        fails = sum(r.verdict is Verdict.FAIL for r in results)
                        progress(
                            f"[{md}] {group}: {len(results)} cases, "
                            f"{len(results) - fails} ok, {fails} failed "
                            f"({time.monotonic() - t0:.1f} s)"
                        )
            finally:
                runner.close()
    finally:
        ws.cleanup()
    return report


def format_table(report: Report) -> str:
    """A readable table of every result, then the known deviations and the summary."""
    rows = [
        (r.verdict.value.upper(), r.mode, r.group, r.cls, r.name, r.detail) for r in report.results
    ]
    w = [
        max([len(h), *(len(r[i]) for r in rows)])
        for i, h in enumerate(("VERDICT", "MODE", "GROUP", "CLASS", "CASE"))
    ]
    lines = [
        "  ".join(
            h.ljust(w[i]) for i, h in enumerate(("VERDICT", "MODE", "GROUP", "CLASS", "CASE"))
        )
        + "  DETAIL"
    ]
    for r in rows:
        lines.append("  ".join(r[i].ljust(w[i]) for i in range(5)) + "  " + r[5])
    devs = [r for r in report.results if r.verdict is Verdict.DEVIATION]
    lines.append("")
    lines.append(f"{len(devs)} known deviations (tolerated by the spec):")
    lines += [f"  [{d.mode}] {d.name}: {d.deviation}: {d.detail}" for d in devs]
    fails = report.failures()
    if fails:
        lines.append(f"{len(fails)} failures:")
        lines += [f"  [{f.mode}] {f.name}: {f.detail}" for f in fails]
    lines.append(report.summary())
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``virtfs-proto conformance`` parser."""
    parser = argparse.ArgumentParser(
        prog="virtfs-proto conformance",
        description="Run the conformance and security suite against a proxy helper.",
    )
    parser.add_argument(
        "--helper", required=True, help="the helper command, split like a shell would (shlex)"
    )
    parser.add_argument("--mode", choices=("fd", "socket", "both"), default="both")
    parser.add_argument("--json", metavar="REPORT", help="also write a JSON report here")
    parser.add_argument(
        "--only",
        metavar="PATTERN",
        help="run only cases whose name or class matches (glob or substring)",
    )
    parser.add_argument(
        "--vectors",
        metavar="DIR",
        type=Path,
        help="replay the vectors `virtfs-proto capture --out DIR` recorded there "
        "(default: the packaged ones)",
    )
    return parser


def main(argv: list[str]) -> int:
    """``virtfs-proto conformance --helper CMD [--mode M] [--json F] [--only P] [--vectors D]``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    helper_argv = shlex.split(args.helper)
    if not helper_argv:
        parser.error("--helper is empty")
    if shutil.which(helper_argv[0]) is None:
        hint = (
            "; install it: apt-get install -y qemu-system-common"
            if helper_argv[0].endswith("virtfs-proxy-helper")
            else ""
        )
        print(f"conformance: helper {helper_argv[0]!r} not found{hint}", file=sys.stderr)
        return 2
    # Without vectors the wire group would silently vanish and the rest pass.
    vector_source = args.vectors or vectors_dir()
    try:
        found = wire.use_vectors(vector_source)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"conformance: cannot read the vectors in {vector_source}: {exc}", file=sys.stderr)
        return 2
    if not found:
        print(
            f"conformance: no golden vectors (*.json) in {vector_source}: "
            + (
                "record some with `virtfs-proto capture --out DIR`"
                if args.vectors
                else "the installation is incomplete; reinstall virtfs-proto"
            ),
            file=sys.stderr,
        )
        return 2
    if not select(CASES, args.only):
        print(f"conformance: no case matches {args.only!r}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print(
            "conformance: must run as root (helpers chroot and the fixture makes device "
            "nodes and mounts)",
            file=sys.stderr,
        )
        return 2
    report = run(helper_argv, args.mode, args.only, progress=lambda s: print(s, flush=True))
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return 0 if report.failed == 0 else 1
