"""What several test suites share: the helpers under test and the golden vectors.

Import it as ``helpers`` (pytest puts ``tests/`` on ``sys.path``). The
fixtures built on it (``qemu_helper``, ``vectors``) live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import sys

import pytest

from virtfs_proto.kit import vectors_dir
from virtfs_proto.kit.recording import Vector, load_vectors
from virtfs_proto.launcher import QEMU_HELPER

#: The reference helper as an argv (the tests' own interpreter, no console script).
OUR_HELPER: list[str] = [sys.executable, "-m", "virtfs_proto.server"]

#: The packaged golden vectors, loaded once (parametrize needs them at import).
VECTORS: list[Vector] = load_vectors(vectors_dir())


def require_qemu_helper() -> str:
    """Path of QEMU's helper; a missing helper FAILS the test, never skips it.

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
