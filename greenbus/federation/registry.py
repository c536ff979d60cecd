"""Who wants what, across a federation: each node's patterns, shared through Redis.

A node publishes a topic to Redis only while some node wants it (its
*interest*, see ``docs/scaling.md``).  For that, each node keeps its
patterns in Redis and every node keeps a view of everybody's:

* **In Redis**, under the prefix ``P`` (one hash tag, so that a cluster keeps
  them on one shard): ``{P}:interest:<node>`` (a hash: one field per pattern
  the node wants), ``{P}:nodes`` (a sorted set: each node's expiry, in Redis
  time) and ``{P}:registry`` (a hash: ``v``, the registry's version).  Every
  change goes through one script (``REGISTER_SCRIPT``, in
  :mod:`greenbus.federation.interest`), which applies it, bumps the version
  and publishes what changed on the channel ``P:$interest``, atomically:
  every node hears every change once, in version order.
* **Heartbeats**: each node runs the same script every ``ttl / 3`` seconds,
  with or without changes.  It pushes the node's expiry ``ttl`` ahead and
  removes the nodes whose expiry has passed, with their patterns (told like
  any change): a node that dies stops counting after ``ttl``, at most
  ``ttl / 3`` later.  A node that finds itself removed (it was cut off for
  longer than ``ttl``) registers everything again.
* **The view** (:class:`~greenbus.federation.interest.InterestView`, pure):
  every other node's patterns in a topic index, loaded in one script
  (``LOAD_SCRIPT``) when the node's reader subscribes to ``P:$interest``,
  then kept up by the notifications.
  A missed version (the reader was cut off) loads it again.  Until it is
  loaded, and while the reader is away, the view wants everything: a node
  that cannot know stays on the safe side and publishes.

With history, the publish script also compares the version a publisher
decided with against Redis's: a message decided "nobody wants it" under an
older version is published anyway (see :mod:`greenbus.federation.history`).
So once a node's registration is in Redis (:meth:`Registry.wait_registered`),
every message published after it reaches that node's Redis subscription.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from .interest import LOAD_SCRIPT, REGISTER_SCRIPT, InterestView, registry_key

try:
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - exercised only without the extra
    RedisError = OSError  # type: ignore[assignment,misc]

__all__ = ["Registry"]

logger = logging.getLogger("greenbus.federation")


class Registry:
    """Keeps this node's interest in Redis and the view of everybody's up to date.

    One greenlet (:meth:`start`) sends this node's changes, in batches, and
    its heartbeats, and loads the view when asked; the federation's reader
    hands it the notifications (:meth:`notify`) and tells it when it
    (re)subscribed (:meth:`reader_subscribed`) or lost Redis
    (:meth:`reader_lost`).

    Args:
        client: a redis-py client on the federation's pool.
        prefix: the federation's prefix.
        node: this node's id.
        view: the view to keep up to date.
        ttl: seconds after its last heartbeat that a node stops counting.
        max_backoff: reconnect delay cap, seconds.
        on_left: called once this node left the registry (stopping: the
            federation closes its idle connections).
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        node: str,
        view: InterestView,
        *,
        ttl: float,
        max_backoff: float,
        on_left: Callable[[], object] | None = None,
    ) -> None:
        self.node = node
        self.view = view
        self.ttl = ttl
        self.channel = f"{prefix}:$interest"
        self.channel_bytes = self.channel.encode()
        self._keys = [registry_key(prefix), f"{{{prefix}}}:nodes"]
        self._iprefix = f"{{{prefix}}}:interest:"
        self._client = client
        self._register = client.register_script(REGISTER_SCRIPT)
        self._load = client.register_script(LOAD_SCRIPT)
        self._max_backoff = max_backoff
        self._on_left = on_left
        #: What this node wants, and what Redis has of it.
        self._wanted: set[str] = set()
        self._registered: set[str] = set()
        self._reset = True  # register everything (first time, after an outage)
        self._need_load = False
        self._wake = gevent.event.Event()
        self._round = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._leaving: gevent.Greenlet | None = None
        self._stopping = False
        self._outage = False
        #: The registry's version after this node's last round.
        self.version = 0
        #: Registry rounds that failed (Redis unreachable), and views loaded.
        self.failures = 0
        self.loads = 0

    # -- this node's interest ------------------------------------------------------

    def hold(self, pattern: str) -> None:
        """This node wants ``pattern`` (first holder): register it soon."""
        self._wanted.add(pattern)
        self.view.hold(pattern)
        self._wake.set()

    def release(self, pattern: str) -> None:
        """This node's last holder of ``pattern`` left: unregister it soon."""
        self._wanted.discard(pattern)
        self.view.release(pattern)
        self._wake.set()

    def settled(self) -> bool:
        """True if Redis has everything this node wants (as of its last round)."""
        return not self._reset and self._wanted == self._registered

    def wait_registered(self, pattern: str, timeout: float | None = None) -> bool:
        """Wait until Redis has this node's interest in ``pattern``; True if it has."""
        with gevent.Timeout(timeout, False):
            while pattern not in self._registered or self._reset:
                if pattern not in self._wanted:
                    return False
                self._round.clear()
                self._round.wait()
            return True
        return False

    # -- the reader's side -----------------------------------------------------------

    def notify(self, raw: bytes) -> None:
        """A notification arrived on :attr:`channel` (in the reader greenlet)."""
        if not self.view.apply(raw):
            self._ask_load()

    def reader_subscribed(self) -> None:
        """The reader's subscription to :attr:`channel` is confirmed: load the view."""
        self._ask_load()

    def reader_lost(self) -> None:
        """The reader lost Redis: notifications may be missed until it is back."""
        self.view.live = False
        self.view.loaded = False

    def _ask_load(self) -> None:
        # Until the load is in, the view cannot tell: it wants everything.
        self.view.live = False
        self.view.loaded = False
        self._need_load = True
        self._wake.set()

    # -- the greenlet ------------------------------------------------------------------

    def start(self) -> None:
        """Start the registry's greenlet."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the greenlet and leave the registry (the other nodes stop
        counting this one at once); waits up to ``timeout``.  Idempotent."""
        self.stop_soon()
        leaving = self._leaving
        if leaving is not None:
            leaving.join(timeout)
            if not leaving.dead:
                leaving.kill(block=True)

    def stop_soon(self) -> None:
        """:meth:`stop` without waiting (from a callback that must not block)."""
        self._stopping = True
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            self._leaving = gevent.spawn(self._leave, greenlet)

    def _leave(self, greenlet: gevent.Greenlet) -> None:
        greenlet.kill(block=True)
        try:
            self._call(self._register, ["!"])
        except (RedisError, OSError) as exc:
            # Redis gone: the others drop this node after ttl.
            logger.info("federation %s: could not leave the interest registry: %s", self.node, exc)
        if self._on_left is not None:
            self._on_left()

    def _call(self, script: Any, args: list[Any]) -> Any:
        if script is self._load:
            return script(keys=self._keys, args=[self._iprefix])
        return script(
            keys=self._keys,
            args=[self.node, int(self.ttl * 1000), self._iprefix, self.channel, *args],
        )

    def _run(self) -> None:
        backoff = 0.05
        heartbeat = self.ttl / 3
        while not self._stopping:
            try:
                self._once()
                if self._outage:
                    logger.warning("federation %s: interest registry reachable again", self.node)
                    self._outage = False
                backoff = 0.05
                self._round.set()
                if not (self._need_load or self._reset or self._wanted ^ self._registered):
                    self._wake.clear()
                    self._wake.wait(heartbeat)
            except (RedisError, OSError) as exc:
                self.failures += 1
                self._reset = True
                if not self._outage:
                    self._outage = True
                    logger.warning(
                        "federation %s: interest registry unreachable (%s); retrying",
                        self.node,
                        exc,
                    )
                gevent.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _once(self) -> None:
        # One round: this node's changes (or everything, after a reset) and
        # its heartbeat in one script call; then the view, if asked for.
        wanted = set(self._wanted)
        if self._reset:
            version, removed = self._call(self._register, ["=", *sorted(wanted)])
            self._reset = False
        else:
            ops: list[str] = []
            for pattern in sorted(wanted - self._registered):
                ops += ["+", pattern]
            for pattern in sorted(self._registered - wanted):
                ops += ["-", pattern]
            version, removed = self._call(self._register, ["+", *ops])
            if removed:
                logger.warning(
                    "federation %s: the registry had dropped this node (no heartbeat "
                    "for %.1f s); registering its interest again",
                    self.node,
                    self.ttl,
                )
                self._reset = True
                return
        self._registered = wanted
        self.version = int(version)
        if self._need_load:
            self._need_load = False
            self.view.load(self._call(self._load, []))
            self.view.live = True
            self.loads += 1
