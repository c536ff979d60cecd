"""Federate a bus through Redis pub/sub, on gevent sockets.

One :class:`Federation` per bus.  It owns two Redis connections (redis-py,
with a connection class that uses gevent's cooperative sockets, so no
monkey-patching is needed):

* **out**: every message emitted on this node (by local code or its remote
  peers; never one that came from Redis) is queued by a forward on ``>``
  into a bounded outbound channel, from which a writer greenlet publishes
  batches with one pipelined round trip each.  The emitter never waits for
  Redis.  One publishing connection per node keeps Redis's per-connection
  order: a node's messages reach every other node in emit order.
* **in**: a reader greenlet SUBSCRIBEs (exact topics) or PSUBSCRIBEs
  (patterns, translated by :func:`redis_glob`) to exactly what this node's
  subscribers want (the bus's interest listener), and emits what arrives
  into the local bus, dropping this node's own messages and duplicates.

Faults: either connection reconnects with capped exponential backoff; the
reader re-subscribes everything; the writer re-sends the batch it was
sending (receivers drop the duplicates by sequence number).  Messages
published while a receiver was cut off are lost (pub/sub is at-most-once)
and counted as a gap.  The local bus keeps working throughout.

Ending: :meth:`Federation.stop` detaches, publishes what is queued and
closes both connections.  If the bus closes first, the federation stops by
itself (it is the bus's close listener): the reader leaves Redis at once,
closing its subscribed connection, and the writer publishes what the bus had
accepted, then ends and closes the publishing connection.  ``stop()`` is
still safe to call afterwards.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
from gevent import socket as gsocket
from greenlet import getcurrent

from ..bus import Bus
from ..channel import Channel, Overflow
from ..exceptions import (
    BusClosed,
    ChannelClosed,
    ChannelFull,
    EndOfChannel,
    LocalProtocolError,
    RemoteProtocolError,
)
from ..subscription import Forward
from .envelope import Envelope, decode_envelope, encode_envelope

try:
    import redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover - exercised only without the extra
    redis = None  # type: ignore[assignment]

__all__ = ["Federation", "FederationStatistics", "federate", "redis_glob"]

logger = logging.getLogger("greenbus.federation")

#: Bounds on the per-topic sequence tables.  When the sender's is full it is
#: cleared and a new epoch starts (a new origin ``node/epoch`` for receivers).
MAX_TRACKED = 100_000

_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def redis_glob(prefix: str, pattern: str) -> tuple[str, bool]:
    """The Redis channel (or glob pattern) for a greenbus topic or pattern.

    Returns:
        ``(name, is_pattern)``: exact topics map to a channel
        ``prefix:topic``; patterns to a glob where ``*`` and ``>`` become
        ``*`` and glob characters in literal tokens are escaped.  Redis's
        ``*`` also matches dots, so the glob may match more than the
        pattern; the local bus routes by the real pattern, so the extra
        messages reach nobody.
    """
    tokens = pattern.split(".")
    if "*" not in tokens and ">" not in tokens:
        return f"{prefix}:{pattern}", False
    parts = ["*" if t in ("*", ">") else t.translate(_GLOB_SPECIAL) for t in tokens]
    return f"{prefix.translate(_GLOB_SPECIAL)}:{'.'.join(parts)}", True


if redis is not None:

    class _GeventConnection(redis.Connection):
        """A redis-py connection on a gevent socket: waits yield to other greenlets."""

        def _connect(self) -> Any:
            sock = gsocket.create_connection(
                (self.host, self.port), timeout=self.socket_connect_timeout
            )
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            sock.settimeout(self.socket_timeout)
            return sock


@dataclass(frozen=True, slots=True)
class FederationStatistics:
    node: str
    connected: bool
    #: Messages published to Redis, and queued to be.
    published: int
    outbound_pending: int
    #: Outbound messages dropped (queue full) or not JSON-encodable.
    dropped: int
    unencodable: int
    #: Messages received from other nodes and emitted locally.
    received: int
    #: Same message twice (overlapping subscriptions, re-sent batches): dropped.
    duplicates: int
    #: Messages missing from a (origin, topic) sequence: lost in an outage.
    gaps: int
    bad_envelopes: int
    reconnects: int
    #: Redis subscriptions held (channels + patterns).
    subscriptions: int
    #: Publish-to-receive delay of the last message received, and the largest seen (ms).
    lag_ms: float
    max_lag_ms: float


class Federation:
    """Link ``bus`` to other nodes through Redis.  See the module docstring.

    Args:
        bus: the local bus.
        url: ``redis://host:port/db``.
        prefix: namespace of the Redis channels (``prefix:topic``).
        max_pending: outbound queue bound (messages).
        overflow: its policy when full: ``"drop_oldest"`` (default; counted,
            and reported once per episode) or ``"drop_newest"``.  The
            emitter never blocks on Redis, so ``block`` is not offered.
        batch: messages per pipelined publish, at most.
        max_backoff: reconnect delay cap, seconds.
        node: this node's id (default: random).
    """

    def __init__(
        self,
        bus: Bus,
        url: str,
        *,
        prefix: str = "greenbus",
        max_pending: int = 100_000,
        overflow: str = "drop_oldest",
        batch: int = 1000,
        max_backoff: float = 5.0,
        node: str | None = None,
    ) -> None:
        if redis is None:
            raise ImportError("federation needs redis-py: pip install 'greenbus[redis]'")
        if overflow not in (Overflow.DROP_OLDEST.value, Overflow.DROP_NEWEST.value):
            raise ValueError(f"overflow must be 'drop_oldest' or 'drop_newest', not {overflow!r}")
        self.bus = bus
        self.url = url
        self.prefix = prefix
        self.node = node or uuid.uuid4().hex[:12]
        self._batch = batch
        self._max_backoff = max_backoff
        self._max_pending = max_pending
        self._overflow = overflow
        self._pool = redis.ConnectionPool.from_url(
            url, connection_class=_GeventConnection, socket_connect_timeout=5
        )
        self._client = redis.Redis(connection_pool=self._pool)
        self._out: Channel[tuple[Any, ...]] | None = None
        self._forward: Forward | None = None
        self._writer: gevent.Greenlet | None = None
        self._reader: gevent.Greenlet | None = None
        self._pubsub: Any = None
        self._globs: dict[tuple[str, bool], int] = {}
        self._seq: dict[str, int] = {}
        self._epoch = 0
        self._in_hand = 0
        self._last: dict[tuple[str, str], int] = {}
        self._connected = gevent.event.Event()
        # _stopping: the loops should end (stop() called, or the bus closed);
        # _bus_closed: the bus's close listener ran (the federation stops by itself);
        # _stopped: stop() has run (it must still run after the bus closed).
        self._stopping = False
        self._bus_closed = False
        self._stopped = False
        self._published = 0
        self._dropped = 0
        self._unencodable = 0
        self._received = 0
        self._duplicates = 0
        self._gaps = 0
        self._bad = 0
        self._reconnects = 0
        self._lag = 0.0
        self._max_lag = 0.0

    def __repr__(self) -> str:
        state = "connected" if self._connected.is_set() else "connecting"
        return f"<Federation node={self.node} {self.url} {state}>"

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Federation:
        """Attach to the bus and start the writer and reader greenlets; returns self."""
        if self._writer is not None:
            return self
        self._out = Channel(self._max_pending, self._overflow, on_overflow=self._on_overflow)
        # interest=False: our own catch-all must not ask Redis for everything.
        self._forward = self.bus.forward(">", self._on_local, interest=False, raw=True)
        self.bus.add_interest_listener(self._on_interest)
        self.bus.add_close_listener(self._on_bus_closed)
        for pattern in self.bus.interest():
            self._want(pattern)
        self._writer = gevent.spawn(self._write_loop)
        self._reader = gevent.spawn(self._read_loop)
        return self

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the reader is subscribed; True if it is."""
        return bool(self._connected.wait(timeout))

    def stop(self, timeout: float = 5.0) -> None:
        """Detach; publish what is queued (for up to ``timeout``); close.  Idempotent."""
        if self._stopped or self._writer is None:
            return
        self._stopped = True
        self._stopping = True
        self.bus.remove_interest_listener(self._on_interest)
        self.bus.remove_close_listener(self._on_bus_closed)
        if self._forward is not None:
            try:
                self._forward.close()
            except BusClosed:
                pass
        assert self._out is not None
        self._out.close()
        self._writer.join(timeout)
        if not self._writer.dead:
            lost = len(self._out) + self._in_hand
            self._in_hand = 0
            self._writer.kill(block=True)
            if lost:
                self._dropped += lost
                logger.warning(
                    "federation %s: stopped with %d unpublished message(s)", self.node, lost
                )
        if self._reader is not None:
            # Its finally clause closes its pubsub connection.
            self._reader.kill(block=True, timeout=timeout)
        if self._pubsub is not None:  # the reader did not get to (killed too late)
            _close_quietly(self._pubsub)
            self._pubsub = None
        self._pool.disconnect()
        self._connected.clear()

    def _on_bus_closed(self) -> None:
        # The bus's close listener, at the end of bus.close(), in its
        # greenlet: must not block.  Nobody here can receive any more, and
        # the bus has closed our forward, so nothing new comes to publish:
        # stop without waiting for stop().  stop() later remains safe.
        self._stopping = True
        self._bus_closed = True
        assert self._out is not None
        queued = len(self._out) + self._in_hand
        # The writer publishes what the bus had accepted before it closed,
        # then sees the end of the channel and ends.
        self._out.close()
        reader = self._reader
        if reader is not None and reader is not getcurrent():
            # Throws GreenletExit into its wait on Redis; its finally clause
            # closes the pubsub connection.  (If the bus was closed from the
            # reader itself, it sees _stopping when _deliver returns.)
            reader.kill(block=False)
        logger.info(
            "federation %s: stopped because its bus %r closed; leaving Redis "
            "(%d queued message(s) still to publish)",
            self.node,
            self.bus.name,
            queued,
        )

    def __enter__(self) -> Federation:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> FederationStatistics:
        return FederationStatistics(
            node=self.node,
            connected=self._connected.is_set(),
            published=self._published,
            outbound_pending=len(self._out) if self._out is not None else 0,
            dropped=self._dropped + (self._out.dropped if self._out is not None else 0),
            unencodable=self._unencodable,
            received=self._received,
            duplicates=self._duplicates,
            gaps=self._gaps,
            bad_envelopes=self._bad,
            reconnects=self._reconnects,
            subscriptions=len(self._globs),
            lag_ms=self._lag * 1000,
            max_lag_ms=self._max_lag * 1000,
        )

    # -- out: local emits to Redis --------------------------------------------

    def _on_local(self, msg: tuple[Any, ...]) -> bool:
        # The forward's sink, inside bus.emit, with the emit's own tuple.
        # What the reader emits came from Redis: never send it back (no
        # echo, no loops).
        if getcurrent() is self._reader or msg[0].startswith("$"):
            # From Redis already (no echo), or a node-local system topic
            # such as a hub's $greenbus.stats (each hub has its own).
            return False
        try:
            return self._out.put(msg)  # type: ignore[union-attr]
        except ChannelClosed:
            return False

    def _on_overflow(self, channel: Channel[Any]) -> None:
        logger.warning(
            "federation %s: outbound queue full (%d); dropping under %s",
            self.node,
            self._max_pending,
            self._overflow,
        )

    def _write_loop(self) -> None:
        try:
            self._write_batches()
        finally:
            if self._bus_closed:
                # Nothing more to publish, and stop() may never come: close
                # the idle publishing connection.  (in-use ones, the reader's
                # pubsub among them, are closed by their users.)
                self._pool.disconnect(inuse_connections=False)

    def _write_batches(self) -> None:
        out = self._out
        assert out is not None
        backoff = 0.05
        while True:
            try:
                batch = out.get_batch(self._batch)
            except EndOfChannel:
                return
            payloads = self._envelopes(batch)
            self._in_hand = len(payloads)
            while payloads:
                try:
                    pipe = self._client.pipeline(transaction=False)
                    for channel, payload in payloads:
                        pipe.publish(channel, payload)
                    pipe.execute()
                    self._published += len(payloads)
                    self._in_hand = 0
                    backoff = 0.05
                    break
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    # Re-send the whole batch after reconnecting: receivers
                    # drop what they already had by sequence number.
                    self._reconnects += 1
                    logger.warning(
                        "federation %s: publishing failed (%s); retrying in %.2f s",
                        self.node,
                        exc,
                        backoff,
                    )
                    gevent.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    if self._stopping and out.closed and backoff >= self._max_backoff:
                        self._dropped += len(payloads)
                        self._in_hand = 0
                        return

    def _envelopes(self, batch: list[tuple[Any, ...]]) -> list[tuple[str, bytes]]:
        seqs = self._seq
        if len(seqs) > MAX_TRACKED:
            # A new epoch makes a new origin: receivers start fresh tables
            # for it instead of taking restarted numbers for duplicates.
            seqs.clear()
            self._epoch += 1
        origin = f"{self.node}/{self._epoch}"
        now = time.time()
        out = []
        for msg in batch:
            topic = msg[0]
            seq = seqs.get(topic, 0) + 1
            headers = msg[2]
            env = Envelope(
                origin, seq, now, topic, msg[1], dict(headers) if headers else None, msg[3]
            )
            try:
                out.append((f"{self.prefix}:{topic}", encode_envelope(env)))
            except LocalProtocolError as exc:
                self._unencodable += 1
                logger.error("federation %s: %s (not published)", self.node, exc)
                continue
            # Numbered only once encoded: a message that cannot be sent must
            # not look like a gap to the receivers.
            seqs[topic] = seq
        return out

    # -- in: Redis to local subscribers -------------------------------------------

    def _on_interest(self, pattern: str, present: bool) -> None:
        if present:
            self._want(pattern)
        else:
            self._unwant(pattern)

    def _want(self, pattern: str) -> None:
        if pattern.startswith("$"):
            return  # node-local system topics are never federated
        key = redis_glob(self.prefix, pattern)
        count = self._globs.get(key, 0)
        self._globs[key] = count + 1
        if count == 0:
            self._command(key, subscribe=True)

    def _unwant(self, pattern: str) -> None:
        if pattern.startswith("$"):
            return
        key = redis_glob(self.prefix, pattern)
        count = self._globs.get(key, 0) - 1
        if count > 0:
            self._globs[key] = count
            return
        self._globs.pop(key, None)
        self._command(key, subscribe=False)

    def _command(self, key: tuple[str, bool], subscribe: bool) -> None:
        pubsub = self._pubsub
        if pubsub is None or not self._connected.is_set():
            return  # the reader subscribes to everything wanted when it connects
        name, is_pattern = key
        try:
            if subscribe:
                (pubsub.psubscribe if is_pattern else pubsub.subscribe)(name)
            else:
                (pubsub.punsubscribe if is_pattern else pubsub.unsubscribe)(name)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            logger.info("federation %s: (un)subscribe %s deferred: %s", self.node, name, exc)

    def _read_loop(self) -> None:
        # However the reader ends (the bus closed, stop() killed it), it
        # leaves Redis: the subscribed connection is not kept a moment longer.
        try:
            self._read_until_stopping()
        finally:
            self._connected.clear()
            pubsub, self._pubsub = self._pubsub, None
            if pubsub is not None:
                _close_quietly(pubsub)

    def _read_until_stopping(self) -> None:
        backoff = 0.05
        outage: float | None = None
        while not self._stopping:
            try:
                # Held in self._pubsub from the start, so that it is closed
                # even if the reader is killed while connecting.  _command
                # uses it only once _connected is set.
                pubsub = self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                # A private channel keeps the connection subscribed when
                # nobody here wants anything yet.
                pubsub.subscribe(f"{self.prefix}:_node.{self.node}")
                channels = [name for (name, pat) in self._globs if not pat]
                patterns = [name for (name, pat) in self._globs if pat]
                if channels:
                    pubsub.subscribe(*channels)
                if patterns:
                    pubsub.psubscribe(*patterns)
                self._connected.set()
                if outage is not None:
                    logger.warning(
                        "federation %s: reconnected after %.2f s; messages published "
                        "meanwhile are lost (counted as gaps when later ones arrive)",
                        self.node,
                        time.monotonic() - outage,
                    )
                    outage = None
                backoff = 0.05
                listen: Callable[[], Iterator[dict[str, Any]]] = pubsub.listen
                for item in listen():
                    if item["type"] in ("message", "pmessage"):
                        self._deliver(item["data"])
                        if self._stopping:
                            # The bus is closing (the emit raised BusClosed):
                            # nobody here can receive; leave Redis now.
                            return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._connected.clear()
                broken, self._pubsub = self._pubsub, None
                if broken is not None:
                    _close_quietly(broken)  # back to the pool; a new one reconnects
                if self._stopping:
                    return
                if outage is None:
                    outage = time.monotonic()
                    logger.warning("federation %s: lost Redis (%s); reconnecting", self.node, exc)
                self._reconnects += 1
                gevent.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _deliver(self, raw: bytes) -> None:
        try:
            env = decode_envelope(raw)
        except RemoteProtocolError as exc:
            self._bad += 1
            if self._bad == 1 or self._bad % 1000 == 0:
                logger.error("federation %s: %s (%d so far)", self.node, exc, self._bad)
            return
        if env.origin.rpartition("/")[0] == self.node:
            return  # our own message, back from Redis
        if env.topic.startswith("$"):
            return  # node-local system topics are never federated (e.g. an old node's)
        last = self._last
        key = (env.origin, env.topic)
        previous = last.get(key)
        if previous is not None:
            if env.seq <= previous:
                self._duplicates += 1
                return
            if env.seq > previous + 1:
                missing = env.seq - previous - 1
                self._gaps += missing
                logger.warning(
                    "federation %s: %d message(s) from %s on %r lost (pub/sub is at-most-once)",
                    self.node,
                    missing,
                    env.origin,
                    env.topic,
                )
        elif len(last) > MAX_TRACKED:
            last.clear()
        last[key] = env.seq
        lag = time.time() - env.ts
        self._lag = lag
        if lag > self._max_lag:
            self._max_lag = lag
        self._received += 1
        try:
            self.bus.emit(env.topic, env.data, headers=env.headers, reply_to=env.reply_to)
        except ChannelFull as exc:
            logger.info(
                "federation %s: a local subscriber refused %r: %s", self.node, env.topic, exc
            )
        except BusClosed:
            # The bus is closing: the reader leaves when this returns, and
            # the bus's close listener (_on_bus_closed) ends the writer.
            self._stopping = True


def _close_quietly(pubsub: Any) -> None:
    # Close a pubsub connection that may be broken already.
    try:
        pubsub.close()
    except Exception:  # a broken connection: nothing left to close
        pass


def federate(bus: Bus, url: str, *, prefix: str = "greenbus", **options: Any) -> Federation:
    """Link ``bus`` to Redis at ``url`` and start; returns the :class:`Federation`.

    ``options`` are those of :class:`Federation` (``max_pending``,
    ``overflow``, ``batch``, ``max_backoff``, ``node``).
    """
    return Federation(bus, url, prefix=prefix, **options).start()
