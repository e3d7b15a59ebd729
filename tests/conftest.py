"""Fixtures shared across the test suites. Append-only: several suites add here."""

from __future__ import annotations

import os

import pytest

#: QEMU 7.2's helper, from Debian bookworm's qemu-system-common.
QEMU_HELPER = "/usr/lib/qemu/virtfs-proxy-helper"


@pytest.fixture(scope="session")
def qemu_helper() -> str:
    """Path of QEMU's virtfs-proxy-helper; a missing helper FAILS the test, never skips it."""
    if not os.access(QEMU_HELPER, os.X_OK):
        pytest.fail(
            f"{QEMU_HELPER} is missing: install it: apt-get install -y qemu-system-common",
            pytrace=False,
        )
    return QEMU_HELPER
