"""What a node sends Redis: its messages numbered, enveloped and packed.  Pure, no I/O.

The outbound queue holds local emits (the bus's ``(topic, data, headers,
reply_to)`` tuples) and hub peers' pubs (:class:`Durable`).  A
:class:`Packer` turns a batch of them into :class:`Job`\\ s, each one command
ready for the wire: a ``PUBLISH`` of the envelope or, with history, the
script's ``EVALSHA`` (see :mod:`greenbus.federation.history`).

Numbering: each message gets the next sequence number of its topic (``q``)
once it is encoded (a message that cannot be encoded must not look like a
gap to the receivers).  When the table of topics grows past
:data:`~greenbus.federation.arrivals.MAX_TRACKED` it starts over under a new
epoch, which makes a new origin (``node/epoch``): receivers start fresh
tables for it instead of taking restarted numbers for duplicates.  With
history, each script call is also numbered in a publisher session (a hub
peer's own, or the node's), so a batch sent again after a reconnect is
applied once.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from typing import Any, NamedTuple

from ..acl import INBOX_PREFIX
from ..exceptions import LocalProtocolError
from ._redis import pack_command, pack_publish
from .arrivals import MAX_TRACKED
from .cluster import root_channel, root_of
from .envelope import pack_envelope
from .history import Done, RedisHistory
from .interest import InterestView

__all__ = ["Durable", "Job", "Packer"]

logger = logging.getLogger("greenbus.federation")


class Durable:
    """A hub peer's pub on its way to Redis: ``done`` is told once the script ran."""

    __slots__ = ("done", "item", "number", "session")

    def __init__(
        self, item: tuple[Any, ...], session: str | None, number: int | None, done: Done
    ) -> None:
        self.item = item
        self.session = session
        self.number = number
        self.done = done


class Job(NamedTuple):
    """One message packed for Redis: a PUBLISH, or the history's EVALSHA."""

    topic: str
    command: bytes
    #: A durable pub's ``done`` (None for a local emit).
    done: Done | None
    #: The channel it publishes to (over a cluster, its slot picks the master).
    channel: str = ""


class Packer:
    """Numbers, envelopes and packs a node's outbound messages.

    Args:
        node: the node's id (origins are ``node/epoch``).
        prefix: the federation's prefix (channels are ``prefix:topic``).
        history: the federation's history in Redis, or None (plain PUBLISH).
    """

    __slots__ = (
        "_epoch",
        "_numbers",
        "_seqs",
        "cluster",
        "history",
        "node",
        "prefix",
        "session",
        "unencodable",
        "unwanted",
        "view",
    )

    def __init__(
        self,
        node: str,
        prefix: str,
        history: RedisHistory | None,
        view: InterestView | None = None,
        *,
        cluster: bool = False,
    ) -> None:
        self.node = node
        #: Over a Redis Cluster: SPUBLISH to the topic root's channel.
        self.cluster = cluster
        self.prefix = prefix
        self.history = history
        #: Who wants what (with history: decides each message's fan-out).
        self.view = view
        #: With history: messages packed to be kept but not published (no
        #: node wanted them when packed).
        self.unwanted = 0
        #: This node's own publisher session (history only).
        self.session = f"{node}-{secrets.token_hex(4)}"
        #: Messages that JSON cannot carry: logged, counted and skipped.
        self.unencodable = 0
        self._numbers = itertools.count(1)
        self._seqs: dict[str, int] = {}
        self._epoch = 0

    def pack(self, batch: list[tuple[Any, ...] | Durable]) -> list[Job]:
        """One :class:`Job` per encodable entry of ``batch``, in order.

        An entry JSON cannot carry is skipped: counted in
        :attr:`unencodable`, logged, and a durable one's ``done`` is told why.
        """
        seqs = self._seqs
        if len(seqs) > MAX_TRACKED:
            seqs.clear()
            self._epoch += 1
        origin = f"{self.node}/{self._epoch}"
        history = self.history
        view = self.view
        version = view.version if view is not None else 0
        now = time.time()
        jobs = []
        for entry in batch:
            if isinstance(entry, Durable):
                durable, msg = entry, entry.item
            else:
                durable, msg = None, entry
            topic = msg[0]
            seq = seqs.get(topic, 0) + 1
            headers = msg[2]
            try:
                payload = pack_envelope(
                    origin,
                    seq,
                    now,
                    topic,
                    msg[1],
                    dict(headers) if headers else None,
                    msg[3],
                    durable is None,
                )
            except LocalProtocolError as exc:
                self.unencodable += 1
                logger.error("federation %s: %s (not published)", self.node, exc)
                if durable is not None:
                    durable.done(str(exc))
                continue
            seqs[topic] = seq
            if self.cluster:
                root = root_of(topic)
                assert root is not None  # a topic's first token is never a wildcard
                channel = root_channel(self.prefix, root)
            else:
                channel = f"{self.prefix}:{topic}"
            if history is None:
                if self.cluster:
                    command = pack_command("SPUBLISH", channel, payload)
                else:
                    command = pack_publish(channel, payload)
            else:
                # Request replies always go: the requester's inbox may be
                # too new to have reached this node's view.  Over a cluster
                # the registry's version is on another shard: always.
                fanout = (
                    self.cluster
                    or view is None
                    or view.wants(topic)
                    or topic.startswith(INBOX_PREFIX)
                )
                if not fanout:
                    self.unwanted += 1
                if durable is not None and durable.number is not None:
                    assert durable.session is not None
                    session, number = durable.session, durable.number
                else:
                    session, number = self.session, next(self._numbers)
                command = history.publish_command(
                    topic, payload, channel, session, number, fanout, version
                )
            jobs.append(Job(topic, command, durable.done if durable is not None else None, channel))
        return jobs
