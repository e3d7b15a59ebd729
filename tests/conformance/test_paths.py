"""The suite's requests take QEMU's counted NUL from ``COUNTED_NUL_FIELDS``."""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

import pytest

from virtfs_proto import messages as m
from virtfs_proto.constants import COUNTED_NUL_FIELDS, MessageType
from virtfs_proto.kit import conformance
from virtfs_proto.kit.conformance.paths import PATH_FIELDS, Name, qemu, qpath, wrong_nul

SUITE = Path(conformance.__file__).parent

# == requests take the counted NUL from the table ==============================


def _build(cls: type[m.Request], field: str, path: Name) -> m.Request:
    """``cls`` with ``path`` in ``field`` and placeholders elsewhere, through qemu()."""
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.name.endswith("path"):
            values[f.name] = path if f.name == field else qpath("other")
        elif f.type in ("bytes", bytes):
            values[f.name] = b"x"
        else:
            values[f.name] = 0
    return qemu(cls, **values)  # type: ignore[arg-type]


def test_the_table_names_only_path_fields_the_requests_have() -> None:
    assert COUNTED_NUL_FIELDS <= PATH_FIELDS
    # every request carries a path, and each of its path fields is one qemu() decides
    assert {t for t, _ in PATH_FIELDS} == set(m.REQUEST_CLASSES)


@pytest.mark.parametrize(
    ("type_", "field"), sorted(PATH_FIELDS), ids=lambda v: getattr(v, "name", v)
)
def test_qemu_sends_each_path_field_as_the_table_says(type_: MessageType, field: str) -> None:
    cls = m.REQUEST_CLASSES[type_]
    counted = (type_, field) in COUNTED_NUL_FIELDS
    sent = getattr(_build(cls, field, qpath("dir/file")), field)
    assert sent == b"//dir/file" + (b"\0" if counted else b"")
    assert type(sent) is bytes  # resolved: no marker left for a second decision
    other = getattr(_build(cls, field, wrong_nul(qpath("dir/file"))), field)
    assert other == b"//dir/file" + (b"" if counted else b"\0")
    root = getattr(_build(cls, field, qpath("")), field)
    assert root == b"/" + (b"\0" if counted else b"")


def test_qemu_refuses_a_path_the_case_framed_itself() -> None:
    with pytest.raises(TypeError, match="COUNTED_NUL_FIELDS"):
        qemu(m.LstatRequest, b"//file.txt\0")
    with pytest.raises(TypeError, match="COUNTED_NUL_FIELDS"):
        qemu(m.LinkRequest, qpath("a"), b"//b")
    # strings that are no paths stay as given
    assert qemu(m.SymlinkRequest, 0, 0, b"target", qpath("l")).target == b"target"


def _suite_sources() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(SUITE.rglob("*.py"))]


def _allowed_class_uses(tree: ast.Module) -> set[int]:
    """Nodes where a request class may stand: qemu()'s first argument, isinstance()'s
    second, a type annotation, and the callee of a call (reported on its own)."""
    ok: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            ok.add(id(node.func))
            name = getattr(node.func, "id", "")
            if name == "qemu" and node.args:
                ok.add(id(node.args[0]))
            if name == "isinstance" and len(node.args) == 2:
                kinds = node.args[1]
                ok.update(id(k) for k in [kinds, *getattr(kinds, "elts", [])])
        annotations = [getattr(node, "annotation", None), getattr(node, "returns", None)]
        for a in annotations:
            if isinstance(a, ast.AST):
                ok.update(id(n) for n in ast.walk(a))
    return ok


def test_every_request_of_the_suite_is_built_by_qemu() -> None:
    """No case calls a request class itself (it would pick the NUL by hand), nor hands
    one on as a callable for later (long_path.lstat did: its path went without the NUL)."""
    direct = []
    for path, tree in _suite_sources():
        allowed = _allowed_class_uses(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called.endswith("Request") and hasattr(m, called):
                    direct.append(f"{path.relative_to(SUITE)}:{node.lineno} {called}(...)")
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.endswith("Request")
                and hasattr(m, node.attr)
                and node.attr != "Request"
                and id(node) not in allowed
            ):
                direct.append(f"{path.relative_to(SUITE)}:{node.lineno} {node.attr}")
    assert direct == []


def test_the_other_form_is_sent_by_few_named_cases() -> None:
    """wrong_nul() stays rare and visible: these cases, and no others, use it."""
    users = set()
    for path, tree in _suite_sources():
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef):
                for node in ast.walk(func):
                    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "wrong_nul":
                        users.add(f"{path.relative_to(SUITE)}:{func.name}")
    assert users == {os.path.join("cases", "security", "names.py") + ":empty_path"}
