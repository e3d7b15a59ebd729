"""Sphinx directives that render the protocol's tables from the definitions.

Nothing in here restates a layout. Every field table, byte-layout diagram and
summary table is computed at build time by walking the construct definitions
in :mod:`virtfs_proto.layouts` (field names, widths, signedness, the ``*``
docstrings), the enums and maps in :mod:`virtfs_proto.constants`, the errno
table in :mod:`virtfs_proto.errnos`, the vector files in ``virtfs_proto/kit/vectors/`` and
the command-line parser in :mod:`virtfs_proto.cli`. Change a definition and
the rendered spec changes with it; ``tests/test_docs.py`` checks that.

The rendering functions (``layout_rows``, ``frame_rows``, ``diagram`` and the
``*_rst`` functions) are plain Python returning text, so tests can call them
without Sphinx. The directives only feed that text to the reST parser.

Directives:

``.. virtfs-layout:: header`` / ``reply NAME`` / ``request T_NAME``
    field table and diagram of one frame (or of the header alone).
``.. virtfs-message:: T_NAME``
    a request's frame, then the reply shape and success payload(s).
``.. virtfs-message-types::``
    every type code with its direction, reply shape and description.
``.. virtfs-reply-table::``
    request -> reply shape -> success payload -> failure form.
``.. virtfs-reply-payloads::``
    the frame of every RESPONSE success payload.
``.. virtfs-errno-table::``
    the Linux errno table with wire bytes.
``.. virtfs-vectors::``
    the golden vectors packaged in ``virtfs_proto/kit/vectors/``.
``.. virtfs-cli::``
    every ``virtfs-proto`` sub-command with its usage and options.
``.. virtfs-capabilities::``
    the capabilities the reference helper keeps, when, and the reason for each.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from construct import FormatField, GreedyBytes, Prefixed, Renamed, Struct
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

from virtfs_proto import errnos, layouts
from virtfs_proto import messages as m
from virtfs_proto.codec import success_layout
from virtfs_proto.constants import (
    HEADER_SIZE,
    REPLY_KIND,
    REQUEST_TYPES,
    V9FS_FD_VALID,
    MessageType,
    ReplyKind,
)

#: The byte order every rendered table and diagram uses (the vectors' order).
BYTEORDER: Literal["little"] = "little"

#: Width of a diagram line, to fit a literal block on a page.
DIAGRAM_WIDTH = 76

# fmtstr code -> (QEMU marshaller code, C type)
_INT_TYPES = {
    "H": ("w", "uint16"),
    "h": ("w", "int16"),
    "I": ("d", "uint32"),
    "i": ("d", "int32"),
    "L": ("d", "uint32"),
    "l": ("d", "int32"),
    "Q": ("q", "uint64"),
    "q": ("q", "int64"),
}

# The success payload of each reply layout name, in words, for summary tables.
_SHAPE_TEXT = {
    ReplyKind.FD: "FD",
    ReplyKind.STATUS: "STATUS",
    ReplyKind.RESPONSE: "RESPONSE",
}


# -- the model: rows computed from a construct Struct ----------------------


@dataclass(frozen=True)
class Row:
    """One field of a frame, as the tables show it."""

    name: str
    code: str  #: QEMU's marshaller code: ``w``, ``d``, ``q`` or ``s``
    ctype: str  #: ``uint32``, ``int64``, ``string`` ...
    offset: str  #: offset from the start of the frame, e.g. ``8`` or ``10 + len(path)``
    size: str  #: ``4`` or ``2 + len(path)``
    doc: str
    fixed_size: int | None  #: None for a string
    value: str = ""  #: a fixed value in this frame (header type and size)
    offset_fixed: int = 0  #: the constant part of ``offset``
    offset_terms: tuple[str, ...] = ()  #: the ``len(...)`` terms of ``offset``


def _unwrap(con: Any) -> Any:
    while isinstance(con, Renamed):
        con = con.subcon
    return con


def _expr(fixed: int, variables: Sequence[str]) -> str:
    return " + ".join([str(fixed), *variables]) if variables else str(fixed)


def classify(con: Any) -> tuple[str, str, int | None]:
    """``(code, ctype, size)`` of one field's construct; ``size`` None if variable.

    Raises :class:`TypeError` for a construct the docs do not know how to
    show, so a new kind of field cannot be skipped silently.
    """
    inner = _unwrap(con)
    if isinstance(inner, FormatField):
        code = inner.fmtstr[1:]
        if code not in _INT_TYPES:
            raise TypeError(f"unsupported integer format {inner.fmtstr!r}")
        wire, ctype = _INT_TYPES[code]
        return wire, ctype, struct.calcsize(inner.fmtstr)
    if isinstance(inner, Prefixed) and _unwrap(inner.subcon) is GreedyBytes:
        length = _unwrap(inner.lengthfield)
        if not isinstance(length, FormatField) or length.fmtstr[1:] != "H":
            raise TypeError(f"unsupported string length prefix {length!r}")
        return "s", "string", None
    raise TypeError(f"the docs cannot render construct {inner!r}")


def layout_rows(
    definition: Any, start: int = 0, variables: Sequence[str] = ()
) -> tuple[list[Row], int, list[str]]:
    """Rows of a Struct's fields, starting at ``start`` (+ ``variables``).

    Returns the rows and the end offset as ``(fixed part, variable terms)``.
    """
    if not isinstance(definition, Struct):
        raise TypeError(f"expected a construct Struct, got {definition!r}")
    rows: list[Row] = []
    fixed = start
    terms = list(variables)
    for sub in definition.subcons:
        name = sub.name
        if not name:
            raise TypeError(f"unnamed field in {definition!r}")
        code, ctype, size = classify(sub)
        doc = " ".join((sub.docs or "").split())
        offset = _expr(fixed, terms)
        here = (fixed, tuple(terms))
        if size is None:
            term = f"len({name})"
            rows.append(Row(name, code, ctype, offset, f"2 + {term}", doc, None, "", *here))
            fixed += 2
            terms.append(term)
        else:
            rows.append(Row(name, code, ctype, offset, str(size), doc, size, "", *here))
            fixed += size
    return rows, fixed, terms


def _header_rows(type_value: str, size_value: str) -> list[Row]:
    rows, _, _ = layout_rows(layouts.layouts_for(BYTEORDER).header)
    values = {"type": type_value, "size": size_value}
    return [dataclasses.replace(r, value=values.get(r.name, "")) for r in rows]


def frame_rows(kind: str, name: str = "") -> tuple[list[Row], str]:
    """Rows of a whole frame and its total length as an expression.

    ``kind`` is ``"header"``, ``"request"`` (``name`` a :class:`MessageType`
    name) or ``"reply"`` (``name`` a reply layout name of
    :attr:`virtfs_proto.layouts.Layouts.replies`; ``error`` is the
    ``T_ERROR`` form, ``fd`` has no header).
    """
    lay = layouts.layouts_for(BYTEORDER)
    if kind == "header":
        rows, end, terms = layout_rows(lay.header)
        return rows, _expr(end, terms)
    if kind == "request":
        mtype = MessageType[name]
        if mtype not in lay.requests:
            raise KeyError(f"{name} is not a request type")
        payload, end, terms = layout_rows(lay.requests[mtype], HEADER_SIZE)
        size = _expr(end - HEADER_SIZE, terms)
        header = _header_rows(f"{int(mtype)} ({mtype.name})", size)
        return header + payload, _expr(end, terms)
    if kind == "reply":
        definition = lay.replies[name]
        if name == "fd":
            rows, end, terms = layout_rows(definition)
            return rows, _expr(end, terms)
        payload, end, terms = layout_rows(definition, HEADER_SIZE)
        rtype = MessageType.T_ERROR if name == "error" else MessageType.T_SUCCESS
        size = _expr(end - HEADER_SIZE, terms)
        header = _header_rows(f"{int(rtype)} ({rtype.name})", size)
        return header + payload, _expr(end, terms)
    raise ValueError(f"unknown frame kind {kind!r}")


# -- text rendering --------------------------------------------------------


def _lit(text: str) -> str:
    return f"``{text}``" if text else ""


def _indent(lines: Iterable[str], by: str = "   ") -> list[str]:
    return [by + line if line else "" for line in lines]


def list_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    widths: Sequence[int] | None = None,
    css_class: str = "",
) -> list[str]:
    """A reST ``list-table``."""
    out = [".. list-table::", "   :header-rows: 1"]
    if widths:
        out.append("   :widths: " + " ".join(str(w) for w in widths))
    if css_class:
        out.append(f"   :class: {css_class}")
    out.append("")
    for row in [header, *rows]:
        first = True
        for cell in row:
            out.append(("   * - " if first else "     - ") + (cell if cell else ""))
            first = False
    out.append("")
    return out


def field_table_rst(rows: Sequence[Row]) -> list[str]:
    """The field table of a frame: offset, field, type, size, description."""
    body = []
    for r in rows:
        desc = r.doc
        if r.value:
            desc = f"**= {r.value}**. {desc}" if desc else f"**= {r.value}**"
        body.append([_lit(r.offset), _lit(r.name), f"``{r.code}`` ({r.ctype})", _lit(r.size), desc])
    return list_table(
        ["offset", "field", "type", "size", "description"],
        body,
        widths=[16, 16, 16, 14, 38],
        css_class="virtfs-fields",
    )


def diagram(rows: Sequence[Row], end: str, width: int = DIAGRAM_WIDTH) -> list[str]:
    """An ASCII box diagram of a frame, wrapped to ``width`` columns.

    Each field is a box labelled with its name and its type; a string shows
    as two boxes, its ``w`` length and its bytes. The number above each left
    edge is the field's offset from the start of the frame.
    """
    cells: list[tuple[str, str, str]] = []  # (offset, name, type)
    for r in rows:
        if r.fixed_size is None:
            cells.append((r.offset, f"len({r.name})", "w"))
            cells.append((_expr(r.offset_fixed + 2, r.offset_terms), r.name, "bytes"))
        else:
            constant = r.value.split(" (")[0]
            label = f"{r.code}={constant}" if constant.isdigit() else r.code
            cells.append((r.offset, r.name, f"{label} {r.ctype}"))
    out: list[str] = []
    line: list[tuple[str, str, str, int]] = []
    used = 1

    def flush(last: bool) -> None:
        if not line:
            return
        top = "".join(off.ljust(w + 1) for off, _, _, w in line)
        if last and len(top) + len(end) <= width:
            top += end
        border = "+" + "".join("-" * w + "+" for *_, w in line)
        names = "|" + "".join(n.center(w) + "|" for _, n, _, w in line)
        types = "|" + "".join(t.center(w) + "|" for _, _, t, w in line)
        out.extend([top.rstrip(), border, names, types, border, ""])

    for off, name, typ in cells:
        w = max(len(name), len(typ), len(off)) + 2
        if line and used + w + 1 > width:
            flush(False)
            line, used = [], 1
        line.append((off, name, typ, w))
        used += w + 1
    flush(True)
    return out[:-1]


def frame_rst(rows: Sequence[Row], end: str, title: str = "") -> list[str]:
    """Field table plus diagram of one frame."""
    out: list[str] = []
    if title:
        out += [f".. rubric:: {title}", ""]
    out += field_table_rst(rows)
    out += [f"Total length: ``{end}`` bytes.", "", "::", ""]
    out += _indent(diagram(rows, end))
    out.append("")
    return out


def _sample_request(mtype: MessageType, **overrides: Any) -> m.Request:
    cls = m.REQUEST_CLASSES[mtype]
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        values[f.name] = b"" if f.type in ("bytes", bytes) else 0
    values.update(overrides)
    return cls(**values)


def success_layouts(mtype: MessageType) -> list[tuple[str, str]]:
    """``[(condition, reply layout name)]`` for a success answer to ``mtype``.

    Asked of :func:`virtfs_proto.codec.success_layout`, so the table follows
    the codec's own rule (including the xattr ``size == 0`` probe).
    """
    if mtype in (MessageType.T_LGETXATTR, MessageType.T_LLISTXATTR):
        return [
            ("size == 0", success_layout(_sample_request(mtype, size=0))),
            ("size > 0", success_layout(_sample_request(mtype, size=1))),
        ]
    return [("", success_layout(_sample_request(mtype)))]


def _payload_summary(name: str) -> str:
    lay = layouts.layouts_for(BYTEORDER)
    rows, end, terms = layout_rows(lay.replies[name])
    if len(rows) > 3:
        fields = f"{len(rows)} fields, :ref:`spec-reply-payloads`"
    else:
        fields = ", ".join(f"``{r.name}`` ({r.code})" for r in rows)
    return f"{fields}; {_expr(end, terms)} bytes"


def message_rst(name: str) -> list[str]:
    """A request's frame, and what answers it."""
    mtype = MessageType[name]
    cls = m.REQUEST_CLASSES[mtype]
    rows, end = frame_rows("request", name)
    out = frame_rst(rows, end, title=f"{name} request")
    out += [
        f"Codec class: :class:`~virtfs_proto.messages.{cls.__name__}`.",
        "",
        f".. rubric:: {name} reply",
        "",
    ]
    kind = REPLY_KIND[mtype]
    if kind is ReplyKind.FD:
        out += [
            "FD shape (:ref:`spec-fd-passing`): no header; 4 bytes, "
            f"``{V9FS_FD_VALID:#x}`` plus one ``SCM_RIGHTS`` descriptor on success, "
            "the negative errno without a descriptor on failure. "
            "Decodes to :class:`~virtfs_proto.messages.FdReply` or "
            ":class:`~virtfs_proto.messages.ErrorReply`.",
            "",
        ]
    elif kind is ReplyKind.STATUS:
        out += [
            "STATUS shape: ``T_SUCCESS`` with status 0, or ``T_ERROR`` with the "
            "negative errno; 12 bytes either way. Decodes to "
            ":class:`~virtfs_proto.messages.StatusReply` or "
            ":class:`~virtfs_proto.messages.ErrorReply`.",
            "",
        ]
    else:
        out += [
            "RESPONSE shape: ``T_ERROR`` with the negative errno on failure; on "
            "success ``T_SUCCESS`` and this payload:",
            "",
        ]
        for condition, layout in success_layouts(mtype):
            rrows, rend = frame_rows("reply", layout)
            cls_name = m.REPLY_CLASSES[layout].__name__
            title = f"{name} success reply" + (f", request {condition}" if condition else "")
            out += frame_rst(rrows, rend, title=title)
            out += [f"Decodes to :class:`~virtfs_proto.messages.{cls_name}`.", ""]
    return out


def _enum_member_docs() -> dict[str, str]:
    """The ``#:`` comments of :class:`MessageType` members, as autodoc reads them."""
    from sphinx.pycode import ModuleAnalyzer

    analyzer = ModuleAnalyzer.for_module("virtfs_proto.constants")
    docs = analyzer.find_attr_docs()
    return {
        attr: " ".join(" ".join(lines).split())
        for (scope, attr), lines in docs.items()
        if scope == "MessageType"
    }


def message_types_rst() -> list[str]:
    docs = _enum_member_docs()
    body = []
    for t in MessageType:
        if t in REPLY_KIND:
            direction, shape = "request", _SHAPE_TEXT[REPLY_KIND[t]]
        else:
            direction, shape = "reply header", ""
        body.append([str(int(t)), _lit(t.name), direction, shape, docs.get(t.name, "")])
    return list_table(
        ["code", "name", "sent in", "reply shape", "meaning"], body, widths=[8, 20, 14, 14, 44]
    )


def reply_table_rst() -> list[str]:
    body = []
    for t in REQUEST_TYPES:
        kind = REPLY_KIND[t]
        if kind is ReplyKind.FD:
            success = f"4 bytes ``{V9FS_FD_VALID:#x}`` + one fd"
            failure = "4 bytes ``-errno``, no fd"
        else:
            parts = []
            for condition, layout in success_layouts(t):
                if layout == "status":
                    parts.append("size 4, ``status`` = 0")
                    continue
                prefix = f"{condition}: " if condition else ""
                parts.append(f"{prefix}``{layout}`` ({_payload_summary(layout)})")
            success = "``T_SUCCESS``, " + "; ".join(parts)
            failure = "``T_ERROR``, size 4, ``-errno``"
        body.append([str(int(t)), _lit(t.name), _SHAPE_TEXT[kind], success, failure])
    return list_table(
        ["code", "request", "shape", "success", "failure"], body, widths=[6, 18, 12, 40, 24]
    )


def reply_payloads_rst() -> list[str]:
    out: list[str] = []
    names = []
    for t in REQUEST_TYPES:
        if REPLY_KIND[t] is ReplyKind.RESPONSE:
            for _, layout in success_layouts(t):
                if layout not in names:
                    names.append(layout)
    for name in names:
        users = [t.name for t in REQUEST_TYPES if any(name == lay for _, lay in success_layouts(t))]
        rows, end = frame_rows("reply", name)
        out += frame_rst(rows, end, title=f"``{name}``: success reply to {', '.join(users)}")
        out += [
            f"Decodes to :class:`~virtfs_proto.messages.{m.REPLY_CLASSES[name].__name__}`.",
            "",
        ]
    return out


def wire_bytes(value: int, size: int = 4) -> str:
    return value.to_bytes(size, BYTEORDER, signed=True).hex(" ")


def errno_table_rst() -> list[str]:
    aliases: dict[int, list[str]] = {}
    for alias, number in errnos.ALIASES.items():
        aliases.setdefault(number, []).append(alias)
    body = []
    for e in errnos.ERRNOS:
        name = _lit(e.name)
        if e.number in aliases:
            name += " (" + ", ".join(_lit(a) for a in sorted(aliases[e.number])) + ")"
        body.append([str(e.number), name, e.description, _lit(wire_bytes(-e.number))])
    return list_table(
        ["errno", "name", "description (strerror)", "on the wire (-errno)"],
        body,
        widths=[8, 28, 40, 24],
        css_class="virtfs-errnos",
    )


def _vector_request_name(data: bytes, byteorder: str) -> str:
    if len(data) < 4:
        return f"{len(data)} bytes"
    code = int.from_bytes(data[:4], "big" if byteorder == "big" else "little")
    try:
        return MessageType(code).name
    except ValueError:
        return f"type {code}"


def vectors_rst(vector_dir: Path) -> list[str]:
    """A table of the vectors in ``vector_dir`` (the format of ``spec/vectors.rst``)."""
    files = sorted(vector_dir.glob("*.json"))
    if not files:
        return ["No vectors are committed in this release.", ""]
    body = []
    sources: dict[str, int] = {}
    for path in files:
        data = json.loads(path.read_text())
        order = data.get("byteorder", BYTEORDER)
        steps = []
        for ex in data["exchanges"]:
            name = _vector_request_name(bytes.fromhex(ex["request"]), order)
            reply = ex.get("decoded", {}).get("reply", {})
            if ex.get("timed_out"):
                outcome = " (hang)"
            elif ex.get("reply") is None:
                outcome = " (no reply)"
            elif reply.get("kind") == "error":
                outcome = f" → {reply.get('name', reply.get('errno'))}"
            elif reply.get("kind"):
                outcome = f" → {reply['kind']}"
            else:
                outcome = " → undecodable"
            expected_fds = 1 if reply.get("kind") == "fd" else 0
            if ex.get("fds", 0) != expected_fds:
                outcome += f" ({ex.get('fds', 0)} fds)"
            steps.append(f"``{name}``{outcome}")
        end = data.get("end", {})
        ending = end.get("helper", "")
        if end.get("signal"):
            ending += f" ({end['signal']})"
        elif end.get("returncode") is not None:
            ending += f" (status {end['returncode']})"
        source = data.get("source", {})
        label = source.get("package") or source.get("helper") or "unknown"
        sources[label] = sources.get(label, 0) + 1
        body.append(
            [
                _lit(data.get("name", path.stem)),
                data.get("mode", ""),
                ", ".join(steps),
                ending,
                "defect: " + data["defect"] if data.get("defect") else "",
                data.get("description", ""),
            ]
        )
    out = [
        f"{len(files)} vectors. Sources: "
        + "; ".join(f"{label} ({n})" for label, n in sorted(sources.items()))
        + ".",
        "",
    ]
    return out + list_table(
        ["vector", "mode", "exchanges", "helper at the end", "QEMU defect", "description"],
        body,
        widths=[16, 7, 27, 12, 18, 20],
    )


def cli_parser() -> argparse.ArgumentParser:
    """The ``virtfs-proto`` argument parser, from :mod:`virtfs_proto.cli`."""
    from virtfs_proto import cli

    parser = _parser_of(cli, required=True)
    assert parser is not None
    return parser


def _parser_of(module: Any, required: bool = False) -> argparse.ArgumentParser | None:
    # Every sub-command module but the helper's (QEMU's getopt command line,
    # rendered from its --help) exposes build_parser().
    build = getattr(module, "build_parser", None)
    if build is not None:
        parser = build()
        if isinstance(parser, argparse.ArgumentParser):
            return parser
    if required:
        raise LookupError(f"{module.__name__} exposes no argparse parser (build_parser())")
    return None


def cli_subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every sub-command's parser; a delegated one is its own module's parser."""
    from virtfs_proto import cli

    delegated = cli.DELEGATED
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out = {}
            for name, sub in action.choices.items():
                own = None
                if name in delegated:
                    try:
                        module = importlib.import_module(delegated[name][0])
                    except ImportError:
                        module = None
                    own = _parser_of(module) if module is not None else None
                out[name] = own or sub
            return out
    return {}


def _delegated_help(name: str) -> list[str] | None:
    """``virtfs-proto NAME --help`` of a sub-command that parses its own options."""
    from virtfs_proto import cli

    delegated = cli.DELEGATED
    if name not in delegated:
        return None
    try:
        module = importlib.import_module(delegated[name][0])
    except ImportError:
        return None
    if _parser_of(module) is not None or not callable(getattr(module, "main", None)):
        return None
    # QEMU-compatible commands print their usage on stderr, as QEMU's helper does.
    buffer = io.StringIO()
    with (
        contextlib.redirect_stdout(buffer),
        contextlib.redirect_stderr(buffer),
        contextlib.suppress(SystemExit),
    ):
        module.main(["--help"])
    text = buffer.getvalue().rstrip()
    return text.splitlines() if text else None


def cli_rst() -> list[str]:
    parser = cli_parser()
    parser.prog = "virtfs-proto"
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
    out = ["::", "", *_indent(parser.format_help().rstrip().splitlines()), ""]
    for name, sub in cli_subcommands(parser).items():
        title = f"virtfs-proto {name}"
        out += [title, "-" * len(title), ""]
        summary = sub.description or helps.get(name, "")
        if summary:
            out += [" ".join(summary.split()), ""]
        text = _delegated_help(name)
        if text is None:
            sub.prog = title
            text = sub.format_help().rstrip().splitlines()
        out += ["::", "", *_indent(text), ""]
    return out


def capabilities_rst() -> list[str]:
    """The reference helper's kept capabilities, from its own table."""
    from virtfs_proto import procfs
    from virtfs_proto.server import privileges

    kept_when = (
        (privileges.KEPT_CAPABILITIES, "always"),
        (privileges.DEVICE_NODE_CAPABILITIES, "only with ``--allow-device-nodes``"),
    )
    body = [
        [_lit(procfs.capability_name(cap)), str(cap), when, " ".join(reason.split())]
        for table, when in kept_when
        for cap, reason in table.items()
    ]
    default = privileges.capability_mask(privileges.kept_capabilities(allow_device_nodes=False))
    devices = privileges.capability_mask(privileges.kept_capabilities(allow_device_nodes=True))
    out = list_table(
        ["capability", "number", "kept", "why the helper keeps it"], body, [22, 8, 16, 54]
    )
    out += [
        "As a mask (``CapPrm`` / ``CapEff`` / ``CapBnd`` in ``/proc``): "
        f"``{default:016x}``, and ``{devices:016x}`` with ``--allow-device-nodes``.",
        "",
    ]
    return out


def seccomp_rst() -> list[str]:
    """The seccomp filter's tables: the allowlist by reason, and the kill list."""
    from virtfs_proto.server import seccomp

    allow = [
        [" ".join(reason.split()), " ".join(_lit(n) for n in names)]
        for reason, names in seccomp.ALLOW_GROUPS
    ]
    out = list_table(["why", "allowed system calls"], allow, [45, 55])
    out += [
        f"{len(seccomp.ALLOW_LIST)} system calls allowed outright, and "
        f"{len(seccomp.CONDITIONAL)} after an argument check "
        f"({', '.join(_lit(n) for n in seccomp.CONDITIONAL)}, below). "
        f"These {len(seccomp.KILL_LIST)} kill the process (``SIGSYS``): "
        + ", ".join(_lit(n) for n in seccomp.KILL_LIST)
        + ", and ``socket`` of any family but ``AF_UNIX``.",
        "",
    ]
    return out


def landlock_rst() -> list[str]:
    """Landlock's rights by ABI version, and what the helper does with each."""
    from virtfs_proto.server import landlock

    def fate(name: str) -> str:
        if name in landlock.NEVER_ALLOWED:
            return "handled, allowed nowhere"
        if name in landlock.DEVICE_NODE_RIGHTS:
            return "beneath the export only with ``--allow-device-nodes``; else nowhere"
        return "beneath the export only"

    body = [
        [_lit(f"LANDLOCK_ACCESS_FS_{name}"), str(since), fate(name)]
        for name, _, since in landlock.FS_RIGHTS
    ]
    body += [
        [_lit(f"LANDLOCK_ACCESS_NET_{name}"), str(landlock.NET_ABI), "handled, allowed nowhere"]
        for name, _ in landlock.NET_RIGHTS
    ]
    body += [
        [_lit(f"LANDLOCK_SCOPE_{name}"), str(landlock.SCOPE_ABI), "scoped to the helper's domain"]
        for name, _ in landlock.SCOPES
    ]
    return list_table(["right", "ABI", "the helper"], body, [40, 8, 52])


# -- Sphinx glue ------------------------------------------------------------


class _RstDirective(SphinxDirective):
    """Base: render reST text from the definitions and parse it in place."""

    titles = False

    def lines(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(layouts.__file__)
        self.env.note_dependency(errnos.__file__)
        try:
            text = self.lines()
        except (KeyError, LookupError, TypeError, ValueError) as exc:
            raise self.error(f"{self.name}: {exc}") from exc
        container = nodes.container(classes=["virtfs-generated"])
        content = StringList(text, source=f"<{self.name} {' '.join(self.arguments)}>")
        if self.titles:
            nested_parse_with_titles(self.state, content, container)
        else:
            self.state.nested_parse(content, self.content_offset, container)
        return [container]


class LayoutDirective(_RstDirective):
    required_arguments = 1
    optional_arguments = 1
    option_spec = {"title": directives.unchanged}

    def lines(self) -> list[str]:
        kind = self.arguments[0]
        name = self.arguments[1] if len(self.arguments) > 1 else ""
        rows, end = frame_rows(kind, name)
        return frame_rst(rows, end, title=self.options.get("title", ""))


class MessageDirective(_RstDirective):
    required_arguments = 1

    def lines(self) -> list[str]:
        return message_rst(self.arguments[0])


class MessageTypesDirective(_RstDirective):
    def lines(self) -> list[str]:
        return message_types_rst()


class ReplyTableDirective(_RstDirective):
    def lines(self) -> list[str]:
        return reply_table_rst()


class ReplyPayloadsDirective(_RstDirective):
    def lines(self) -> list[str]:
        return reply_payloads_rst()


class ErrnoTableDirective(_RstDirective):
    def lines(self) -> list[str]:
        return errno_table_rst()


class VectorsDirective(_RstDirective):
    def lines(self) -> list[str]:
        vector_dir = Path(self.config.virtfs_vectors_dir)
        for path in vector_dir.glob("*.json"):
            self.env.note_dependency(str(path))
        return vectors_rst(vector_dir)


class CliDirective(_RstDirective):
    titles = True

    def lines(self) -> list[str]:
        return cli_rst()


class CapabilitiesDirective(_RstDirective):
    def lines(self) -> list[str]:
        return capabilities_rst()


class SeccompDirective(_RstDirective):
    def lines(self) -> list[str]:
        return seccomp_rst()


class LandlockDirective(_RstDirective):
    def lines(self) -> list[str]:
        return landlock_rst()


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("virtfs_vectors_dir", "", "env", types=[str])
    app.add_directive("virtfs-layout", LayoutDirective)
    app.add_directive("virtfs-message", MessageDirective)
    app.add_directive("virtfs-message-types", MessageTypesDirective)
    app.add_directive("virtfs-reply-table", ReplyTableDirective)
    app.add_directive("virtfs-reply-payloads", ReplyPayloadsDirective)
    app.add_directive("virtfs-errno-table", ErrnoTableDirective)
    app.add_directive("virtfs-vectors", VectorsDirective)
    app.add_directive("virtfs-cli", CliDirective)
    app.add_directive("virtfs-capabilities", CapabilitiesDirective)
    app.add_directive("virtfs-seccomp", SeccompDirective)
    app.add_directive("virtfs-landlock", LandlockDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
