"""The report as JUnit XML (``--junit FILE``), for CI systems that show test results.

One ``testcase`` per case and mode, named ``CASE[fd]`` / ``CASE[socket]``,
with the group as its class name. A failure carries its detail; a tolerated
deviation, a case that does not apply and an expected failure (``--expect``)
are ``skipped`` with the reason; an unexpected pass is a failure.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .expect import Expectations
from .model import Report, Verdict


def junit_xml(report: Report, expectations: Expectations | None = None) -> bytes:
    suite = ET.Element("testsuite", name="virtfs-proto conformance")
    failures = skipped = 0
    total = 0.0
    for r in report.results:
        total += r.seconds
        tc = ET.SubElement(
            suite,
            "testcase",
            classname=f"conformance.{r.group}",
            name=f"{r.name}[{r.mode}]",
            time=f"{r.seconds:.3f}",
        )
        reason = expectations.reason(r) if expectations is not None else None
        if r.verdict is Verdict.FAIL and reason is not None:
            skipped += 1
            ET.SubElement(tc, "skipped", message=f"expected failure: {reason}").text = r.detail
        elif r.verdict is Verdict.FAIL:
            failures += 1
            ET.SubElement(tc, "failure", message=r.detail or "failed").text = r.detail
        elif reason is not None:
            failures += 1
            ET.SubElement(
                tc, "failure", message=f"unexpected pass: expected to fail: {reason}"
            ).text = f"{r.verdict.value}: {r.detail}".rstrip(": ")
        elif r.verdict is Verdict.DEVIATION:
            skipped += 1
            ET.SubElement(tc, "skipped", message=f"tolerated deviation {r.deviation}: {r.detail}")
        elif r.verdict is Verdict.NOT_APPLICABLE:
            skipped += 1
            ET.SubElement(tc, "skipped", message=f"not applicable: {r.detail}")
    suite.set("tests", str(len(report.results)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    suite.set("time", f"{total:.3f}")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"
