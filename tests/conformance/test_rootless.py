"""The suite run by the CI's non-root user against our helper started by that user.

``virtfs-proto conformance`` runs as uid 2345 (:mod:`ciuser`); it starts the
helper itself, so the helper is that user's too and serves rootless (chosen
automatically: its real uid is not 0), once with the default identity map
and once with ``--subids``, each in both socket modes. Nothing may fail, and
the cases reported not applicable must be exactly those
``rootless-not-applicable.txt`` pins, each with the reason its declared
requirements give.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ciuser
import pytest

from virtfs_proto.kit.conformance.model import REQUIREMENTS, not_applicable_reason

PINNED = Path(__file__).with_name("rootless-not-applicable.txt")
#: the helper's id maps under test: its own options after the command
ID_MAPS = {"identity": [], "subids": ["--subids"]}


def pinned() -> dict[str, str]:
    """Case name -> the N/A detail its pinned requirements give."""
    out = {}
    for line in PINNED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, needs = line.split()
            out[name] = not_applicable_reason(REQUIREMENTS[n] for n in needs.split(","))
    return out


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A directory the user owns: its working directory, TMPDIR and the report."""
    path = Path(tempfile.mkdtemp(prefix="virtfs-rootless-"))
    os.chown(path, ciuser.UID, ciuser.GID)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_as_user(python: str, helper_options: list[str], where: Path) -> tuple[Any, str]:
    """The JSON report and the output of the suite run as the user (JUnit in where)."""
    helper = " ".join([python, "-m", "virtfs_proto.server", *helper_options])
    report = where / "report.json"
    argv = [python, "-m", "virtfs_proto.cli", "conformance", "--helper", helper]
    argv += ["--mode", "both", "--json", str(report), "--junit", str(where / "report.xml")]
    proc = subprocess.run(
        ciuser.as_user(argv),
        cwd=where,
        env={**os.environ, "TMPDIR": str(where)},
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    output = proc.stdout + proc.stderr
    assert report.exists(), f"no report (exit {proc.returncode}):\n{output[-3000:]}"
    return json.loads(report.read_text()), output


@pytest.mark.parametrize("id_map", list(ID_MAPS))
def test_conformance_as_the_user_against_a_rootless_helper(
    ci_user_python: str, user_dir: Path, id_map: str
) -> None:
    report, output = run_as_user(ci_user_python, ID_MAPS[id_map], user_dir)
    assert "conformance: rootless mode (running as uid 2345" in output
    failures = [
        f"[{r['mode']}] {r['name']}: {r['detail']}"
        for r in report["results"]
        if r["verdict"] == "fail"
    ]
    assert not failures, "\n".join(failures) + "\n\n" + output[-3000:]
    assert report["failed"] == 0
    assert report["modes"] == ["fd", "socket"]
    # exactly the pinned cases are N/A, in every mode they run in, with their reason
    want = pinned()
    got: dict[str, set[str]] = {}
    for r in report["results"]:
        if r["verdict"] == "not-applicable":
            got.setdefault(r["name"], set()).add(r["detail"])
            assert r["detail"] == want.get(r["name"]), (r["name"], r["detail"])
        else:
            assert r["name"] not in want, f"[{r['mode']}] {r['name']} ran: {r['verdict']}"
    assert set(got) == set(want), (set(got) ^ set(want))
    # the summary line counts them; most cases still ran and passed
    na = report["not_applicable"]
    summary = output.strip().splitlines()[-1]
    assert summary == (
        f"{report['passed']} passed, 0 failed, {report['known_deviations']} tolerated, "
        f"{na} not applicable"
    )
    assert na == sum(r["verdict"] == "not-applicable" for r in report["results"])
    assert report["passed"] > 2 * na, summary
    # --junit: each N/A case a skipped testcase with its reason
    suite = ET.parse(user_dir / "report.xml").getroot().find("testsuite")
    assert suite is not None
    skipped = {
        tc.get("name"): skip.get("message")
        for tc in suite.iter("testcase")
        if (skip := tc.find("skipped")) is not None
        and (skip.get("message") or "").startswith("not applicable: ")
    }
    assert skipped == {
        f"{r['name']}[{r['mode']}]": f"not applicable: {r['detail']}"
        for r in report["results"]
        if r["verdict"] == "not-applicable"
    }
    assert {r["group"] for r in report["results"] if r["verdict"] == "pass"} == {
        "wire",
        "behaviour",
        "security",
    }
