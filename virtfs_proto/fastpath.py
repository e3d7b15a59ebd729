"""Fast codecs compiled from the construct definitions.

Interpreting a construct ``Struct`` costs ~20 us per stat reply; one
``struct.Struct.unpack_from`` costs ~0.1 us. This module walks a definition
from :mod:`virtfs_proto.layouts` once and turns each run of fixed-width
integers into one precompiled :class:`struct.Struct` and each V9fsString into
a length read plus a slice. From those steps it then generates straight-line
Python for the common case (loops and type tests cost more than the struct
calls), falling back to the step-by-step reference for anything unusual so
that errors are always the reference's. Nothing here restates a layout:
change a definition and the compiled plan changes with it. The tests check
that all paths agree on every vector and on generated messages, and
``benchmarks/bench_codec.py`` measures them against hand-written ``struct``
code.
"""

from __future__ import annotations

import keyword
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from construct import FormatField, GreedyBytes, Prefixed, Renamed, Struct

from .errors import LocalProtocolError, TrailingBytes, TruncatedPayload

_Decoder = Callable[..., tuple[Any, ...]]
_Encoder = Callable[[Sequence[Any]], bytes]
_MessageEncoder = Callable[[Any], bytes]


def _name(step: Any) -> str:
    # Only on error paths: the name of the string field a step reads.
    return str(step.name)


def _unwrap(con: Any) -> Any:
    # "name" / Int32ul * "doc" wraps the field twice in Renamed.
    while isinstance(con, Renamed):
        con = con.subcon
    return con


@dataclass(frozen=True, slots=True)
class _Fixed:
    """A run of fixed-width integer fields read or written with one Struct."""

    codec: struct.Struct
    names: tuple[str, ...]

    def truncated(self, available: int, offset: int) -> TruncatedPayload:
        """The error for a run of which only ``available`` bytes remain, at ``offset``.

        It names the first field that does not fit and gives *that field's*
        offset, whichever way the fields were grouped into runs.
        """
        fmt = self.codec.format
        order, codes = fmt[0], fmt[1:]
        for i, name in enumerate(self.names):
            field_offset = struct.calcsize(order + codes[:i])
            if field_offset + struct.calcsize(order + codes[i]) > available:
                return TruncatedPayload(
                    f"field {name!r} runs past the end of the payload", offset=offset + field_offset
                )
        raise AssertionError("the run fits")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class _String:
    """A V9fsString: a fixed-width length, then that many bytes."""

    length: struct.Struct
    name: str


class CompiledStruct:
    """A construct ``Struct`` compiled to ``struct.Struct`` steps.

    ``decode`` returns the field values in definition order (so a dataclass
    can be built positionally); ``encode`` takes them in the same order.
    """

    __slots__ = (
        "_getter",
        "_one_field",
        "_plan",
        "_single",
        "decode",
        "encode",
        "encode_message",
        "fixed_size",
        "names",
        "steps",
    )

    #: Decode ``buf[start:end]`` (keyword ``lenient``): the generated function,
    #: which falls back to :meth:`decode_checked` for anything it does not
    #: accept, so that errors are always that method's.
    decode: _Decoder
    #: Encode field values in definition order (generated; see :meth:`encode_checked`).
    encode: _Encoder
    #: Encode a message's fields (generated; see :meth:`encode_message_checked`).
    encode_message: _MessageEncoder

    def __init__(self, definition: Any) -> None:
        if not isinstance(definition, Struct):
            raise TypeError(f"expected a construct Struct, got {definition!r}")
        steps: list[_Fixed | _String] = []
        run_fmt = ""
        run_names: list[str] = []
        order = ""

        def flush() -> None:
            nonlocal run_fmt, run_names
            if run_names:
                steps.append(_Fixed(struct.Struct(order + run_fmt), tuple(run_names)))
            run_fmt, run_names = "", []

        for sub in definition.subcons:
            name = sub.name
            inner = _unwrap(sub)
            if isinstance(inner, FormatField):
                field_order, code = inner.fmtstr[0], inner.fmtstr[1:]
                if order and field_order != order:
                    raise TypeError("mixed byte orders in one definition")
                order = field_order
                run_fmt += code
                run_names.append(name)
            elif isinstance(inner, Prefixed) and _unwrap(inner.subcon) is GreedyBytes:
                flush()
                length = _unwrap(inner.lengthfield)
                if not isinstance(length, FormatField):
                    raise TypeError(f"unsupported length field in {name!r}")
                order = order or length.fmtstr[0]
                steps.append(_String(struct.Struct(length.fmtstr), name))
            else:
                raise TypeError(f"field {name!r}: no fast path for {inner!r}")
        flush()
        self.steps: tuple[_Fixed | _String, ...] = tuple(steps)
        self.names: tuple[str, ...] = tuple(sub.name for sub in definition.subcons)
        self.fixed_size: int | None = (
            sum(s.codec.size for s in steps if isinstance(s, _Fixed))
            if all(isinstance(s, _Fixed) for s in steps)
            else None
        )
        self._single: struct.Struct | None = (
            steps[0].codec if len(steps) == 1 and isinstance(steps[0], _Fixed) else None
        )
        # The steps flattened for the hot loops: (codec, fields it yields (0 for a
        # string), bytes it takes (the length prefix's, for a string), step).
        self._plan: tuple[tuple[struct.Struct, int, int, Any], ...] = tuple(
            (s.codec, len(s.names), s.codec.size, s)
            if isinstance(s, _Fixed)
            else (s.length, 0, s.length.size, s)
            for s in steps
        )
        # Reads a message's fields (the definition's names are the dataclass's).
        self._getter = operator.attrgetter(*self.names)
        self._one_field = len(self.names) == 1
        self.decode, self.encode, self.encode_message = _specialise(self)

    def decode_checked(
        self, buf: bytes | bytearray | memoryview, start: int, end: int, *, lenient: bool = False
    ) -> tuple[Any, ...]:
        """Decode ``buf[start:end]``: exactly, or (lenient) ignoring what follows the fields.

        Offsets in errors are relative to ``start``. This is the reference
        implementation, bound check by bound check; :attr:`decode` is the
        generated equivalent used on the hot path.
        """
        single = self._single
        if single is not None:
            stop = start + single.size
            if stop > end:
                raise self.steps[0].truncated(end - start, 0)  # type: ignore[union-attr]
            if stop != end and not lenient:
                raise TrailingBytes(f"{end - stop} bytes after the last field", offset=stop - start)
            return single.unpack_from(buf, start)
        values: list[Any] = []
        pos = start
        for codec, count, size, step in self._plan:
            stop = pos + size
            if count:
                if stop > end:
                    raise step.truncated(end - pos, pos - start)
                values.extend(codec.unpack_from(buf, pos))
                pos = stop
                continue
            if stop > end:
                raise TruncatedPayload(
                    f"length of string {_name(step)!r} runs past the end of the payload",
                    offset=pos - start,
                )
            n = codec.unpack_from(buf, pos)[0]
            if stop + n > end:
                raise TruncatedPayload(
                    f"string {_name(step)!r} of {n} bytes runs past the end of the payload",
                    offset=pos - start,
                )
            values.append(bytes(buf[stop : stop + n]))
            pos = stop + n
        if pos != end and not lenient:
            raise TrailingBytes(f"{end - pos} bytes after the last field", offset=pos - start)
        return tuple(values)

    def encode_checked(self, values: Sequence[Any]) -> bytes:
        """Encode field values given in definition order, checking each one."""
        single = self._single
        if single is not None:
            try:
                return single.pack(*values)
            except struct.error as exc:
                raise LocalProtocolError(f"cannot encode {self.names}: {exc}") from None
        parts: list[bytes] = []
        i = 0
        for codec, count, _, step in self._plan:
            if count:
                try:
                    parts.append(codec.pack(*values[i : i + count]))
                except struct.error as exc:
                    raise LocalProtocolError(f"cannot encode {step.names}: {exc}") from None
                i += count
                continue
            value = values[i]
            if not isinstance(value, bytes | bytearray | memoryview):
                raise LocalProtocolError(
                    f"field {_name(step)!r} must be bytes, not {type(value).__name__}"
                )
            try:
                parts.append(codec.pack(len(value)))
            except struct.error:
                raise LocalProtocolError(
                    f"string {_name(step)!r} is {len(value)} bytes; a V9fsString holds "
                    "at most 65535"
                ) from None
            parts.append(bytes(value))
            i += 1
        return b"".join(parts)

    def encode_message_checked(self, message: Any) -> bytes:
        """Encode a message whose attributes are this definition's fields."""
        try:
            values = self._getter(message)
        except AttributeError as exc:
            raise LocalProtocolError(f"cannot encode {message!r}: {exc}") from None
        return self.encode_checked((values,) if self._one_field else values)


def _specialise(
    cs: CompiledStruct,
) -> tuple[
    Callable[..., tuple[Any, ...]], Callable[[Sequence[Any]], bytes], Callable[[Any], bytes]
]:
    """Generate straight-line decode/encode functions for one compiled definition.

    The loops of the ``*_checked`` methods cost more than the struct calls
    themselves. The generated code does the same steps unrolled, for the
    common case only: whenever a bound, a type or a range is not right, it
    hands the input to the checked method, which raises the precise error
    (or agrees). A decode may read past ``end`` inside ``buf`` before the
    final check rejects it; that is harmless, as nothing is kept. The code
    is generated from the steps, so it follows the definitions.
    """
    if not all(name.isidentifier() and not keyword.iskeyword(name) for name in cs.names):
        return cs.decode_checked, cs.encode_checked, cs.encode_message_checked
    env: dict[str, Any] = {
        "_struct_error": struct.error,
        "_decode_checked": cs.decode_checked,
        "_encode_checked": cs.encode_checked,
        "LocalProtocolError": LocalProtocolError,
    }
    reads: list[str] = []
    parts: list[str] = []
    strings: list[str] = []
    out: list[str] = []
    for j, step in enumerate(cs.steps):
        if isinstance(step, _Fixed):
            env[f"_unpack{j}"] = step.codec.unpack_from
            env[f"_pack{j}"] = step.codec.pack
            names = [f"v{len(out) + i}" for i in range(len(step.names))]
            reads.append(f"{', '.join(names)}, = _unpack{j}(buf, pos)")
            reads.append(f"pos += {step.codec.size}")
            parts.append(f"_pack{j}({', '.join(names)})")
            out += names
        else:
            env[f"_unpack{j}"] = step.length.unpack_from
            env[f"_pack{j}"] = step.length.pack
            name = f"v{len(out)}"
            reads.append(f"at = pos + {step.length.size}")
            reads.append(f"pos = at + _unpack{j}(buf, pos)[0]")
            reads.append(f"{name} = bytes(buf[at:pos])")
            parts += [f"_pack{j}(len({name}))", name]
            strings.append(name)
            out.append(name)
    values = ", ".join(out) + ","
    body = parts[0] if len(parts) == 1 else f"b''.join(({', '.join(parts)}))"
    checks = " and ".join(f"type({v}) is bytes" for v in strings) or "True"
    getters = "; ".join(f"{v} = message.{n}" for v, n in zip(out, cs.names, strict=True))
    indent = "\n        "
    source = f"""
def decode(buf, start, end, *, lenient=False):
    pos = start
    try:
        {indent.join(reads)}
    except _struct_error:
        return _decode_checked(buf, start, end, lenient=lenient)
    if pos != end and (pos > end or not lenient):
        return _decode_checked(buf, start, end, lenient=lenient)
    return ({values})

def encode(values):
    try:
        {values} = values
        if {checks}:
            return {body}
    except (_struct_error, TypeError, ValueError):
        pass
    return _encode_checked(values)

def encode_message(message):
    try:
        {getters}
    except AttributeError as exc:
        raise LocalProtocolError(f"cannot encode {{message!r}}: {{exc}}") from None
    try:
        if {checks}:
            return {body}
    except (_struct_error, TypeError):
        pass
    return _encode_checked(({values}))
"""
    exec(compile(source, f"<fastpath {', '.join(cs.names)}>", "exec"), env)
    return env["decode"], env["encode"], env["encode_message"]


# -- the serving path's module, generated ahead of time ------------------------

#: Where :func:`generated_module_source` is committed, relative to the package.
GENERATED_MODULE: Final = "_fastpath_generated.py"


def generated_module_source() -> str:
    """The source of :mod:`virtfs_proto._fastpath_generated`, from :mod:`~virtfs_proto.layouts`.

    The helper's serving path imports that module instead of this one: it
    needs no construct, no dataclasses and no code compiled at start-up (and
    nothing is ever written at run time). Byte order is ``=`` (the host's,
    as every layout here; standard sizes, no padding). The same steps as
    :class:`CompiledStruct` drive it: a run of fixed-width fields is one
    ``struct.Struct``, a string a length read plus a slice. A request
    decoder returns the field values in definition order, or None for
    anything the layout does not accept (the caller answers ``ENOBUFS``,
    or asks :meth:`CompiledStruct.decode_checked` why). Every reply layout
    gets ``frame_<name>(message_type, *values)``: the whole STATUS/RESPONSE
    frame, header included. ``tests/codec/test_generated_fastpath.py``
    fails when the committed file differs from this function's output.
    """
    from .constants import MessageType
    from .layouts import layouts_for

    layouts = layouts_for("little")  # only the order differs between orders: written "="
    header = CompiledStruct(layouts.header)
    assert header._single is not None
    structs: dict[str, str] = {}  # format -> module-level name

    def struct_name(codec: struct.Struct) -> str:
        fmt = "=" + codec.format[1:]
        if fmt not in structs:
            structs[fmt] = f"_S{len(structs)}"
        return structs[fmt]

    header_fmt = header._single.format[1:]
    out: list[str] = []
    decoders: list[str] = []
    for mtype, definition in layouts.requests.items():
        cs = CompiledStruct(definition)
        name = mtype.name.removeprefix("T_").lower()
        reads: list[str] = []
        values: list[str] = []
        for step in cs.steps:
            if isinstance(step, _Fixed):
                names = [f"v{len(values) + i}" for i in range(len(step.names))]
                unpack = f"{struct_name(step.codec)}.unpack_from"
                reads.append(f"{', '.join(names)}, = {unpack}(buf, pos)")
                reads.append(f"pos += {step.codec.size}")
                values += names
            else:
                v = f"v{len(values)}"
                reads.append(f"at = pos + {step.length.size}")
                reads.append(f"pos = at + {struct_name(step.length)}.unpack_from(buf, pos)[0]")
                reads.append(f"{v} = bytes(buf[at:pos])")
                values.append(v)
        body = "\n        ".join(reads)
        out.append(
            f"""
def decode_{name}(buf: _Buffer, start: int, end: int, lenient: bool) -> _Decoded:
    \"\"\"{mtype.name}: ({", ".join(cs.names)}).\"\"\"
    pos = start
    try:
        {body}
    except _StructError:
        return None
    if pos != end and (pos > end or not lenient):
        return None
    return ({", ".join(values)},)
"""
        )
        decoders.append(f"    {int(mtype)}: decode_{name},  # {mtype.name}")
    frames: list[str] = []
    fixed_frames: list[str] = []
    for layout, definition in layouts.replies.items():
        if layout == "fd":
            continue  # no header: the fd reply is one int32 (FD_REPLY)
        cs = CompiledStruct(definition)
        params = ", ".join(f"{n}: {'bytes' if _is_string(cs, n) else 'int'}" for n in cs.names)
        if cs.fixed_size is not None:
            fmt = "=" + header_fmt + "".join(s.codec.format[1:] for s in cs.steps)  # type: ignore[union-attr]
            frame = struct_name(struct.Struct(fmt))
            fixed_frames.append(
                f"#: the whole {layout!r} reply: (type, {cs.fixed_size}, {', '.join(cs.names)})\n"
                f"FRAME_{layout.upper()}: Final = {frame}"
            )
            params = f"*values: int  # {', '.join(cs.names)}"
            if len(cs.names) == 1:
                params = f"{cs.names[0]}: int"
                expr = f"{frame}.pack(message_type, {cs.fixed_size}, {cs.names[0]})"
            else:
                params = "*values: int"
                expr = f"{frame}.pack(message_type, {cs.fixed_size}, *values)"
        else:
            parts: list[str] = []
            size: list[str] = []
            fixed: list[str] = []
            for step in cs.steps:
                if isinstance(step, _Fixed):
                    parts.append(f"{struct_name(step.codec)}.pack({', '.join(step.names)})")
                    size.append(str(step.codec.size))
                    fixed += step.names
                else:
                    parts += [f"{struct_name(step.length)}.pack(len({step.name}))", step.name]
                    size += [str(step.length.size), f"len({step.name})"]
            hdr = f"{struct_name(header._single)}.pack(message_type, {' + '.join(size)})"
            expr = f'b"".join(({hdr}, {", ".join(parts)}))'
        frames.append(
            f"""
def frame_{layout}(message_type: int, {params}) -> bytes:
    \"\"\"The {layout!r} reply ({", ".join(cs.names)}), header included.\"\"\"
    return {expr}
"""
        )
    fd = CompiledStruct(layouts.replies["fd"])
    assert fd._single is not None
    defs = "\n".join(f'{n} = struct.Struct("{f}")' for f, n in structs.items())
    return f'''# Do not edit: generated by scripts/gen-fastpath from virtfs_proto/layouts.py.
# ruff: noqa: E501
"""The helper's codec for its serving path, generated from :mod:`virtfs_proto.layouts`.

It imports nothing but ``struct`` (``typing`` only for the type checker), so
the helper starts without construct, the message dataclasses or typing and
compiles nothing at run time. :func:`virtfs_proto.fastpath.generated_module_source`
writes it; a test fails when it is stale. Every integer is in the host's byte
order (``=``), as QEMU marshals.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    _Buffer = bytes | bytearray | memoryview
    _Decoded = tuple[Any, ...] | None
_StructError = struct.error

{defs}

#: ``struct ProxyHeader`` (type, size)
HEADER: Final = {struct_name(header._single)}
#: the whole reply to T_OPEN/T_CREATE: V9FS_FD_VALID or -errno (no header)
FD_REPLY: Final = {struct_name(fd._single)}
#: T_SUCCESS / T_ERROR, the type of a STATUS or RESPONSE reply's header
T_SUCCESS: Final = {int(MessageType.T_SUCCESS)}
T_ERROR: Final = {int(MessageType.T_ERROR)}

# -- requests: field values in definition order, or None ---------------------
{"".join(out)}
#: request type code -> its decoder
REQUEST_DECODERS: Final = {{
{chr(10).join(decoders)}
}}

# -- replies -----------------------------------------------------------------

{chr(10).join(fixed_frames)}
{"".join(frames)}'''


def _is_string(cs: CompiledStruct, name: str) -> bool:
    return any(isinstance(s, _String) and s.name == name for s in cs.steps)
