"""How the suite builds a request: paths take QEMU's counted NUL from one table.

QEMU sends some path fields as a V9fsPath, whose length counts a trailing
NUL, and the others without one; :data:`~virtfs_proto.constants.COUNTED_NUL_FIELDS`
says which. A case never writes that NUL itself: it gives a path as a
:class:`Name` (``qpath("dir/file")`` is QEMU's ``//dir/file``) and builds the
request with :func:`qemu`, which looks the field up. A case that tests the
other form says so with :func:`wrong_nul`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Final, ParamSpec, TypeVar

from ... import messages as m
from ...constants import COUNTED_NUL_FIELDS, MessageType

P = ParamSpec("P")
R = TypeVar("R", bound=m.Request)


class Name(bytes):
    """A path's bytes without the counted NUL; :func:`qemu` adds it where the
    request's field carries one. ``Name(b"/abs")`` is taken as given."""


class _WrongNul(Name):
    """A path sent in the form its field does not use (see :func:`wrong_nul`)."""


def qpath(path: str | bytes) -> Name:
    """``path`` (relative to the export) as QEMU writes it: ``//path`` (root: ``/``)."""
    raw = os.fsencode(path)
    return Name(b"//" + raw if raw else b"/")


def wrong_nul(path: Name) -> Name:
    """``path`` in the other form: without the NUL where QEMU counts one, with one
    where it does not. Only for cases that test exactly that."""
    return _WrongNul(path)


def is_path_field(field: str) -> bool:
    """Whether a request field holds a path (``path``, ``oldpath``, ``newpath``, ``linkpath``)."""
    return field.endswith("path")


def qemu(cls: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``cls(*args, **kwargs)`` with each path as QEMU sends it (the one place the
    suite decides a NUL). Every path field must be given as a :class:`Name`."""
    request = cls(*args, **kwargs)
    wire: dict[str, bytes] = {}
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        if not is_path_field(f.name):
            continue
        if not isinstance(value, Name):
            raise TypeError(
                f"{type(request).__name__}.{f.name} given as {value!r}: give a qpath() or "
                "Name(), so that COUNTED_NUL_FIELDS decides its NUL"
            )
        nul = (request.TYPE, f.name) in COUNTED_NUL_FIELDS
        nul = nul != isinstance(value, _WrongNul)
        wire[f.name] = bytes(value) + (b"\0" if nul else b"")
    return dataclasses.replace(request, **wire)  # type: ignore[arg-type]


#: Every (type, field) a request carries a path in: what :func:`qemu` decides.
PATH_FIELDS: Final[frozenset[tuple[MessageType, str]]] = frozenset(
    (cls.TYPE, f.name)
    for cls in m.REQUEST_CLASSES.values()
    for f in dataclasses.fields(cls)
    if is_path_field(f.name)
)
