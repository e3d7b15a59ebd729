"""``virtfs-proto decode`` / ``encode``: JSON Lines in, JSON Lines out, round trip exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from helpers import VECTORS

import virtfs_proto
from virtfs_proto import messages as m
from virtfs_proto.codec import encode_reply, encode_request
from virtfs_proto.jsonform import request_from_json
from virtfs_proto.kit import vectors_dir


def run(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtfs_proto.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def exchange_lines() -> list[dict[str, str]]:
    """Every request/reply pair of the committed vectors that has both."""
    lines = []
    for v in VECTORS:
        for ex in v.exchanges:
            if "type" in ex["decoded"]["request"] and ex["reply"] and ex["expect"]:
                # Re-encode the request on its own: pipelined steps sent several.
                lines.append(
                    {
                        "request": _canonical_request_hex(ex["decoded"]["request"]),
                        "reply": ex["reply"],
                    }
                )
    return lines


def _canonical_request_hex(obj: dict[str, object]) -> str:
    return encode_request(request_from_json(obj)).hex()


def test_decode_then_encode_is_the_identity_on_every_vector_exchange() -> None:
    lines = exchange_lines()
    assert len(lines) > 100
    decoded = run(["decode"], "".join(json.dumps(x) + "\n" for x in lines))
    assert decoded.returncode == 0, decoded.stderr
    objs = [json.loads(line) for line in decoded.stdout.splitlines()]
    assert len(objs) == len(lines)
    assert all("error" not in o["request"] and "error" not in o["reply"] for o in objs)
    encoded = run(["encode"], decoded.stdout)
    assert encoded.returncode == 0, encoded.stderr
    assert [json.loads(line) for line in encoded.stdout.splitlines()] == lines


def test_decode_shape_names_fields_as_the_definitions_do() -> None:
    req = m.LgetxattrRequest(0, b"/f\0", b"user.x")
    line = {
        "request": encode_request(req).hex(),
        "reply": encode_reply(req, m.XattrSizeReply(9)).hex(),
    }
    out = run(["decode"], json.dumps(line) + "\n")
    assert json.loads(out.stdout) == {
        "request": {"type": "T_LGETXATTR", "size": 0, "path": "2f6600", "name": "757365722e78"},
        "reply": {"kind": "xattr_size", "size": 9},
    }
    err = {
        "request": encode_request(m.LstatRequest(b"/nope")).hex(),
        "reply": encode_reply(m.LstatRequest(b"/nope"), m.ErrorReply(2)).hex(),
    }
    out = run(["decode"], json.dumps(err) + "\n")
    assert json.loads(out.stdout)["reply"] == {"kind": "error", "errno": 2, "name": "ENOENT"}


def test_fd_reply_decodes_without_the_descriptor() -> None:
    req = m.OpenRequest(b"/f\0", os.O_RDONLY)
    line = {"request": encode_request(req).hex(), "reply": "ffffff7f"}
    out = run(["decode"], json.dumps(line) + "\n")
    assert json.loads(out.stdout)["reply"] == {"kind": "fd"}
    back = run(["encode"], out.stdout)
    assert json.loads(back.stdout) == line


@pytest.mark.parametrize(
    ("request_hex", "kind"),
    [
        ("1600000000000000", "UnknownMessageType"),
        ("0800000001000100", "FrameTooLarge"),
        ("08000000040000000a00", "TruncatedPayload"),
        ("08000000040000000a006162", "TruncatedPayload"),
        ("080000000500000002002f00ff", "TrailingBytes"),
        ("zz", "BadHex"),
    ],
)
def test_undecodable_parts_become_typed_errors(request_hex: str, kind: str) -> None:
    out = run(["decode"], json.dumps({"request": request_hex, "reply": "00"}) + "\n")
    assert out.returncode == 1
    obj = json.loads(out.stdout)
    assert obj["request"]["error"]["kind"] == kind
    assert "error" in obj["reply"]


def test_truncated_payload_reports_type_size_and_offset() -> None:
    out = run(["decode"], json.dumps({"request": "08000000040000000a006162"}) + "\n")
    assert json.loads(out.stdout)["request"]["error"] == {
        "kind": "TruncatedPayload",
        "message": json.loads(out.stdout)["request"]["error"]["message"],
        "type": "T_LSTAT",
        "size": 4,
        "offset": 0,
    }


def test_lenient_decoding_accepts_trailing_payload_bytes_like_qemu() -> None:
    line = json.dumps({"request": "080000000500000002002f00ff"}) + "\n"
    assert run(["decode"], line).returncode == 1
    out = run(["decode", "--lenient"], line)
    assert out.returncode == 0
    assert json.loads(out.stdout)["request"] == {"type": "T_LSTAT", "path": "2f00"}


def test_byteorder_big_reads_big_endian_frames() -> None:
    req = m.ChmodRequest(b"/f", 0o644)
    line = json.dumps({"request": encode_request(req, byteorder="big").hex()}) + "\n"
    out = run(["decode", "--byteorder", "big"], line)
    assert json.loads(out.stdout)["request"] == {"type": "T_CHMOD", "path": "2f66", "mode": 0o644}


@pytest.mark.parametrize(
    "bad",
    [
        {"request": {"type": "T_NOPE"}},
        {"request": {"type": "T_LSTAT"}},
        {"request": {"type": "T_LSTAT", "path": "2f", "extra": 1}},
        {"request": {"type": "T_LSTAT", "path": "xyz"}},
        {"request": {"type": "T_CHMOD", "path": "2f", "mode": "0644"}},
        {"request": {"type": "T_LSTAT", "path": "2f"}, "reply": {"kind": "stat"}},
        {"request": {"type": "T_LSTAT", "path": "2f"}, "reply": {"kind": "status"}},
        {"request": {"type": "T_LSTAT", "path": "2f"}, "reply": {"kind": "error", "errno": 0}},
        {"request": {"type": "T_CHMOD", "path": "2f", "mode": 1 << 40}},
    ],
)
def test_encode_refuses_what_is_not_a_message(bad: dict[str, object]) -> None:
    out = run(["encode"], json.dumps(bad) + "\n")
    assert out.returncode == 1
    assert out.stdout == ""
    assert "line 1:" in out.stderr


def test_console_script_lists_every_subcommand() -> None:
    out = run(["--help"], "")
    for name in ("decode", "encode", "helper", "conformance", "capture", "trace"):
        assert name in out.stdout


def test_version_is_the_installed_distributions() -> None:
    out = run(["--version"], "")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"virtfs-proto {metadata.version('virtfs-proto')}\n"
    assert metadata.version("virtfs-proto") == virtfs_proto.__version__


def test_capture_without_out_refuses_and_writes_nothing(tmp_path: Path) -> None:
    """No default directory: one beside the packaged vectors would overwrite them."""
    before = {p.name: p.stat().st_mtime_ns for p in vectors_dir().iterdir()}
    out = subprocess.run(
        [sys.executable, "-m", "virtfs_proto.cli", "capture", "--helper", "/bin/true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "--out DIR is required" in out.stderr
    assert out.stdout == ""
    assert list(tmp_path.iterdir()) == []
    assert {p.name: p.stat().st_mtime_ns for p in vectors_dir().iterdir()} == before
