"""The committed golden vectors: they decode, re-encode byte-exactly, and still
describe QEMU's helper (a fresh replay agrees outside machine-dependent ranges)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import VECTORS

from virtfs_proto import jsonform
from virtfs_proto.codec import decode_request, encode_request
from virtfs_proto.connection import (
    NEED_DATA,
    ClientConnection,
    MalformedRequest,
    ReplyReceived,
    ServerConnection,
)
from virtfs_proto.constants import COUNTED_NUL_FIELDS, REQUEST_TYPES, MessageType
from virtfs_proto.errors import RemoteProtocolError
from virtfs_proto.kit import vectors_dir
from virtfs_proto.kit.capture import scenarios
from virtfs_proto.kit.recording import Vector, compare, masked, run_steps
from virtfs_proto.messages import FdReply

VECTOR_DIR = vectors_dir()


def _exchanges() -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    return [(f"{v.name}#{i}", ex) for v in VECTORS for i, ex in enumerate(v.exchanges)]


def _decodable(ex: dict) -> bool:  # type: ignore[type-arg]
    request = ex["decoded"].get("request", {})
    return "type" in request


def test_the_vectors_cover_every_request_type() -> None:
    assert len(VECTORS) >= 100
    seen = {
        ex["decoded"]["request"]["type"]
        for v in VECTORS
        for ex in v.exchanges
        if "request" in ex["decoded"] and "type" in ex["decoded"]["request"]
    }
    assert seen == {t.name for t in REQUEST_TYPES}
    for v in VECTORS:
        assert v.source["helper"] and v.source.get("sha256"), v.name
        assert v.byteorder == "little"


@pytest.mark.parametrize(("name", "ex"), _exchanges(), ids=[n for n, _ in _exchanges()])
def test_stored_decoding_is_what_the_codec_says(name: str, ex: dict) -> None:  # type: ignore[type-arg]
    stored = ex["decoded"]
    frame = stored["request"]
    # Re-derive from the hex: the JSON form must be what the definitions say.
    if "type" in frame:
        request_hex = jsonform.encode_exchange({"request": frame})["request"]
        again = jsonform.decode_exchange(
            request_hex, ex["reply"] if "reply" in stored else None, lenient=True
        )
        assert again == stored


@pytest.mark.parametrize(
    ("name", "ex"),
    [(n, e) for n, e in _exchanges() if _decodable(e) and e["reply"] is not None],
    ids=[n for n, e in _exchanges() if _decodable(e) and e["reply"] is not None],
)
def test_valid_exchanges_reencode_byte_exactly(name: str, ex: dict) -> None:  # type: ignore[type-arg]
    decoded = ex["decoded"]
    out = jsonform.encode_exchange(decoded)
    request = decode_request(bytes.fromhex(out["request"]), lenient=True)
    if name.startswith(("frame-trailing-bytes#0", "frame-max-size#0")):
        # QEMU ignores the padding; the canonical encoding has none.
        assert encode_request(request).hex() == out["request"]
    elif name.startswith("frame-pipelined"):
        # One write carried all three frames; each reply decodes against its own.
        burst = next(v for v in VECTORS if v.name == "frame-pipelined").exchanges[0]["request"]
        assert out["request"] in burst
    else:
        assert out["request"] == ex["request"]
    assert out["reply"] == ex["reply"]


@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "byte-at-a-time"])
@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_server_connection_reads_every_request_stream(vector: Vector, chunk: int | None) -> None:
    stream = b"".join(bytes.fromhex(ex["request"]) for ex in vector.exchanges)
    conn = ServerConnection(lenient=True)
    events: list[object] = []
    error: RemoteProtocolError | None = None
    pieces = [stream] if chunk is None else [stream[i : i + 1] for i in range(len(stream))]
    try:
        for piece in pieces:
            conn.receive_data(piece)
            while (ev := conn.next_event()) is not NEED_DATA:
                events.append(ev)
                conn.send_reply(_any_error(ev))
    except RemoteProtocolError as exc:
        error = exc
    expected = [ex["decoded"]["request"] for ex in vector.exchanges if ex["expect"]]
    got = [
        jsonform.request_to_json(e) if not isinstance(e, MalformedRequest) else "malformed"
        for e in events
    ]
    assert len(got) == len(expected)
    for g, want in zip(got, expected, strict=True):
        assert g == ("malformed" if "error" in want else want)
    fatal = vector.end["helper"] == "exited" and vector.defect is None
    unanswered_eof = any(ex["shutdown"] for ex in vector.exchanges)
    if fatal and not unanswered_eof:
        assert error is not None, "QEMU hung up on this stream; the codec must refuse it too"
    else:
        assert error is None


def _any_error(ev: object) -> object:
    from virtfs_proto.messages import ErrorReply

    return ErrorReply(5)


@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "byte-at-a-time"])
@pytest.mark.parametrize(
    "vector",
    [v for v in VECTORS if all(_decodable(e) or not e["request"] for e in v.exchanges)],
    ids=lambda v: v.name,
)
def test_client_connection_reads_every_reply_stream(vector: Vector, chunk: int | None) -> None:
    conn = ClientConnection(lenient=True)
    replies: list[tuple[bytes, int]] = []
    for ex in vector.exchanges:
        decoded = ex["decoded"]
        if "type" in decoded["request"]:
            conn.send_request(jsonform.request_from_json(decoded["request"]))
        if ex["reply"] is not None and ex["expect"]:
            replies.append((bytes.fromhex(ex["reply"]), ex["fds"]))
    got: list[ReplyReceived] = []
    fake_fd = 1000
    for data, nfds in [*replies, (b"", 0)][:-1]:
        pieces = [data] if chunk is None else [data[i : i + 1] for i in range(len(data))]
        for i, piece in enumerate(pieces):
            fds = list(range(fake_fd, fake_fd + nfds)) if i == 0 else []
            conn.receive_data(piece, fds)
            while isinstance(ev := conn.next_event(), ReplyReceived):
                got.append(ev)
    want = [ex["decoded"]["reply"] for ex in vector.exchanges if ex["reply"] and ex["expect"]]
    assert [jsonform.reply_to_json(e.reply) for e in got] == want
    for e in got:
        if isinstance(e.reply, FdReply):
            assert e.reply.fd == fake_fd


def test_trailing_data_after_a_vector_is_the_next_frame() -> None:
    stream = b"".join(
        bytes.fromhex(ex["request"]) for v in VECTORS[:20] for ex in v.exchanges if _decodable(ex)
    )
    conn = ServerConnection(lenient=True)
    conn.receive_data(stream)
    count = 0
    while (ev := conn.next_event()) is not NEED_DATA:
        count += 1
        conn.send_reply(_any_error(ev))
    assert conn.buffered == 0 and count > 20


def test_negative_vectors_name_their_error_kind() -> None:
    kinds = {
        v.name: ex["decoded"]["request"]["error"]["kind"]
        for v in VECTORS
        for ex in v.exchanges
        if "error" in ex["decoded"].get("request", {})
    }
    assert kinds["frame-short-payload"] == "TruncatedPayload"
    assert kinds["frame-oversize"] in ("FrameTooLarge", "TruncatedPayload")
    assert kinds["frame-unknown-type-22"] == "UnknownMessageType"
    for name, kind in kinds.items():
        assert kind in {
            "TruncatedPayload",
            "TrailingBytes",
            "FrameTooLarge",
            "UnknownMessageType",
        }, name


@pytest.mark.qemu_helper
@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_a_fresh_capture_agrees_with_the_committed_vector(
    qemu_helper: str, vector: Vector
) -> None:
    outcome, _ = run_steps([qemu_helper], vector.steps(), mode=vector.mode)
    assert compare(vector, outcome) == []


def test_message_types_in_vectors_are_known() -> None:
    for v in VECTORS:
        for ex in v.exchanges:
            t = ex["decoded"]["request"].get("type")
            if t is not None:
                assert MessageType[t] in REQUEST_TYPES


@pytest.mark.qemu_helper
def test_the_capture_command_reproduces_the_committed_files(
    qemu_helper: str, tmp_path: Path
) -> None:
    """``virtfs-proto capture`` itself, end to end: same files, same bytes outside
    the machine-dependent ranges, same decoded forms there."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtfs_proto.cli",
            "capture",
            "--helper",
            qemu_helper,
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    fresh = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    committed = {p.name: json.loads(p.read_text()) for p in VECTOR_DIR.glob("*.json")}
    assert sorted(fresh) == sorted(committed)
    for name, old in committed.items():
        new = fresh[name]
        assert new["end"] == old["end"], name
        assert new["source"] == old["source"], name
        for a, b in zip(old["exchanges"], new["exchanges"], strict=True):
            assert a["request"] == b["request"], name
            assert a["fd_types"] == b["fd_types"], name
            assert a["machine_dependent"] == b["machine_dependent"], name
            if a["reply"] is None or b["reply"] is None:
                assert a["reply"] == b["reply"], name
                continue
            ranges = a["machine_dependent"]
            ra, rb = bytes.fromhex(a["reply"]), bytes.fromhex(b["reply"])
            assert len(ra) == len(rb), name
            assert masked(ra, ranges) == masked(rb, ranges), name


def test_capture_scenarios_send_paths_by_the_counted_nul_table() -> None:
    """Every path a scenario sends carries QEMU's counted NUL exactly where
    ``COUNTED_NUL_FIELDS`` says, but for the scenario that tests its absence."""
    deliberate = {("lstat-no-nul", "path")}
    checked = 0
    for sc in scenarios():
        for st in sc.steps:
            try:
                request = decode_request(st.request)
            except RemoteProtocolError:
                continue  # a framing scenario's garbage
            for f in dataclasses.fields(request):
                value = getattr(request, f.name)
                if f.name in ("name", "value", "target") or not isinstance(value, bytes):
                    continue  # xattr names and values, symlink targets: never paths
                checked += 1
                counted = (request.TYPE, f.name) in COUNTED_NUL_FIELDS
                if (sc.name, f.name) in deliberate:
                    counted = not counted
                assert value.endswith(b"\0") == counted, (sc.name, f.name, value)
    assert checked > 100
