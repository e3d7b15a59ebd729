"""Wire: the golden vectors replayed byte for byte.

The vectors are the packaged ones (:func:`virtfs_proto.kit.vectors_dir`) or,
with ``virtfs-proto conformance --vectors DIR``, those ``virtfs-proto capture
--out DIR`` recorded. Each vector becomes one case. It is replayed with
:func:`virtfs_proto.kit.recording.run_steps` (a fresh fixture export and a fresh
helper, as it was recorded) and compared with
:func:`virtfs_proto.kit.recording.compare`: replies byte for byte outside the
machine-dependent ranges, the type of every passed descriptor (``fstat`` of
the fd received), how the helper ended, and the sentinel outside the export.

Vectors whose replies pass descriptors are then replayed once more on a
fixture of their own, and every descriptor is *used*: ``fstat`` must show a
regular file or directory of that export (not a sentinel), a regular file must
read (or, if opened for writing only, write) and a directory must list.

A rootless run (:func:`~..model.rootless_runner`) builds the fixture as the
invoker's: stat replies' owners are not compared, and a vector whose requests
name owners (uid/gid fields other than -1, or QEMU's root-owned T_OPEN
O_CREAT file) needs root ids (:data:`~..model.ROOT_IDS`): not applicable.

Two tolerances, both from the spec: a helper may end a fatal conversation with
any exit status (QEMU's exits 0, ours 1), only not by a signal; and a vector
that records one of QEMU's defects (its ``defect`` field) must *not* be
reproduced: the helper has to answer differently and stay alive.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Final

from .... import messages as m
from ....codec import decode_request, request_bytes_missing, request_frame_length
from ....errors import ProxyProtocolError
from ....kit import vectors_dir
from ....launcher import Mode
from ...fixture import build_fixture
from ...recording import Vector, compare, load_vectors, run_steps
from ..model import CASES, ROOT_IDS, CheckFailed, Context, Requirement, case
from ..session import HelperSession


def _replay(vector: Vector, ctx: Context) -> None:
    mode: Mode = "socket" if ctx.mode == "socket" else "fd"
    outcome, _ = run_steps(ctx.argv, vector.steps(), mode=mode, workdir=ctx.ws.rundir)
    recorded = vector.owners_ignored() if ctx.rootless else vector
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


def _frames(stream: bytes) -> list[tuple[bytes, m.Request]] | None:
    """Split a request stream into decoded frames (None if any frame is malformed)."""
    out = []
    while stream:
        if request_bytes_missing(stream):
            return None
        end = request_frame_length(stream)
        try:
            out.append((stream[:end], decode_request(stream[:end], lenient=True)))
        except ProxyProtocolError:
            return None
        stream = stream[end:]
    return out


def _use_fd(fd: int, inodes: set[tuple[int, int]], what: str) -> None:
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) not in inodes:
        raise CheckFailed(f"{what}: the passed fd is not an object of the export")
    if stat.S_ISDIR(st.st_mode):
        os.listdir(fd)
    elif stat.S_ISREG(st.st_mode):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
            os.write(fd, b"")
        else:
            os.pread(fd, 4096, 0)
    else:
        raise CheckFailed(f"{what}: the passed fd is a {stat.filemode(st.st_mode)[0]!r} file")


def _export_inodes(export: Path) -> set[tuple[int, int]]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(export):
        for name in [".", *dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            out.add((st.st_dev, st.st_ino))
    return out


def _replay_using_fds(vector: Vector, ctx: Context) -> None:
    frames = _frames(b"".join(bytes.fromhex(ex["request"]) for ex in vector.exchanges))
    if frames is None or any(ex.get("shutdown") for ex in vector.exchanges):
        return
    root = Path(tempfile.mkdtemp(prefix="fds-", dir=ctx.ws.rundir))
    try:
        fixture = build_fixture(root)
        helper = HelperSession(ctx.argv, fixture.export, ctx.mode, rundir=ctx.ws.rundir)
        try:
            for _, request in frames:
                helper.conn.send_request(request)
            helper.send_raw(b"".join(raw for raw, _ in frames))
            used = 0
            for _, request in frames:
                reply = helper.next_reply()
                if isinstance(reply, m.FdReply):
                    try:
                        _use_fd(reply.fd, _export_inodes(fixture.export), request.TYPE.name)
                        used += 1
                    finally:
                        os.close(reply.fd)
            ctx.notes.append(f"{used} passed fd(s) used")
        finally:
            helper.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


#: request fields that name an owner (-1 in them names none: "leave it")
_ID_FIELDS: Final = ("uid", "gid")
_NO_ID: Final = 0xFFFFFFFF


def _needs(vector: Vector) -> tuple[Requirement, ...]:
    """ROOT_IDS when a request names an owner (other than -1) or makes QEMU's
    root-owned file (T_OPEN with O_CREAT)."""
    frames = _frames(b"".join(bytes.fromhex(ex["request"]) for ex in vector.exchanges)) or []
    for _, request in frames:
        if any(getattr(request, f, _NO_ID) != _NO_ID for f in _ID_FIELDS):
            return (ROOT_IDS,)
        if isinstance(request, m.OpenRequest) and request.flags & os.O_CREAT:
            return (ROOT_IDS,)
    return ()


def _register(vector: Vector) -> None:
    passes_fds = vector.defect is None and any(ex["fds"] for ex in vector.exchanges)

    def replay(ctx: Context) -> None:
        _replay(vector, ctx)
        if passes_fds:
            _replay_using_fds(vector, ctx)

    replay.__doc__ = vector.description
    cls = vector.name.split("-")[0].split("@")[0]
    case("wire", cls, name=vector.name, needs=_needs(vector))(replay)


def use_vectors(directory: Path) -> list[Vector]:
    """Make the wire cases those of the vectors in ``directory`` (replacing any before).

    Returns the vectors; an empty list (no directory, no ``*.json`` in it) leaves
    no wire case, which the caller must treat as a broken kit, not a pass.
    """
    vectors = load_vectors(directory)
    CASES[:] = [c for c in CASES if c.group != "wire"]
    for vector in vectors:
        _register(vector)
    return vectors


use_vectors(vectors_dir())
