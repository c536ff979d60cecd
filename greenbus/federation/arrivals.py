"""Which federation envelopes are new: duplicates dropped, gaps counted.  Pure.

A node receives a message more than once when two of its Redis
subscriptions match it (``chat.a`` and ``chat.*``), or when a batch is sent
again after a reconnect.  Without history, each origin numbers its messages
per topic (``q``): a number not above the last one seen is a repeat, a jump
is a gap (messages lost while the reader was cut off).  With history, the
position's sequence number increases per topic whoever published, and each
message names its predecessor on its topic (``b``): a predecessor never seen
is a gap.
"""

from __future__ import annotations

import logging

from .envelope import Envelope

__all__ = ["MAX_TRACKED", "Arrivals"]

logger = logging.getLogger("greenbus.federation")

#: Bounds on the tables of last numbers seen (cleared when full: after that
#: a repeat of an old message is taken for a new one, never the reverse).
MAX_TRACKED = 100_000


class Arrivals:
    """The last number seen per (origin, topic), and per topic by position.

    Args:
        node: this node's id, for the log.
    """

    __slots__ = ("_by_origin", "_by_topic", "duplicates", "gaps", "node")

    def __init__(self, node: str) -> None:
        self.node = node
        self._by_origin: dict[tuple[str, str], int] = {}
        self._by_topic: dict[str, int] = {}
        #: Repeats dropped, and messages (or, with history, gaps) found missing.
        self.duplicates = 0
        self.gaps = 0

    def is_new(self, env: Envelope) -> bool:
        """True for a message not seen before (then remembered); False for a repeat."""
        return self.admit(env.origin, env.topic, env.seq, env.pos, env.prev)

    def admit(self, origin: str, topic: str, seq: int, pos: str | None, prev: int) -> bool:
        """:meth:`is_new` from an envelope's fields (the reader's hot path)."""
        if pos is not None:
            new = self._by_position(topic, pos, prev)
        else:
            new = self._by_sequence(origin, topic, seq)
        if not new:
            self.duplicates += 1
        return new

    def _by_sequence(self, origin: str, topic: str, seq: int) -> bool:
        last = self._by_origin
        key = (origin, topic)
        previous = last.get(key)
        if previous is not None:
            if seq <= previous:
                return False
            if seq > previous + 1:
                self._gap(seq - previous - 1, origin, topic)
        elif len(last) > MAX_TRACKED:
            last.clear()
        last[key] = seq
        return True

    def _by_position(self, topic: str, pos: str, prev: int) -> bool:
        seq = int(pos.split(":", 2)[1])
        last = self._by_topic
        previous = last.get(topic)
        if previous is not None:
            if seq <= previous:
                return False
            if prev > previous:
                self._gap(1, "the history", topic)
        elif len(last) > MAX_TRACKED:
            last.clear()
        last[topic] = seq
        return True

    def _gap(self, missing: int, origin: str, topic: str) -> None:
        self.gaps += missing
        logger.warning(
            "federation %s: %s message(s) from %s on %r lost (pub/sub is at-most-once)",
            self.node,
            missing if origin != "the history" else "some",
            origin,
            topic,
        )
