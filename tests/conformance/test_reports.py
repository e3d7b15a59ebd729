"""The run's verdicts as others read them: the last line, --expect, JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from virtfs_proto.kit.conformance import CASES, CaseResult, Report, Verdict
from virtfs_proto.kit.conformance.expect import Expectations, judge
from virtfs_proto.kit.conformance.junit import junit_xml

A, B, C, D = (c.name for c in CASES[:4])


def result(name: str, mode: str, verdict: Verdict, detail: str = "") -> CaseResult:
    case = next(c for c in CASES if c.name == name)
    r = CaseResult(name, case.group, case.cls, mode, verdict, detail)
    if verdict is Verdict.DEVIATION:
        r.deviation = "some-quirk"
    return r


def report() -> Report:
    return Report(
        ["helper"],
        ["fd", "socket"],
        [
            result(A, "fd", Verdict.PASS),
            result(A, "socket", Verdict.FAIL, "answered EPERM"),
            result(B, "fd", Verdict.DEVIATION, "trailing bytes ignored"),
            result(C, "fd", Verdict.NOT_APPLICABLE, "no generation numbers here"),
            result(D, "fd", Verdict.FAIL, "helper blocked"),
        ],
    )


def test_last_line_counts_every_result() -> None:
    assert report().summary() == "1 passed, 2 failed, 1 tolerated, 1 not applicable"


def test_expect_file_format() -> None:
    text = f"# a comment\n\n{A}[socket]  answers EPERM\n{D}\tblocks in open()  (FIFO)\n"
    exp = Expectations.parse(text, [A, D])
    assert exp.reasons == {(A, "socket"): "answers EPERM", (D, None): "blocks in open()  (FIFO)"}
    for bad, why in [
        (f"{A}\n", "has no reason"),
        (f"{A}[qemu] x\n", "mode must be"),
        ("no.such.case because\n", "no case is named"),
    ]:
        with pytest.raises(ValueError, match=why):
            Expectations.parse("# first\n" + bad, [A])
        with pytest.raises(ValueError, match=r"^line 2: "):
            Expectations.parse("# first\n" + bad, [A])


def test_judgement_against_expectations() -> None:
    r = report()
    plain = judge(r.results, None)
    assert [x.name for x in plain.unexpected_failures] == [A, D] and not plain.ok
    exp = Expectations.parse(f"{A}[socket] EPERM\n{D} FIFO\n{B} quirk\n", [A, B, D])
    j = judge(r.results, exp)
    assert j.ok is False  # B is listed but only tolerated: an unexpected pass
    assert [(x.name, x.mode) for x, _ in j.expected_failures] == [(A, "socket"), (D, "fd")]
    assert [(x.name, why) for x, why in j.unexpected_passes] == [(B, "quirk")]
    assert j.unexpected_failures == []
    assert j.summary() == "2 expected failures, 0 unexpected failures, 1 unexpected passes"
    # pinned to fd only, A's socket failure is not expected
    j = judge(r.results, Expectations.parse(f"{A}[fd] EPERM\n{D} FIFO\n", [A, D]))
    assert [x.name for x in j.unexpected_failures] == [A]
    assert [(x.name, x.mode) for x, _ in j.unexpected_passes] == [(A, "fd")]


def test_junit_xml() -> None:
    exp = Expectations.parse(f"{D} blocks in open()\n{B} quirk\n", [B, D])
    root = ET.fromstring(junit_xml(report(), exp))
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "2", "2")
    cases = {tc.get("name"): tc for tc in suite.iter("testcase")}
    assert set(cases) == {f"{A}[fd]", f"{A}[socket]", f"{B}[fd]", f"{C}[fd]", f"{D}[fd]"}
    assert list(cases[f"{A}[fd]"]) == []  # passed
    failure = cases[f"{A}[socket]"].find("failure")
    assert failure is not None and failure.get("message") == "answered EPERM"
    unexpected = cases[f"{B}[fd]"].find("failure")
    assert unexpected is not None and unexpected.get("message") == (
        "unexpected pass: expected to fail: quirk"
    )
    na = cases[f"{C}[fd]"].find("skipped")
    assert na is not None and na.get("message") == "not applicable: no generation numbers here"
    expected = cases[f"{D}[fd]"].find("skipped")
    assert expected is not None and expected.get("message") == "expected failure: blocks in open()"
    # without expectations: the tolerated deviation is skipped, both failures fail
    plain = ET.fromstring(junit_xml(report())).find("testsuite")
    assert plain is not None and (plain.get("failures"), plain.get("skipped")) == ("2", "2")
    dev = {tc.get("name"): tc for tc in plain.iter("testcase")}[f"{B}[fd]"].find("skipped")
    assert dev is not None
    assert dev.get("message") == "tolerated deviation some-quirk: trailing bytes ignored"
