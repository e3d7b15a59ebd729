"""The construct definitions, the fast path derived from them, and the dataclasses agree.

layouts.py is the single source of truth: these tests keep fastpath.py (the
compiled codecs) and messages.py (the dataclasses) from drifting away from it,
and check the definitions themselves against QEMU's marshal format strings.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields
from typing import Any

import pytest
from construct import Construct, Switch
from hypothesis import given
from hypothesis import strategies as st

from virtfs_proto import messages as m
from virtfs_proto.codec import codecs_for, decode_reply, decode_request, encode_request
from virtfs_proto.constants import REQUEST_TYPES as CODEC_REQUEST_TYPES
from virtfs_proto.constants import ByteOrder, MessageType
from virtfs_proto.errors import LocalProtocolError, TrailingBytes
from virtfs_proto.layouts import LAYOUTS, layouts_for

from .strategies import (
    BYTE_ORDERS,
    PAYLOAD_REPLIES,
    REQUEST_TYPES,
    as_dict,
    int_code,
    is_string,
    per_case,
    request_of,
    values_for,
)

T = MessageType
by_type = pytest.mark.parametrize("mtype", REQUEST_TYPES, ids=lambda t: t.name)
by_order = pytest.mark.parametrize("order", BYTE_ORDERS)
REPLY_LAYOUTS = (
    "fd",
    "status",
    "error",
    "stat",
    "statfs",
    "readlink",
    "xattr_size",
    "xattr_value",
    "version",
)


def fields_of(parsed: Any) -> dict[str, Any]:
    """A construct Container without its private ``_io`` entry."""
    return {k: v for k, v in parsed.items() if not k.startswith("_")}


# -- fast path == plain construct -------------------------------------------


@by_order
@by_type
@per_case
@given(data=st.data())
def test_request_fast_path_equals_construct(
    mtype: MessageType, order: ByteOrder, data: st.DataObject
) -> None:
    request = data.draw(request_of(mtype))
    values = as_dict(request)
    definition = layouts_for(order).requests[mtype]
    compiled = codecs_for(order).requests[mtype]

    built = definition.build(values)
    fast = compiled.encode(tuple(values.values()))
    assert fast == built
    assert encode_request(request, byteorder=order)[8:] == built

    parsed = fields_of(definition.parse(built))
    assert parsed == values
    assert compiled.decode(built, 0, len(built)) == tuple(parsed.values())
    # The fast path decodes at an offset inside a larger buffer, as the connections do.
    framed = b"\xaa" * 5 + built + b"\xbb" * 3
    assert compiled.decode(framed, 5, 5 + len(built)) == tuple(parsed.values())


@by_order
@pytest.mark.parametrize("name", REPLY_LAYOUTS)
@per_case
@given(data=st.data())
def test_reply_fast_path_equals_construct(name: str, order: ByteOrder, data: st.DataObject) -> None:
    definition = layouts_for(order).replies[name]
    compiled = codecs_for(order).replies[name]
    values = data.draw(values_for(definition))

    built = definition.build(values)
    assert compiled.encode(tuple(values.values())) == built
    parsed = fields_of(definition.parse(built))
    assert parsed == values
    assert compiled.decode(built, 0, len(built)) == tuple(parsed.values())


@by_order
@per_case
@given(data=st.data())
def test_header_fast_path_equals_construct(order: ByteOrder, data: st.DataObject) -> None:
    definition = layouts_for(order).header
    values = data.draw(values_for(definition))
    built = definition.build(values)
    assert codecs_for(order).header_struct.pack(values["type"], values["size"]) == built
    assert codecs_for(order).header.decode(built, 0, 8) == (values["type"], values["size"])
    assert fields_of(definition.parse(built)) == values


@by_order
@pytest.mark.parametrize("cls", PAYLOAD_REPLIES, ids=lambda c: c.__name__)
@per_case
@given(data=st.data())
def test_reply_payload_via_codec_equals_construct(
    cls: type[Any], order: ByteOrder, data: st.DataObject
) -> None:
    """decode_reply's payload fields equal construct's parse of the same payload."""
    definition = layouts_for(order).replies[cls.LAYOUT]
    values = data.draw(values_for(definition))
    payload = definition.build(values)
    request = {
        "stat": m.LstatRequest(b"/f\x00"),
        "statfs": m.StatfsRequest(b"/\x00"),
        "readlink": m.ReadlinkRequest(b"/l\x00", 4096),
        "xattr_size": m.LgetxattrRequest(0, b"/f\x00", b"user.a"),
        "xattr_value": m.LlistxattrRequest(100, b"/f\x00"),
        "version": m.GetversionRequest(b"/f\x00"),
    }[cls.LAYOUT]
    header = (0).to_bytes(4, order) + len(payload).to_bytes(4, order)
    reply = decode_reply(request, header + payload, byteorder=order)
    assert as_dict(reply) == fields_of(definition.parse(payload))


@by_order
def test_fast_path_covers_every_definition(order: ByteOrder) -> None:
    layouts, codecs = layouts_for(order), codecs_for(order)
    assert set(codecs.requests) == set(layouts.requests)
    assert set(codecs.replies) == set(layouts.replies)
    for definition, compiled in [
        *((layouts.requests[t], codecs.requests[t]) for t in layouts.requests),
        *((layouts.replies[n], codecs.replies[n]) for n in layouts.replies),
        (layouts.header, codecs.header),
    ]:
        assert compiled.names == tuple(sc.name for sc in definition.subcons)
        if compiled.fixed_size is not None:
            assert compiled.fixed_size == definition.sizeof()


# -- the construct pitfalls (STYLE.md) are handled --------------------------


def walk(con: Any) -> Any:
    yield con
    for sub in getattr(con, "subcons", ()):
        yield from walk(sub)
    for attr in ("subcon", "lengthfield"):
        inner = getattr(con, attr, None)
        if isinstance(inner, Construct):
            yield from walk(inner)
    if isinstance(con, Switch):
        yield from (sub for case in con.cases.values() for sub in walk(case))


def every_definition(order: ByteOrder) -> list[Any]:
    layouts = layouts_for(order)
    return [layouts.header, layouts.string, *layouts.requests.values(), *layouts.replies.values()]


@by_order
def test_no_switch_falls_through_to_pass(order: ByteOrder) -> None:
    """A Switch defaults to Pass (unknown types parse as None); none may rely on it."""
    from construct import Pass

    for definition in every_definition(order):
        for con in walk(definition):
            if isinstance(con, Switch):
                assert con.default is not Pass, definition


def test_unknown_type_is_an_error_not_none() -> None:
    """Where a Switch would have parsed an unknown type as None, the codec refuses it."""
    from virtfs_proto.errors import UnknownMessageType

    with pytest.raises(UnknownMessageType):
        decode_request(bytes.fromhex("16000000 00000000"), byteorder="little")


@by_order
@by_type
@per_case
@given(data=st.data())
def test_no_silent_slack(mtype: MessageType, order: ByteOrder, data: st.DataObject) -> None:
    """construct's Struct.parse ignores bytes after the last field; the codec does not."""
    request = data.draw(request_of(mtype))
    extra = data.draw(st.binary(min_size=1, max_size=9))
    definition = layouts_for(order).requests[mtype]
    payload = definition.build(as_dict(request)) + extra
    # The pitfall is real: plain construct accepts the slack silently...
    assert fields_of(definition.parse(payload)) == as_dict(request)
    # ... the fast path refuses it, and says where the slack starts.
    with pytest.raises(TrailingBytes) as info:
        codecs_for(order).requests[mtype].decode(payload, 0, len(payload))
    assert info.value.offset == len(payload) - len(extra)
    frame = mtype.to_bytes(4, order) + len(payload).to_bytes(4, order) + payload
    with pytest.raises(TrailingBytes):
        decode_request(frame, byteorder=order)
    # ... unless asked to be lenient, as QEMU's helper is.
    assert decode_request(frame, byteorder=order, lenient=True) == request


# -- dataclasses == definitions ----------------------------------------------


@by_order
def test_request_classes_cover_exactly_the_request_types(order: ByteOrder) -> None:
    expected = set(MessageType) - {T.T_SUCCESS, T.T_ERROR}
    assert set(m.REQUEST_CLASSES) == expected
    assert set(layouts_for(order).requests) == expected
    assert set(CODEC_REQUEST_TYPES) == expected
    assert set(REQUEST_TYPES) == expected
    for mtype, cls in m.REQUEST_CLASSES.items():
        assert cls.TYPE is mtype


@by_order
@by_type
def test_request_dataclass_fields_equal_definition(mtype: MessageType, order: ByteOrder) -> None:
    cls = m.REQUEST_CLASSES[mtype]
    definition = layouts_for(order).requests[mtype]
    assert [f.name for f in fields(cls)] == [sc.name for sc in definition.subcons]
    for f, sc in zip(fields(cls), definition.subcons, strict=True):
        assert f.type == ("bytes" if is_string(sc) else "int"), (cls, f.name)


@by_order
@pytest.mark.parametrize("cls", PAYLOAD_REPLIES, ids=lambda c: c.__name__)
def test_reply_dataclass_fields_equal_definition(cls: type[Any], order: ByteOrder) -> None:
    definition = layouts_for(order).replies[cls.LAYOUT]
    assert [f.name for f in fields(cls)] == [sc.name for sc in definition.subcons]
    for f, sc in zip(fields(cls), definition.subcons, strict=True):
        assert f.type == ("bytes" if is_string(sc) else "int"), (cls, f.name)


@by_order
def test_marker_replies_stand_for_one_int32(order: ByteOrder) -> None:
    """FdReply, ErrorReply and StatusReply are a computed int32, not a field copy."""
    replies = layouts_for(order).replies
    for name in ("fd", "status", "error"):
        assert [sc.name for sc in replies[name].subcons] == ["status"]
        assert int_code(replies[name].subcons[0]) == "l"
    assert [f.name for f in fields(m.FdReply)] == ["fd"]
    assert [f.name for f in fields(m.ErrorReply)] == ["errno"]
    assert fields(m.StatusReply) == ()


def test_reply_classes_cover_exactly_the_reply_layouts() -> None:
    assert set(m.REPLY_CLASSES) == set(REPLY_LAYOUTS) == set(LAYOUTS.replies)
    for name, cls in m.REPLY_CLASSES.items():
        assert name == cls.LAYOUT


@pytest.mark.parametrize(
    "cls", [*m.REQUEST_CLASSES.values(), *m.REPLY_CLASSES.values()], ids=lambda c: c.__name__
)
def test_messages_are_frozen_and_slotted(cls: type[Any]) -> None:
    assert cls.__dataclass_params__.frozen
    assert "__slots__" in cls.__dict__
    instance = cls(*(b"" if f.type == "bytes" else 0 for f in fields(cls)))
    assert not hasattr(instance, "__dict__")
    for f in fields(cls):
        with pytest.raises(FrozenInstanceError):
            setattr(instance, f.name, 1)


# -- the definitions against QEMU's marshal format strings -------------------

#: The marshal format of each request in QEMU 7.2 (notes section 4;
#: virtfs-proxy-helper.c's proxy_unmarshal calls), independent of layouts.py.
QEMU_REQUEST_FORMATS = {
    T.T_OPEN: "sd",
    T.T_CREATE: "sdddd",
    T.T_MKNOD: "ddsdq",
    T.T_MKDIR: "ddsd",
    T.T_SYMLINK: "ddss",
    T.T_LINK: "ss",
    T.T_LSTAT: "s",
    T.T_READLINK: "sd",
    T.T_STATFS: "s",
    T.T_CHMOD: "sd",
    T.T_CHOWN: "sdd",
    T.T_TRUNCATE: "sq",
    T.T_UTIME: "sqqqq",
    T.T_RENAME: "ss",
    T.T_REMOVE: "s",
    T.T_LGETXATTR: "dss",
    T.T_LLISTXATTR: "ds",
    T.T_LSETXATTR: "sssdd",
    T.T_LREMOVEXATTR: "ss",
    T.T_GETVERSION: "s",
}
QEMU_REPLY_FORMATS = {
    "fd": "d",
    "status": "d",
    "error": "d",
    "stat": "qqqdddqqqqqqqqqq",
    "statfs": "qqqqqqqqqqq",
    "readlink": "s",
    "xattr_size": "d",
    "xattr_value": "s",
    "version": "q",
}


def marshal_format(definition: Any) -> str:
    widths = {"L": "d", "l": "d", "Q": "q", "q": "q"}
    return "".join("s" if is_string(sc) else widths[int_code(sc)] for sc in definition.subcons)


@by_order
@by_type
def test_request_definition_matches_qemu_format(mtype: MessageType, order: ByteOrder) -> None:
    assert marshal_format(layouts_for(order).requests[mtype]) == QEMU_REQUEST_FORMATS[mtype]


@by_order
@pytest.mark.parametrize("name", REPLY_LAYOUTS)
def test_reply_definition_matches_qemu_format(name: str, order: ByteOrder) -> None:
    assert marshal_format(layouts_for(order).replies[name]) == QEMU_REPLY_FORMATS[name]


@by_order
def test_fixed_sizes(order: ByteOrder) -> None:
    layouts = layouts_for(order)
    assert layouts.header.sizeof() == 8
    assert layouts.replies["stat"].sizeof() == 116
    assert layouts.replies["statfs"].sizeof() == 88
    assert layouts.replies["version"].sizeof() == 8
    for name in ("fd", "status", "error", "xattr_size"):
        assert layouts.replies[name].sizeof() == 4
    assert codecs_for(order).replies["stat"].fixed_size == 116
    assert codecs_for(order).replies["statfs"].fixed_size == 88


@by_order
def test_every_field_is_documented(order: ByteOrder) -> None:
    layouts = layouts_for(order)
    for definition in [layouts.header, *layouts.requests.values(), *layouts.replies.values()]:
        for sc in definition.subcons:
            assert sc.docs, (definition, sc.name)


# -- the generated straight-line code equals the checked reference -------------------


def outcome(call: Any, *args: Any, **kwargs: Any) -> Any:
    """A call's result, or its exception's type and every structured field."""
    try:
        return ("ok", call(*args, **kwargs))
    except Exception as exc:
        where = (getattr(exc, "message_type", None), getattr(exc, "offset", None))
        return ("error", type(exc), str(exc), where)


def all_compiled(order: ByteOrder) -> list[Any]:
    codecs = codecs_for(order)
    return [codecs.header, *codecs.requests.values(), *codecs.replies.values()]


@by_order
@per_case
@given(data=st.data())
def test_generated_decode_equals_checked_decode(order: ByteOrder, data: st.DataObject) -> None:
    """Also on garbage, on buffers that go on past ``end`` and at nonzero starts."""
    compiled = data.draw(st.sampled_from(all_compiled(order)))
    buf = data.draw(st.one_of(st.binary(max_size=140), st.binary(max_size=12).map(lambda b: b * 9)))
    start = data.draw(st.integers(0, len(buf)))
    end = data.draw(st.integers(start, len(buf)))
    view = data.draw(st.sampled_from([bytes, bytearray, memoryview]))(buf)
    for lenient in (False, True):
        expected = outcome(compiled.decode_checked, view, start, end, lenient=lenient)
        assert outcome(compiled.decode, view, start, end, lenient=lenient) == expected


odd_values = st.one_of(
    st.integers(-(2**65), 2**65),
    st.binary(max_size=8),
    st.sampled_from([None, "text", 1.5, True, bytearray(b"ab"), memoryview(b"cd")]),
)


@by_order
@per_case
@given(data=st.data())
def test_generated_encode_equals_checked_encode(order: ByteOrder, data: st.DataObject) -> None:
    compiled = data.draw(st.sampled_from(all_compiled(order)))
    values = tuple(data.draw(st.lists(odd_values, min_size=len(compiled.names),
                                      max_size=len(compiled.names))))  # fmt: skip
    assert outcome(compiled.encode, values) == outcome(compiled.encode_checked, values)

    class Message:
        pass

    message = Message()
    for name, value in zip(compiled.names, values, strict=True):
        setattr(message, name, value)
    expected = outcome(compiled.encode_message_checked, message)
    assert outcome(compiled.encode_message, message) == expected
    assert outcome(compiled.encode_message, object())[:2] == ("error", LocalProtocolError)


@by_order
@by_type
@per_case
@given(data=st.data())
def test_generated_code_on_valid_messages(
    mtype: MessageType, order: ByteOrder, data: st.DataObject
) -> None:
    request = data.draw(request_of(mtype))
    compiled = codecs_for(order).requests[mtype]
    wire = compiled.encode_message(request)
    assert wire == compiled.encode_checked(tuple(as_dict(request).values()))
    assert compiled.decode(wire, 0, len(wire)) == compiled.decode_checked(wire, 0, len(wire))
