"""Run the cases against a helper and report: ``virtfs-proto conformance``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from ...errors import HelperStartError, ProxyProtocolError
from ...kit import vectors_dir
from ...launcher import check_helper_command
from ...messages import LstatRequest, StatReply
from . import cases as _cases  # noqa: F401  (registers every case)
from .cases import wire
from .expect import Expectations, Judgement, judge
from .junit import junit_xml
from .model import (
    CASES,
    GROUPS,
    Case,
    CaseResult,
    CheckFailed,
    Context,
    Deviation,
    NotApplicable,
    Report,
    Verdict,
    count_line,
    not_applicable_reason,
    qemu,
    qpath,
    rootless_runner,
    select,
)
from .session import (
    EXIT_TIMEOUT,
    START_TIMEOUT,
    HelperGone,
    HelperHung,
    HelperSession,
    describe_status,
)
from .workspace import Workspace

MODES = ("fd", "socket")


class _Runner:
    """Runs cases in one mode, reusing a helper until a case kills or taints it."""

    def __init__(
        self, argv: Sequence[str], mode: str, ws: Workspace, ids: tuple[int, int] = (0, 0)
    ) -> None:
        self.argv = list(argv)
        self.mode = mode
        self.ws = ws
        self.ids = ids
        self.helper: HelperSession | None = None

    def _start(self) -> HelperSession:
        return HelperSession(self.argv, self.ws.export, self.mode, rundir=self.ws.rundir)

    def not_applicable(self, case: Case) -> CaseResult | None:
        """The N/A result of a case this run cannot judge (its declared needs), or None."""
        if not (self.ws.rootless and case.needs):
            return None
        why = not_applicable_reason(case.needs)
        return CaseResult(case.name, case.group, case.cls, self.mode, Verdict.NOT_APPLICABLE, why)

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
        skipped = self.not_applicable(case)
        if skipped is not None:
            return skipped
        result = CaseResult(case.name, case.group, case.cls, self.mode, Verdict.PASS)
        start = time.monotonic()
        if case.fresh:
            self._dispose()
        self.ws.build_export()
        before = self.ws.snapshot()
        ctx = Context(
            self.ws, self._helper, self.mode, self.argv, rootless=self.ws.rootless, ids=self.ids
        )
        tainted = case.fresh
        try:
            case.func(ctx)
        except CheckFailed as exc:
            result.verdict, result.detail = Verdict.FAIL, str(exc)
        except Deviation as exc:
            result.verdict, result.detail = Verdict.DEVIATION, exc.detail
            result.deviation = exc.name
        except NotApplicable as exc:
            result.verdict, result.detail = Verdict.NOT_APPLICABLE, str(exc)
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


def probe(helper_argv: Sequence[str], mode: str, ws: Workspace) -> tuple[int, int]:
    """Start the helper once and have it answer a T_LSTAT of the export's root;
    return the owner it answers (the invoker's ids as the helper names them;
    root's if it does not answer with a stat).

    Raises :class:`HelperStartError` (one clear reason) for a helper that
    cannot be run, exits at once or never answers: such a helper has nothing
    to judge, and must not collect "passed" cases from those that only check
    that something is refused.
    """
    # raises HelperStartError itself for a helper that cannot be run or, in
    # socket mode, never listens
    helper = HelperSession(helper_argv, ws.export, mode, rundir=ws.rundir)
    reply = None
    try:
        reply = helper.call(qemu(LstatRequest, qpath("")), timeout=START_TIMEOUT)
    except (HelperGone, HelperHung) as exc:
        hung = isinstance(exc, HelperHung)
        status = None if hung else helper.wait_exit()
        helper.kill()
        helper.close()  # for its final log; idempotent, so the finally below is harmless
        what = (
            f"did not answer a first request within {START_TIMEOUT:g} s"
            if hung
            else "exited at once instead of answering"
        )
        raise HelperStartError(
            f"the helper {what} ({mode} mode)",
            returncode=status,
            stderr=helper.log(),
            argv=tuple(helper_argv),
        ) from None
    except ProxyProtocolError:
        pass  # it serves, if badly: the cases judge that
    finally:
        helper.close()
    if isinstance(reply, StatReply):
        return reply.st_uid, reply.st_gid
    return 0, 0


def run(
    helper_argv: Sequence[str],
    mode: str,
    only: str | Sequence[str] | None = None,
    *,
    exclude: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    on_result: Callable[[CaseResult, int, int], None] | None = None,
    rootless: bool | None = None,
) -> Report:
    """Run every case (or those :func:`~.model.select` picks) against ``helper_argv``.

    ``mode`` is "fd", "socket" or "both". ``progress`` gets one line per group
    that has cases; ``on_result`` each result, its position and the run's
    total. A helper that cannot serve at all raises :class:`HelperStartError`
    (see :func:`probe`) before any case runs. ``rootless`` (default: whether
    we are not root, :func:`~.model.rootless_runner`) builds the workspace
    as the invoker's and reports the cases that need root not applicable.
    """
    modes = list(MODES) if mode == "both" else [mode]
    if any(m not in MODES for m in modes):
        raise ValueError(f"mode must be fd, socket or both, not {mode!r}")
    report = Report(list(helper_argv), modes)
    selected = select(CASES, only, exclude)
    total = sum(md in c.modes for md in modes for c in selected)
    ws = Workspace(rootless=rootless_runner() if rootless is None else rootless)
    try:
        ids = probe(helper_argv, modes[0], ws)
        for md in modes:
            runner = _Runner(helper_argv, md, ws, ids if ws.rootless else (0, 0))
            try:
                for group in GROUPS:
                    cases = [c for c in selected if c.group == group and md in c.modes]
                    if not cases:
                        continue
                    t0 = time.monotonic()
                    results = []
                    for c in cases:
                        results.append(runner.run_case(c))
                        report.results.append(results[-1])
                        if on_result:
                            on_result(results[-1], len(report.results), total)
                    if progress:
                        progress(
                            f"[{md}] {group}: {len(results)} cases, {count_line(results)} "
                            f"({time.monotonic() - t0:.1f} s)"
                        )
            finally:
                runner.close()
    finally:
        ws.cleanup()
    return report


def format_table(report: Report) -> str:
    """A readable table of every result, then the findings and the summary."""
    lines = [*_table(report), "", *format_findings(report, judge(report.results, None))]
    return "\n".join([*lines, report.summary()])


def _table(report: Report) -> list[str]:
    """One line per result: verdict, mode, group, class, case, detail."""
    heads = ("VERDICT", "MODE", "GROUP", "CLASS", "CASE")
    rows = [
        (r.verdict.value.upper(), r.mode, r.group, r.cls, r.name, r.detail) for r in report.results
    ]
    w = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(heads)) + "  DETAIL"]
    lines += ["  ".join(r[i].ljust(w[i]) for i in range(5)) + "  " + r[5] for r in rows]
    return lines


def format_findings(report: Report, judgement: Judgement) -> list[str]:
    """The tolerated deviations, cases that did not apply, and what failed, with details."""
    lines = []
    devs = [r for r in report.results if r.verdict is Verdict.DEVIATION]
    if devs:
        lines.append(f"{len(devs)} tolerated deviations (the spec allows them):")
        lines += [f"  [{d.mode}] {d.name}: {d.deviation}: {d.detail}" for d in devs]
    nas = [r for r in report.results if r.verdict is Verdict.NOT_APPLICABLE]
    if nas:
        lines.append(f"{len(nas)} not applicable:")
        lines += [f"  [{r.mode}] {r.name}: {r.detail}" for r in nas]
    if judgement.expected_failures:
        lines.append(f"{len(judgement.expected_failures)} expected failures (--expect):")
        lines += [f"  [{r.mode}] {r.name}: {why}" for r, why in judgement.expected_failures]
    if judgement.unexpected_passes:
        lines.append(
            f"{len(judgement.unexpected_passes)} UNEXPECTED PASSES (listed in --expect, "
            "did not fail):"
        )
        lines += [
            f"  [{r.mode}] {r.name}: {r.verdict.value}; expected: {why}"
            for r, why in judgement.unexpected_passes
        ]
    fails = judgement.unexpected_failures
    if fails:
        unexpected = "unexpected failures" if judgement.expected_failures else "failures"
        lines.append(f"{len(fails)} {unexpected}:")
        lines += [f"  [{f.mode}] {f.name}: {f.detail}" for f in fails]
    return lines


class _Progress:
    """A counter rewritten in place on a terminal; nothing per case otherwise.

    Group lines are printed in full either way, so a log shows how far the run got.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.failed = 0

    def result(self, r: CaseResult, done: int, total: int) -> None:
        self.failed += r.verdict is Verdict.FAIL
        if self.tty:
            text = f"[{done}/{total}] {self.failed} failed  [{r.mode}] {r.name}"
            self.out.write("\r\x1b[K" + text[: _width()])
            self.out.flush()

    def clear(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[K")
            self.out.flush()

    def line(self, text: str) -> None:
        self.out.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.out.flush()


def _width() -> int:
    return max(20, shutil.get_terminal_size().columns - 1)


def build_parser() -> argparse.ArgumentParser:
    """The ``virtfs-proto conformance`` parser."""
    parser = argparse.ArgumentParser(
        prog="virtfs-proto conformance",
        description="Run the conformance and security suite against a proxy helper.",
    )
    parser.add_argument("--helper", help="the helper command, split like a shell would (shlex)")
    parser.add_argument("--mode", choices=("fd", "socket", "both"), default="both")
    parser.add_argument(
        "--only",
        metavar="PATTERN",
        action="append",
        help="run only cases whose name or class matches (glob or substring); repeatable",
    )
    parser.add_argument(
        "--exclude",
        metavar="PATTERN",
        action="append",
        default=[],
        help="leave out cases whose name or class matches; repeatable",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the selected cases (group, class, name) and exit"
    )
    parser.add_argument(
        "--expect",
        metavar="FILE",
        help="known failures, one 'CASE[MODE] REASON' a line: they must fail, nothing else may",
    )
    parser.add_argument("--json", metavar="REPORT", help="also write a JSON report here")
    parser.add_argument("--junit", metavar="XML", help="also write a JUnit XML report here")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print every case's verdict (a table)"
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
    """``virtfs-proto conformance --helper CMD [options]``: see :func:`build_parser`."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
    selected = select(CASES, args.only, args.exclude)
    if not selected:
        shown = " ".join(args.only or []) + "".join(f" minus {e}" for e in args.exclude)
        print(f"conformance: no case matches {shown.strip()!r}", file=sys.stderr)
        return 2
    if args.list:
        for c in selected:
            print(f"{c.name}  {c.group}/{c.cls}  [{' '.join(c.modes)}]")
        return 0
    if not args.helper:
        print("conformance: --helper CMD is required (or --list)", file=sys.stderr)
        return 2
    try:
        helper_argv = check_helper_command(args.helper)
    except HelperStartError as exc:
        print(f"conformance: {exc.one_line()}", file=sys.stderr)
        return 2
    expectations = None
    if args.expect:
        try:
            text = Path(args.expect).read_text()
            expectations = Expectations.parse(text, (c.name for c in CASES))
        except (OSError, ValueError) as exc:
            print(f"conformance: --expect {args.expect}: {exc}", file=sys.stderr)
            return 2
    out = _Progress(sys.stdout)
    if rootless_runner():
        out.line(
            f"conformance: rootless mode (running as uid {os.geteuid()}, not root): the "
            "export is yours, cases that need root are reported not applicable"
        )
    try:
        report = run(
            helper_argv,
            args.mode,
            args.only,
            exclude=args.exclude,
            progress=out.line,
            on_result=out.result,
        )
    except HelperStartError as exc:
        out.clear()
        print(f"conformance: {exc.one_line()}", file=sys.stderr)
        return 2
    except BaseException:  # Ctrl-C, SIGTERM: their one line starts a line of its own
        out.clear()
        raise
    judgement = judge(report.results, expectations)
    lines = ([*_table(report), ""] if args.verbose else []) + format_findings(report, judgement)
    if lines:
        print("\n".join(lines))
    summary = report.summary()
    if expectations is not None:
        summary += f"; {judgement.summary()}"
    print(summary)
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(report.as_json(), indent=2) + "\n")
        if args.junit:
            Path(args.junit).write_bytes(junit_xml(report, expectations))
    except OSError as exc:
        print(f"conformance: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0 if judgement.ok else 1
