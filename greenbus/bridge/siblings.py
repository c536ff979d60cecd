"""The workers of one ``greenbus serve --workers N``, seen from each of them through Redis.

Each worker is a hub of its own (its peers, its counters) federated with
the others through Redis.  So that ``/metrics``, ``/health`` and
``$greenbus.stats`` show the whole whatever worker answers, every worker
writes a snapshot of itself every ``interval`` seconds to one Redis hash
(``{prefix}:workers:<group>``, one field per worker, ``<group>`` naming the
supervisor: two servers sharing a Redis do not add up), and reads the
others' in the same round trip::

    HSET key <node> {"at": unix time, "stats": stats_document, "metrics": families}
    PEXPIRE key <ttl>
    HGETALL key

A snapshot older than ``ttl`` (three intervals, at least 3 s) is a worker
that is gone: it stops counting, and its field is deleted.  A worker that
stops deletes its own field at once.  While Redis is unreachable each worker
shows itself and what it last read, until that ages out.

Merging (:meth:`Siblings.merge_metrics`, :meth:`Siblings.merge_stats`,
:meth:`Siblings.merge_health`): counters and gauges are summed over the
live workers, and ``/metrics`` adds each worker's own series labelled
``worker="<node>"``.  A topic's rate is the highest any worker saw (a
message a worker's peer publishes is on that worker's bus, and on each
other worker's whose peers want it: summing would count it once per
worker).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent

from .metrics import PER_PEER_LABEL, Family, Samples

__all__ = ["MAX_SHARED_PEERS", "Siblings", "Worker", "workers_key"]

logger = logging.getLogger("greenbus.bridge.siblings")

#: Per-peer series a worker shares, at most (its own ``/metrics`` lists all of its peers).
MAX_SHARED_PEERS = 1000
#: The shortest time a snapshot counts for, in seconds.
MIN_TTL = 3.0


def workers_key(prefix: str, group: str) -> str:
    """The Redis hash of the workers of supervisor ``group`` (one slot in a cluster)."""
    return f"{{{prefix}}}:workers:{group}"


class Worker(Protocol):
    """What a worker shares: the hub's own stats document and metric families."""

    def stats_document(self) -> dict[str, Any]:
        """The hub's own ``$greenbus.stats`` document (not merged)."""

    def metric_families(self) -> list[Family]:
        """The hub's own ``/metrics`` families (not merged)."""


class Siblings:
    """One worker's view of the workers of its supervisor, kept fresh through Redis.

    Args:
        url: the Redis URL (the federation's).
        key: the hash the workers share (:func:`workers_key`).
        node: this worker's name (its federation node): its field, and its
            ``worker`` label.
        interval: seconds between snapshots.
        connect: makes the redis-py client (default: from ``url``, on gevent sockets).
    """

    def __init__(
        self,
        url: str,
        key: str,
        node: str,
        interval: float,
        *,
        connect: Callable[[str], Any] | None = None,
    ) -> None:
        self.key = key
        self.node = node
        self.interval = interval
        #: Seconds a snapshot counts for after it was written.
        self.ttl = max(3 * interval, MIN_TTL)
        self._client = (connect or _gevent_client)(url)
        self._worker: Worker | None = None
        self._greenlet: gevent.Greenlet | None = None
        #: The other live workers' last snapshots, by node (what the merges add).
        self.others: dict[str, dict[str, Any]] = {}
        self._failing = False

    def __repr__(self) -> str:
        return f"<Siblings {self.key} node={self.node} live={self.live}>"

    # -- lifecycle --------------------------------------------------------------

    def start(self, worker: Worker) -> Siblings:
        """Share ``worker``'s snapshot every ``interval`` s, from now on; returns self."""
        if self._greenlet is None:
            self._worker = worker
            self._greenlet = gevent.spawn(self._loop)
        return self

    def stop(self) -> None:
        """Stop sharing, and take this worker's snapshot out of Redis (best effort)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True)
            self._greenlet = None
            try:
                self._client.hdel(self.key, self.node)
            except Exception as exc:  # Redis is gone: the snapshot ages out by itself
                logger.info("worker %s: could not withdraw its snapshot: %s", self.node, exc)
        self._client.close()

    def refresh(self) -> None:
        """Write this worker's snapshot and read the others' (one round trip).

        Raises:
            redis.RedisError, OSError: Redis could not be reached.
        """
        assert self._worker is not None, "start() first"
        snapshot = {
            "at": time.time(),
            "stats": self._worker.stats_document(),
            "metrics": _shareable(self._worker.metric_families()),
        }
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self.key, self.node, json.dumps(snapshot, separators=(",", ":")))
        pipe.pexpire(self.key, int(self.ttl * 1000))
        pipe.hgetall(self.key)
        fields: dict[bytes, bytes] = pipe.execute()[-1]
        now = time.time()
        others: dict[str, dict[str, Any]] = {}
        gone: list[bytes] = []
        for name, raw in fields.items():
            node = name.decode()
            if node == self.node:
                continue
            try:
                other = json.loads(raw)
                fresh = now - float(other["at"]) <= self.ttl
            except (ValueError, TypeError, KeyError):
                fresh = False
            if fresh:
                others[node] = other
            else:
                gone.append(name)
        if gone:
            self._client.hdel(self.key, *gone)
        self.others = others

    def _loop(self) -> None:
        while True:
            try:
                self.refresh()
                if self._failing:
                    logger.info("worker %s: sharing its statistics again", self.node)
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    logger.warning(
                        "worker %s: cannot share statistics through Redis (%s); "
                        "the other workers' figures age out after %g s",
                        self.node,
                        exc,
                        self.ttl,
                    )
                self._failing = True
                now = time.time()
                self.others = {n: o for n, o in self.others.items() if now - o["at"] <= self.ttl}
            gevent.sleep(self.interval)

    # -- the whole ----------------------------------------------------------------

    @property
    def live(self) -> int:
        """Workers counted: this one and every other whose snapshot is fresh."""
        return 1 + len(self.others)

    def merge_metrics(self, own: list[Family]) -> list[Family]:
        """``own`` families summed with the other workers', and each worker's series.

        Each family gets the sum over the live workers (per label set), then
        every worker's own samples with a ``worker="<node>"`` label first.
        Per-peer families (labelled ``peer``) are not summed: each worker's
        peers are listed with their worker.  A ``workers`` gauge comes first.
        """
        workers = [(self.node, own)] + [
            (node, [tuple(f) for f in other["metrics"]]) for node, other in self.others.items()
        ]
        order: list[str] = []
        meta: dict[str, tuple[str, str]] = {}
        sums: dict[str, dict[str, float]] = {}
        each: dict[str, Samples] = {}
        for node, families in workers:
            for name, kind, text, samples in families:
                if name not in meta:
                    order.append(name)
                    meta[name] = (kind, text)
                    sums[name] = {}
                    each[name] = []
                per_peer = bool(samples) and samples[0][0].startswith(f"{{{PER_PEER_LABEL}=")
                total = sums[name]
                for labels, value in samples:
                    if not per_peer:
                        total[labels] = total.get(labels, 0) + value
                    each[name].append((_with_worker(labels, node), value))
        merged: list[Family] = [
            (
                "workers",
                "gauge",
                "Live worker processes of greenbus serve --workers (each a hub of the "
                "federation); the other series without a worker label are their sums.",
                [("", self.live)],
            )
        ]
        merged.extend((name, *meta[name], [*sums[name].items(), *each[name]]) for name in order)
        return merged

    def merge_stats(self, own: dict[str, Any], max_peers: int, max_topics: int) -> dict[str, Any]:
        """``own`` ``$greenbus.stats`` document made the whole's.

        Totals and ``peers_total`` summed; ``peers`` from every worker, each
        with its ``worker``, at most ``max_peers``; each topic at the highest
        rate a worker saw, the ``max_topics`` busiest; ``workers`` (how many)
        and ``worker`` (this one) added.
        """
        docs = [(self.node, own)] + [(n, o["stats"]) for n, o in self.others.items()]
        totals: dict[str, float] = {}
        topics: dict[str, float] = {}
        peers: list[dict[str, Any]] = []
        peers_total = 0
        for node, doc in docs:
            for key, value in doc["totals"].items():
                totals[key] = totals.get(key, 0) + value
            for topic, rate in doc["topics"].items():
                topics[topic] = max(rate, topics.get(topic, 0.0))
            peers_total += doc["peers_total"]
            room = max_peers - len(peers)
            peers.extend({**p, "worker": node} for p in doc["peers"][:room])
        return {
            **own,
            "workers": len(docs),
            "worker": self.node,
            "totals": totals,
            "peers_total": peers_total,
            "peers": peers,
            "topics": dict(sorted(topics.items(), key=_by_rate)[:max_topics]),
        }

    def merge_health(self, own: dict[str, Any]) -> dict[str, Any]:
        """``own`` ``/health`` document with the live workers' ``connections`` summed,
        and ``workers`` (how many) and ``worker`` (this one) added."""
        connections = own["connections"] + sum(
            o["stats"]["totals"]["connections"] for o in self.others.values()
        )
        return {**own, "connections": connections, "workers": self.live, "worker": self.node}


def _by_rate(item: tuple[str, float]) -> float:
    return -item[1]


def _with_worker(labels: str, node: str) -> str:
    """``labels`` with ``worker="<node>"`` first: ``""`` -> ``{worker="n"}``."""
    if not labels:
        return f'{{worker="{node}"}}'
    return f'{{worker="{node}",{labels[1:]}'


def _shareable(families: list[Family]) -> list[Family]:
    """``families`` with at most :data:`MAX_SHARED_PEERS` series per per-peer family."""
    prefix = f"{{{PER_PEER_LABEL}="
    return [
        (name, kind, text, samples[:MAX_SHARED_PEERS])
        if samples and samples[0][0].startswith(prefix)
        else (name, kind, text, samples)
        for name, kind, text, samples in families
    ]


def _gevent_client(url: str) -> Any:
    """A redis-py client of ``url`` on gevent sockets (the federation's connection
    class): a ``RedisCluster`` for a ``redis+cluster://`` URL."""
    import redis

    from ..federation._redis import GeventConnection
    from ..federation.cluster import Topology, is_cluster_url, parse_cluster_url

    if is_cluster_url(url):
        return Topology(*parse_cluster_url(url)).client()
    pool = redis.ConnectionPool.from_url(
        url, connection_class=GeventConnection, socket_connect_timeout=5
    )
    return redis.Redis(connection_pool=pool)
