"""Who wants what across a federation: the registry's scripts and each node's view.  Pure.

Each node keeps its patterns in Redis (driven by
:class:`~greenbus.federation.registry.Registry`) and a view of every other
node's (:class:`InterestView`), so that it publishes a topic only while some
node wants it.  This module holds the Lua scripts that keep the registry in
Redis and the view, with no I/O: see :mod:`greenbus.federation.registry` for
how they are used, and ``docs/scaling.md``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from ..topics import TopicIndex

__all__ = ["LOAD_SCRIPT", "MAX_PENDING", "REGISTER_SCRIPT", "InterestView", "registry_key"]

logger = logging.getLogger("greenbus.federation")

#: KEYS: registry hash, nodes zset.  ARGV: node, ttl ms, interest key prefix
#: ("{P}:interest:"), channel, mode ("=" reset with the patterns that
#: follow, "+" changes, "!" leave), then for "+": op/pattern pairs ("+"
#: add, "-" remove).  Returns {version, removed}: removed is 1 when this
#: node had been removed as dead (it must register everything again).
REGISTER_SCRIPT = """
local registry, nodes = KEYS[1], KEYS[2]
local node, ttl, iprefix, channel, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local known = redis.call('ZSCORE', nodes, node)
local change = {n = node, a = {}, d = {}, x = {}}
local changed = false
local dead = redis.call('ZRANGEBYSCORE', nodes, '-inf', ms)
for i = 1, #dead do
  if dead[i] ~= node then
    redis.call('DEL', iprefix .. dead[i])
    redis.call('ZREM', nodes, dead[i])
    table.insert(change.x, dead[i])
    changed = true
  end
end
local key = iprefix .. node
if mode == '!' then
  redis.call('DEL', key)
  redis.call('ZREM', nodes, node)
  change.r = true
  changed = true
else
  redis.call('ZADD', nodes, ms + ttl, node)
  if mode == '=' then
    redis.call('DEL', key)
    change.r = true
    changed = true
    for i = 6, #ARGV do
      redis.call('HSET', key, ARGV[i], 1)
      table.insert(change.a, ARGV[i])
    end
  else
    for i = 6, #ARGV, 2 do
      if ARGV[i] == '+' then
        redis.call('HSET', key, ARGV[i + 1], 1)
        table.insert(change.a, ARGV[i + 1])
      else
        redis.call('HDEL', key, ARGV[i + 1])
        table.insert(change.d, ARGV[i + 1])
      end
      changed = true
    end
  end
  redis.call('PEXPIRE', key, ttl * 2)
end
local v = tonumber(redis.call('HGET', registry, 'v') or '0')
if changed then
  v = redis.call('HINCRBY', registry, 'v', 1)
  change.v = v
  redis.call('PUBLISH', channel, cjson.encode(change))
end
if known == false and mode == '+' then
  return {v, 1}
end
return {v, 0}
"""

#: KEYS: registry hash, nodes zset.  ARGV: interest key prefix.  Returns
#: {version, node1, count1, pattern..., node2, count2, pattern..., ...}.
LOAD_SCRIPT = """
local registry, nodes, iprefix = KEYS[1], KEYS[2], ARGV[1]
local out = {tonumber(redis.call('HGET', registry, 'v') or '0')}
local live = redis.call('ZRANGE', nodes, 0, -1)
for i = 1, #live do
  local patterns = redis.call('HKEYS', iprefix .. live[i])
  out[#out + 1] = live[i]
  out[#out + 1] = #patterns
  for j = 1, #patterns do out[#out + 1] = patterns[j] end
end
return out
"""


#: Notifications kept while a load is on its way, at most (past it, the
#: ones after are dropped: the version jump they leave asks for a new load).
MAX_PENDING = 10_000


def registry_key(prefix: str) -> str:
    """The hash holding the interest registry's version ``v``, for ``prefix``."""
    return f"{{{prefix}}}:registry"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class InterestView:
    """Every other node's patterns, as this node last heard them.  Pure, no I/O.

    :meth:`wants` answers for a topic whether some node wants it: while the
    view is not :attr:`live` (never loaded, or the reader is away), always.

    Args:
        node: this node's id: its own entries in Redis are left out (its own
            interest is :meth:`hold`\\ ed locally, and counted only if
            ``count_own``).
        count_own: count this node's own patterns too (with history, a
            node's own peers get its messages back from Redis).
    """

    __slots__ = (
        "_index",
        "_live",
        "_nodes",
        "_own",
        "_pending",
        "count_own",
        "listener",
        "loaded",
        "node",
        "version",
    )

    def __init__(self, node: str, *, count_own: bool = False) -> None:
        self.node = node = sys.intern(node)
        self.count_own = count_own
        #: The registry version this view reflects (0: never loaded).
        self.version = 0
        #: Loaded since the reader last (re)subscribed.
        self.loaded = False
        self._live = False
        #: Told ``listener(pattern, True)`` when a pattern gains its first
        #: node and ``(pattern, False)`` when it loses its last, and
        #: ``listener(None, True)`` when the view stops being :attr:`live`
        #: (it wants everything), ``(None, False)`` when it is again.
        self.listener: Callable[[str | None, bool], object] | None = None
        self._nodes: dict[str, set[str]] = {}
        self._own: set[str] = set()
        # Notifications heard while a load is on its way: applied after it.
        self._pending: list[bytes] = []
        self._index: TopicIndex[str] = TopicIndex(cache_size=65536)

    def __repr__(self) -> str:
        state = "live" if self.live else "not live"
        return f"<InterestView v{self.version} nodes={len(self._nodes)} {state}>"

    @property
    def live(self) -> bool:
        """The view is loaded and kept up (False: it cannot tell, it wants all)."""
        return self._live

    @live.setter
    def live(self, live: bool) -> None:
        if live != self._live:
            self._live = live
            if self.listener is not None:
                self.listener(None, not live)

    def patterns(self) -> list[str]:
        """Every pattern some node wants (this one too, with ``count_own``)."""
        return list(self._index.patterns())

    def wants(self, topic: str) -> bool:
        """True if some node (this one too, with ``count_own``) wants ``topic``,
        or if the view cannot tell (not live)."""
        if not self.live:
            return True
        found = self._index.cache.get(topic)
        if found is None:
            found = self._index.match(topic)
        return bool(found)

    def nodes(self) -> dict[str, list[str]]:
        """Each other node's patterns, as heard (for stats and tests)."""
        return {node: sorted(patterns) for node, patterns in self._nodes.items()}

    def hold(self, pattern: str) -> None:
        """This node wants ``pattern`` now (counted only with ``count_own``)."""
        if pattern not in self._own:
            self._own.add(pattern)
            if self.count_own:
                self._hold(pattern, self.node)

    def release(self, pattern: str) -> None:
        """This node no longer wants ``pattern``."""
        if pattern in self._own:
            self._own.discard(pattern)
            if self.count_own:
                self._release(pattern, self.node)

    def load(self, reply: list[Any]) -> None:
        """Replace the other nodes' patterns with :data:`LOAD_SCRIPT`'s ``reply``."""
        for node in list(self._nodes):
            self._drop(node)
        self.version = int(reply[0])
        i = 1
        while i < len(reply):
            node, count = _text(reply[i]), int(reply[i + 1])
            i += 2 + count
            if node != self.node:
                self._add(node, [_text(p) for p in reply[i - count : i]])
        self.loaded = True
        pending, self._pending = self._pending, []
        for raw in pending:
            self.apply(raw)

    def apply(self, raw: bytes) -> bool:
        """Apply one notification from ``P:$interest``.

        Returns False if the view must be loaded again: a version was missed
        (or the notification is unreadable).  A notification this view
        already reflects is ignored.
        """
        try:
            change = json.loads(raw)
            version = int(change["v"])
        except (ValueError, TypeError, KeyError):
            logger.error("federation %s: unreadable interest notification %r", self.node, raw)
            return False
        if not self.loaded:
            # A load is on its way: what it does not cover is applied after it.
            if len(self._pending) < MAX_PENDING:
                self._pending.append(raw)
            return True
        if version <= self.version:
            return True  # the last load covered it
        node = change.get("n")
        for dead in change.get("x") or ():
            logger.warning(
                "federation %s: node %s missed its heartbeats; its interest no longer counts",
                self.node,
                dead,
            )
            self._drop(dead)
        if node != self.node:
            if change.get("r"):
                self._drop(node)
            self._add(node, change.get("a") or ())
            held = self._nodes.get(node)
            for pattern in change.get("d") or ():
                if held is not None and pattern in held:
                    held.discard(pattern)
                    self._release(pattern, sys.intern(node))
            if held is not None and not held:
                del self._nodes[node]
        missed = version != self.version + 1
        self.version = version
        return not missed

    def _add(self, node: str, patterns: Any) -> None:
        # One string object per node: the index removes values by identity.
        if not patterns:
            return
        node = sys.intern(node)
        held = self._nodes.setdefault(node, set())
        for pattern in patterns:
            if pattern not in held:
                try:
                    self._hold(pattern, node)
                except ValueError:  # InvalidTopic: not from a greenbus node
                    continue
                held.add(pattern)

    def _drop(self, node: str) -> None:
        node = sys.intern(node)
        for pattern in self._nodes.pop(node, ()):
            self._release(pattern, node)

    def _hold(self, pattern: str, node: str) -> None:
        first = not self._index.count(pattern)
        self._index.add(pattern, node)
        if first and self.listener is not None:
            self.listener(pattern, True)

    def _release(self, pattern: str, node: str) -> None:
        self._index.remove(pattern, node)
        if self.listener is not None and not self._index.count(pattern):
            self.listener(pattern, False)
