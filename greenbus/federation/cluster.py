"""Federating through a Redis Cluster: one topic root, one shard.

``federate(bus, "redis+cluster://host:port,host:port,...")`` (or
``rediss+cluster://``; ``user:password@`` as in ``redis://``) spreads a
federation over the masters of a Redis Cluster with sharded pub/sub:

* **A topic's root** is its first token (``chat`` for ``chat.room1``; for
  request inboxes, ``_INBOX.<id>``: every requester its own).  Everything of
  one root lives in one hash slot, so on one master: its channel
  ``P:{root}`` (SPUBLISH / SSUBSCRIBE) and, with history, its streams, its
  position sequence and its topics (keys ``P:{root}:...``).  Different roots
  spread over the masters.
* **A subscription** to a pattern with a literal first token (``chat.*``,
  ``chat.>``, ``chat.room1``) SSUBSCRIBEs to its root's channel on that
  root's master: the node receives every message of the root, and its bus
  routes by the real pattern (the extra ones reach nobody, as with Redis's
  ``*`` globs on one Redis).  A pattern whose first token is a wildcard
  (``*.x``, ``>``) names no root: it is not federated over a cluster (a
  warning, and ``stats().unshardable``).
* **Order**: one root is one channel on one master, and a node writes to
  each master on one connection: a publisher's messages on one root reach
  every subscriber in order, which covers every subscription (each is
  within one root).  With history, positions count per root.

This module knows the cluster's shape (:class:`Topology`) and names things
(its naming is pure: the packer uses it); the federation
(:mod:`greenbus.federation.redis`) drives the connections.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlsplit

try:
    import redis
    from redis.crc import key_slot
except ImportError:  # pragma: no cover - exercised only without the extra
    redis = None  # type: ignore[assignment]

__all__ = [
    "CLUSTER_SCHEMES",
    "Topology",
    "is_cluster_url",
    "parse_cluster_url",
    "root_channel",
    "root_of",
]

logger = logging.getLogger("greenbus.federation")

#: The URL schemes of a Redis Cluster.
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

#: Hash slots in a Redis Cluster.
SLOTS = 16384

Address = tuple[str, int]


def is_cluster_url(url: str) -> bool:
    """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> tuple[list[Address], dict[str, Any]]:
    """The seed nodes of a cluster URL, and the connection options it gives.

    ``redis+cluster://[user[:password]@]host:port[,host:port...][/]``;
    ``rediss+cluster://`` connects with TLS.

    Raises:
        ValueError: not a cluster URL, no node, a node without a port or
            with a port out of range, or a database other than 0 (a cluster
            has only database 0).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a redis+cluster:// URL: {url!r}")
    credentials, at, hosts = rest.rpartition("@")
    hosts, _, path = hosts.partition("/")
    path = path.partition("?")[0]
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {path!r}")
    seeds: list[Address] = []
    for item in hosts.split(","):
        if not item:
            continue
        parts = urlsplit(f"//{item}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{item!r}: the port must be 0..65535") from None
        if not parts.hostname or port is None:
            raise ValueError(f"{item!r}: a cluster node is host:port")
        seeds.append((parts.hostname, port))
    if not seeds:
        raise ValueError(f"no node in {url!r}")
    options: dict[str, Any] = {}
    if at:
        user, colon, password = credentials.partition(":")
        if colon:
            options["username"] = unquote(user) or None
            options["password"] = unquote(password)
        else:
            options["password"] = unquote(user)
    if scheme.lower() == "rediss+cluster":
        options["connection_class"] = _ssl_connection_class()
    return seeds, options


def _ssl_connection_class() -> Any:  # pragma: no cover - no TLS cluster in the tests
    raise ValueError("rediss+cluster:// is not supported yet: use redis+cluster://")


def root_of(pattern: str) -> str | None:
    """The root of a topic or pattern: its first token (``_INBOX.<id>`` for an
    inbox); None if that is a wildcard (the pattern spans every root)."""
    first, _, rest = pattern.partition(".")
    if first in ("*", ">"):
        return None
    if first == "_INBOX" and rest:
        second = rest.partition(".")[0]
        if second not in ("*", ">"):
            return f"_INBOX.{second}"
    return first


def root_channel(prefix: str, root: str) -> str:
    """The sharded channel of ``root``: ``prefix:{root}`` (the braces are the
    hash tag, so its keys ``prefix:{root}:...`` share its slot)."""
    return f"{prefix}:{{{root}}}"


class Topology:
    """The masters of a cluster and the slots each holds; a connection pool per master.

    Args:
        seeds: nodes to ask (``CLUSTER SLOTS``), in order, until one answers.
        options: connection options for every node (password, timeouts).
    """

    def __init__(self, seeds: list[Address], options: dict[str, Any]) -> None:
        if redis is None:
            raise ImportError("federation needs redis-py: pip install 'greenbus[redis]'")
        self.seeds = seeds
        self.options = {"socket_connect_timeout": 5, **options}
        self._slots: list[Address] = []
        self._pools: dict[Address, Any] = {}

    def __repr__(self) -> str:
        return f"<Topology masters={self.masters()}>"

    def refresh(self) -> None:
        """Ask the seeds (then the known masters) which master holds which slots.

        Raises:
            redis.exceptions.RedisError, OSError: no node answered, or the
                cluster does not cover every slot.
        """
        error: Exception | None = None
        for host, port in [*self.seeds, *self.masters()]:
            try:
                client = redis.Redis(host=host, port=port, **self._plain_options())
                try:
                    reply = client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                finally:
                    client.close()
            except (redis.exceptions.RedisError, OSError) as exc:
                error = exc
                continue
            self._slots = _slot_table(reply)
            return
        assert error is not None
        raise error

    def _plain_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if k != "connection_class"}

    def masters(self) -> list[Address]:
        """The masters that hold slots, in slot order."""
        return list(dict.fromkeys(self._slots))

    def master_of(self, name: str) -> Address:
        """The master holding ``name``'s slot (a key or a sharded channel)."""
        return self._slots[key_slot(name.encode())]

    def pool(self, address: Address) -> Any:
        """A redis-py pool for the master at ``address`` (gevent sockets)."""
        pool = self._pools.get(address)
        if pool is None:
            from ._redis import GeventConnection

            host, port = address
            options = {"connection_class": GeventConnection, **self.options}
            pool = self._pools[address] = redis.ConnectionPool(host=host, port=port, **options)
        return pool

    def client(self) -> Any:
        """A redis-py ``RedisCluster`` (gevent sockets): scripts and snapshots."""
        from redis.cluster import ClusterNode, RedisCluster

        from ._redis import GeventConnection

        nodes = [ClusterNode(host, port) for host, port in self.seeds]  # type: ignore[no-untyped-call]
        return RedisCluster(
            startup_nodes=nodes, connection_class=GeventConnection, **self._plain_options()
        )

    def disconnect(self) -> None:
        """Close every pool's connections."""
        for pool in self._pools.values():
            pool.disconnect()


def _slot_table(reply: list[Any]) -> list[Address]:
    # CLUSTER SLOTS: [[start, end, [host, port, id], replicas...], ...]
    table: list[Address | None] = [None] * SLOTS
    for start, end, master, *_ in reply:
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        address = (host, int(master[1]))
        for slot in range(int(start), int(end) + 1):
            table[slot] = address
    missing = table.count(None)
    if missing:
        raise redis.exceptions.ConnectionError(
            f"the cluster does not cover {missing} of its {SLOTS} slots"
        )
    return [address for address in table if address is not None]
