"""A federation's subscribed connection: what its node wants from one Redis, read in order.

One :class:`Reader` per Redis a node reads from: the one Redis, or each
master of a Redis Cluster (``sharded``: SSUBSCRIBE, one channel per topic
root, see :mod:`greenbus.federation.cluster`).  Its greenlet connects,
subscribes to everything wanted (and to the node's classic channels: its
private one and the interest registry's), parses everything that has
arrived at once and hands each message to its :class:`ReaderHandler`, in
Redis's order; the subscribers' greenlets run when it waits for more.

Faults: it reconnects with capped exponential backoff and subscribes to
everything again; the handler hears of the outage (messages published
meanwhile never reached this node).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import gevent
import gevent.event
from greenlet import getcurrent

from ._redis import Link, ReplyError, pack_command, text

try:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover - exercised only without the extra
    RedisConnectionError = RedisTimeoutError = OSError  # type: ignore[assignment,misc]

__all__ = ["Key", "Reader", "ReaderHandler"]

logger = logging.getLogger("greenbus.federation")

#: A Redis subscription: ``(channel or glob, is_pattern)``.
Key = tuple[str, bool]


class ReaderHandler(Protocol):
    """What a :class:`Reader` tells its federation (all in the reader's greenlet)."""

    def deliver(self, raw: bytes) -> None:
        """A message arrived (an envelope)."""

    def notify(self, raw: bytes) -> None:
        """A notification arrived on the interest registry's channel."""

    def registry_subscribed(self) -> None:
        """The subscription to the registry's channel is confirmed."""

    def registry_lost(self) -> None:
        """The reader of the registry's channel lost Redis: notifications
        may be missed until it is back."""

    def lost(self, seconds: float) -> None:
        """The reader is back after ``seconds`` without Redis."""

    def is_stopping(self) -> bool:
        """True once the reader should leave Redis."""


class Reader:
    """The subscribed connection to one Redis.  See the module docstring.

    Args:
        pool: a redis-py pool for that Redis (its options, GeventConnection).
        handler: where messages and events go.
        node: the node's id, for logs.
        classic: channels always SUBSCRIBEd (classic pub/sub), first.
        registry_channel: the one of ``classic`` whose messages are
            notifications (None: this reader gets none).
        sharded: subscribe to the wanted channels with SSUBSCRIBE (a
            Redis Cluster master; no patterns) instead of (P)SUBSCRIBE.
        max_backoff: reconnect delay cap, seconds.
    """

    def __init__(
        self,
        pool: object,
        handler: ReaderHandler,
        node: str,
        *,
        classic: list[str],
        registry_channel: str | None,
        sharded: bool = False,
        max_backoff: float = 5.0,
    ) -> None:
        self._pool = pool
        self._handler = handler
        self.node = node
        self._classic = classic
        self._registry_channel = registry_channel.encode() if registry_channel else None
        self.sharded = sharded
        self._max_backoff = max_backoff
        #: Wanted subscriptions, with how many patterns of the node map to each.
        self.keys: dict[Key, int] = {}
        self._confirmed: set[Key] = set()
        self._waiters: dict[Key, gevent.event.Event] = {}
        self._link: Link | None = None
        self.greenlet: gevent.Greenlet | None = None
        self.connected = gevent.event.Event()
        #: Times it lost Redis.
        self.reconnects = 0

    def __repr__(self) -> str:
        state = "connected" if self.connected.is_set() else "connecting"
        return f"<Reader {'sharded ' if self.sharded else ''}{len(self.keys)} keys {state}>"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader's greenlet."""
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._run)

    def is_current(self) -> bool:
        """True in the reader's own greenlet (what it emits came from Redis)."""
        return getcurrent() is self.greenlet

    @property
    def dead(self) -> bool:
        """True once its greenlet ended (or never started)."""
        return self.greenlet is None or self.greenlet.dead

    def kill(self, *, block: bool = True, timeout: float | None = None) -> None:
        """End the greenlet (it closes its connection); from itself, do nothing:
        it leaves when :meth:`ReaderHandler.is_stopping` says so."""
        greenlet = self.greenlet
        if greenlet is not None and greenlet is not getcurrent():
            greenlet.kill(block=block, timeout=timeout)
        if block:
            self.close()

    def close(self) -> None:
        """Close the connection now (idempotent)."""
        self.connected.clear()
        link, self._link = self._link, None
        if link is not None:
            link.close()

    # -- what the node wants ----------------------------------------------------------

    def want(self, key: Key) -> None:
        """One more pattern of the node maps to ``key``: subscribe at its first."""
        count = self.keys.get(key, 0)
        self.keys[key] = count + 1
        if count == 0:
            self._command(key, subscribe=True)

    def unwant(self, key: Key) -> None:
        """One pattern fewer maps to ``key``: unsubscribe at its last."""
        count = self.keys.get(key, 0) - 1
        if count > 0:
            self.keys[key] = count
            return
        self.keys.pop(key, None)
        self._confirmed.discard(key)
        self._command(key, subscribe=False)

    def wait_confirmed(self, key: Key, timeout: float | None = None) -> bool:
        """Wait until Redis confirmed the subscription ``key``; True if it did."""
        if key in self._confirmed:
            return True
        event = self._waiters.get(key)
        if event is None:
            event = self._waiters[key] = gevent.event.Event()
        return bool(event.wait(timeout))

    def _verb(self, key: Key, subscribe: bool) -> str:
        verb = "SUBSCRIBE" if subscribe else "UNSUBSCRIBE"
        if self.sharded:
            return f"S{verb}"
        return f"P{verb}" if key[1] else verb

    def _command(self, key: Key, subscribe: bool) -> None:
        link = self._link
        if link is None or not self.connected.is_set():
            return  # the reader subscribes to everything wanted when it connects
        try:
            link.send(pack_command(self._verb(key, subscribe), key[0]))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            logger.info("federation %s: (un)subscribe %s deferred: %s", self.node, key[0], exc)

    def _confirm(self, key: Key) -> None:
        self._confirmed.add(key)
        waiter = self._waiters.pop(key, None)
        if waiter is not None:
            waiter.set()

    # -- the greenlet ------------------------------------------------------------------

    def _run(self) -> None:
        # However it ends (the bus closed, stop() killed it), it leaves
        # Redis: the subscribed connection is not kept a moment longer.
        try:
            self._read_until_stopping()
        finally:
            self.close()

    def _subscribe_all(self, link: Link) -> None:
        # Everything wanted, in one write, with no wait between reading
        # the keys and setting connected: a want after it goes by _command.
        command = pack_command("SUBSCRIBE", *self._classic) if self._classic else b""
        names = [name for (name, pat) in self.keys if not pat]
        patterns = [name for (name, pat) in self.keys if pat]
        if names:
            command += pack_command("SSUBSCRIBE" if self.sharded else "SUBSCRIBE", *names)
        if patterns:
            command += pack_command("PSUBSCRIBE", *patterns)
        if command:
            link.send(command)
        self.connected.set()

    def _read_until_stopping(self) -> None:
        backoff = 0.05
        outage: float | None = None
        handler = self._handler
        while not handler.is_stopping():
            try:
                # Held from the start, so that it is closed even if the
                # reader is killed while connecting.
                link = self._link = Link(self._pool, subscriber=True)
                link.open()
                self._confirmed.clear()
                self._subscribe_all(link)
                if outage is not None:
                    handler.lost(time.monotonic() - outage)
                    outage = None
                backoff = 0.05
                self._receive(link)  # returns once the federation is stopping
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.close()
                if self._registry_channel is not None:
                    handler.registry_lost()
                if handler.is_stopping():
                    return
                if outage is None:
                    outage = time.monotonic()
                    logger.warning("federation %s: lost Redis (%s); reconnecting", self.node, exc)
                self.reconnects += 1
                gevent.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _receive(self, link: Link) -> None:
        # Everything Redis sent so far, parsed at once and delivered in
        # order; the subscribers' greenlets run when the reader waits for
        # more.  Returns once the federation is stopping.
        handler = self._handler
        deliver, confirm = handler.deliver, self._confirm
        registry = self._registry_channel
        while True:
            for reply in link.replies():
                kind = reply[0] if isinstance(reply, list) and reply else None
                if kind == b"message" or kind == b"smessage":
                    if reply[1] == registry:
                        handler.notify(reply[2])
                    else:
                        deliver(reply[2])
                elif kind == b"pmessage":
                    if reply[2] != registry:  # a glob such as "P:*" matches it too
                        deliver(reply[3])
                elif kind in (b"subscribe", b"psubscribe", b"ssubscribe"):
                    if reply[1] == registry:
                        handler.registry_subscribed()
                    else:
                        confirm((text(reply[1]), kind == b"psubscribe"))
                elif isinstance(reply, ReplyError):
                    logger.error(
                        "federation %s: Redis refused a subscription: %s", self.node, reply
                    )
                if handler.is_stopping():
                    # The bus is closing (the emit raised BusClosed):
                    # nobody here can receive; leave Redis now.
                    return
