"""What users install holds what the checkout holds.

The golden vectors are package data: the same files, byte for byte, must be
found by the installed package (editable or not), in the wheel and in the
unpacked sdist; the sdist must hold every tracked file the suite, the docs and
the spec need. Builds both with ``python -m build`` (about 30 s).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parent.parent
VECTORS_IN_TREE = "virtfs_proto/kit/vectors/"
#: Tracked files a source distribution need not carry (CI glue, VCS settings).
NOT_IN_SDIST = (".ci/", ".gitignore")


def checkout_vectors() -> dict[str, bytes]:
    """The vector files of this source tree (a checkout, or an unpacked sdist), by name."""
    files = {p.name: p.read_bytes() for p in (ROOT / VECTORS_IN_TREE).glob("*.json")}
    assert files, f"no vectors in {ROOT / VECTORS_IN_TREE}"
    return files


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


def _one(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


def _one_name(names: list[str], suffix: str) -> str:
    (found,) = [n for n in names if n.endswith(suffix)]
    return found


def test_the_installed_package_finds_the_same_vectors(tmp_path: Path) -> None:
    # A fresh interpreter outside the tree, so the import is the installed package's.
    where = subprocess.run(
        [sys.executable, "-c", "from virtfs_proto.kit import vectors_dir; print(vectors_dir())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    found = {p.name: p.read_bytes() for p in Path(where).glob("*.json")}
    assert found == checkout_vectors()


def test_the_wheel_ships_the_vectors_and_the_type_marker(dist: Path) -> None:
    with zipfile.ZipFile(_one(dist, "*.whl")) as wheel:
        names = wheel.namelist()
        shipped = {
            n.removeprefix(VECTORS_IN_TREE): wheel.read(n)
            for n in names
            if n.startswith(VECTORS_IN_TREE) and n.endswith(".json")
        }
        license_text = wheel.read(_one_name(names, "/licenses/LICENSE"))
    assert shipped == checkout_vectors()
    assert "virtfs_proto/py.typed" in names
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert b"GNU GENERAL PUBLIC LICENSE" in license_text and b"Version 2" in license_text


def test_the_sdist_ships_the_vectors(dist: Path, tmp_path: Path) -> None:
    with tarfile.open(_one(dist, "*.tar.gz")) as sdist:
        sdist.extractall(tmp_path, filter="data")
    (tree,) = tmp_path.iterdir()
    unpacked = {p.name: p.read_bytes() for p in (tree / VECTORS_IN_TREE).glob("*.json")}
    assert unpacked == checkout_vectors()


def test_the_sdist_holds_every_tracked_file(dist: Path) -> None:
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=False
    )
    if tracked.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist): nothing to compare it with")
    wanted = {p for p in tracked.stdout.splitlines() if not p.startswith(NOT_IN_SDIST)}
    assert {"LICENSE", "README.md", "ARCHITECTURE.md", "spec/vectors.rst"} <= wanted
    with tarfile.open(_one(dist, "*.tar.gz")) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert sorted(wanted - members) == []
