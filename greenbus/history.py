"""A hub's message history, for recovery: bounded per topic, one position sequence.

Pure: no gevent, no I/O.  The hub records every message it routes
(:meth:`History.record`); each gets a :class:`Position`, one number higher
than the last whatever its topic, with the history's *epoch* (random, new
each time a history is made, so a restarted hub never takes an old position
for one of its own) and its publish time.  A subscription that comes back
with the last position it received asks :meth:`History.replay` for every
kept message matching its pattern published after it: all of them, in
position order (publish order across topics), or None when the history
cannot cover the gap; never a part.

What is kept: at most ``size`` messages per topic, none older than ``ttl``
seconds.  Besides its messages, the history remembers of each topic the
sequence number of its last message and of the last one it dropped (the
topic's *meta*), for up to ``max_topics`` topics, so that a replay can tell
"nothing was published" from "something was, and is gone" even on a topic
that has been quiet for longer than ``ttl``.  When a topic's meta is
forgotten (``max_topics``, least recently published first), the history
cannot vouch for any position before that topic's last message: such a
replay is refused (the *horizon*).

Topics starting with ``$`` (a hub's own ``$greenbus.stats``) are node-local,
and request inboxes (``_INBOX.``) are one-off replies: neither is kept nor
given a position.

See ``docs/recovery.md`` for the contract this serves.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any, Generic, NamedTuple, TypeVar

from ._options import check_int, check_seconds
from .acl import INBOX_PREFIX
from .protocol import POSITION
from .topics import is_wildcard, pattern_matches

__all__ = [
    "History",
    "HistoryStatistics",
    "Position",
    "Publishers",
    "Replay",
    "is_kept",
]

V = TypeVar("V")

#: Records between two looks for topics whose messages all expired.
SWEEP_EVERY = 64

#: A hub's defaults: messages kept per topic, for how long (seconds), and
#: topics remembered at most (their metas; see the module docstring).
DEFAULT_HISTORY = 100
DEFAULT_HISTORY_TTL = 120.0
DEFAULT_MAX_TOPICS = 100_000


def is_kept(topic: str) -> bool:
    """Whether a message on ``topic`` is kept in a history and given a position."""
    return not (topic[0] == "$" or topic.startswith(INBOX_PREFIX))


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message stands in one history: its epoch, sequence number and time.

    Its text, ``str(position)``, is the opaque ``pos`` clients see and give
    back as ``since``.
    """

    epoch: str
    seq: int
    #: Publish time, milliseconds since the Unix epoch.
    ms: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.seq}:{self.ms}"

    @classmethod
    def parse(cls, text: object) -> Position:
        """The position ``text`` names.

        Raises:
            ValueError: ``text`` is not the text of a position.
        """
        match = POSITION.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"{text!r} is not a position")
        epoch, seq, ms = match.groups()
        return cls(epoch, int(seq), int(ms))


class Replay(NamedTuple, Generic[V]):
    """One message of a replay: its position and the value recorded with it."""

    position: Position
    value: V


@dataclass(frozen=True, slots=True)
class HistoryStatistics:
    """A snapshot of a history's counters (see :meth:`History.statistics`)."""

    epoch: str
    #: Messages kept now; topics with messages kept, and topics remembered.
    messages: int
    topics: int
    remembered_topics: int
    #: Messages recorded since the history was made, and those dropped since
    #: (by ``size``, ``ttl`` or ``max_topics``).
    recorded: int
    trimmed: int
    #: Topic metas forgotten (``max_topics``): positions before the last
    #: message of any of them cannot be recovered.
    forgotten_topics: int
    #: Replays asked for, and those the history could not cover.
    replays: int
    replays_refused: int


class _Topic(Generic[V]):
    """One topic's kept messages, ``(seq, ms, value)`` oldest first, and its meta.

    A list with a moving start (compacted as it goes) rather than a deque:
    an empty or short one costs tens of bytes, not a deque's 600.
    """

    __slots__ = ("dropped", "entries", "first", "last", "last_ms")

    def __init__(self) -> None:
        #: ``entries[first:]`` are the kept messages (the slots before are None).
        self.entries: list[tuple[int, int, V] | None] = []
        self.first = 0
        #: The sequence number of its last message, and when it was recorded.
        self.last = 0
        self.last_ms = 0
        #: The sequence number of the last message dropped from it (0: none).
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.entries) - self.first

    def expire(self, before_ms: int) -> int:
        """Drop the messages recorded before ``before_ms``; how many."""
        entries = self.entries
        dropped = 0
        while self.first < len(entries):
            oldest = entries[self.first]
            assert oldest is not None
            if oldest[1] >= before_ms:
                break
            self.drop_oldest()
            dropped += 1
        return dropped

    def after(self, seq: int) -> list[tuple[int, int, V]] | None:
        """The kept messages after ``seq``; None if one published after it was dropped."""
        entries = self.entries
        start = len(entries)
        while start > self.first:
            entry = entries[start - 1]
            assert entry is not None
            if entry[0] <= seq:
                break
            start -= 1
        if start == self.first and self.dropped > seq:
            return None  # the message before the oldest newer one is gone
        return entries[start:]  # type: ignore[return-value]

    def clear(self) -> int:
        """Drop every message (the meta stays); how many."""
        count = len(self)
        if count:
            last = self.entries[-1]
            assert last is not None
            self.dropped = last[0]
        self.entries = []
        self.first = 0
        return count

    def drop_oldest(self) -> None:
        """Drop the oldest kept message (there is one)."""
        entries = self.entries
        oldest = entries[self.first]
        assert oldest is not None
        self.dropped = oldest[0]
        entries[self.first] = None  # the value goes now
        self.first += 1
        if self.first >= 32 and 2 * self.first >= len(entries):
            del entries[: self.first]
            self.first = 0


class History(Generic[V]):
    """At most ``size`` messages per topic, none older than ``ttl`` seconds.

    A value is recorded with each message (the hub keeps the encoded frame
    body, so a replay needs no encoding and is immune to later changes of
    the emitted object).

    Args:
        size: messages kept per topic (>= 1).
        ttl: seconds a message is kept (> 0).
        max_topics: topics remembered at most (their metas).
        epoch: this history's epoch; default random (64 bits).
        clock: seconds since the Unix epoch (tests pass their own).

    Raises:
        InvalidOption: a bad ``size``, ``ttl`` or ``max_topics``.
    """

    def __init__(
        self,
        size: int,
        ttl: float,
        *,
        max_topics: int = DEFAULT_MAX_TOPICS,
        epoch: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.size = check_int("history", size)
        self.ttl = check_seconds("history_ttl", ttl)
        self.max_topics = check_int("history_topics", max_topics)
        self.epoch = epoch if epoch is not None else secrets.token_hex(8)
        self._clock = clock
        self._ttl_ms = int(ttl * 1000)
        self._seq = 0
        self.last_ms = int(clock() * 1000)
        # Topics with messages kept, least recently recorded first; topics
        # whose messages all expired (metas only), in the order they did.
        self._active: OrderedDict[str, _Topic[V]] = OrderedDict()
        self._idle: dict[str, _Topic[V]] = {}
        self._horizon = 0
        self._until_sweep = SWEEP_EVERY
        self._forgotten = 0
        self._replays = 0
        self._refused = 0

    def __repr__(self) -> str:
        return (
            f"<History epoch={self.epoch} size={self.size} ttl={self.ttl:g} "
            f"topics={len(self._active)}+{len(self._idle)} head={self._seq}>"
        )

    def head(self) -> Position:
        """The position of the last message recorded: what a new subscription starts after."""
        return Position(self.epoch, self._seq, self.last_ms)

    def record(self, topic: str, value: V) -> int:
        """Keep ``value`` as the next message on ``topic``; its sequence number.

        Its position is ``Position(self.epoch, seq, self.last_ms)``
        (:meth:`position_text` makes its text).  Returns 0, and keeps
        nothing, for a topic that is not kept (:func:`is_kept`).
        """
        # The hot path (once per message the hub routes): plain reads and
        # writes, no allocation beyond the kept entry.
        if topic[0] in "$_" and not is_kept(topic):
            return 0
        self._seq = seq = self._seq + 1
        ms = int(self._clock() * 1000)
        if ms < self.last_ms:
            ms = self.last_ms  # positions never go back in time
        self.last_ms = ms
        active = self._active
        entry = active.get(topic)
        if entry is None:
            entry = self._idle.pop(topic, None)
            if entry is None:
                entry = _Topic()
            active[topic] = entry
            if len(active) + len(self._idle) > self.max_topics:
                self._forget_beyond(self.max_topics)
        else:
            active.move_to_end(topic)
        entries = entry.entries
        first = entry.first
        if first < len(entries):
            oldest = entries[first]
            if oldest is not None and oldest[1] < ms - self._ttl_ms:
                entry.expire(ms - self._ttl_ms)  # a slow trickle: its oldest expired
                first = entry.first
        entries.append((seq, ms, value))
        entry.last = seq
        entry.last_ms = ms
        if len(entries) - first > self.size:
            # drop_oldest(), inlined: a full topic drops one per record.
            entry.dropped = entries[first][0]  # type: ignore[index]
            entries[first] = None
            first += 1
            if first >= 32 and 2 * first >= len(entries):
                del entries[:first]
                first = 0
            entry.first = first
        # Now and then, the least recently recorded topic: if its newest
        # message expired, all of its messages did (sweep() moves such
        # topics aside).  Keeps memory bounded by ttl without a timer.
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._until_sweep = SWEEP_EVERY
            if ms - next(iter(active.values())).last_ms > self._ttl_ms:
                self.sweep()
        return seq

    def position_text(self, seq: int) -> str:
        """The text of the position of ``seq``, the last message recorded."""
        return f"{self.epoch}:{seq}:{self.last_ms}"

    def replay(self, pattern: str, since: Position) -> list[Replay[V]] | None:
        """Every kept message matching ``pattern`` after ``since``, in position order.

        Returns:
            the messages (perhaps none), or None if the history cannot
            cover them all: ``since`` is of another epoch, from the future,
            or before the horizon, or a matching topic dropped a message
            published after it (by ``size`` or ``ttl``).
        """
        self._replays += 1
        self.sweep()
        after = since.seq
        if (
            since.epoch != self.epoch
            or after > self._seq
            or after < self._horizon
            or not is_kept(pattern)  # it can only match what is never kept
        ):
            self._refused += 1
            return None
        picked: list[tuple[int, int, V]] = []
        oldest = max(int(self._clock() * 1000), self.last_ms) - self._ttl_ms
        if is_wildcard(pattern):
            candidates: Iterable[tuple[str, _Topic[V]]] = chain(
                self._active.items(), self._idle.items()
            )
        else:
            entry = self._active.get(pattern) or self._idle.get(pattern)
            candidates = () if entry is None else ((pattern, entry),)
        for topic, entry in candidates:
            if entry.last <= after or not pattern_matches(pattern, topic):
                continue
            entry.expire(oldest)
            newer = entry.after(after)
            if newer is None:
                self._refused += 1
                return None
            picked.extend(newer)
        picked.sort(key=_seq_of)
        epoch = self.epoch
        return [Replay(Position(epoch, seq, ms), value) for seq, ms, value in picked]

    def sweep(self) -> int:
        """Drop the messages older than ``ttl``; how many were dropped."""
        oldest = max(int(self._clock() * 1000), self.last_ms) - self._ttl_ms
        dropped = 0
        active = self._active
        while active:
            topic, entry = next(iter(active.items()))
            if entry.last_ms >= oldest:
                break  # the others were recorded later still
            dropped += entry.clear()
            del active[topic]
            self._idle[topic] = entry
        return dropped

    def _forget_beyond(self, limit: int) -> None:
        # Forget the metas of the topics idle longest (then of the least
        # recently recorded) while more than ``limit`` are remembered.
        active, idle = self._active, self._idle
        while len(active) + len(idle) > limit:
            topics = idle if idle else active
            entry = topics.pop(next(iter(topics)))
            entry.clear()
            self._horizon = max(self._horizon, entry.last)
            self._forgotten += 1

    def statistics(self) -> HistoryStatistics:
        """A frozen snapshot of the counters, expired messages dropped first.

        O(topics): for metrics, not the hot path.
        """
        self.sweep()
        messages = sum(map(len, self._active.values()))
        return HistoryStatistics(
            epoch=self.epoch,
            messages=messages,
            topics=len(self._active),
            remembered_topics=len(self._active) + len(self._idle),
            recorded=self._seq,
            trimmed=self._seq - messages,
            forgotten_topics=self._forgotten,
            replays=self._replays,
            replays_refused=self._refused,
        )


def _seq_of(entry: tuple[int, int, Any]) -> int:
    return entry[0]


class Publishers:
    """The last ``pub`` applied for each publisher session: what makes a resend harmless.

    A v2 client names its session in ``hello`` and numbers its pubs 1, 2,
    3, ... for the session's life, across reconnects; after a cut it sends
    again every pub the hub did not acknowledge.  A pub whose number is not
    above the last one applied for its session was applied already: the hub
    acknowledges it again and drops it.  A session is remembered ``ttl``
    seconds after its last pub (the history's window), and at most
    ``max_sessions`` sessions are (the longest idle is forgotten first).

    Args:
        ttl: seconds a session is remembered after its last pub.
        max_sessions: sessions remembered at most.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        ttl: float,
        max_sessions: int = 100_000,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = check_seconds("history_ttl", ttl)
        self.max_sessions = check_int("max_sessions", max_sessions)
        self._clock = clock
        self._last: OrderedDict[str, tuple[int, float]] = OrderedDict()
        #: Resends dropped so far.
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._last)

    def seen(self, session: str, number: int) -> bool:
        """True if pub ``number`` of ``session`` was applied already; else record it.

        A pub seen for the first time becomes the session's last one, so the
        caller must apply it.
        """
        now = self._clock()
        last = self._last.pop(session, None)
        if last is not None and now - last[1] <= self.ttl and number <= last[0]:
            self._last[session] = (last[0], now)
            self.duplicates += 1
            return True
        self._last[session] = (number, now)
        if len(self._last) > self.max_sessions:
            self._last.popitem(last=False)
        return False
