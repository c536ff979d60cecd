"""What a bus's subscribers want: counted patterns, and who is told when that changes.

Pure, no gevent.  A :class:`~greenbus.Bus` holds one :class:`Interest`: each
subscription (and each forward made with ``interest=True``) holds its
pattern while it lives, and so may a transport that routes by itself (a
hub's peers; see :meth:`greenbus.Bus.hold_interest`).  Listeners (a
federation) are told when a pattern gains its first holder and loses its
last one, so a node asks its broker only for what someone here wants.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["Interest", "InterestListener"]

logger = logging.getLogger("greenbus.bus")

#: ``listener(pattern, present)``: ``present`` is True when ``pattern``
#: gained its first holder, False when it lost its last.
InterestListener = Callable[[str, bool], object]


class Interest:
    """Patterns held, with how many hold each, and the listeners told of changes.

    Args:
        name: the owner's name, for logs.
    """

    __slots__ = ("_counts", "_listeners", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._counts: dict[str, int] = {}
        self._listeners: list[InterestListener] = []

    def __repr__(self) -> str:
        return f"<Interest {self.name} patterns={len(self._counts)}>"

    def patterns(self) -> list[str]:
        """Every pattern held now, in the order each was first held."""
        return list(self._counts)

    def hold(self, pattern: str) -> None:
        """One more holder of ``pattern``; listeners hear of its first."""
        count = self._counts.get(pattern, 0)
        self._counts[pattern] = count + 1
        if count == 0:
            self._tell(pattern, True)

    def release(self, pattern: str) -> None:
        """One holder of ``pattern`` fewer; listeners hear of its last.

        A release of a pattern nobody holds is a no-op.
        """
        count = self._counts.get(pattern, 0) - 1
        if count > 0:
            self._counts[pattern] = count
        elif count == 0:
            del self._counts[pattern]
            self._tell(pattern, False)

    def add_listener(self, listener: InterestListener) -> None:
        """Tell ``listener`` of every change from now on (it must not block)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: InterestListener) -> None:
        """Stop telling ``listener``; a no-op if it was not added."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _tell(self, pattern: str, present: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(pattern, present)
            except Exception:
                logger.exception("%s: interest listener %r failed", self.name, listener)
