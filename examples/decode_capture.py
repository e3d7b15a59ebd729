"""Decode a captured exchange with ``virtfs-proto decode``.

Reads the exchanges of one golden vector (default: the packaged
``virtfs_proto/kit/vectors/lstat-file.json``), feeds them to ``virtfs-proto
decode`` as JSON Lines of ``{"request": HEX, "reply": HEX}`` and prints each
decoded exchange, one field per line.

    python examples/decode_capture.py [VECTOR.json]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from virtfs_proto.kit import vectors_dir

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    vector = Path(argv[0]) if argv else vectors_dir() / "lstat-file.json"
    data = json.loads(vector.read_text())
    lines = "".join(
        json.dumps({"request": ex["request"], "reply": ex["reply"]}) + "\n"
        for ex in data["exchanges"]
        if ex["reply"] is not None
    )
    proc = subprocess.run(
        [sys.executable, "-m", "virtfs_proto.cli", "decode", "--lenient"],
        input=lines,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    sys.stderr.write(proc.stderr)
    for line in proc.stdout.splitlines():
        exchange = json.loads(line)
        for part in ("request", "reply"):
            print(f"{part}:")
            for key, value in exchange[part].items():
                print(f"  {key:14} {value}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
