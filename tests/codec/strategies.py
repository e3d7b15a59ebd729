"""Hypothesis strategies and helpers shared by the codec tests.

Field *values* are generated from the construct definitions (the single
source of truth: a new field gets values without touching this file). Which
reply answers which request is spelled out here independently of the codec,
so the tests check the codec's table rather than reuse it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from construct import FormatField, GreedyBytes, Prefixed, Renamed
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from virtfs_proto import messages as m
from virtfs_proto.constants import MessageType
from virtfs_proto.layouts import layouts_for

T = MessageType
BYTE_ORDERS = ("little", "big")

#: Range of each struct format code the definitions use.
INT_RANGES: dict[str, tuple[int, int]] = {
    "H": (0, 2**16 - 1),
    "I": (0, 2**32 - 1),
    "L": (0, 2**32 - 1),
    "i": (-(2**31), 2**31 - 1),
    "l": (-(2**31), 2**31 - 1),
    "Q": (0, 2**64 - 1),
    "q": (-(2**63), 2**63 - 1),
}

#: Success reply class of each request type, from the notes' table (section 4),
#: not from the codec. ``None``: it depends on the request's ``size`` (xattrs).
SUCCESS_REPLY: dict[MessageType, type[m.Reply] | None] = {
    T.T_OPEN: m.FdReply,
    T.T_CREATE: m.FdReply,
    T.T_MKNOD: m.StatusReply,
    T.T_MKDIR: m.StatusReply,
    T.T_SYMLINK: m.StatusReply,
    T.T_LINK: m.StatusReply,
    T.T_LSTAT: m.StatReply,
    T.T_READLINK: m.ReadlinkReply,
    T.T_STATFS: m.StatfsReply,
    T.T_CHMOD: m.StatusReply,
    T.T_CHOWN: m.StatusReply,
    T.T_TRUNCATE: m.StatusReply,
    T.T_UTIME: m.StatusReply,
    T.T_RENAME: m.StatusReply,
    T.T_REMOVE: m.StatusReply,
    T.T_LGETXATTR: None,
    T.T_LLISTXATTR: None,
    T.T_LSETXATTR: m.StatusReply,
    T.T_LREMOVEXATTR: m.StatusReply,
    T.T_GETVERSION: m.VersionReply,
}

FD_TYPES = frozenset({T.T_OPEN, T.T_CREATE})
REQUEST_TYPES = tuple(SUCCESS_REPLY)

#: The reply classes whose fields are the payload's fields (the other three,
#: FdReply, ErrorReply and StatusReply, stand for a computed int32).
PAYLOAD_REPLIES: tuple[type[Any], ...] = (
    m.StatReply,
    m.StatfsReply,
    m.ReadlinkReply,
    m.XattrSizeReply,
    m.XattrValueReply,
    m.VersionReply,
)


def success_reply_class(request: m.Request) -> type[m.Reply]:
    cls = SUCCESS_REPLY[request.TYPE]
    if cls is None:
        assert isinstance(request, m.LgetxattrRequest | m.LlistxattrRequest)
        return m.XattrSizeReply if request.size == 0 else m.XattrValueReply
    return cls


def unwrap(con: Any) -> Any:
    while isinstance(con, Renamed):
        con = con.subcon
    return con


def is_string(con: Any) -> bool:
    inner = unwrap(con)
    return isinstance(inner, Prefixed) and unwrap(inner.subcon) is GreedyBytes


def int_code(con: Any) -> str:
    inner = unwrap(con)
    assert isinstance(inner, FormatField), con
    return str(inner.fmtstr[1:])


def ints(code: str) -> st.SearchStrategy[int]:
    lo, hi = INT_RANGES[code]
    edges = sorted({lo, hi, 0, 1, max(lo, -1), hi - 1})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


#: Strings: short ones with NULs and high bytes, now and then a long one.
strings = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=200, max_size=600),
    st.sampled_from([b"", b"\x00", b"/", b"/file\x00", b"//dir/name", b"a\x00b"]),
)


def field_strategy(con: Any) -> st.SearchStrategy[Any]:
    return strings if is_string(con) else ints(int_code(con))


def values_for(definition: Any) -> st.SearchStrategy[dict[str, Any]]:
    """A dict of field values for a construct ``Struct``."""
    names = [sc.name for sc in definition.subcons]
    drawn = st.fixed_dictionaries(
        {name: field_strategy(sc) for name, sc in zip(names, definition.subcons, strict=True)}
    )
    # fixed_dictionaries does not promise an order: put the fields back in the wire's.
    return drawn.map(lambda values: {name: values[name] for name in names})


def request_of(mtype: MessageType) -> st.SearchStrategy[m.Request]:
    cls = m.REQUEST_CLASSES[mtype]
    definition = layouts_for("little").requests[mtype]
    return values_for(definition).map(lambda values: cls(**values))


requests_any: st.SearchStrategy[m.Request] = st.sampled_from(REQUEST_TYPES).flatmap(request_of)

errnos = st.one_of(
    st.sampled_from([1, 2, 13, 17, 34, 61, 105, 2**31 - 1, 2**31]), st.integers(1, 2**31)
)


def payload_reply_of(cls: type[Any]) -> st.SearchStrategy[m.Reply]:
    definition = layouts_for("little").replies[cls.LAYOUT]
    return values_for(definition).map(lambda values: cls(**values))


def success_reply_for(request: m.Request) -> st.SearchStrategy[m.Reply]:
    cls = success_reply_class(request)
    if cls is m.FdReply:
        return st.integers(0, 2**31 - 1).map(m.FdReply)
    if cls is m.StatusReply:
        return st.just(m.StatusReply())
    return payload_reply_of(cls)


def reply_for(request: m.Request) -> st.SearchStrategy[m.Reply]:
    """Any reply that can answer ``request``: its success shape or an error."""
    return st.one_of(success_reply_for(request), errnos.map(m.ErrorReply))


def as_dict(message: Any) -> dict[str, Any]:
    return {f.name: getattr(message, f.name) for f in fields(message)}


def fds_of(reply: m.Reply) -> tuple[int, ...]:
    return (reply.fd,) if isinstance(reply, m.FdReply) else ()


#: For properties parametrized over every type and byte order (40 cases each,
#: and the suite must stay under 60 s): fewer examples per case, and no
#: deadline, since CI machines are shared and a slow example is not a failure.
per_case = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
