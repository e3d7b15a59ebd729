"""Record: a slotted, read-only value class, for the helper's start-up path.

The helper's few value types (its options' layers, capability sets, the
confinement and filter reports) were dataclasses; importing
:mod:`dataclasses` brings :mod:`inspect`, :mod:`ast`, :mod:`re` and
:mod:`typing` with it, about 7 ms of a 20 ms start (``-X importtime``). A
subclass lists its fields in ``__slots__`` and sets them in ``__init__``
through :meth:`_set`; equality, hashing and ``repr`` go by those fields.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is one of the imports this saves
if TYPE_CHECKING:
    from typing import Any, Self


class Record:
    __slots__: tuple[str, ...] = ()

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (dataclasses.replace)."""
        new = object.__new__(type(self))
        new._set(**{name: getattr(self, name) for name in self.__slots__} | changes)
        return new

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
