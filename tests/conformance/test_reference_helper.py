"""The suite against this project's helper: every case passes, in both socket modes."""

from __future__ import annotations

import pytest
from helpers import OUR_HELPER

from virtfs_proto.kit.conformance import Verdict, format_table, run


@pytest.mark.root
def test_reference_helper_passes_every_case() -> None:
    report = run(OUR_HELPER, "both")
    assert report.results, "no case ran"
    failures = [f"[{r.mode}] {r.name}: {r.detail}" for r in report.failures()]
    assert not failures, "\n" + "\n".join(failures) + "\n\n" + format_table(report)
    assert {r.group for r in report.results} == {"wire", "behaviour", "security"}
    # our helper ignores trailing payload bytes as QEMU's does (the spec tolerates it)
    devs = {r.name for r in report.results if r.verdict is Verdict.DEVIATION}
    assert devs <= {"security.frame.trailing_bytes"}
