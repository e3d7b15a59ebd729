"""On every committed golden vector, the fast path and plain construct agree.

The vectors were captured from QEMU's helper (virtfs_proto/kit/vectors/); the lead's
tests check they decode and re-encode. Here each frame's payload is also
parsed and rebuilt by the construct definitions themselves, and the two
paths must give the same fields and the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from virtfs_proto import messages as m
from virtfs_proto.codec import codecs_for, decode_reply, encode_reply
from virtfs_proto.connection import NEED_DATA, ServerConnection
from virtfs_proto.constants import HEADER_SIZE, MessageType
from virtfs_proto.errors import RemoteProtocolError
from virtfs_proto.kit import vectors_dir
from virtfs_proto.layouts import layouts_for

from .strategies import FD_TYPES, as_dict, success_reply_class

VECTOR_FILES = sorted(vectors_dir().glob("*.json"))


def fields_of(parsed: Any) -> dict[str, Any]:
    return {k: v for k, v in parsed.items() if not k.startswith("_")}


def exchanges() -> list[tuple[str, dict[str, Any], str]]:
    out = []
    for path in VECTOR_FILES:
        vector = json.loads(path.read_text())
        for i, ex in enumerate(vector["exchanges"]):
            out.append((f"{vector['name']}#{i}", ex, vector["byteorder"]))
    return out


EXCHANGES = exchanges()


def test_there_are_vectors() -> None:
    assert len(VECTOR_FILES) >= 100
    assert len(EXCHANGES) >= len(VECTOR_FILES)


def request_frames(data: bytes, order: Any) -> list[tuple[m.Request, bytes]]:
    """The well-formed request frames in a captured write, with their payloads."""
    conn = ServerConnection(byteorder=order, lenient=True)
    conn.receive_data(data)
    frames, pos = [], 0
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError:
            return frames
        if event is NEED_DATA:
            return frames
        size = int.from_bytes(data[pos + 4 : pos + 8], order)
        if isinstance(event, tuple(m.REQUEST_CLASSES.values())):
            frames.append((event, data[pos + HEADER_SIZE : pos + HEADER_SIZE + size]))
        pos += HEADER_SIZE + size


@pytest.mark.parametrize(("name", "ex", "order"), EXCHANGES, ids=[n for n, _, _ in EXCHANGES])
def test_vector_agrees_with_construct(name: str, ex: dict[str, Any], order: Any) -> None:
    layouts, codecs = layouts_for(order), codecs_for(order)
    frames = request_frames(bytes.fromhex(ex["request"]), order)
    for request, payload in frames:
        definition = layouts.requests[request.TYPE]
        parsed = fields_of(definition.parse(payload))  # construct ignores slack...
        assert parsed == as_dict(request)
        fast = codecs.requests[request.TYPE].decode(payload, 0, len(payload), lenient=True)
        assert fast == tuple(parsed.values())
        built = definition.build(parsed)
        assert payload[: len(built)] == built  # ... and only slack follows the fields
        assert codecs.requests[request.TYPE].encode(fast) == built

    if len(frames) != 1 or not ex.get("reply"):
        return
    request = frames[0][0]
    data = bytes.fromhex(ex["reply"])
    fds = tuple(range(100, 100 + ex.get("fds", 0)))
    try:
        reply = decode_reply(request, data, fds=fds, byteorder=order, lenient=True)
    except RemoteProtocolError:
        return  # a negative vector; its error kind is checked in tests/test_vectors.py
    if request.TYPE in FD_TYPES:
        status = layouts.replies["fd"].parse(data).status
        assert status == (0x7FFFFFFF if isinstance(reply, m.FdReply) else -reply.errno)
        return
    header = fields_of(layouts.header.parse(data))
    payload = data[HEADER_SIZE : HEADER_SIZE + header["size"]]
    if header["type"] == MessageType.T_ERROR:
        assert isinstance(reply, m.ErrorReply)
        assert layouts.replies["error"].parse(payload).status == -reply.errno
    else:
        cls = success_reply_class(request)
        assert type(reply) is cls
        if cls is m.StatusReply:
            assert layouts.replies["status"].parse(payload).status == 0
        else:
            assert fields_of(layouts.replies[cls.LAYOUT].parse(payload)) == as_dict(reply)
    assert encode_reply(request, reply, byteorder=order) == data  # the helper adds no slack
