"""Topic grammar and wildcard matching.  Pure Python: no gevent, no I/O.

A *topic* names what a message is about: dot-separated tokens such as
``sensors.room1.temp``.  A *pattern* selects topics and may use two wildcards,
with NATS semantics so the same grammar works in process and over the wire:

* ``*`` matches exactly one token: ``sensors.*.temp`` matches
  ``sensors.room1.temp`` but not ``sensors.temp`` nor ``sensors.a.b.temp``.
* ``>`` matches one or more trailing tokens and may only be the last token:
  ``sensors.>`` matches ``sensors.room1`` and ``sensors.room1.temp`` but not
  ``sensors``.

Rules for both: non-empty, no empty token (``a..b``, ``.a``, ``a.``), no
whitespace, control characters or lone UTF-16 surrogates (which could not be
sent over the wire as UTF-8).  A wildcard must be a whole token
(``room*`` is rejected, not taken literally).  A topic passed to ``emit`` may
not contain a wildcard at all.

:class:`TopicIndex` maps patterns to values (the bus stores subscriptions in
it).  ``match`` costs one dict lookup for a topic seen before: results are
cached per topic, the cache is bounded, and it is invalidated precisely on
changes (an exact pattern evicts only its own topic; a wildcard clears it).
A miss walks a token trie, so its cost grows with the topic's depth and the
wildcards present, never with the number of subscriptions.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from .exceptions import InvalidTopic

__all__ = [
    "TopicIndex",
    "is_wildcard",
    "pattern_matches",
    "validate_cached",
    "validate_pattern",
    "validate_topic",
]

T = TypeVar("T")

_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_WILDCARD_CHARS = re.compile(r"[*>]")


def _check_common(value: object, kind: str) -> list[str]:
    if not isinstance(value, str):
        raise InvalidTopic(value, f"a {kind} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidTopic(value, f"a {kind} must not be empty")
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        raise InvalidTopic(
            value, f"whitespace or control character {bad.group()!r} at index {bad.start()}"
        )
    tokens = value.split(".")
    for i, token in enumerate(tokens):
        if not token:
            raise InvalidTopic(
                value, f"empty token at position {i} (leading, trailing or double dot)"
            )
    return tokens


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid concrete topic (no wildcards).

    Raises:
        InvalidTopic: naming the problem (type, empty, empty token,
            whitespace, or a wildcard).
    """
    tokens = _check_common(topic, "topic")
    assert isinstance(topic, str)
    if _WILDCARD_CHARS.search(topic) is not None:
        for token in tokens:
            if token in ("*", ">"):
                raise InvalidTopic(
                    topic, f"wildcard {token!r} is only allowed in subscription patterns"
                )
        raise InvalidTopic(topic, "'*' and '>' are reserved for wildcards")
    return topic


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid subscription pattern.

    Raises:
        InvalidTopic: naming the problem, e.g. ``'>' must be the last token``.
    """
    tokens = _check_common(pattern, "pattern")
    assert isinstance(pattern, str)
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if token == ">":
            if i != last:
                raise InvalidTopic(pattern, "'>' must be the last token")
        elif token != "*" and _WILDCARD_CHARS.search(token) is not None:
            raise InvalidTopic(
                pattern, f"wildcard inside token {token!r}: '*' and '>' must be whole tokens"
            )
    return pattern


@functools.lru_cache(maxsize=4096)
def _cached(value: str, pattern: bool) -> str:
    return validate_pattern(value) if pattern else validate_topic(value)


def validate_cached(value: object, *, pattern: bool = False) -> str:
    """:func:`validate_topic` (or :func:`validate_pattern`) remembering recent successes.

    For hot paths that see the same topics again and again (the hub's
    frames, federation envelopes).  Failures are not cached.

    Returns:
        a string equal to ``value`` (maybe the one cached earlier, not the
        same object).

    Raises:
        InvalidTopic: as the uncached functions.
    """
    if type(value) is str:
        return _cached(value, pattern)
    return validate_pattern(value) if pattern else validate_topic(value)


def is_wildcard(pattern: str) -> bool:
    """True if a (valid) pattern contains ``*`` or ``>`` tokens."""
    return any(token in ("*", ">") for token in pattern.split("."))


def pattern_matches(pattern: str, topic: str) -> bool:
    """True if the valid ``pattern`` matches the valid concrete ``topic``.

    A reference implementation: :class:`TopicIndex` must agree with it.
    """
    p = pattern.split(".")
    t = topic.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t):
            return False
        if token != "*" and token != t[i]:
            return False
    return len(p) == len(t)


#: A node's values with their insertion sequence numbers.  The trie is not
#: generic (a node holds whatever the index holds): TopicIndex[T] gives its
#: callers back the T it was given.
_Entries = tuple[tuple[int, Any], ...]


class _Node:
    # Values are kept in tuples and replaced, never mutated (copy-on-write),
    # so a reader on another OS thread can walk the trie safely while the
    # owning thread adds or removes patterns.
    __slots__ = ("children", "star", "here", "tail")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.here: _Entries = ()  # patterns ending at this node
        self.tail: _Entries = ()  # patterns ending with '>' here

    def empty(self) -> bool:
        return not (self.children or self.star or self.here or self.tail)


class TopicIndex(Generic[T]):
    """Maps subscription patterns to values; finds the values for a topic.

    Values are returned in the order they were added.  The same value may be
    added under several patterns; it is then returned once per pattern that
    matches.

    Not thread-safe for writers: ``add``/``remove``/``match`` belong to one
    thread.  :meth:`match_uncached` may be called from any thread.

    Args:
        cache_size: how many topics' results to remember (default 4096).
            When full, the oldest entry makes room for the new one, so a
            stream of ever-new topics costs a bounded, steady amount of
            memory.
    """

    def __init__(self, cache_size: int = 4096) -> None:
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive int, not {cache_size!r}")
        self._root = _Node()
        self._cache: dict[str, tuple[T, ...]] = {}
        self._cache_size = cache_size
        self._seq = 0
        self._count: dict[str, int] = {}  # pattern -> number of values under it

    def __len__(self) -> int:
        return sum(self._count.values())

    def __repr__(self) -> str:
        return (
            f"<TopicIndex patterns={len(self._count)} values={len(self)} cached={len(self._cache)}>"
        )

    @property
    def cache(self) -> dict[str, tuple[T, ...]]:
        """The per-topic result cache, for hot paths: ``cache.get(topic)``.

        Read it, never write it.  The same dict object lives as long as the
        index (it is cleared, never replaced).  A miss means "call
        :meth:`match`", not "no match".
        """
        return self._cache

    def patterns(self) -> dict[str, int]:
        """Each pattern in the index, with how many values are under it."""
        return dict(self._count)

    def count(self, pattern: str) -> int:
        """How many values are under ``pattern`` (0: none)."""
        return self._count.get(pattern, 0)

    def add(self, pattern: str, value: T) -> None:
        """Add ``value`` under ``pattern``.

        Raises:
            InvalidTopic: if the pattern is invalid.
        """
        validate_pattern(pattern)
        node = self._root
        tokens = pattern.split(".")
        self._seq += 1
        entry = (self._seq, value)
        for token in tokens[:-1]:
            node = self._child(node, token)
        last = tokens[-1]
        if last == ">":
            node.tail = (*node.tail, entry)
        else:
            node = self._child(node, last)
            node.here = (*node.here, entry)
        self._count[pattern] = self._count.get(pattern, 0) + 1
        self._invalidate(pattern)

    def remove(self, pattern: str, value: T) -> bool:
        """Remove one ``value`` added under ``pattern``; False if it was not there.

        Values are matched by identity (``is``), not equality.
        """
        if not isinstance(pattern, str):
            return False
        tokens = pattern.split(".")
        path: list[tuple[_Node, str]] = []
        node: _Node | None = self._root
        for token in tokens[:-1]:
            assert node is not None
            path.append((node, token))
            node = node.star if token == "*" else node.children.get(token)
            if node is None:
                return False
        last = tokens[-1]
        assert node is not None
        if last == ">":
            found = _without(node.tail, value)
            if found is None:
                return False
            node.tail = found
        else:
            path.append((node, last))
            node = node.star if last == "*" else node.children.get(last)
            if node is None:
                return False
            found = _without(node.here, value)
            if found is None:
                return False
            node.here = found
        # Prune empty branches so a churn of unique topics does not leak nodes.
        for parent, token in reversed(path):
            child = parent.star if token == "*" else parent.children.get(token)
            if child is None or not child.empty():
                break
            if token == "*":
                parent.star = None
            else:
                del parent.children[token]
        left = self._count[pattern] - 1
        if left:
            self._count[pattern] = left
        else:
            del self._count[pattern]
        self._invalidate(pattern)
        return True

    def match(self, topic: str) -> tuple[T, ...]:
        """The values whose patterns match ``topic``, in the order added.

        Raises:
            InvalidTopic: if ``topic`` is not a valid concrete topic.
        """
        try:
            return self._cache[topic]
        except (KeyError, TypeError):
            pass
        result = self.match_uncached(topic)
        cache = self._cache
        if len(cache) >= self._cache_size:
            del cache[next(iter(cache))]  # the oldest (dicts keep insertion order)
        cache[topic] = result
        return result

    def match_uncached(self, topic: str) -> tuple[T, ...]:
        """Like :meth:`match` but neither reads nor fills the cache.

        Safe to call from any OS thread while the owner thread mutates.
        """
        validate_topic(topic)
        out: list[tuple[int, Any]] = []
        _walk(self._root, topic.split("."), 0, out)
        if len(out) > 1:
            out.sort(key=_seq_of)
        return tuple(value for _, value in out)

    def __iter__(self) -> Iterator[tuple[str, T]]:
        """Yield ``(pattern, value)`` pairs in no particular order."""
        yield from _iter_node(self._root, [])

    def _child(self, node: _Node, token: str) -> _Node:
        if token == "*":
            if node.star is None:
                node.star = _Node()
            return node.star
        child = node.children.get(token)
        if child is None:
            child = node.children[token] = _Node()
        return child

    def _invalidate(self, pattern: str) -> None:
        if is_wildcard(pattern):
            self._cache.clear()
        else:
            self._cache.pop(pattern, None)


def _seq_of(entry: tuple[int, Any]) -> int:
    return entry[0]


def _without(entries: _Entries, value: object) -> _Entries | None:
    for i, (_, v) in enumerate(entries):
        if v is value:
            return entries[:i] + entries[i + 1 :]
    return None


def _walk(node: _Node, tokens: list[str], i: int, out: list[tuple[int, Any]]) -> None:
    if i == len(tokens):
        out.extend(node.here)
        return
    if node.tail:
        out.extend(node.tail)
    child = node.children.get(tokens[i])
    if child is not None:
        _walk(child, tokens, i + 1, out)
    star = node.star
    if star is not None:
        _walk(star, tokens, i + 1, out)


def _iter_node(node: _Node, prefix: list[str]) -> Iterator[tuple[str, Any]]:
    for _, value in node.tail:
        yield ".".join([*prefix, ">"]), value
    for _, value in node.here:
        yield ".".join(prefix), value
    for token, child in list(node.children.items()):
        yield from _iter_node(child, [*prefix, token])
    if node.star is not None:
        yield from _iter_node(node.star, [*prefix, "*"])
