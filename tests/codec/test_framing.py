"""The request-framing rule (``codec.request_frame_length`` / ``request_bytes_missing``)."""

from __future__ import annotations

import struct

import pytest

from virtfs_proto import messages as m
from virtfs_proto.codec import encode_request, request_bytes_missing, request_frame_length
from virtfs_proto.constants import HEADER_SIZE, ByteOrder

FRAME = encode_request(m.LstatRequest(b"/dir/file\0"))


def test_a_partial_header_waits_for_the_header() -> None:
    for have in range(HEADER_SIZE):
        assert request_frame_length(FRAME[:have]) == HEADER_SIZE
        assert request_bytes_missing(FRAME[:have]) == HEADER_SIZE - have


def test_a_whole_header_waits_for_the_size_it_announces() -> None:
    for have in range(HEADER_SIZE, len(FRAME) + 1):
        assert request_frame_length(FRAME[:have]) == len(FRAME)
        assert request_bytes_missing(FRAME[:have]) == len(FRAME) - have


def test_pipelined_frames_split_at_the_first() -> None:
    second = encode_request(m.ReadlinkRequest(b"/l\0", 64))
    stream = bytearray(FRAME + second)
    assert request_bytes_missing(stream) == 0
    assert request_frame_length(stream) == len(FRAME)
    assert request_frame_length(memoryview(stream)[len(FRAME) :]) == len(second)


@pytest.mark.parametrize("order", ["little", "big"])
def test_the_size_is_read_in_the_given_byte_order(order: ByteOrder) -> None:
    header = struct.pack("<II" if order == "little" else ">II", 5, 300)
    assert request_frame_length(header, byteorder=order) == HEADER_SIZE + 300
    assert request_bytes_missing(header + bytes(10), byteorder=order) == 290
