"""A federation's history in Redis: one position sequence and one history for every hub.

With ``federate(bus, url, history=N)`` every message a node publishes goes
through one Lua script (:data:`PUBLISH_SCRIPT`) that, atomically:

1. drops it if it was published already: each message carries a publisher
   session and a number (a hub peer's own, or the node's), and the script
   keeps the last number applied per session for ``ttl``;
2. gives it the next position: ``<epoch>:<seq>:<ms>`` from one hash, the
   epoch made once per Redis data set (a Redis that lost its data starts a
   new one, so old positions are refused, never misread);
3. keeps it in the topic's stream (ids ``<ms>-<seq>``; at most ``size``
   entries, none older than ``ttl``, the key expiring ``ttl`` after its last
   message) and records the topic's last position in a sorted set (the
   topics' *metas*, at most ``max_topics``: the least recently published is
   forgotten first, moving the *horizon* past its last position);
4. publishes it, with ``p`` (its position) and ``b`` (the sequence number
   of the message before it on its topic) added to the envelope.

Keys, under the federation's prefix ``P``: ``P:history`` (hash: epoch, seq,
ms, horizon), ``P:stream:<topic>`` (stream), ``P:topics`` (sorted set),
``P:session:<session>`` (last number applied).  The channels stay
``P:<topic>``.

A replay (:meth:`RedisLog.snapshot`) reads the head and the topics with
messages after ``since`` in one script (so nothing published after the head
can hide), then each matching topic's stream up to the head; it covers the
gap or answers None, never a part, with the same rules as the in-memory
:class:`~greenbus.history.History`.  Positions from hub A replay on hub B,
and after A is gone.

Every key of one federation lives on one Redis: sharding it over a cluster
is a later step (see docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from typing import Any

from ..history import Position, is_kept
from ..topics import is_wildcard, pattern_matches
from ._redis import pack_command
from .cluster import root_channel, root_of
from .envelope import decode_envelope
from .interest import registry_key

__all__ = ["PUBLISH_SCRIPT", "SNAPSHOT_SCRIPT", "RedisHistory"]

#: KEYS: history hash, topic stream, topics zset, session key, the interest
#: registry's hash.  ARGV: topic, envelope (JSON, starting with "{"), epoch
#: candidate, ttl ms, size, max topics, number ("" for none), channel, keep
#: ("1"/"0"), stream key prefix, fan-out ("1": some node wants it; "0": none
#: did as of the registry version that follows), registry version, the
#: publishing command ("PUBLISH", or "SPUBLISH" on a cluster).  Returns
#: {0} for a message applied already, {1} for one handled without a position
#: (keep "0"), {1, pos} otherwise.  The message is published only if some
#: node wants it, or if the registry changed since the publisher decided.
PUBLISH_SCRIPT = """
local h, stream, topics, session = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local topic, env, candidate = ARGV[1], ARGV[2], ARGV[3]
local ttl, size, max_topics = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local number, channel, keep, stream_prefix = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local fanout = ARGV[11] == '1' or (redis.call('HGET', KEYS[5], 'v') or '0') ~= ARGV[12]
if number ~= '' then
  local last = tonumber(redis.call('GET', session) or '0')
  if tonumber(number) <= last then
    redis.call('PEXPIRE', session, ttl)
    return {0}
  end
  redis.call('SET', session, number, 'PX', ttl)
end
if keep ~= '1' then
  if fanout then redis.call(ARGV[13], channel, env) end
  return {1}
end
local epoch = redis.call('HGET', h, 'epoch')
if not epoch then
  epoch = candidate
  redis.call('HSET', h, 'epoch', epoch)
end
local seq = redis.call('HINCRBY', h, 'seq', 1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last_ms = tonumber(redis.call('HGET', h, 'ms') or '0')
if ms < last_ms then ms = last_ms end
redis.call('HSET', h, 'ms', ms)
local prev = redis.call('ZSCORE', topics, topic) or '0'
local pos = epoch .. ':' .. seq .. ':' .. ms
local out = '{"p":"' .. pos .. '","b":' .. prev .. ',' .. string.sub(env, 2)
redis.call('XADD', stream, 'MAXLEN', size, ms .. '-' .. seq, 'e', out)
redis.call('XTRIM', stream, 'MINID', tostring(ms - ttl))
redis.call('PEXPIRE', stream, ttl)
redis.call('ZADD', topics, seq, topic)
if redis.call('ZCARD', topics) > max_topics then
  local gone = redis.call('ZPOPMIN', topics)
  local horizon = tonumber(redis.call('HGET', h, 'horizon') or '0')
  if tonumber(gone[2]) > horizon then redis.call('HSET', h, 'horizon', gone[2]) end
  redis.call('DEL', stream_prefix .. gone[1])
end
if fanout then redis.call(ARGV[13], channel, out) end
return {1, pos}
"""

#: KEYS: history hash, topics zset.  ARGV: epoch candidate, since seq ("" for
#: none).  Returns {epoch, seq, ms, horizon, topic1, last1, topic2, ...}: the
#: head, and the topics whose last message came after ``since``.
SNAPSHOT_SCRIPT = """
local h, topics = KEYS[1], KEYS[2]
redis.call('HSETNX', h, 'epoch', ARGV[1])
local head = redis.call('HMGET', h, 'epoch', 'seq', 'ms', 'horizon')
local out = {head[1], head[2] or '0', head[3] or '0', head[4] or '0'}
if ARGV[2] ~= '' then
  local after = redis.call('ZRANGEBYSCORE', topics, '(' .. ARGV[2], '+inf', 'WITHSCORES')
  for i = 1, #after do out[#out + 1] = after[i] end
end
return out
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisHistory:
    """The history of one federation (one prefix) in Redis.

    Args:
        client: a redis-py client (the federation's, on gevent sockets).
        prefix: the federation's prefix.
        size: messages kept per topic.
        ttl: seconds a message, and a publisher session, is kept.
        max_topics: topics remembered at most.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        size: int,
        ttl: float,
        max_topics: int,
        *,
        cluster: bool = False,
    ) -> None:
        self.prefix = prefix
        self.size = size
        self.ttl = ttl
        self.max_topics = max_topics
        #: Over a Redis Cluster: one history per topic root, on its shard.
        self.cluster = cluster
        self._client = client
        self._snapshot = client.register_script(SNAPSHOT_SCRIPT)
        self._candidate = secrets.token_hex(8)

    def space(self, name: str) -> str:
        """The key prefix of the history ``name`` (a topic or pattern) is in:
        the federation's prefix, or over a cluster its root's (``P:{root}``).

        Raises:
            ValueError: over a cluster, ``name``'s first token is a wildcard.
        """
        if not self.cluster:
            return self.prefix
        root = root_of(name)
        if root is None:
            raise ValueError(
                f"{name!r} has no history over a Redis Cluster: its first token is a wildcard"
            )
        return root_channel(self.prefix, root)

    #: The SHA1 of :data:`PUBLISH_SCRIPT`, for EVALSHA.
    publish_sha = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()

    def load_command(self) -> bytes:
        """``SCRIPT LOAD`` of the publish script, packed: send it on a connection
        before the first :meth:`publish_command` (Redis may have restarted)."""
        return pack_command("SCRIPT", "LOAD", PUBLISH_SCRIPT)

    def publish_command(
        self,
        topic: str,
        envelope: bytes,
        channel: str,
        session: str,
        number: int,
        fanout: bool = True,
        version: int = 0,
    ) -> bytes:
        """The packed ``EVALSHA`` of the publish script for one message.

        ``fanout`` False: no node wanted ``topic`` as of the interest
        registry's ``version``; the message is then kept but published only
        if the registry changed since.  Its reply: ``[0]`` (applied
        already), ``[1]`` or ``[1, pos]`` (kept, and published if wanted),
        or a ``NOSCRIPT`` error if Redis lost the script (send
        :meth:`load_command`, then this again: the script did not run).
        """
        space = self.space(topic)
        stream_prefix = f"{space}:stream:"
        return pack_command(
            "EVALSHA",
            self.publish_sha,
            5,
            f"{space}:history",
            stream_prefix + topic,
            f"{space}:topics",
            f"{space}:session:{session}",
            # Over a cluster the registry is on another shard: the caller
            # always fans out, and this key (in the root's slot) is never set.
            f"{space}:registry" if self.cluster else registry_key(self.prefix),
            topic,
            envelope,
            self._candidate,
            int(self.ttl * 1000),
            self.size,
            self.max_topics,
            number,
            channel,
            "1" if is_kept(topic) else "0",
            stream_prefix,
            "1" if fanout else "0",
            version,
            "SPUBLISH" if self.cluster else "PUBLISH",
        )

    def snapshot(
        self, pattern: str, since: Position | None
    ) -> tuple[str, list[tuple[tuple[Any, ...], str]] | None]:
        """The head position now, and the kept messages matching ``pattern``
        after ``since`` up to it (``((topic, data, headers, reply_to), pos)``
        in position order), or None if they cannot all be replayed.

        With ``since`` None, the replay is empty.  Blocks the calling
        greenlet for two round trips at most.

        Raises:
            redis.exceptions.RedisError, OSError: Redis cannot be reached.
            ValueError: over a cluster, ``pattern``'s first token is a wildcard.
        """
        space = self.space(pattern)
        stream_prefix = f"{space}:stream:"
        reply = self._snapshot(
            keys=[f"{space}:history", f"{space}:topics"],
            args=[self._candidate, "" if since is None else since.seq],
        )
        epoch, seq, ms, horizon = (_text(v) for v in reply[:4])
        head = Position(epoch, int(seq), int(ms))
        if since is None:
            return str(head), []
        if (
            since.epoch != head.epoch
            or since.seq > head.seq
            or since.seq < int(horizon)
            or not is_kept(pattern)
        ):
            return str(head), None
        wildcard = is_wildcard(pattern)
        topics = [
            (_text(reply[i]), int(float(_text(reply[i + 1]))))
            for i in range(4, len(reply), 2)
            if wildcard or _text(reply[i]) == pattern
        ]
        topics = [(t, last) for t, last in topics if pattern_matches(pattern, t)]
        if not topics:
            return str(head), []
        pipe = self._client.pipeline(transaction=False)
        for topic, _ in topics:
            pipe.xrange(
                stream_prefix + topic,
                f"({since.ms}-{since.seq}",
                f"{head.ms}-{head.seq}",
            )
        picked: list[tuple[int, tuple[Any, ...], str]] = []
        for (_, last), entries in zip(topics, pipe.execute(), strict=True):
            if not entries:
                if last > since.seq:
                    return str(head), None  # its messages after since expired
                continue
            first = True
            for _, fields in entries:
                env = decode_envelope(fields[b"e"] if b"e" in fields else fields["e"])
                if first and env.prev > since.seq:
                    return str(head), None  # the one before the oldest kept is gone
                first = False
                assert env.pos is not None
                seq_of = Position.parse(env.pos).seq
                item = (env.topic, env.data, env.headers, env.reply_to)
                picked.append((seq_of, item, env.pos))
        picked.sort(key=_first)
        return str(head), [(item, pos) for _, item, pos in picked]


def _first(entry: tuple[int, Any, Any]) -> int:
    return entry[0]


#: ``done(error)``: a durable publish was applied (or found applied: None),
#: or refused with the error's text.
Done = Callable[[str | None], None]
