"""Fixtures shared across the test suites; what they are built on is in ``tests/helpers.py``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ciuser
import pytest
from helpers import VECTORS, require_qemu_helper

from virtfs_proto.kit.recording import Vector


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Without root (the non-root CI stage), a ``root``-marked test and one that runs
    QEMU's helper (it chroots) skip with that reason; as root they run as ever."""
    if os.geteuid() == 0:
        return
    if item.get_closest_marker("root") is not None:
        pytest.skip(f"needs root (running as uid {os.geteuid()})")
    if "qemu_helper" in getattr(item, "fixturenames", ()):
        pytest.skip(f"runs QEMU's helper, which needs root (running as uid {os.geteuid()})")


@pytest.fixture(scope="session")
def qemu_helper() -> str:
    """Path of QEMU's virtfs-proxy-helper; a missing helper FAILS the test, never skips it."""
    return require_qemu_helper()


@pytest.fixture(scope="session")
def vectors() -> list[Vector]:
    """The packaged golden vectors (the same list ``helpers.VECTORS`` parametrizes with)."""
    return VECTORS


@pytest.fixture(scope="session")
def ci_user_python() -> Iterator[str]:
    """An interpreter the CI's non-root user (:mod:`ciuser`) can run, the project
    importable; a missing user FAILS the test (scripts/bootstrap creates it)."""
    why = ciuser.missing()
    if why is not None:
        pytest.fail(why, pytrace=False)
    scratch = Path(tempfile.mkdtemp(prefix="virtfs-ciuser-"))
    os.chmod(scratch, 0o755)  # the user reaches the venv made inside
    try:
        yield ciuser.user_python(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
