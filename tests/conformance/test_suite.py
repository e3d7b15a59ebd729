"""The suite's own machinery: the sentinel check, selection, the command line."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from virtfs_proto.kit.conformance import CASES, main
from virtfs_proto.kit.conformance.model import Context, select
from virtfs_proto.kit.conformance.workspace import Workspace
from virtfs_proto.kit.fixture import SENTINEL_CONTENT


@pytest.fixture
def ws() -> Workspace:
    w = Workspace()
    w.build_export()
    yield w  # type: ignore[misc]
    w.cleanup()


@pytest.mark.root
def test_snapshot_is_stable(ws: Workspace) -> None:
    assert ws.differences(ws.snapshot(), ws.snapshot()) == []


@pytest.mark.root
def test_a_plain_read_of_a_sentinel_is_detected(ws: Workspace) -> None:
    before = ws.snapshot()
    assert ws.secret.read_bytes() == SENTINEL_CONTENT  # moves atime (relatime, old atime)
    problems = ws.differences(before, ws.snapshot())
    assert any("secret.txt" in p and "atime" in p for p in problems), problems


@pytest.mark.root
@pytest.mark.parametrize(
    "act",
    [
        lambda w: w.secret.write_bytes(b"changed"),
        lambda w: os.chmod(w.secret, 0o644),
        lambda w: os.link(w.secret, w.export / "hl"),
        lambda w: (w.outside / "planted").write_bytes(b""),
        lambda w: (w.root / "planted").mkdir(),
        lambda w: os.setxattr(w.secret, "user.x", b"1"),
        lambda w: os.utime(w.secret_dir / "inner.txt", (1, 1)),
    ],
    ids=["write", "chmod", "hardlink", "new-file", "new-dir-in-root", "xattr", "utime"],
)
def test_changes_outside_are_detected(ws: Workspace, act: object) -> None:
    before = ws.snapshot()
    act(ws)  # type: ignore[operator]
    assert ws.differences(before, ws.snapshot())


def test_selection() -> None:
    names = {c.name for c in select(CASES, "security.special.*")}
    assert names and all(n.startswith("security.special.") for n in names)
    # a bare word matches a class, or a name containing it
    raced = select(CASES, "race")
    assert {c.cls for c in raced} == {"race", "special-race"}
    assert all(c.cls == "race" or "race" in c.name for c in raced)
    assert select(CASES, None) == CASES
    assert len({c.name for c in CASES}) == len(CASES)
    assert sum(c.group == "security" for c in CASES) >= 50


@pytest.mark.qemu_helper
@pytest.mark.root
def test_command_line(qemu_helper: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.json"
    junit = tmp_path / "r.xml"
    rc = main(
        [
            "--helper",
            qemu_helper,
            "--mode",
            "fd",
            "--only",
            "behaviour.open_*",
            "--json",
            str(report),
            "--junit",
            str(junit),
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].startswith("[fd] behaviour: 6 cases, 6 passed, 0 failed, 0 tolerated")
    assert out[-1] == "6 passed, 0 failed, 0 tolerated, 0 not applicable"
    assert len(out) == 2  # nothing failed: the group's line and the summary
    data = json.loads(report.read_text())
    assert data["passed"] == 6 and data["failed"] == 0 and len(data["results"]) == 6
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "6" and suite.get("failures") == "0"
    names = {c.name for c in select(CASES, "behaviour.open_*")}
    assert {tc.get("name") for tc in suite} == {f"{n}[fd]" for n in names}
    rc = main(
        [
            "--helper",
            qemu_helper,
            "--mode",
            "socket",
            "--only",
            "security.special.open_fifo_wronly",
            "--only",
            "security.frame.trailing_bytes",
            "--junit",
            str(junit),
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert out[-1] == "0 passed, 1 failed, 1 tolerated, 0 not applicable"
    assert any("helper blocked" in line for line in out)
    cases = {tc.get("name"): tc for tc in ET.parse(junit).getroot().iter("testcase")}
    failure = cases["security.special.open_fifo_wronly[socket]"].find("failure")
    assert failure is not None and "helper blocked" in (failure.get("message") or "")
    skipped = cases["security.frame.trailing_bytes[socket]"].find("skipped")
    assert skipped is not None and "tolerated" in (skipped.get("message") or "")


def test_list_only_and_exclude(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--list", "--only", "security.special.*", "--only", "race", "--exclude", "fifo"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    want = [
        c
        for c in CASES
        if (c.name.startswith("security.special.") or c.cls == "race" or "race" in c.name)
        and "fifo" not in c.name
    ]
    assert [ln.split()[0] for ln in lines] == [c.name for c in want]
    assert all(f"{c.group}/{c.cls}" in ln for c, ln in zip(want, lines, strict=True))
    assert any(c.cls == "race" for c in want) and any(c.cls != "race" for c in want)


def test_command_line_refuses_what_it_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--helper", "/nonexistent/virtfs-proxy-helper"]) == 2
    assert "apt-get install -y qemu-system-common" in capsys.readouterr().err
    assert main(["--helper", "/bin/true", "--only", "no-such-case"]) == 2
    assert "no case matches" in capsys.readouterr().err


@pytest.mark.root
def test_wire_fd_use_refuses_an_fd_outside_the_export(ws: Workspace) -> None:
    from virtfs_proto.kit.conformance.cases.wire import _export_inodes, _use_fd
    from virtfs_proto.kit.conformance.model import CheckFailed

    inodes = _export_inodes(ws.export)
    inside = os.open(ws.export / "file.txt", os.O_RDONLY)
    outside = os.open(ws.secret, os.O_RDONLY | os.O_NOATIME)
    fifo = os.open(ws.export / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        _use_fd(inside, inodes, "inside")
        for fd in (outside, fifo):
            with pytest.raises(CheckFailed):
                _use_fd(fd, inodes, "bad")
    finally:
        for fd in (inside, outside, fifo):
            os.close(fd)


def test_an_incidental_owner_is_the_invokers_only_in_a_rootless_run(ws: Workspace) -> None:
    """Context.owner: as root the ids a case names (root verdicts unchanged), rootless
    the invoker's as the helper names them; named_owner reads a host object back so."""
    mine = os.stat(ws.export)  # the runner's own, as every object it builds
    assert (mine.st_uid, mine.st_gid) == (os.getuid(), os.getgid())

    def ctx(rootless: bool) -> Context:
        # ids: what a helper under --uid-map might answer for the invoker
        return Context(ws, lambda: pytest.fail("no helper"), "fd", rootless=rootless, ids=(7, 8))

    assert ctx(False).owner(1000, 1001) == (1000, 1001)
    assert ctx(False).named_owner(mine) == (mine.st_uid, mine.st_gid)
    assert ctx(True).owner(1000, 1001) == (7, 8)
    assert ctx(True).named_owner(mine) == (7, 8)
