"""Fixtures for the client tests: an export directory and QEMU's helper serving it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtfs_proto.client import ProxyClient
from virtfs_proto.kit.fixture import Node, build_fixture
from virtfs_proto.launcher import Helper, spawn_helper

#: The client tests' export: a file and a subdirectory.
CLIENT_TREE = [
    Node("file.txt", "file", b"hello from the export\n"),
    Node("sub", "dir"),
    Node("sub/inner.txt", "file", b"inner\n"),
]


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """:data:`CLIENT_TREE` in ``tmp_path/export``, the sentinel *outside* it in
    ``tmp_path/outside/secret.txt``."""
    return build_fixture(tmp_path, tree=lambda _: CLIENT_TREE, pinned_time=None).export


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
