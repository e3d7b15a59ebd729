"""Fixtures shared across the test suites. Append-only: several suites add here."""

from __future__ import annotations

import os

import pytest

#: QEMU 7.2's helper, from Debian bookworm's qemu-system-common.
QEMU_HELPER = "/usr/lib/qemu/virtfs-proxy-helper"


@pytest.fixture(scope="session")
def qemu_helper() -> str:
    """Path of QEMU's virtfs-proxy-helper; a missing helper FAILS the test, never skips it.

    ``VIRTFS_QEMU_HELPER`` overrides the path (the suite uses it to check
    this very failure).
    """
    path = os.environ.get("VIRTFS_QEMU_HELPER", QEMU_HELPER)
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{path} is missing: install it: apt-get install -y qemu-system-common",
            pytrace=False,
        )
    return path
