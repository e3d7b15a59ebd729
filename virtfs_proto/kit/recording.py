"""Golden vectors: the data form, and the runner that records or replays them.

A vector is one scenario against a fresh :mod:`~virtfs_proto.kit.fixture`
export: a list of exchanges (request bytes out, the helper's raw reply
bytes and passed descriptors back) and how the helper ended. The same
runner captures vectors from QEMU's helper and replays them against any
helper; comparison skips the byte ranges marked machine-dependent (inode
numbers, devices, times, file system figures). The JSON format is
specified in ``spec/vectors.rst``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .. import messages as m
from ..codec import (
    codecs_for,
    decode_request,
    encode_request,
    request_bytes_missing,
    request_frame_length,
    success_layout,
)
from ..constants import HEADER_SIZE, REPLY_KIND, ByteOrder, MessageType, ReplyKind
from ..errors import ProxyProtocolError, TransportTimeout
from ..jsonform import decode_exchange
from ..launcher import Mode, spawn_helper
from ..layouts import layouts_for
from .fixture import Fixture, build_fixture, sentinel_state
from .raw import RawReply, read_until_eof, recv_reply_raw

#: How long one reply may take before the helper counts as hung.
REPLY_TIMEOUT: Final = 3.0

#: Fields of each reply layout whose bytes depend on the machine or the moment.
MACHINE_DEPENDENT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "stat": (
        "st_dev",
        "st_ino",
        "st_blksize",
        "st_blocks",
        "st_atim_sec",
        "st_atim_nsec",
        "st_mtim_sec",
        "st_mtim_nsec",
        "st_ctim_sec",
        "st_ctim_nsec",
    ),
    "statfs": (
        "f_type",
        "f_bsize",
        "f_blocks",
        "f_bfree",
        "f_bavail",
        "f_files",
        "f_ffree",
        "f_fsid0",
        "f_fsid1",
        "f_namelen",
        "f_frsize",
    ),
    # FS_IOC_GETVERSION is per inode, and QEMU's helper leaks stack bytes
    # into the high half; on file systems without it the value is 0.
    "version": ("version",),
}
#: A stat reply's owner: root's in a vector, the invoker's in a rootless replay.
OWNER_FIELDS: Final = ("st_uid", "st_gid")


@dataclass(frozen=True)
class Step:
    """One thing the client does: send bytes, maybe close its write side, read a reply."""

    request: bytes
    #: shape of the reply to read; None: expect the helper to close without one
    expect: ReplyKind | None
    #: shut down our write side after sending (the helper sees EOF)
    shutdown: bool = False


def step(request: m.Request, *, byteorder: ByteOrder | None = None) -> Step:
    """A step sending a well-formed request and reading its reply."""
    return Step(encode_request(request, byteorder=byteorder), REPLY_KIND[request.TYPE])


def raw_step(data: bytes, expect: ReplyKind | None = None, *, shutdown: bool = False) -> Step:
    """A step sending arbitrary bytes."""
    return Step(data, expect, shutdown)


@dataclass
class Exchange:
    """What one step sent and got back."""

    request: bytes
    reply: bytes | None
    fds: int = 0
    fd_types: list[str] = field(default_factory=list)
    eof: bool = False
    timed_out: bool = False
    shutdown: bool = False


@dataclass
class Outcome:
    """A whole scenario's result."""

    exchanges: list[Exchange]
    helper: str  #: "alive" (still serving when we hung up) or "exited"
    returncode: int | None
    sentinel_intact: bool
    stderr: str


def _fd_type(fd: int) -> str:
    mode = os.fstat(fd).st_mode
    for test, name in ((stat.S_ISREG, "regular"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return f"other:{stat.filemode(mode)}"


def run_steps(
    argv: Sequence[str], steps: Sequence[Step], *, mode: Mode = "fd", workdir: Path | None = None
) -> tuple[Outcome, Fixture]:
    """Run a scenario against a fresh fixture and a freshly started helper."""
    root = Path(tempfile.mkdtemp(prefix="virtfs-vec-", dir=workdir))
    try:
        return _run_steps_in(root, argv, steps, mode)
    finally:  # also when interrupted (Ctrl-C, SIGTERM)
        shutil.rmtree(root, ignore_errors=True)


def _run_steps_in(
    root: Path, argv: Sequence[str], steps: Sequence[Step], mode: Mode
) -> tuple[Outcome, Fixture]:
    fixture = build_fixture(root)
    before = sentinel_state(fixture)
    exchanges: list[Exchange] = []
    # We own the named socket: root, as when libvirt runs the helper for a root
    # QEMU; a rootless run's user, the only owner a rootless helper can give it.
    helper = spawn_helper(argv, fixture.export, mode, timeout=REPLY_TIMEOUT)
    try:
        transport = helper.client.transport
        for s in steps:
            ex = Exchange(s.request, None, shutdown=s.shutdown)
            exchanges.append(ex)
            try:
                transport.send(s.request)
                if s.shutdown:
                    transport.shutdown_write()
            except ProxyProtocolError:
                ex.eof = True
                break
            try:
                raw: RawReply = (
                    recv_reply_raw(transport, s.expect)
                    if s.expect is not None
                    else read_until_eof(transport)
                )
            except TransportTimeout:
                ex.timed_out = True
                break
            try:
                ex.reply = raw.data if raw.data else None
                ex.eof = raw.eof
                ex.fds = len(raw.fds)
                ex.fd_types = [_fd_type(fd) for fd in raw.fds]
            finally:
                raw.close_fds()
            if raw.eof:
                break
        # A helper that ended the conversation gets a moment to exit.
        if any(ex.eof for ex in exchanges):
            with contextlib.suppress(subprocess.TimeoutExpired):
                helper.process.wait(timeout=3)
        returncode = helper.process.poll()
    finally:
        helper.close()
    intact = sentinel_state(fixture) == before
    state = "exited" if returncode is not None else "alive"
    return Outcome(exchanges, state, returncode, intact, helper.stderr), fixture


def _field_ranges(layout: str, byteorder: ByteOrder | None) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    offset = HEADER_SIZE
    for sub in layouts_for(byteorder).replies[layout].subcons:
        size = sub.sizeof()
        out[sub.name] = (offset, offset + size)
        offset += size
    return out


def machine_dependent_ranges(
    request_bytes: bytes, reply: bytes | None, byteorder: ByteOrder | None = None
) -> list[tuple[int, int, str]]:
    """Byte ranges of ``reply`` that legitimately differ between machines or runs."""
    if not reply or len(reply) < HEADER_SIZE:
        return []
    try:
        request = decode_request(request_bytes, byteorder=byteorder, lenient=True)
    except ProxyProtocolError:
        return []
    if REPLY_KIND[request.TYPE] is not ReplyKind.RESPONSE:
        return []
    (reply_type,) = codecs_for(byteorder).int32.unpack_from(reply, 0)
    if reply_type != MessageType.T_SUCCESS:
        return []
    layout = success_layout(request)
    names = MACHINE_DEPENDENT_FIELDS.get(layout, ())
    if not names:
        return []
    ranges = _field_ranges(layout, byteorder)
    chosen = [(*ranges[n], n) for n in names]
    if layout == "stat":
        # A directory's size and link count depend on the file system.
        mode_start, mode_end = ranges["st_mode"]
        st_mode = int.from_bytes(reply[mode_start:mode_end], byteorder or "little")
        if stat.S_ISDIR(st_mode):
            chosen += [(*ranges["st_size"], "st_size"), (*ranges["st_nlink"], "st_nlink")]
    return sorted(chosen)


# -- the JSON form of a vector ---------------------------------------------


@dataclass
class Vector:
    """A recorded scenario, as stored in ``<name>.json`` (the packaged ones: ``kit/vectors/``)."""

    name: str
    description: str
    mode: Mode
    byteorder: ByteOrder
    source: dict[str, Any]
    exchanges: list[dict[str, Any]]
    end: dict[str, Any]
    #: why QEMU's recorded behaviour must not be copied (None: every helper must match)
    defect: str | None = None

    def steps(self) -> list[Step]:
        """The steps that replay this vector."""
        out = []
        for ex in self.exchanges:
            kind = ex["expect"]
            out.append(
                Step(
                    bytes.fromhex(ex["request"]),
                    ReplyKind(kind) if kind else None,
                    bool(ex.get("shutdown")),
                )
            )
        return out

    def owners_ignored(self) -> Vector:
        """This vector as a rootless run compares it: its fixture is the invoker's, not
        root's, so every stat reply's ``st_uid``/``st_gid`` join the ignored ranges."""
        owners = [
            [*_field_ranges("stat", self.byteorder)[name], name] for name in OWNER_FIELDS
        ]
        exchanges = []
        for ex in self.exchanges:
            ranges = ex["machine_dependent"]
            if any(r[2] == "st_ino" for r in ranges):  # a stat reply (st_ino is always there)
                ex = {**ex, "machine_dependent": sorted([*ranges, *owners])}
            exchanges.append(ex)
        return dataclasses.replace(self, exchanges=exchanges)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "mode": self.mode,
            "byteorder": self.byteorder,
            "defect": self.defect,
            "source": self.source,
            "exchanges": self.exchanges,
            "end": self.end,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Vector:
        return cls(
            name=obj["name"],
            description=obj["description"],
            mode=obj["mode"],
            byteorder=obj["byteorder"],
            source=obj["source"],
            exchanges=obj["exchanges"],
            end=obj["end"],
            defect=obj.get("defect"),
        )


def record(
    name: str,
    description: str,
    steps: Sequence[Step],
    outcome: Outcome,
    *,
    mode: Mode,
    source: dict[str, Any],
    byteorder: ByteOrder,
    defect: str | None = None,
) -> Vector:
    """Turn a run's outcome into a vector."""
    exchanges = []
    sent = b""  # the request stream, cut into frames as replies claim them
    for s, ex in zip(steps, outcome.exchanges, strict=False):
        request_hex = ex.request.hex()
        reply_hex = ex.reply.hex() if ex.reply is not None else None
        sent += ex.request
        frame, sent = _next_frame(sent, byteorder)
        exchanges.append(
            {
                "request": request_hex,
                "expect": s.expect.value if s.expect else None,
                "shutdown": s.shutdown,
                "reply": reply_hex,
                "fds": ex.fds,
                "fd_types": ex.fd_types,
                "eof": ex.eof,
                "timed_out": ex.timed_out,
                "decoded": decode_exchange(
                    frame.hex(), reply_hex if s.expect else None, byteorder=byteorder, lenient=True
                ),
                "machine_dependent": [
                    list(r) for r in machine_dependent_ranges(frame, ex.reply, byteorder)
                ],
            }
        )
    end = {"helper": outcome.helper, "returncode": outcome.returncode}
    if outcome.returncode is not None and outcome.returncode < 0:
        end["signal"] = signal.Signals(-outcome.returncode).name
    return Vector(name, description, mode, byteorder, source, exchanges, end, defect)


def _next_frame(stream: bytes, byteorder: ByteOrder) -> tuple[bytes, bytes]:
    """Split the first whole request frame off ``stream`` (all of it if none is whole).

    Pipelined steps send several frames at once and then read one reply per
    frame; each reply is decoded against the frame it answers.
    """
    if request_bytes_missing(stream, byteorder=byteorder):
        return stream, b""
    end = request_frame_length(stream, byteorder=byteorder)
    return stream[:end], stream[end:]


def load_vectors(directory: Path) -> list[Vector]:
    """Every vector in ``directory``, sorted by name."""
    return [Vector.from_json(json.loads(p.read_text())) for p in sorted(directory.glob("*.json"))]


def masked(data: bytes, ranges: Sequence[Sequence[Any]]) -> bytes:
    """``data`` with the machine-dependent ``ranges`` zeroed, for comparison."""
    buf = bytearray(data)
    for start, end, _ in ranges:
        buf[start:end] = bytes(min(end, len(buf)) - min(start, len(buf)))
    return bytes(buf)


def compare(vector: Vector, outcome: Outcome) -> list[str]:
    """Differences between a replay and the recorded vector (empty: they agree)."""
    problems: list[str] = []
    for i, ex in enumerate(vector.exchanges):
        if i >= len(outcome.exchanges):
            problems.append(f"exchange {i}: never sent (the conversation ended earlier)")
            break
        got = outcome.exchanges[i]
        if got.timed_out and not ex["timed_out"]:
            problems.append(f"exchange {i}: no reply within {REPLY_TIMEOUT} s")
            continue
        want = bytes.fromhex(ex["reply"]) if ex["reply"] is not None else None
        ranges = ex["machine_dependent"]
        if want is None or got.reply is None:
            if want != got.reply:
                problems.append(
                    f"exchange {i}: reply {got.reply.hex() if got.reply else None},"
                    f" expected {ex['reply']}"
                )
        elif len(want) != len(got.reply) or masked(want, ranges) != masked(got.reply, ranges):
            problems.append(
                f"exchange {i}: reply {got.reply.hex()}, expected {ex['reply']}"
                f" (machine-dependent ranges {[tuple(r) for r in ranges]} ignored)"
            )
        if got.fd_types != ex["fd_types"]:
            problems.append(f"exchange {i}: passed fds {got.fd_types}, expected {ex['fd_types']}")
    if outcome.helper != vector.end["helper"]:
        problems.append(
            f"helper {outcome.helper} (returncode {outcome.returncode}),"
            f" expected {vector.end['helper']} (returncode {vector.end['returncode']})"
        )
    elif outcome.helper == "exited" and outcome.returncode != vector.end["returncode"]:
        problems.append(
            f"helper exited with {outcome.returncode}, expected {vector.end['returncode']}"
        )
    if not outcome.sentinel_intact:
        problems.append("the sentinel file outside the export was changed")
    return problems
