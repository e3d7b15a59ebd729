"""Round trips: encode -> decode gives the message, decode -> encode gives the bytes.

Every request type, every reply shape that can answer it, both byte orders.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtfs_proto import messages as m
from virtfs_proto.codec import decode_reply, decode_request, encode_reply, encode_request
from virtfs_proto.constants import HEADER_SIZE, ByteOrder, MessageType
from virtfs_proto.errors import LocalProtocolError

from .strategies import (
    BYTE_ORDERS,
    FD_TYPES,
    REQUEST_TYPES,
    fds_of,
    per_case,
    reply_for,
    request_of,
    success_reply_class,
)

by_type = pytest.mark.parametrize("mtype", REQUEST_TYPES, ids=lambda t: t.name)
by_order = pytest.mark.parametrize("order", BYTE_ORDERS)


@by_order
@by_type
@per_case
@given(data=st.data())
def test_request_round_trip(mtype: MessageType, order: ByteOrder, data: st.DataObject) -> None:
    request = data.draw(request_of(mtype))
    wire = encode_request(request, byteorder=order)
    assert int.from_bytes(wire[:4], order) == mtype
    assert int.from_bytes(wire[4:8], order) == len(wire) - HEADER_SIZE
    decoded = decode_request(wire, byteorder=order)
    assert decoded == request
    assert type(decoded) is type(request)
    assert encode_request(decoded, byteorder=order) == wire


def check_reply_shape(request: m.Request, reply: m.Reply, wire: bytes, order: ByteOrder) -> None:
    """The frame has the shape the notes give (section 5), independently of the codec's table."""
    fd_kind = request.TYPE in FD_TYPES
    if isinstance(reply, m.ErrorReply):
        minus = (-reply.errno).to_bytes(4, order, signed=True)
        if fd_kind:
            assert wire == minus
        else:
            assert wire == (1).to_bytes(4, order) + (4).to_bytes(4, order) + minus
        return
    assert type(reply) is success_reply_class(request)
    if fd_kind:
        assert wire == (0x7FFFFFFF).to_bytes(4, order)
        return
    assert int.from_bytes(wire[:4], order) == MessageType.T_SUCCESS
    assert int.from_bytes(wire[4:8], order) == len(wire) - HEADER_SIZE
    if isinstance(reply, m.StatusReply):
        assert wire[4:] == (4).to_bytes(4, order) + bytes(4)


@by_order
@by_type
@per_case
@given(data=st.data())
def test_reply_round_trip(mtype: MessageType, order: ByteOrder, data: st.DataObject) -> None:
    request = data.draw(request_of(mtype))
    reply = data.draw(reply_for(request))
    wire = encode_reply(request, reply, byteorder=order)
    check_reply_shape(request, reply, wire, order)
    decoded = decode_reply(request, wire, fds=fds_of(reply), byteorder=order)
    assert decoded == reply
    assert type(decoded) is type(reply)
    assert encode_reply(request, decoded, byteorder=order) == wire


@pytest.mark.parametrize("size", [0, 1, 4096, -1])
@pytest.mark.parametrize("listing", [False, True], ids=["lgetxattr", "llistxattr"])
def test_xattr_reply_depends_on_request_size(listing: bool, size: int) -> None:
    request: m.Request = (
        m.LlistxattrRequest(size, b"/f\x00")
        if listing
        else m.LgetxattrRequest(size, b"/f\x00", b"user.a")
    )
    if size == 0:
        good, bad = m.XattrSizeReply(24), m.XattrValueReply(b"user.a\x00")
    else:
        good, bad = m.XattrValueReply(b"user.a\x00"), m.XattrSizeReply(24)
    wire = encode_reply(request, good, byteorder="little")
    assert decode_reply(request, wire, byteorder="little") == good
    with pytest.raises(LocalProtocolError):
        encode_reply(request, bad, byteorder="little")


@by_order
@per_case
@given(data=st.data())
def test_byte_orders_mirror_each_other(order: ByteOrder, data: st.DataObject) -> None:
    """A message whose fields are all one byte wide reads the same either way round."""
    request = m.LstatRequest(data.draw(st.binary(max_size=30)))
    little = encode_request(request, byteorder="little")
    big = encode_request(request, byteorder="big")
    assert little[:4][::-1] == big[:4]
    assert little[4:8][::-1] == big[4:8]
    assert little[8:10][::-1] == big[8:10]
    assert little[10:] == big[10:]
