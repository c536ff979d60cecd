"""Federate a bus through Redis pub/sub, on gevent sockets.

One :class:`Federation` per bus.  It owns two Redis connections, each a
:class:`~greenbus.federation._redis.Link` on a gevent socket (no
monkey-patching needed): redis-py opens it, then the federation writes
packed commands and parses the replies itself, with no redis-py machinery
per message:

* **out**: every message emitted on this node (by local code or its remote
  peers; never one that came from Redis) that some other node wants (see
  :mod:`greenbus.federation.registry`) is queued by a forward on ``>``
  into a bounded outbound channel, from which a writer greenlet publishes
  what has accumulated, one round trip per batch (see
  :mod:`greenbus.federation.publisher`; a message emitted while the writer
  is idle is written at once, from the emit).  The emitter never waits for
  Redis.  One publishing connection per node keeps Redis's
  per-connection order: a node's messages reach every other node in emit
  order.
* **in**: a reader greenlet SUBSCRIBEs (exact topics) or PSUBSCRIBEs
  (patterns, translated by :func:`redis_glob`) to exactly what this node's
  subscribers want (the bus's interest listener), parses everything that
  has arrived at once and emits it into the local bus, dropping this node's
  own messages and duplicates; the subscribers' greenlets run when it waits
  for more.

Faults: either connection reconnects with capped exponential backoff; the
reader re-subscribes everything; the writer re-sends the batch it was
sending (receivers drop the duplicates by sequence number; with history,
the script does).  Messages
published while a receiver was cut off are lost (pub/sub is at-most-once)
and counted as a gap.  The local bus keeps working throughout.

With history (``history=N``, see :mod:`greenbus.federation.history`), every
message goes to Redis through one Lua script that drops what was applied
already, gives it its position, keeps it in the topic's stream and
publishes it; the reader then receives its own node's messages too, with
their positions, and hands every positioned message to its feed listeners
(a hub's peers get their messages from there, so every hub of the
federation gives a message the same position).  A hub's peers' pubs reach
Redis through :meth:`Federation.publish_durable`, acknowledged only once
the script ran.  After losing Redis, the reader tells its lost listeners:
what was published meanwhile reached no feed (a hub then closes its peers
with 1012, and they resume from their positions).

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
from greenlet import getcurrent

from ..acl import INBOX_PREFIX
from ..bus import Bus
from ..channel import Channel, Overflow
from ..exceptions import (
    BusClosed,
    ChannelClosed,
    ChannelFull,
    InvalidTopic,
    RemoteProtocolError,
)
from ..history import Position
from ..subscription import Forward
from ._redis import GeventConnection, redis_glob
from .arrivals import Arrivals
from .cluster import Topology, is_cluster_url, parse_cluster_url, root_channel, root_of
from .envelope import parse_envelope
from .history import Done, RedisHistory
from .interest import InterestView
from .outbound import Durable, Packer
from .publisher import Publisher
from .reader import Key, Reader
from .registry import Registry

try:
    import redis
except ImportError:  # pragma: no cover - exercised only without the extra
    redis = None  # type: ignore[assignment]

__all__ = ["Federation", "FederationStatistics", "federate", "redis_glob"]

logger = logging.getLogger("greenbus.federation")


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
    #: With history: messages the script found applied already (resends),
    #: and messages Redis refused (the script failed).
    duplicates_dropped: int
    script_errors: int
    #: Publish-to-receive delay of the last message received, and the largest seen (ms).
    lag_ms: float
    max_lag_ms: float
    #: With history: local emits kept but not published, no node wanting
    #: their topic (without history they never reach the federation).
    unwanted: int
    #: Patterns with a wildcard first token, not federated over a cluster.
    unshardable: int
    #: Other nodes heard of in the interest registry, the patterns they
    #: want, and the registry version this node's view reflects.
    remote_nodes: int
    remote_patterns: int
    interest_version: int


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
        batch: messages per write (and round trip) to Redis, at most.
        max_backoff: reconnect delay cap, seconds.
        node: this node's id (default: random).
        history: messages kept per topic in Redis for recovery (0: none);
            every node of one prefix must agree.  The outbound queue then
            refuses the newest when full (``overflow`` is ignored): what it
            accepted is never dropped.
        history_ttl: seconds a kept message, and a publisher session, lasts.
        history_topics: topics the history remembers at most.
        interest_ttl: seconds after its last heartbeat that a node's
            interest stops counting (it heartbeats every third of it).
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
        history: int = 0,
        history_ttl: float = 120.0,
        history_topics: int = 100_000,
        interest_ttl: float = 6.0,
    ) -> None:
        if redis is None:
            raise ImportError("federation needs redis-py: pip install 'greenbus[redis]'")
        if overflow not in (Overflow.DROP_OLDEST.value, Overflow.DROP_NEWEST.value):
            raise ValueError(f"overflow must be 'drop_oldest' or 'drop_newest', not {overflow!r}")
        self.bus = bus
        self.url = url
        self.prefix = prefix
        self.node = node or uuid.uuid4().hex[:12]
        self._max_backoff = max_backoff
        self._max_pending = max_pending
        self._overflow = overflow
        #: A Redis Cluster (``redis+cluster://``): which master holds what.
        self.cluster: Topology | None = None
        if is_cluster_url(url):
            self.cluster = Topology(*parse_cluster_url(url))
            self.cluster.refresh()
            self._pool: Any = None
            self._client: Any = self.cluster.client()
        else:
            self._pool = redis.ConnectionPool.from_url(
                url, connection_class=GeventConnection, socket_connect_timeout=5
            )
            self._client = redis.Redis(connection_pool=self._pool)
        #: The history in Redis (None: no history; plain pub/sub).
        self.history: RedisHistory | None = None
        if history:
            self.history = RedisHistory(
                self._client,
                prefix,
                history,
                history_ttl,
                history_topics,
                cluster=self.cluster is not None,
            )
            self._overflow = Overflow.DROP_NEWEST.value
        # Who wants what: this node's interest in Redis, everybody's in the view.
        # With history, this node's own interest counts too (its peers get
        # their messages back from Redis).
        self._view = InterestView(self.node, count_own=self.history is not None)
        self._registry = Registry(
            self._client,
            prefix,
            self.node,
            self._view,
            ttl=interest_ttl,
            max_backoff=max_backoff,
            on_left=self._close_idle,
        )
        # The writer's side: its connection, numbering and counters.
        self._publisher = Publisher(
            self._pool,
            Packer(self.node, prefix, self.history, self._view, cluster=self.cluster is not None),
            batch,
            max_backoff,
            topology=self.cluster,
        )
        # What arrived already: repeats are dropped, gaps counted.
        self._arrivals = Arrivals(self.node)
        # The subscribed connections: one, or one per cluster master (the
        # first also gets the node's classic channels); what each holds.
        classic = [f"{prefix}:_node.{self.node}", self._registry.channel]
        if self.cluster is None:
            self._readers = [
                Reader(
                    self._pool,
                    self,
                    self.node,
                    classic=classic,
                    registry_channel=self._registry.channel,
                    max_backoff=max_backoff,
                )
            ]
        else:
            self._readers = [
                Reader(
                    self.cluster.pool(address),
                    self,
                    self.node,
                    classic=classic if i == 0 else [],
                    registry_channel=self._registry.channel if i == 0 else None,
                    sharded=True,
                    max_backoff=max_backoff,
                )
                for i, address in enumerate(self.cluster.masters())
            ]
        self._reader = self._readers[0]
        self._reader_greenlets: set[gevent.Greenlet] = set()
        #: Patterns over a cluster that name no root (never federated).
        self._unshardable = 0
        self._feed_listeners: list[Callable[[tuple[Any, ...], str | None], object]] = []
        self._lost_listeners: list[Callable[[], object]] = []
        self._out: Channel[tuple[Any, ...] | Durable] | None = None
        # The bus forwards to _on_local what some node wants: with history
        # everything (one forward on ">"); without, one forward per pattern
        # some other node wants, plus ">" while the view cannot tell, plus
        # inboxes (replies always go).  One emit may match several: the
        # message is queued once (_last).
        self._forwards: dict[tuple[str, str], Forward] = {}
        self._last: object = None
        self._writer: gevent.Greenlet | None = None
        # _stopping: the loops should end (stop() called, or the bus closed);
        # _bus_closed: the bus's close listener ran (the federation stops by itself);
        # _stopped: stop() has run (it must still run after the bus closed).
        self._stopping = False
        self._bus_closed = False
        self._stopped = False
        self._dropped = 0
        self._received = 0
        self._bad = 0
        self._lag = 0.0
        self._max_lag = 0.0

    def __repr__(self) -> str:
        state = "connected" if self._is_connected() else "connecting"
        return f"<Federation node={self.node} {self.url} {state}>"

    def _close_idle(self) -> None:
        # Stopping: no more registry calls, nor history snapshots.
        if self._pool is not None:
            self._pool.disconnect(inuse_connections=False)
        else:
            self._client.close()

    def _is_connected(self) -> bool:
        return all(reader.connected.is_set() for reader in self._readers)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Federation:
        """Attach to the bus and start the writer and reader greenlets; returns self."""
        if self._writer is not None:
            return self
        self._out = Channel(self._max_pending, self._overflow, on_overflow=self._on_overflow)
        if self.history is not None:
            self._route("kept", ">", True)  # every message is kept
        else:
            self._route("inboxes", INBOX_PREFIX + ">", True)
            self._route("unsure", ">", True)  # until the view is live
            self._view.listener = self._on_remote_interest
        self.bus.add_interest_listener(self._on_interest)
        self.bus.add_close_listener(self._on_bus_closed)
        for pattern in self.bus.interest():
            self._on_interest(pattern, True)
        self._registry.start()
        self._writer = gevent.spawn(self._write_loop)
        for reader in self._readers:
            reader.start()
            assert reader.greenlet is not None
            self._reader_greenlets.add(reader.greenlet)
        return self

    def _route(self, why: str, pattern: str, present: bool) -> None:
        # Forward what matches ``pattern`` to _on_local (for a reason: several
        # may hold the same pattern), or stop.  interest=False: what others
        # want must not make this node ask Redis for it.
        key = (why, pattern)
        if present:
            if key not in self._forwards:
                self._forwards[key] = self.bus.forward(
                    pattern, self._on_local, interest=False, raw=True
                )
            return
        forward = self._forwards.pop(key, None)
        if forward is not None:
            forward.close()

    def _on_remote_interest(self, pattern: str | None, present: bool) -> None:
        # The view: some other node now wants ``pattern`` (or none does);
        # None when the view stops (starts) being able to tell.
        if self._stopping:
            return
        try:
            if pattern is None:
                self._route("unsure", ">", present)
            else:
                self._route("remote", pattern, present)
        except BusClosed:
            pass

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the readers are subscribed (every master's, on a
        cluster); True if they are."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in self._readers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not reader.connected.wait(left):
                return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Detach; publish what is queued (for up to ``timeout``); close.  Idempotent."""
        if self._stopped or self._writer is None:
            return
        self._stopped = True
        self._stopping = True
        self.bus.remove_interest_listener(self._on_interest)
        self.bus.remove_close_listener(self._on_bus_closed)
        self._view.listener = None
        for forward in self._forwards.values():
            try:
                forward.close()
            except BusClosed:
                pass
        self._forwards.clear()
        assert self._out is not None
        self._out.close()
        self._writer.join(timeout)
        if not self._writer.dead:
            lost = len(self._out) + self._publisher.in_hand
            self._publisher.in_hand = 0
            self._writer.kill(block=True)
            if lost:
                self._dropped += lost
                logger.warning(
                    "federation %s: stopped with %d unpublished message(s)", self.node, lost
                )
        for reader in self._readers:
            # Its finally clause closes its subscribed connection.
            reader.kill(block=True, timeout=timeout)
        # The other nodes stop counting this one at once.
        self._registry.stop(timeout)
        # In case their greenlets did not get to (killed too late):
        self._publisher.close()
        if self._pool is not None:
            self._pool.disconnect()
        if self.cluster is not None:
            self.cluster.disconnect()
            self._client.close()

    def _on_bus_closed(self) -> None:
        # The bus's close listener, at the end of bus.close(), in its
        # greenlet: must not block.  Nobody here can receive any more, and
        # the bus has closed our forward, so nothing new comes to publish:
        # stop without waiting for stop().  stop() later remains safe.
        self._stopping = True
        self._bus_closed = True
        assert self._out is not None
        queued = len(self._out) + self._publisher.in_hand
        # The writer publishes what the bus had accepted before it closed,
        # then sees the end of the channel and ends.
        self._out.close()
        for reader in self._readers:
            # Throws GreenletExit into its wait on Redis; its finally clause
            # closes the subscribed connection.  (If the bus was closed from a
            # reader itself, it sees _stopping when deliver() returns.)
            reader.kill(block=False)
        self._registry.stop_soon()
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
            connected=self._is_connected(),
            published=self._publisher.published,
            outbound_pending=len(self._out) if self._out is not None else 0,
            dropped=self._dropped
            + self._publisher.dropped
            + (self._out.dropped if self._out is not None else 0),
            unencodable=self._publisher.packer.unencodable,
            received=self._received,
            duplicates=self._arrivals.duplicates,
            gaps=self._arrivals.gaps,
            bad_envelopes=self._bad,
            reconnects=sum(r.reconnects for r in self._readers) + self._publisher.reconnects,
            subscriptions=sum(len(r.keys) for r in self._readers),
            duplicates_dropped=self._publisher.duplicates_dropped,
            script_errors=self._publisher.script_errors,
            lag_ms=self._lag * 1000,
            max_lag_ms=self._max_lag * 1000,
            unwanted=self._publisher.packer.unwanted,
            unshardable=self._unshardable,
            remote_nodes=len(self._view.nodes()),
            remote_patterns=sum(len(p) for p in self._view.nodes().values()),
            interest_version=self._view.version,
        )

    def wants(self, topic: str) -> bool:
        """True if this node would publish ``topic`` now: some other node wants
        it (with history, this one too), or this node cannot tell yet."""
        return self._view.wants(topic) or topic.startswith(INBOX_PREFIX)

    def remote_interest(self) -> dict[str, list[str]]:
        """Each other node's patterns, as this node last heard them."""
        return self._view.nodes()

    def interest_settled(self) -> bool:
        """True if Redis has all this node's interest and its view of the other
        nodes' is loaded and up to date with what it heard."""
        return self._view.live and self._registry.settled()

    def wait_registered(self, pattern: str, timeout: float | None = None) -> bool:
        """Wait until Redis has this node's interest in ``pattern`` (every
        node publishing after that sends it matching messages); True if so."""
        return self._registry.wait_registered(pattern, timeout)

    # -- out: local emits to Redis --------------------------------------------

    def _on_local(self, msg: tuple[Any, ...]) -> bool:
        # The forward's sink, inside bus.emit, with the emit's own tuple.
        # What the reader emits came from Redis: never send it back (no
        # echo, no loops).
        if msg is self._last:
            return False  # the same emit through a second matching forward
        self._last = msg
        if getcurrent() in self._reader_greenlets or msg[0].startswith("$"):
            # From Redis already (no echo), or a node-local system topic
            # such as a hub's $greenbus.stats (each hub has its own).
            return False
        assert self._out is not None
        try:
            return self._publisher.put(self._out, msg)
        except ChannelClosed:
            return False

    def _is_stopping(self) -> bool:
        return self._stopping

    def _on_overflow(self, channel: Channel[Any]) -> None:
        logger.warning(
            "federation %s: outbound queue full (%d); dropping under %s",
            self.node,
            self._max_pending,
            self._overflow,
        )

    def _write_loop(self) -> None:
        assert self._out is not None
        try:
            self._publisher.run(self._out, self._is_stopping)
        finally:
            if self._bus_closed and self._pool is not None:
                # Nothing more to publish, and stop() may never come: close
                # the pool's idle connections (a history's snapshots).
                self._pool.disconnect(inuse_connections=False)

    # -- a hub's peers: durable publishes, replays, positioned messages --------------

    def publish_durable(
        self, item: tuple[Any, ...], session: str | None, number: int | None, done: Done
    ) -> None:
        """Publish ``item`` through the history; ``done(None)`` once Redis has it.

        For a hub's peers (history only): the peer's ack waits for ``done``.
        ``session`` and ``number`` (a v2 client's) make a resend harmless;
        without them the node numbers the message itself.  Never blocks:
        ``done`` runs later, in the writer greenlet, with None (applied, or
        applied already) or the text of a refusal (the outbound queue is
        full, Redis refused it).
        """
        out = self._out
        if out is None or out.closed:
            done("the federation is stopped")
            return
        if not out.put(Durable(item, session, number, done)):
            done(f"the hub's queue to Redis is full ({self._max_pending}); try again")

    def snapshot(
        self, pattern: str, since: Position | None, timeout: float
    ) -> tuple[str, list[tuple[tuple[Any, ...], str]] | None]:
        """Where a new subscription to ``pattern`` starts, and what it missed since ``since``.

        Waits (up to ``timeout``) until this node's Redis subscription
        covering ``pattern`` is in place, so that every message after the
        head returned reaches the feed listeners.  See
        :meth:`RedisHistory.snapshot`.

        Raises:
            InvalidTopic: over a cluster, ``pattern``'s first token is a wildcard.
            TimeoutError: Redis did not confirm the subscription in time.
            redis.exceptions.RedisError, OSError: Redis cannot be reached.
        """
        history = self.history
        assert history is not None, "snapshot() needs a federation with history"
        if self.cluster is not None and root_of(pattern) is None:
            raise InvalidTopic(
                pattern, "over a Redis Cluster a pattern needs a literal first token"
            )
        if not pattern.startswith("$"):
            deadline = time.monotonic() + timeout
            if not self.wait_subscribed(pattern, timeout):
                raise TimeoutError(f"Redis did not confirm a subscription to {pattern!r} in time")
            # Every node decides a message's fan-out under the registry's
            # version: once this node's interest is in, every message kept
            # after the head is published to it.
            left = max(0.0, deadline - time.monotonic())
            if not self._registry.wait_registered(pattern, left):
                raise TimeoutError(f"Redis did not register the interest in {pattern!r} in time")
        return history.snapshot(pattern, since)

    def wait_subscribed(self, pattern: str, timeout: float | None = None) -> bool:
        """Wait until the Redis subscription covering ``pattern`` is confirmed."""
        placed = self._key(pattern)
        if placed is None:
            return False
        reader, key = placed
        return reader.wait_confirmed(key, timeout)

    def add_feed_listener(self, deliver: Callable[[tuple[Any, ...], str | None], object]) -> None:
        """Call ``deliver(item, pos)`` for every message received (history only),
        this node's own included, in Redis's order, in the reader greenlet."""
        self._feed_listeners.append(deliver)

    def add_lost_listener(self, lost: Callable[[], object]) -> None:
        """Call ``lost()`` when the reader is back after losing Redis: messages
        published meanwhile reached no feed listener."""
        self._lost_listeners.append(lost)

    # -- in: Redis to local subscribers -------------------------------------------

    def _on_interest(self, pattern: str, present: bool) -> None:
        if pattern.startswith("$"):
            return  # node-local system topics are never federated
        placed = self._key(pattern)
        if placed is None:
            if present:
                self._unshardable += 1
                logger.warning(
                    "federation %s: %r is not federated: over a Redis Cluster a "
                    "pattern needs a literal first token (docs/scaling.md)",
                    self.node,
                    pattern,
                )
            return
        reader, key = placed
        if present:
            self._registry.hold(pattern)
            reader.want(key)
        else:
            self._registry.release(pattern)
            reader.unwant(key)

    def _key(self, pattern: str) -> tuple[Reader, Key] | None:
        # Where the Redis subscription for ``pattern`` goes: the channel (or
        # glob) and its reader; None over a cluster for a pattern no root holds.
        if self.cluster is None:
            return self._reader, redis_glob(self.prefix, pattern)
        root = root_of(pattern)
        if root is None:
            return None
        channel = root_channel(self.prefix, root)
        address = self.cluster.master_of(channel)
        index = self.cluster.masters().index(address)
        return self._readers[index], (channel, False)

    # -- the readers' handler (each in its reader's greenlet) -----------------------

    def notify(self, raw: bytes) -> None:
        """A notification arrived on the interest registry's channel."""
        self._registry.notify(raw)

    def registry_subscribed(self) -> None:
        """The subscription to the registry's channel is confirmed."""
        self._registry.reader_subscribed()

    def registry_lost(self) -> None:
        """The registry's reader lost Redis: until it is back (and the view
        loaded again), the view cannot tell, and this node publishes all."""
        self._registry.reader_lost()

    def is_stopping(self) -> bool:
        """True once the readers should leave Redis."""
        return self._stopping

    def lost(self, seconds: float) -> None:
        """A reader is back after ``seconds`` away: what was published
        meanwhile never reached this node."""
        logger.warning(
            "federation %s: reconnected after %.2f s; messages published "
            "meanwhile are lost (counted as gaps when later ones arrive)%s",
            self.node,
            seconds,
            "; the feed listeners are told" if self._lost_listeners else "",
        )
        for lost in list(self._lost_listeners):
            lost()

    def deliver(self, raw: bytes) -> None:
        """One envelope from Redis: checked, counted, handed to the feed
        listeners and emitted into the bus (the readers' handler)."""
        # Per message: the envelope's fields as a tuple (no Envelope made).
        try:
            origin, seq, ts, topic, data, headers, reply_to, local, pos, prev = parse_envelope(raw)
        except RemoteProtocolError as exc:
            self._bad += 1
            if self._bad == 1 or self._bad % 1000 == 0:
                logger.error("federation %s: %s (%d so far)", self.node, exc, self._bad)
            return
        if topic.startswith("$"):
            return  # node-local system topics are never federated (e.g. an old node's)
        own = origin.rpartition("/")[0] == self.node
        if own and self.history is None:
            return  # our own message, back from Redis
        if not self._arrivals.admit(origin, topic, seq, pos, prev):
            return
        lag = time.time() - ts
        self._lag = lag
        if lag > self._max_lag:
            self._max_lag = lag
        self._received += 1
        if self._feed_listeners:
            item = (topic, data, headers, reply_to)
            for deliver in self._feed_listeners:
                deliver(item, pos)
        if own and local:
            return  # this node's bus delivered it when it was emitted
        try:
            self.bus.emit(topic, data, headers=headers, reply_to=reply_to)
        except ChannelFull as exc:
            logger.info("federation %s: a local subscriber refused %r: %s", self.node, topic, exc)
        except BusClosed:
            # The bus is closing: the reader leaves when this returns, and
            # the bus's close listener (_on_bus_closed) ends the writer.
            self._stopping = True


def federate(bus: Bus, url: str, *, prefix: str = "greenbus", **options: Any) -> Federation:
    """Link ``bus`` to Redis at ``url`` and start; returns the :class:`Federation`.

    ``options`` are those of :class:`Federation` (``max_pending``,
    ``overflow``, ``batch``, ``max_backoff``, ``node``, ``history``,
    ``history_ttl``, ``history_topics``, ``interest_ttl``).  With ``history``, give the
    federation to the hub: ``greenbus.serve(bus, remote=federation)``.
    """
    return Federation(bus, url, prefix=prefix, **options).start()
