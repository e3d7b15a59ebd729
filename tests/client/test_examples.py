"""The examples run: walk_export.py against QEMU's helper, qemu_cmdline.py printing and checking."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.qemu_helper
@pytest.mark.parametrize("mode", ["fd", "socket"])
def test_walk_export(qemu_helper: str, export: Path, mode: str) -> None:
    (export / "ln").symlink_to("sub/inner.txt")
    os.mknod(export / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.chown(export / "file.txt", 1000, 1001)
    out = run(
        str(EXAMPLES / "walk_export.py"), "--helper", qemu_helper, "--mode", mode, str(export)
    )
    lines = out.splitlines()
    assert re.match(r"drwx.{6} +\d+ +0 +0 +\d+ \S+ \S+ /$", lines[0])
    names = [line.rsplit(" ", 1)[-1] for line in lines if " -> " not in line]
    assert names[1:] == ["/file.txt", "/null", "/sub", "/sub/inner.txt"]
    assert any(line.endswith("/ln -> sub/inner.txt") and line.startswith("l") for line in lines)
    assert any(re.search(r"^-rw-r--r-- +1 +1000 +1001 +22 ", line) for line in lines)
    assert any(line.startswith("crw-------") and " 1, 3 " in line for line in lines)


def test_qemu_cmdline_prints_both_command_lines(export: Path) -> None:
    out = run(str(EXAMPLES / "qemu_cmdline.py"), str(export), "--tag", "hostshare")
    helper = re.search(r"virtfs-proxy-helper -f (\d+) -p (\S+) -n", out)
    qemu = re.search(
        r"-fsdev proxy,id=fs0,sock_fd=(\d+) -device virtio-9p-pci,fsdev=fs0,mount_tag=hostshare",
        out,
    )
    assert helper and qemu, out
    assert helper.group(2) == str(export)
    assert helper.group(1) != qemu.group(1)  # the two ends of one socketpair
    out = run(str(EXAMPLES / "qemu_cmdline.py"), str(export), "--mode", "socket")
    assert "-s /run/virtfs-proxy.sock -u" in out
    assert "-fsdev proxy,id=fs0,socket=/run/virtfs-proxy.sock" in out


@pytest.mark.qemu_helper
def test_qemu_cmdline_check_talks_over_the_qemu_end(qemu_helper: str, export: Path) -> None:
    out = run(str(EXAMPLES / "qemu_cmdline.py"), str(export), "--helper", qemu_helper, "--check")
    assert re.search(r"# check: helper answered over sock_fd=\d+: root mode 0o40755", out), out
