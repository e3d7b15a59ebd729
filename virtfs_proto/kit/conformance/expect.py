"""Known failures a helper's vendor pins: ``virtfs-proto conformance --expect FILE``.

The file holds one case per line: its name, white space, and the reason it
fails (the defect it shows). A name may end in ``[fd]`` or ``[socket]`` to
pin one mode only. Blank lines and lines starting with ``#`` are ignored::

    # QEMU 7.2's virtfs-proxy-helper
    security.confine.no_new_privs        never sets PR_SET_NO_NEW_PRIVS
    security.special.open_fifo           T_OPEN of a FIFO blocks in open()
    behaviour.cli.fd_not_a_number[fd]    -f abc is atoi'd to fd 0

With such a file, a listed case that fails is expected; a listed case that
does not fail (an *unexpected pass*: the defect is gone, or the case no longer
shows it) and an unlisted case that fails (an *unexpected failure*) both fail
the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .model import CaseResult, Verdict

_MODES = ("fd", "socket")


@dataclass(frozen=True, slots=True)
class Expectations:
    """Expected failures: (case name, mode or None for every mode) -> reason."""

    reasons: dict[tuple[str, str | None], str]

    @classmethod
    def parse(cls, text: str, case_names: Iterable[str]) -> Expectations:
        """Read an expect file; ValueError names the line of a malformed or unknown entry."""
        known = set(case_names)
        reasons: dict[tuple[str, str | None], str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, *rest = line.split(None, 1)
            reason = rest[0].strip() if rest else ""
            mode: str | None = None
            if name.endswith("]") and "[" in name:
                name, _, mode = name[:-1].partition("[")
                if mode not in _MODES:
                    raise ValueError(f"line {number}: mode must be [fd] or [socket], not [{mode}]")
            if not reason:
                raise ValueError(f"line {number}: {name} has no reason (NAME REASON...)")
            if name not in known:
                raise ValueError(f"line {number}: no case is named {name!r}")
            reasons[(name, mode)] = reason
        return cls(reasons)

    def reason(self, result: CaseResult) -> str | None:
        """Why ``result``'s case is expected to fail in its mode; None if it is not."""
        return self.reasons.get((result.name, result.mode)) or self.reasons.get((result.name, None))


@dataclass(slots=True)
class Judgement:
    """A report held against expectations (without expectations every failure is unexpected)."""

    expected_failures: list[tuple[CaseResult, str]] = field(default_factory=list)
    unexpected_failures: list[CaseResult] = field(default_factory=list)
    unexpected_passes: list[tuple[CaseResult, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unexpected_failures and not self.unexpected_passes

    def summary(self) -> str:
        """What the expectations made of the run, for the end of the last line."""
        return (
            f"{len(self.expected_failures)} expected failures, "
            f"{len(self.unexpected_failures)} unexpected failures, "
            f"{len(self.unexpected_passes)} unexpected passes"
        )


def judge(results: Iterable[CaseResult], expectations: Expectations | None) -> Judgement:
    out = Judgement()
    for r in results:
        reason = expectations.reason(r) if expectations is not None else None
        if reason is None:
            if r.verdict is Verdict.FAIL:
                out.unexpected_failures.append(r)
        elif r.verdict is Verdict.FAIL:
            out.expected_failures.append((r, reason))
        else:
            out.unexpected_passes.append((r, reason))
    return out
