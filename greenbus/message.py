"""The message every subscriber receives: an immutable 4-tuple with a ``reply()``.

A :class:`Message` is ``(topic, data, headers, reply_to)``: a tuple, built
once per emit and shared by every subscriber it goes to (the same object in
every channel), so a delivery is just ``handler(msg)``; a lone subscriber
makes it from the emit's plain fields as it delivers it.  Each bus (and
remote client) delivers instances of its own subclass (:func:`message_class`),
which binds ``reply()`` to that owner without a reference from every queued
item.  ``topic``, ``data`` and ``reply_to`` are read by C-level descriptors
(as a namedtuple's fields are): a handler reading ``msg.data`` runs no
Python code for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import NoReplyTo

__all__ = ["Emitter", "Message", "message_class"]

_EMPTY_HEADERS: Mapping[str, Any] = MappingProxyType({})
_tuple_new = tuple.__new__

try:
    # What namedtuple's fields use: a C descriptor reading one tuple item
    # (about 3x faster than a Python property on CPython).
    from collections import _tuplegetter  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - other Python implementations

    def _tuplegetter(index: int, doc: str) -> Any:
        return property(itemgetter(index), doc=doc)


class Emitter(Protocol):
    """What a message's ``reply()`` needs of its owner: ``emit(topic, data, headers=...)``."""

    def emit(self, topic: str, data: Any = ..., *, headers: Mapping[str, Any] | None = ...) -> int:
        """Queue ``data`` on ``topic``; how many subscriptions took it."""


class Message(tuple[Any, ...]):
    """One delivered message.  Immutable, and shared by every subscriber.

    Attributes:
        topic: the concrete topic it was emitted on.
        data: the payload, passed by reference (not copied).
        headers: a read-only mapping, empty if none were given.
        reply_to: the inbox topic of a request, or None.
    """

    __slots__ = ()

    #: What ``reply()`` emits on: a bus or a remote client.  Each owner
    #: delivers instances of its own subclass binding it (see
    #: :func:`message_class`), so a message is a 4-tuple with no reference
    #: to its owner of its own.
    _bus: Emitter | None = None

    def __new__(
        cls,
        topic: str,
        data: Any = None,
        headers: Mapping[str, Any] | None = None,
        reply_to: str | None = None,
        bus: Any = None,
    ) -> Message:
        if bus is not None:
            cls = bus.message_class
        return _tuple_new(cls, (topic, data, headers, reply_to))

    if TYPE_CHECKING:

        @property
        def topic(self) -> str: ...

        @property
        def data(self) -> Any: ...

        @property
        def reply_to(self) -> str | None: ...

    else:
        topic = _tuplegetter(0, "The concrete topic it was emitted on.")
        data = _tuplegetter(1, "The payload, passed by reference (not copied).")
        reply_to = _tuplegetter(3, "The inbox topic of a request, or None.")

    @property
    def headers(self) -> Mapping[str, Any]:
        headers = self[2]
        return _EMPTY_HEADERS if headers is None else MappingProxyType(headers)

    def reply(self, data: Any = None, *, headers: Mapping[str, Any] | None = None) -> int:
        """Emit ``data`` to this request's ``reply_to`` topic on the same bus.

        Returns:
            how many subscriptions received the reply (0 if the requester
            has given up).

        Raises:
            NoReplyTo: this message is not a request.
        """
        reply_to = self[3]
        bus = self._bus
        if reply_to is None or bus is None:
            raise NoReplyTo(self[0])
        return bus.emit(reply_to, data, headers=headers)

    def __repr__(self) -> str:
        extra = f", reply_to={self[3]!r}" if self[3] is not None else ""
        if self[2]:
            extra += f", headers={self[2]!r}"
        return f"Message(topic={self[0]!r}, data={self[1]!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return tuple.__ne__(self, other)

    def __hash__(self) -> int:
        return hash((self[0], self[3]))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Message, (self[0], self[1], self[2], self[3]))


def message_class(owner: Emitter) -> type[Message]:
    """A :class:`Message` subclass whose ``reply()`` emits on ``owner``.

    Each bus (and remote client) makes one.  Delivering instances of it
    keeps queued items as 4-tuples without a reference to the bus.
    """
    return type(
        "Message",
        (Message,),
        {
            "__slots__": (),
            "_bus": owner,
            "__module__": Message.__module__,
            "__qualname__": "Message",
        },
    )
