"""HelperSession: its helper starts and stops through the launcher."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from virtfs_proto.errors import HelperStartError
from virtfs_proto.kit import conformance
from virtfs_proto.kit.conformance.session import HelperSession
from virtfs_proto.procfs import children

SUITE = Path(conformance.__file__).parent

# == the session starts its helper through spawn_helper ========================

#: A stand-in helper that forks a child, says "Started" and never serves.
FORKER = """
import os, sys, time
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
sys.stderr.write("Started\\n"); sys.stderr.flush()
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_session_stops_its_helper_whole_and_keeps_its_log(tmp_path: Path) -> None:
    session = HelperSession([sys.executable, "-c", FORKER], tmp_path, "fd", rundir=tmp_path)
    deadline = time.monotonic() + 10
    while not (forked := children(session.proc.pid)) or "Started" not in session.log():
        assert time.monotonic() < deadline, "the stand-in never forked and started"
        time.sleep(0.01)
    assert session.close() is None  # it ignored EOF: killed
    assert session.proc.returncode is not None
    (child,) = forked
    deadline = time.monotonic() + 10
    while not _gone(child):
        assert time.monotonic() < deadline, f"the forked child {child} survived close()"
        time.sleep(0.01)
    assert "Started" in session.log()  # still readable once closed


@pytest.mark.parametrize("mode", ["fd", "socket"])
def test_a_session_whose_helper_exits_at_once_raises_one_start_error(
    tmp_path: Path, mode: str
) -> None:
    # a shell exits well within the launcher's settle wait, even on a loaded machine
    argv = ["/bin/sh", "-c", "echo no export >&2; exit 1"]
    with pytest.raises(HelperStartError) as info:
        HelperSession(argv, tmp_path, mode, rundir=tmp_path)
    assert info.value.returncode == 1
    assert info.value.one_line().startswith("the helper exited at once instead of ")
    assert info.value.one_line().endswith("it said: no export")
    assert [p.name for p in tmp_path.iterdir()] == []  # neither log nor socket left


def test_the_session_has_no_start_of_its_own() -> None:
    """Only the launcher runs a helper; the session module imports no subprocess start."""
    source = (SUITE / "session.py").read_text()
    assert "Popen" not in source and "socketpair" not in source
    assert "spawn_helper(" in source
