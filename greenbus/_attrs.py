"""``readonly``: a read-only attribute in one line instead of a three-line property.

Internal.  ``state = readonly[BusState]("_state", "A bus's life stage.")``
reads ``self._state`` (any dotted path: ``"outbox.dropped"``) when
``obj.state`` is read, and refuses ``obj.state = ...`` with the
``AttributeError`` a property without a setter raises.  For the many
introspection attributes whose whole body would be ``return self._x``.
"""

from __future__ import annotations

import operator
from typing import Any, Generic, NoReturn, TypeVar, overload

__all__ = ["readonly"]

T = TypeVar("T")


class readonly(Generic[T]):
    """A read-only view of the attribute at ``path`` of each instance.

    Args:
        path: the attribute to read, dotted for nested ones.
        doc: shown as the attribute's docstring.
    """

    __slots__ = ("_get", "_name", "doc")

    def __init__(self, path: str, doc: str | None = None) -> None:
        self._get = operator.attrgetter(path)
        #: What the attribute holds, in words (kept for help() and the docs).
        self.doc = doc
        self._name = path

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> readonly[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return self._get(obj)

    def __set__(self, obj: object, value: object) -> NoReturn:
        raise AttributeError(f"{self._name} is read-only")
