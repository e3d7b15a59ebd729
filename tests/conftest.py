"""Fixtures shared across the test suites; what they are built on is in ``tests/helpers.py``."""

from __future__ import annotations

import pytest
from helpers import VECTORS, require_qemu_helper

from virtfs_proto.kit.recording import Vector


@pytest.fixture(scope="session")
def qemu_helper() -> str:
    """Path of QEMU's virtfs-proxy-helper; a missing helper FAILS the test, never skips it."""
    return require_qemu_helper()


@pytest.fixture(scope="session")
def vectors() -> list[Vector]:
    """The packaged golden vectors (the same list ``helpers.VECTORS`` parametrizes with)."""
    return VECTORS
