"""Every golden vector (recorded from QEMU 7.2's helper) replayed against ours.

Replies must match byte for byte outside the machine-dependent ranges, passed
fds must be of the recorded type, and the helper must end as QEMU's did, with
two documented exceptions: fatal protocol errors exit 1, not 0 (the spec's
exit status), and vectors marked ``defect`` record a QEMU failure that ours
must not share.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import OUR_HELPER, VECTORS

from virtfs_proto.codec import codecs_for
from virtfs_proto.constants import MessageType
from virtfs_proto.kit.recording import Outcome, Vector, compare, run_steps

BY_NAME = {v.name: v for v in VECTORS}


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Outcome]:
    """All replays at once, in parallel: each starts its own helper on a fresh fixture."""

    def replay(v: Vector) -> tuple[str, Outcome]:
        return v.name, run_steps(OUR_HELPER, v.steps(), mode=v.mode)[0]

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(replay, VECTORS))


def test_there_are_vectors_to_replay() -> None:
    assert len(VECTORS) >= 100
    assert {v.name for v in VECTORS if v.defect} >= {
        "creds-uid0-gidN",
        "lgetxattr-negative",
        "readlink-negative",
    }


@pytest.mark.parametrize("name", [v.name for v in VECTORS if not v.defect])
def test_replay_matches_qemu(name: str, outcomes: dict[str, Outcome]) -> None:
    vector, outcome = BY_NAME[name], outcomes[name]
    problems = compare(vector, outcome)
    if vector.end.get("returncode") == 0 and outcome.returncode == 1:
        # fatal garbage from the client: QEMU exits 0, the spec (and ours) 1
        assert "closing the connection" in outcome.stderr
        problems.remove("helper exited with 1, expected 0")
    assert problems == [], outcome.stderr[-2000:]


def _reply_header(data: bytes | None) -> tuple[int, int] | None:
    if data is None or len(data) < 8:
        return None
    mtype, size = codecs_for().header_struct.unpack_from(data, 0)
    return int(mtype), int(size)


@pytest.mark.parametrize("name", [v.name for v in VECTORS if v.defect])
def test_defect_vectors_do_not_reproduce(name: str, outcomes: dict[str, Outcome]) -> None:
    """Where QEMU's helper died or was crippled, ours answers every request and lives."""
    vector, outcome = BY_NAME[name], outcomes[name]
    assert vector.end["helper"] == "exited" and vector.end["returncode"] < 0  # QEMU died
    assert outcome.helper == "alive", outcome.stderr
    assert outcome.sentinel_intact
    assert len(outcome.exchanges) == len(vector.exchanges)
    for got in outcome.exchanges:
        assert not got.timed_out and not got.eof
        header = _reply_header(got.reply)
        assert header is not None
        if name == "creds-uid0-gidN":
            assert header == (MessageType.T_SUCCESS, 4)
        else:
            assert header == (MessageType.T_ERROR, 4)
