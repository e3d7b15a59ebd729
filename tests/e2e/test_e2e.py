"""End to end: a Linux guest under QEMU mounts a share served by a proxy helper.

QEMU's own helper (``/usr/lib/qemu/virtfs-proxy-helper``) runs the workload in
both connection modes and is the reference; our helper must give the same
per-check results and leave the same host-side state. Missing prerequisites
fail these tests with the install command: they never skip.
"""

from __future__ import annotations

import difflib
import json

import pytest

from .build_guest import GuestBuildError, GuestImage, ensure_guest
from .harness import QEMU_HELPER, GuestRun, HarnessError, our_helper, require_tools, run_guest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def image() -> GuestImage:
    try:
        require_tools(QEMU_HELPER)
        return ensure_guest()
    except (GuestBuildError, HarnessError) as exc:
        pytest.fail(f"e2e prerequisites missing: {exc}")


def _run(image: GuestImage, helper: tuple[str, ...], mode: str) -> GuestRun:
    try:
        return run_guest(helper, mode, image=image)
    except HarnessError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def qemu_fd(image: GuestImage) -> GuestRun:
    return _run(image, QEMU_HELPER, "fd")


@pytest.fixture(scope="module")
def qemu_socket(image: GuestImage) -> GuestRun:
    return _run(image, QEMU_HELPER, "socket")


@pytest.fixture(scope="module")
def ours_fd(image: GuestImage) -> GuestRun:
    return _run(image, our_helper(), "fd")


@pytest.fixture(scope="module")
def ours_socket(image: GuestImage) -> GuestRun:
    return _run(image, our_helper(), "socket")


def _state_diff(a: GuestRun, b: GuestRun) -> str:
    def dump(run: GuestRun) -> list[str]:
        return [f"{path} {json.dumps(entry, sort_keys=True)}" for path, entry in run.state.items()]

    return "\n".join(
        difflib.unified_diff(
            dump(a),
            dump(b),
            a.summary().splitlines()[0],
            b.summary().splitlines()[0],
            lineterm="",
            n=0,
        )
    )


def _assert_clean_run(run: GuestRun) -> None:
    report = (
        f"{run.summary()}\n--- helper stderr ---\n{run.helper_stderr[-4000:]}"
        f"\n--- console ---\n{run.console[-4000:]}"
    )
    assert run.all_passed, report
    assert run.qemu_rc == 0, report
    # The helper sees EOF when QEMU exits and must leave on its own, status 0.
    assert run.helper_rc == 0, report


def _assert_same(reference: GuestRun, other: GuestRun) -> None:
    assert other.results == reference.results, other.summary()
    assert other.state == reference.state, _state_diff(reference, other)


def test_qemu_helper_socketpair(qemu_fd: GuestRun) -> None:
    _assert_clean_run(qemu_fd)
    assert "Done" in qemu_fd.helper_stderr


def test_qemu_helper_named_socket(qemu_socket: GuestRun) -> None:
    _assert_clean_run(qemu_socket)
    assert "Done" in qemu_socket.helper_stderr


def test_qemu_helper_modes_agree(qemu_fd: GuestRun, qemu_socket: GuestRun) -> None:
    _assert_same(qemu_fd, qemu_socket)


def test_host_state_is_what_the_guest_did(qemu_fd: GuestRun) -> None:
    """The guest's checks only see the guest's view; this is the host's."""
    s = qemu_fd.state
    assert s["t/hello"]["nlink"] == 2 and s["t/hard"]["sha256"] == s["t/hello"]["sha256"]
    assert s["t/big"]["size"] == 1288895
    assert (s["t/owned"]["uid"], s["t/owned"]["gid"]) == (1234, 2345)
    assert (s["t/ownlink"]["uid"], s["t/ownlink"]["gid"], s["t/ownlink"]["target"]) == (
        3456,
        4567,
        "owned",
    )
    assert s["t/modes"]["mode"] == "4750"
    assert s["t/d1"]["mode"] == "0700"
    assert s["t/trunc"]["size"] == 65536
    assert s["t/timed"]["mtime"] == 981173106 * 10**9
    assert s["t/chardev"]["rdev"] == (1, 3) and s["t/chardev"]["mode"] == "0640"
    assert s["t/fifo"]["type"] == 0o010000
    assert s["t/xattrs"]["xattrs"] == {
        "user.big": (b"v" * 1000).hex(),
        "user.comment": b"replaced".hex(),
    }
    for name in ("file", "sub2", "link", "fifo"):
        entry = s[f"t/home/{name}"]
        assert (entry["uid"], entry["gid"]) == (1000, 1000), name
    assert "t/rootonly/new" not in s
    assert "t/ghost" not in s and "t/r1" not in s and "t/r2" not in s and "t/ro_src" not in s
    assert sum(1 for p in s if p.startswith("t/many/")) == 189
    assert s["t/rd2/sub/f"]["size"] == len("inside\n")


def test_our_helper_socketpair(qemu_fd: GuestRun, ours_fd: GuestRun) -> None:
    _assert_clean_run(ours_fd)
    _assert_same(qemu_fd, ours_fd)


def test_our_helper_named_socket(qemu_fd: GuestRun, ours_socket: GuestRun) -> None:
    _assert_clean_run(ours_socket)
    _assert_same(qemu_fd, ours_socket)
