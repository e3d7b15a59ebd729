"""Fixtures for the client tests: an export directory and QEMU's helper serving it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtfs_proto.client import ProxyClient
from virtfs_proto.launcher import Helper, spawn_helper


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """An export with a file, a subdirectory and a secret *outside* it."""
    root = tmp_path / "export"
    root.mkdir()
    (root / "file.txt").write_bytes(b"hello from the export\n")
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (tmp_path / "outside_secret.txt").write_bytes(b"SECRET\n")
    return root


@pytest.fixture
def running(qemu_helper: str, export: Path) -> Iterator[Helper]:
    """QEMU's helper on ``export`` over a socketpair (fd mode)."""
    if os.geteuid() != 0:
        pytest.fail("QEMU's helper needs root (chroot, capabilities)", pytrace=False)
    with spawn_helper([qemu_helper], export, "fd", timeout=10) as helper:
        yield helper


@pytest.fixture
def client(running: Helper) -> ProxyClient:
    """A client connected to QEMU's helper."""
    return running.client
