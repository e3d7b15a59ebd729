"""The conformance and security suite: ``virtfs-proto conformance --helper CMD``.

Checks any helper binary (QEMU's ``virtfs-proxy-helper`` or this project's) by
starting it on a fresh fixture export and running three groups of cases:
``wire`` (the golden vectors replayed), ``behaviour`` (each operation's
effect on the host) and ``security`` (attacks). Linux only. Run as root it
judges every case; run by any other user (rootless mode, for a rootless
helper) it reports the cases that need root not applicable, with the reason
their declared requirements give (:class:`~.model.Requirement`).
"""

from .model import CASES, Case, CaseResult, Report, Verdict
from .runner import build_parser, format_table, main, run

__all__ = [
    "CASES",
    "Case",
    "CaseResult",
    "Report",
    "Verdict",
    "build_parser",
    "format_table",
    "main",
    "run",
]
