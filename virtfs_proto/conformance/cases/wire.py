"""Wire: the committed golden vectors (``spec/vectors/*.json``) replayed byte for byte.

Each vector becomes one case. It is replayed with :func:`virtfs_proto.vectors.run_steps`
(a fresh fixture export and a fresh helper, as it was recorded) and compared with
:func:`virtfs_proto.vectors.compare`: replies byte for byte outside the
machine-dependent ranges, the type of every passed descriptor (``fstat`` of
the fd received), how the helper ended, and the sentinel outside the export.

Two tolerances, both from the spec: a helper may end a fatal conversation with
any exit status (QEMU's exits 0, ours 1), only not by a signal; and a vector
that records one of QEMU's defects (its ``defect`` field) must *not* be
reproduced: the helper has to answer differently and stay alive.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ...launcher import Mode
from ...vectors import Vector, compare, load_vectors, run_steps
from ..model import CheckFailed, Context, case

VECTOR_DIR = Path(__file__).resolve().parents[3] / "spec" / "vectors"


def _replay(vector: Vector, ctx: Context) -> None:
    mode: Mode = "socket" if ctx.mode == "socket" else "fd"
    outcome, _ = run_steps(ctx.argv, vector.steps(), mode=mode, workdir=ctx.ws.rundir)
    recorded = vector
    got, want = outcome.returncode, vector.end.get("returncode")
    if got is not None and want is not None and got >= 0 and want >= 0:
        recorded = dataclasses.replace(vector, end={**vector.end, "returncode": got})
    problems = compare(recorded, outcome)
    if vector.defect is None:
        if problems:
            raise CheckFailed("; ".join(problems[:3]))
        return
    # The recording is QEMU's defect: reproducing it is the failure.
    if not problems:
        raise CheckFailed(f"reproduces QEMU's defect: {vector.defect}")
    if outcome.helper != "alive":
        raise CheckFailed(f"the helper ended ({outcome.returncode}): {vector.defect}")
    if any(ex.timed_out or ex.reply is None for ex in outcome.exchanges):
        raise CheckFailed("a request of this vector got no reply")
    if not outcome.sentinel_intact:
        raise CheckFailed("the sentinel file outside the export was changed")


def _register(vector: Vector) -> None:
    def replay(ctx: Context) -> None:
        _replay(vector, ctx)

    replay.__doc__ = vector.description
    case("wire", vector.name.split("-")[0].split("@")[0], name=vector.name)(replay)


VECTORS = load_vectors(VECTOR_DIR) if VECTOR_DIR.is_dir() else []
for _v in VECTORS:
    _register(_v)
