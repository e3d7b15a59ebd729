"""The helper's generated codec (virtfs_proto/_fastpath_generated.py): fresh,
in agreement with the codec, and the only codec the serving path imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtfs_proto import _fastpath_generated as wire
from virtfs_proto import fastpath
from virtfs_proto import messages as m
from virtfs_proto.codec import codecs_for, decode_request, encode_reply, encode_request
from virtfs_proto.constants import HEADER_SIZE, MessageType

from .strategies import REQUEST_TYPES, per_case, request_of, requests_any, success_reply_for

REGENERATE = ".venv/bin/python scripts/gen-fastpath"


def test_the_committed_module_is_what_the_layouts_generate() -> None:
    committed = Path(fastpath.__file__).with_name(fastpath.GENERATED_MODULE).read_text()
    assert committed == fastpath.generated_module_source(), (
        f"virtfs_proto/{fastpath.GENERATED_MODULE} is stale: run `{REGENERATE}` and commit it"
    )


def test_every_request_type_has_a_decoder() -> None:
    assert set(wire.REQUEST_DECODERS) == {int(t) for t in REQUEST_TYPES}


@pytest.mark.parametrize("mtype", REQUEST_TYPES, ids=lambda t: t.name)
@per_case
@given(data=st.data())
def test_decoders_agree_with_the_codec(mtype: MessageType, data: st.DataObject) -> None:
    request = data.draw(request_of(mtype))
    frame = encode_request(request)
    values = wire.REQUEST_DECODERS[mtype](frame, HEADER_SIZE, len(frame), False)
    assert values is not None
    assert m.REQUEST_CLASSES[mtype](*values) == decode_request(frame)
    # bytes after the fields: only a lenient decode accepts them, as the codec's
    assert wire.REQUEST_DECODERS[mtype](frame + b"xy", HEADER_SIZE, len(frame), False) == values
    assert wire.REQUEST_DECODERS[mtype](frame + b"xy", HEADER_SIZE, len(frame) + 2, True) == values
    assert wire.REQUEST_DECODERS[mtype](frame + b"xy", HEADER_SIZE, len(frame) + 2, False) is None


@per_case
@given(request=requests_any, cut=st.integers(1, 40))
def test_decoders_refuse_what_the_codec_refuses(request: m.Request, cut: int) -> None:
    frame = encode_request(request)
    end = max(HEADER_SIZE, len(frame) - cut)
    codec = codecs_for().requests[request.TYPE]
    try:
        expected: Any = codec.decode(frame, HEADER_SIZE, end, lenient=True)
    except Exception:  # the codec's precise error
        expected = None
    assert wire.REQUEST_DECODERS[request.TYPE](frame, HEADER_SIZE, end, True) == expected


@per_case
@given(data=st.data())
def test_reply_frames_are_the_codecs_bytes(data: st.DataObject) -> None:
    request = data.draw(requests_any)
    reply = data.draw(success_reply_for(request))
    layout = getattr(reply, "LAYOUT", None)
    if layout in (None, "fd", "status"):
        return  # no fields of its own: checked by the helper's tests
    values = [getattr(reply, n) for n in codecs_for().replies[layout].names]
    frame = getattr(wire, f"frame_{layout}")(wire.T_SUCCESS, *values)
    assert frame == encode_reply(request, reply)


def test_the_serving_path_imports_no_construct_messages_or_jsonform() -> None:
    """What `virtfs-proto helper` imports before it serves (cli, then the helper)."""
    heavy = ("construct", "virtfs_proto.messages", "virtfs_proto.jsonform", "virtfs_proto.codec")
    code = (
        "import sys, virtfs_proto.cli, virtfs_proto.server.main;"
        f"print(' '.join(n for n in {heavy!r} if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


#: Standard modules the helper's start-up does without (issue 13): each costs
#: milliseconds of a start that a bare interpreter makes in about ten.
UNUSED_STDLIB = (
    "typing",
    "dataclasses",
    "inspect",
    "pathlib",
    "json",
    "importlib.metadata",
    "threading",
    "platform",
    "syslog",  # only a helper that daemonises logs there
)


def test_the_serving_path_imports_no_typing_dataclasses_or_pathlib() -> None:
    """Without site (-S: no editable finder, no .pth), from the checkout's root."""
    code = (
        "import sys, virtfs_proto.cli, virtfs_proto.server.main;"
        f"print(' '.join(n for n in {UNUSED_STDLIB!r} if n in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.split() == []
