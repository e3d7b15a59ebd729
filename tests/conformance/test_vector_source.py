"""Where the wire cases come from: the packaged vectors, ``--vectors DIR``, or nowhere (fails)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest

import virtfs_proto
from virtfs_proto.kit import vectors_dir
from virtfs_proto.kit.capture import main as capture_main
from virtfs_proto.kit.conformance import main as conformance_main
from virtfs_proto.kit.conformance.cases import wire

OUR_HELPER = shlex.join(helpers.OUR_HELPER)


@pytest.fixture
def packaged_vectors_afterwards() -> Iterator[None]:
    """main() re-registers the wire cases from its vectors: give later tests the packaged ones."""
    yield
    wire.use_vectors(vectors_dir())


@pytest.mark.parametrize("where", ["empty", "missing"])
def test_no_vectors_in_dir_fails_the_run(
    where: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    packaged_vectors_afterwards: None,
) -> None:
    directory = tmp_path / where
    if where == "empty":
        directory.mkdir()
    rc = conformance_main(
        ["--helper", OUR_HELPER, "--only", "behaviour.*", "--vectors", str(directory)]
    )
    out = capsys.readouterr()
    assert rc == 2
    assert f"no golden vectors (*.json) in {directory}" in out.err
    assert "passed" not in out.out


def test_an_install_without_its_vectors_fails_the_run(tmp_path: Path) -> None:
    """A broken install (the package without kit/vectors) says where it looked and fails."""
    package = tmp_path / "virtfs_proto"
    shutil.copytree(
        Path(virtfs_proto.__file__).parent,
        package,
        ignore=shutil.ignore_patterns("vectors", "__pycache__"),
    )
    assert not (package / "kit" / "vectors").exists()
    out = subprocess.run(
        [sys.executable, "-m", "virtfs_proto.cli", "conformance", "--helper", OUR_HELPER],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"no golden vectors (*.json) in {package / 'kit' / 'vectors'}" in out.stderr
    assert "reinstall" in out.stderr
    assert "passed" not in out.stdout


@pytest.mark.root
@pytest.mark.qemu_helper
def test_conformance_replays_what_capture_recorded(
    qemu_helper: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    packaged_vectors_afterwards: None,
) -> None:
    recorded = tmp_path / "vectors"
    assert capture_main(["--helper", qemu_helper, "--out", str(recorded), "--only", "chmod"]) == 0
    names = sorted(p.stem for p in recorded.glob("*.json"))
    assert "chmod-enoent" in names and len(names) >= 3
    # QEMU's -ENOENT becomes -EACCES in DIR only: a replay of the packaged copy would pass.
    tampered = recorded / "chmod-enoent.json"
    data = json.loads(tampered.read_text())
    assert data["exchanges"][0]["reply"] == "0100000004000000feffffff"
    data["exchanges"][0]["reply"] = "0100000004000000f3ffffff"
    tampered.write_text(json.dumps(data))
    report = tmp_path / "report.json"
    rc = conformance_main(
        [
            "--helper",
            OUR_HELPER,
            "--mode",
            "fd",
            "--only",
            "wire.*",
            "--vectors",
            str(recorded),
            "--json",
            str(report),
        ]
    )
    capsys.readouterr()
    results = json.loads(report.read_text())["results"]
    assert sorted(r["name"] for r in results) == [f"wire.{name}" for name in names]
    assert [r["name"] for r in results if r["verdict"] == "fail"] == ["wire.chmod-enoent"]
    assert rc == 1
