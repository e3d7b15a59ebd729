"""Fast codecs compiled from the construct definitions.

Interpreting a construct ``Struct`` costs ~20 us per stat reply; one
``struct.Struct.unpack_from`` costs ~0.1 us. This module walks a definition
from :mod:`virtfs_proto.layouts` once and turns each run of fixed-width
integers into one precompiled :class:`struct.Struct` and each V9fsString into
a length read plus a slice. Nothing here restates a layout: change a
definition and the compiled plan changes with it. The tests check that both
paths agree on every vector and on generated messages.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from construct import FormatField, GreedyBytes, Prefixed, Renamed, Struct

from .errors import LocalProtocolError, TrailingBytes, TruncatedPayload


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

    __slots__ = ("_single", "fixed_size", "names", "steps")

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

    def decode(
        self, buf: bytes | bytearray | memoryview, start: int, end: int, *, lenient: bool = False
    ) -> tuple[Any, ...]:
        """Decode ``buf[start:end]``: exactly, or (lenient) ignoring what follows the fields.

        Offsets in errors are relative to ``start``.
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
        for step in self.steps:
            if isinstance(step, _Fixed):
                stop = pos + step.codec.size
                if stop > end:
                    raise step.truncated(end - pos, pos - start)
                values.extend(step.codec.unpack_from(buf, pos))
                pos = stop
            else:
                stop = pos + step.length.size
                if stop > end:
                    raise TruncatedPayload(
                        f"length of string {step.name!r} runs past the end of the payload",
                        offset=pos - start,
                    )
                (n,) = step.length.unpack_from(buf, pos)
                if stop + n > end:
                    raise TruncatedPayload(
                        f"string {step.name!r} of {n} bytes runs past the end of the payload",
                        offset=pos - start,
                    )
                values.append(bytes(buf[stop : stop + n]))
                pos = stop + n
        if pos != end and not lenient:
            raise TrailingBytes(f"{end - pos} bytes after the last field", offset=pos - start)
        return tuple(values)

    def encode(self, values: Sequence[Any]) -> bytes:
        """Encode field values given in definition order."""
        single = self._single
        if single is not None:
            try:
                return single.pack(*values)
            except struct.error as exc:
                raise LocalProtocolError(f"cannot encode {self.names}: {exc}") from None
        parts: list[bytes] = []
        i = 0
        for step in self.steps:
            if isinstance(step, _Fixed):
                n = len(step.names)
                try:
                    parts.append(step.codec.pack(*values[i : i + n]))
                except struct.error as exc:
                    raise LocalProtocolError(f"cannot encode {step.names}: {exc}") from None
                i += n
            else:
                value = values[i]
                if not isinstance(value, bytes | bytearray | memoryview):
                    raise LocalProtocolError(
                        f"field {step.name!r} must be bytes, not {type(value).__name__}"
                    )
                try:
                    parts.append(step.length.pack(len(value)))
                except struct.error:
                    raise LocalProtocolError(
                        f"string {step.name!r} is {len(value)} bytes; a V9fsString holds "
                        "at most 65535"
                    ) from None
                parts.append(bytes(value))
                i += 1
        return b"".join(parts)
