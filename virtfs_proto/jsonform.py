"""The JSON form of messages, shared by ``decode``, ``encode``, ``trace`` and the vectors.

A request is ``{"type": "T_LSTAT", "path": "2f6100"}``: the type's name, then
its fields under their definition names, integers as numbers and byte
strings as lowercase hex. A reply is ``{"kind": <layout name>, ...fields}``:
``fd`` (the descriptor itself travels out of band), ``error`` (with
``errno`` and its ``name``), ``status``, ``stat``, ``statfs``, ``readlink``,
``xattr_size``, ``xattr_value`` or ``version``. A part that does not decode is
``{"error": {"kind": <error class>, "message": ..., ...where}}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import messages as m
from .codec import (
    codecs_for,
    decode_error_reply,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)
from .constants import REPLY_KIND, V9FS_FD_VALID, ByteOrder, MessageType, ReplyKind
from .errnos import errno_name, errno_number
from .errors import (
    LocalProtocolError,
    ProxyProtocolError,
    TrailingBytes,
    TruncatedPayload,
)

#: Stands for the passed descriptor where only bytes are at hand (a capture, a hex dump).
PLACEHOLDER_FD = -1


class BadJsonForm(LocalProtocolError):
    """A JSON object that is not the form of any message."""


def _field_to_json(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def _fields_to_json(message: Any) -> dict[str, Any]:
    return {f.name: _field_to_json(getattr(message, f.name)) for f in dataclasses.fields(message)}


def request_to_json(request: m.Request) -> dict[str, Any]:
    """``{"type": name, ...fields}``."""
    return {"type": request.TYPE.name, **_fields_to_json(request)}


def reply_to_json(reply: m.Reply) -> dict[str, Any]:
    """``{"kind": layout, ...fields}``; errors also carry the errno's name."""
    if isinstance(reply, m.ErrorReply):
        return {"kind": "error", "errno": reply.errno, "name": errno_name(reply.errno)}
    if isinstance(reply, m.FdReply):
        return {"kind": "fd"}
    return {"kind": reply.LAYOUT, **_fields_to_json(reply)}


def error_to_json(exc: ProxyProtocolError) -> dict[str, Any]:
    """``{"kind": class name, "message": ..., "type"/"size"/"offset" when known}``."""
    out: dict[str, Any] = {"kind": exc.kind, "message": exc.message}
    if exc.message_type is not None:
        try:
            out["type"] = MessageType(exc.message_type).name
        except ValueError:
            out["type"] = exc.message_type
    if exc.size is not None:
        out["size"] = exc.size
    if exc.offset is not None:
        out["offset"] = exc.offset
    return out


def _build(cls: Any, obj: dict[str, Any], skip: str) -> Any:
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    extra = set(obj) - names - {skip}
    missing = names - set(obj)
    if extra or missing:
        raise BadJsonForm(
            f"{cls.__name__}: unknown fields {sorted(extra)}, missing fields {sorted(missing)}"
        )
    values: dict[str, Any] = {}
    for f in fields:
        raw = obj[f.name]
        if f.type in ("bytes", bytes):
            if not isinstance(raw, str):
                raise BadJsonForm(f"{cls.__name__}.{f.name} must be a hex string")
            try:
                values[f.name] = bytes.fromhex(raw)
            except ValueError:
                raise BadJsonForm(f"{cls.__name__}.{f.name} is not hex: {raw!r}") from None
        else:
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise BadJsonForm(f"{cls.__name__}.{f.name} must be an integer")
            values[f.name] = raw
    return cls(**values)


def request_from_json(obj: Any) -> m.Request:
    """The request a JSON object stands for."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise BadJsonForm('a request is an object with a "type" name')
    try:
        cls = m.REQUEST_CLASSES[MessageType[obj["type"]]]
    except KeyError:
        raise BadJsonForm(f"unknown request type {obj['type']!r}") from None
    request: m.Request = _build(cls, obj, "type")
    return request


def reply_from_json(obj: Any) -> m.Reply:
    """The reply a JSON object stands for (an ``fd`` reply gets :data:`PLACEHOLDER_FD`)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        raise BadJsonForm('a reply is an object with a "kind"')
    kind = obj["kind"]
    if kind == "fd":
        if set(obj) != {"kind"}:
            raise BadJsonForm('an "fd" reply has no other fields')
        return m.FdReply(PLACEHOLDER_FD)
    if kind == "error":
        if set(obj) - {"kind", "errno", "name"}:
            raise BadJsonForm("an error reply has only errno and name")
        number = obj.get("errno")
        if number is None and isinstance(obj.get("name"), str):
            try:
                number = errno_number(obj["name"])
            except KeyError:
                raise BadJsonForm(f"unknown errno name {obj['name']!r}") from None
        if not isinstance(number, int) or isinstance(number, bool):
            raise BadJsonForm("an error reply needs an integer errno")
        return m.ErrorReply(number)
    cls = m.REPLY_CLASSES.get(kind)
    if cls is None:
        raise BadJsonForm(f"unknown reply kind {kind!r}")
    reply: m.Reply = _build(cls, obj, "kind")
    return reply


def _offline_fds(request: m.Request, data: bytes, byteorder: ByteOrder | None) -> tuple[int, ...]:
    # A hex dump cannot carry the passed descriptor: stand one in where the
    # bytes say an fd came, so the rest of the reply is still checked.
    if REPLY_KIND[request.TYPE] is not ReplyKind.FD or len(data) != 4:
        return ()
    (value,) = codecs_for(byteorder).int32.unpack(data)
    return (PLACEHOLDER_FD,) if value == V9FS_FD_VALID else ()


def decode_exchange(
    request_hex: str,
    reply_hex: str | None,
    *,
    byteorder: ByteOrder | None = None,
    lenient: bool = False,
) -> dict[str, Any]:
    """Decode one exchange given as hex into its JSON form."""
    out: dict[str, Any] = {}
    request: m.Request | None = None
    malformed_type: MessageType | None = None
    try:
        request = decode_request(bytes.fromhex(request_hex), byteorder=byteorder, lenient=lenient)
        out["request"] = request_to_json(request)
    except ValueError:
        out["request"] = {"error": {"kind": "BadHex", "message": "request is not hex"}}
    except (TruncatedPayload, TrailingBytes) as exc:
        out["request"] = {"error": error_to_json(exc)}
        malformed_type = MessageType(exc.message_type) if exc.message_type is not None else None
    except ProxyProtocolError as exc:
        out["request"] = {"error": error_to_json(exc)}
    if reply_hex is None:
        return out
    if request is None and malformed_type is not None:
        # The header was sound, so the helper still answered (QEMU: -ENOBUFS);
        # only an error can answer a request that did not decode.
        try:
            out["reply"] = reply_to_json(
                decode_error_reply(malformed_type, bytes.fromhex(reply_hex), byteorder=byteorder)
            )
        except ValueError:
            out["reply"] = {"error": {"kind": "BadHex", "message": "reply is not hex"}}
        except ProxyProtocolError as exc:
            out["reply"] = {"error": error_to_json(exc)}
        return out
    if request is None:
        out["reply"] = {
            "error": {
                "kind": "NoRequestContext",
                "message": "the request did not decode, and a reply means nothing without it",
            }
        }
        return out
    try:
        data = bytes.fromhex(reply_hex)
    except ValueError:
        out["reply"] = {"error": {"kind": "BadHex", "message": "reply is not hex"}}
        return out
    try:
        reply = decode_reply(
            request,
            data,
            fds=_offline_fds(request, data, byteorder),
            byteorder=byteorder,
            lenient=lenient,
        )
        out["reply"] = reply_to_json(reply)
    except ProxyProtocolError as exc:
        out["reply"] = {"error": error_to_json(exc)}
    return out


def encode_exchange(obj: Any, *, byteorder: ByteOrder | None = None) -> dict[str, str]:
    """Encode one decoded exchange back to ``{"request": hex, "reply": hex}``."""
    if not isinstance(obj, dict) or "request" not in obj:
        raise BadJsonForm('an exchange is an object with a "request"')
    request = request_from_json(obj["request"])
    out = {"request": encode_request(request, byteorder=byteorder).hex()}
    if obj.get("reply") is not None:
        reply = reply_from_json(obj["reply"])
        out["reply"] = encode_reply(request, reply, byteorder=byteorder).hex()
    return out
