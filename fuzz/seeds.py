"""What both harnesses share: seeding a corpus from the golden vectors, and their main()."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from virtfs_proto.kit import vectors_dir


def vectors() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Each golden vector's name and exchanges."""
    for path in sorted(vectors_dir().glob("*.json")):
        yield path.stem, json.loads(path.read_text())["exchanges"]


def main(test_one_input: Callable[[bytes], None], seeds: Callable[[], dict[str, bytes]]) -> None:
    """``--write-seeds DIR`` writes ``seeds()`` there; anything else runs libFuzzer."""
    import atheris

    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        out = Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        corpus = seeds()
        for name, data in corpus.items():
            (out / name).write_bytes(data)
        print(f"{len(corpus)} seeds written to {out}")
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
