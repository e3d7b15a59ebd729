"""The documentation: it builds clean, covers everything, and follows the definitions.

* ``sphinx-build -W`` (warnings are errors) builds the site, spec included;
* every message type, errno name and CLI sub-command appears in the output;
* every generated field table agrees with the bytes the codec actually
  produces (offsets checked against encoded messages, not recomputed);
* changing a definition changes the rendered table (the tables are not a
  copy that could go stale);
* the ``>>>`` snippets in the pages run.
"""

from __future__ import annotations

import dataclasses
import doctest
import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from construct import Int32ul, Struct

from virtfs_proto import errnos, layouts
from virtfs_proto import messages as m
from virtfs_proto.codec import encode_reply, encode_request
from virtfs_proto.constants import REQUEST_TYPES, MessageType
from virtfs_proto.kit import vectors_dir

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SPEC = ROOT / "spec"

sys.path.insert(0, str(DOCS / "_ext"))
import virtfs_autospec as autospec  # noqa: E402

sys.path.remove(str(DOCS / "_ext"))


# -- the build --------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the site once, with warnings as errors, into a temporary directory."""
    out = tmp_path_factory.mktemp("html")
    doctrees = tmp_path_factory.mktemp("doctrees")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-E",
            "-b",
            "html",
            "-d",
            str(doctrees),
            str(DOCS),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def page_text(built: Path, page: str) -> str:
    raw = (built / page).read_text()
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


def all_text(built: Path) -> str:
    return "\n".join(
        page_text(built, str(p.relative_to(built)))
        for p in built.rglob("*.html")
        if "_modules" not in p.parts
    )


def test_site_builds_with_warnings_as_errors(built: Path) -> None:
    for page in [
        "index.html",
        "introduction.html",
        "quickstart.html",
        "cli.html",
        "api.html",
        "security-model.html",
        "performance.html",
        "spec/index.html",
        "spec/messages.html",
        "spec/replies.html",
        "spec/errors.html",
        "spec/vectors.html",
        "tutorials/decode.html",
        "tutorials/client.html",
        "tutorials/helper-under-qemu.html",
        "tutorials/conformance.html",
    ]:
        assert (built / page).is_file(), page


def test_every_message_type_appears(built: Path) -> None:
    spec = page_text(built, "spec/messages.html")
    for t in MessageType:
        assert t.name in spec, t.name
    # each request has its own section with its generated request table
    for t in REQUEST_TYPES:
        assert f"{t.name} request" in spec, t.name
        assert f"{t.name} reply" in spec, t.name


def test_every_errno_name_appears_with_its_wire_bytes(built: Path) -> None:
    text = page_text(built, "spec/errors.html")
    for e in errnos.ERRNOS:
        assert re.search(rf"\b{e.name}\b", text), e.name
        assert autospec.wire_bytes(-e.number) in text, e.name
    for alias in errnos.ALIASES:
        assert alias in text


def test_every_vector_is_listed(built: Path) -> None:
    text = page_text(built, "spec/vectors.html")
    files = sorted(vectors_dir().glob("*.json"))
    assert files
    assert f"{len(files)} vectors" in text
    for path in files:
        assert path.stem in text, path.name


def test_every_cli_subcommand_appears(built: Path) -> None:
    subcommands = autospec.cli_subcommands(autospec.cli_parser())
    assert subcommands, "the CLI parser has no sub-commands"
    text = page_text(built, "cli.html")
    everywhere = all_text(built)
    for name, sub in subcommands.items():
        assert f"virtfs-proto {name}" in text, name
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, (name, option)
        assert f"virtfs-proto {name}" in everywhere


# -- the generated tables agree with the codec ------------------------------


class _Tables(HTMLParser):
    """Collects the rows of every ``virtfs-fields`` table, per message section."""

    def __init__(self) -> None:
        super().__init__()
        self.section: list[str] = []
        self.tables: dict[str, list[list[list[str]]]] = {}
        self._depth: list[bool] = []
        self._in_table = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.section.append(a.get("id") or "")
        elif tag == "table" and "virtfs-fields" in (a.get("class") or ""):
            self._in_table = True
            self.tables.setdefault(self.section[-1], []).append([])
        elif self._in_table and tag == "tr":
            self._row = []
        elif self._in_table and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section.pop()
        elif tag == "table":
            self._in_table = False
        elif self._in_table and tag == "tr" and self._row is not None:
            self.tables[self.section[-1]][-1].append(self._row)
            self._row = None
        elif self._in_table and tag in ("td", "th") and self._cell is not None:
            assert self._row is not None
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _sample_values(fields: list[tuple[str, Any]]) -> dict[str, Any]:
    """Distinct values for every field: strings of distinct lengths, distinct ints."""
    values: dict[str, Any] = {}
    for i, (name, con) in enumerate(fields):
        code, _, size = autospec.classify(con)
        if code == "s":
            values[name] = bytes([0x61 + i]) * (3 + 2 * i)
        else:
            assert size is not None
            values[name] = 0x10 + 0x11 * i
    return values


def _evaluate(expr: str, values: dict[str, Any]) -> int:
    total = 0
    for term in expr.split(" + "):
        match = re.fullmatch(r"len\((\w+)\)", term)
        total += len(values[match.group(1)]) if match else int(term)
    return total


def _check_rows_against_bytes(
    rows: list[list[str]], frame: bytes, values: dict[str, Any], header: dict[str, int]
) -> None:
    """Each rendered row's offset, size and type must match the encoded frame."""
    assert rows[0] == ["offset", "field", "type", "size", "description"]
    end = 0
    for offset_text, name, type_text, size_text, _desc in rows[1:]:
        offset = _evaluate(offset_text, values)
        size = _evaluate(size_text, values)
        assert offset == end, f"{name}: offset {offset_text} is not right after the last field"
        value = header[name] if name in header and offset < 8 else values[name]
        if type_text.startswith("s "):
            assert frame[offset : offset + 2] == len(value).to_bytes(2, "little"), name
            assert frame[offset + 2 : offset + size] == value, name
        else:
            signed = "(int" in type_text
            got = int.from_bytes(frame[offset : offset + size], "little", signed=signed)
            assert got == value, f"{name}: bytes at {offset_text} decode to {got}, not {value}"
        end = offset + size
    assert end == len(frame), "the table does not cover the whole frame"


def _messages_tables(built: Path) -> dict[str, list[list[list[str]]]]:
    parser = _Tables()
    parser.feed((built / "spec" / "messages.html").read_text())
    return parser.tables


@pytest.mark.parametrize("mtype", REQUEST_TYPES, ids=lambda t: t.name)
def test_built_request_table_matches_encoded_bytes(built: Path, mtype: MessageType) -> None:
    definition = layouts.layouts_for("little").requests[mtype]
    values = _sample_values([(sub.name, sub) for sub in definition.subcons])
    frame = encode_request(m.REQUEST_CLASSES[mtype](**values), byteorder="little")
    tables = _messages_tables(built)
    section = mtype.name.lower().replace("_", "-")
    assert section in tables, f"no generated table in section {section}"
    request_table = tables[section][0]
    _check_rows_against_bytes(
        request_table, frame, values, {"type": int(mtype), "size": len(frame) - 8}
    )


def _sample_reply_request(layout: str) -> m.Request:
    """A request whose success answer uses ``layout``."""
    for t in REQUEST_TYPES:
        for condition, name in autospec.success_layouts(t):
            if name == layout:
                if condition:
                    return autospec._sample_request(t, size=0 if condition == "size == 0" else 1)
                return autospec._sample_request(t)
    raise AssertionError(f"no request is answered with {layout}")


@pytest.mark.parametrize(
    "layout", ["stat", "statfs", "readlink", "xattr_size", "xattr_value", "version"]
)
def test_built_reply_payload_table_matches_encoded_bytes(built: Path, layout: str) -> None:
    definition = layouts.layouts_for("little").replies[layout]
    values = _sample_values([(sub.name, sub) for sub in definition.subcons])
    request = _sample_reply_request(layout)
    frame = encode_reply(request, m.REPLY_CLASSES[layout](**values), byteorder="little")
    parser = _Tables()
    parser.feed((built / "spec" / "replies.html").read_text())
    tables = [t for ts in parser.tables.values() for t in ts]
    wanted = [r.name for r in autospec.frame_rows("reply", layout)[0]]
    matching = [t for t in tables if [row[1] for row in t[1:]] == wanted]
    assert matching, f"no generated table for the {layout} reply"
    _check_rows_against_bytes(matching[0], frame, values, {"type": 0, "size": len(frame) - 8})


def test_every_request_field_and_doc_is_rendered() -> None:
    lay = layouts.layouts_for("little")
    for t, definition in lay.requests.items():
        text = "\n".join(autospec.message_rst(t.name))
        for sub in definition.subcons:
            assert f"``{sub.name}``" in text, (t.name, sub.name)
            assert " ".join(sub.docs.split()) in text, (t.name, sub.name)


# -- the tables follow the definitions ----------------------------------------


@pytest.fixture
def mutated_layouts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """T_OPEN with a field added and ``flags`` renamed, as a definition change would."""
    real = layouts.layouts_for("little")
    mutant_open = Struct(
        "path" / real.string * "file to open",
        "open_flags" / Int32ul * "renamed flags",
        "mutant" / Int32ul * "a field that did not exist",
    )
    requests = dict(real.requests)
    requests[MessageType.T_OPEN] = mutant_open
    fake = dataclasses.replace(real, requests=requests)
    monkeypatch.setattr(autospec.layouts, "layouts_for", lambda byteorder=None: fake)
    yield


def test_rendered_table_changes_when_the_definition_changes(mutated_layouts: None) -> None:
    text = "\n".join(autospec.message_rst("T_OPEN"))
    assert "``mutant``" in text
    assert "a field that did not exist" in text
    assert "``open_flags``" in text
    assert "``flags``" not in text
    # the new field's offset follows from the fields before it
    assert "``14 + len(path)``" in text
    assert "Total length: ``18 + len(path)`` bytes." in text


def test_unknown_field_kinds_are_refused_not_skipped() -> None:
    from construct import Flag

    with pytest.raises(TypeError):
        autospec.layout_rows(Struct("odd" / Flag * "a one-byte boolean"))


# -- doctests in the pages -----------------------------------------------------


def _pages_with_doctests() -> list[Path]:
    pages = [
        p for p in DOCS.rglob("*.rst") if not ({"_build", "spec"} & set(p.relative_to(DOCS).parts))
    ]
    pages += SPEC.glob("*.rst")
    return sorted(p for p in pages if ">>> " in p.read_text())


@pytest.mark.parametrize("page", _pages_with_doctests(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doctest_snippets_run(page: Path) -> None:
    result = doctest.testfile(
        str(page),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {page}"


# -- the examples the pages refer to ------------------------------------------

EXAMPLES = ROOT / "examples"


def _run_example(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_every_example_is_referenced_from_the_docs() -> None:
    pages = "\n".join(p.read_text() for p in DOCS.rglob("*.rst") if "_build" not in p.parts)
    for example in EXAMPLES.glob("*.py"):
        assert f"examples/{example.name}" in pages, f"{example.name} is not in the docs"


def test_example_decode_capture() -> None:
    proc = _run_example(str(EXAMPLES / "decode_capture.py"))
    assert proc.returncode == 0, proc.stderr
    assert "T_LSTAT" in proc.stdout
    assert "st_mode        33188" in proc.stdout


def _check_talk_to_helper(helper: list[str]) -> None:
    if os.geteuid() != 0:
        pytest.fail("the helper chroots into the export: run the suite as root", pytrace=False)
    proc = _run_example(str(EXAMPLES / "talk_to_helper.py"), *helper)
    assert proc.returncode == 0, proc.stderr
    # the output the client tutorial shows, line for line
    expected = (DOCS / "tutorials" / "client.rst").read_text()
    assert proc.stdout.strip(), "no output"
    for line in proc.stdout.splitlines():
        assert line.strip() in expected, line


@pytest.mark.root
@pytest.mark.qemu_helper
def test_example_talk_to_qemu_helper(qemu_helper: str) -> None:
    _check_talk_to_helper([qemu_helper])


@pytest.mark.root
def test_example_talk_to_our_helper() -> None:
    _check_talk_to_helper([sys.executable, "-m", "virtfs_proto.cli", "helper"])
