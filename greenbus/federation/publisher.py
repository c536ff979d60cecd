"""A federation's publishing side: one connection to Redis, and the writer's loop.

The outbound queue (a bounded :class:`~greenbus.channel.Channel`, the
federation's) holds local emits and hub peers' pubs.  The writer greenlet
(:meth:`Publisher.run`) takes what has accumulated, packs it
(:class:`~greenbus.federation.outbound.Packer`), writes it in one send and
reads as many replies: one round trip per batch, in order, on one
connection.  A local emit that finds the writer parked with nothing in
flight is written at once from the emit (:meth:`Publisher.put`), with a
write that never waits.

Faults: on a broken connection the writer reconnects with capped
exponential backoff and re-sends everything in hand (receivers drop the
repeats by sequence number; with history, the script does).  A Redis that
lost the publish script (restarted, ``SCRIPT FLUSH``) gets it again and the
messages it refused with ``NOSCRIPT`` are sent once more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent

from ..channel import Channel
from ..exceptions import EndOfChannel
from ._redis import Link, ReplyError
from .cluster import Topology
from .outbound import Job, Packer

try:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover - exercised only without the extra
    RedisConnectionError = RedisTimeoutError = OSError  # type: ignore[assignment,misc]

__all__ = ["Publisher"]

#: A cluster's answers for a slot that is elsewhere, or moving: ask again.
_MOVING = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")

logger = logging.getLogger("greenbus.federation")


class Publisher:
    """Publishes a federation's outbound queue on its own connection to Redis.

    Args:
        pool: a redis-py pool made from the federation's URL (its options).
        packer: numbers and packs the messages (and knows the history).
        batch: messages per write (and round trip), at most.
        max_backoff: reconnect delay cap, seconds.
    """

    def __init__(
        self,
        pool: Any,
        packer: Packer,
        batch: int,
        max_backoff: float,
        *,
        topology: Topology | None = None,
    ) -> None:
        self.packer = packer
        self.node = packer.node
        self._pool = pool
        self._batch = batch
        self._max_backoff = max_backoff
        self._link: Link | None = None
        #: Over a Redis Cluster: a connection per master, each job sent to the
        #: master of its channel's slot (one root, one master, one order).
        self._topology = topology
        self._links: dict[tuple[str, int], Link] = {}
        self._refresh = False
        #: Messages Redis answered for; given up (stopped during an outage);
        #: refused by Redis; found applied already by the script; reconnects.
        self.published = 0
        self.dropped = 0
        self.script_errors = 0
        self.duplicates_dropped = 0
        self.reconnects = 0
        #: Messages the writer holds (taken from the queue, not yet answered).
        self.in_hand = 0
        # The writer is parked in the queue with nothing in flight; the
        # message _send_now packed (and wrote, but for _unsent) meanwhile.
        self._idle = False
        self._sent_now: tuple[tuple[Any, ...], list[Job]] | None = None
        self._unsent = b""

    def put(self, out: Channel[Any], msg: tuple[Any, ...]) -> bool:
        """Queue a local emit on ``out``; True if queued.  Never waits.

        The first message after the writer parked is also written at once.

        Raises:
            ChannelClosed: ``out`` is closed.
        """
        queued = out.put(msg)
        if self._idle:
            # Any other message waits for the writer.
            self._idle = False
            if queued and len(out) == 1:
                self._send_now(msg)
        return queued

    def run(self, out: Channel[Any], stopping: Callable[[], bool]) -> None:
        """The writer greenlet's body: publish what ``out`` holds until it ends.

        Gives up on what it holds only when ``stopping()`` and ``out`` is
        closed while Redis stays unreachable.  Closes its connection when
        it returns (or is killed).
        """
        try:
            self._write_batches(out, stopping)
        finally:
            self.close()

    def close(self) -> None:
        """Close the connections (idempotent)."""
        link, self._link = self._link, None
        if link is not None:
            link.close()
        links, self._links = self._links, {}
        for link in links.values():
            link.close()

    def _send_now(self, msg: tuple[Any, ...]) -> None:
        # The writer is parked with nothing in flight, and ``msg`` is alone
        # in the queue: pack it and write it here, without waiting for the
        # writer's turn (its wake-up, a hub pass, was a tenth of a one-way
        # trip).  It stays queued: the writer, woken by the put, finds it
        # first in its batch, skips it, writes whatever the socket did not
        # take and reads its reply with the others; on a reconnect it
        # re-sends it with them.  os.write never waits, so neither does the
        # emitter; nothing else is written meanwhile, so the order holds.
        link = self._link
        if link is None or self._topology is not None:
            return
        jobs = self.packer.pack([msg])
        self._sent_now = (msg, jobs)
        if jobs:
            command = jobs[0].command
            self._unsent = command[link.send_nowait(command) :]

    def _open(self) -> Link:
        # Held in self._link from the start, so that it is closed even
        # if the writer is killed while connecting.
        link = self._link = Link(self._pool, subscriber=False)
        link.open()
        if self.packer.history is not None:
            self._load_script(link)
        return link

    def _round_trip_cluster(self, jobs: list[Job], load: bool) -> list[Any]:
        # Each master gets its jobs in one write, in order; then each one's
        # replies are read, and put back in the jobs' order.
        topology = self._topology
        assert topology is not None
        if self._refresh:
            topology.refresh()
            self._refresh = False
        groups: dict[tuple[str, int], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(topology.master_of(job.channel), []).append(i)
        links = []
        for address, indexes in groups.items():
            link = self._links.get(address)
            if link is None:
                link = self._links[address] = Link(topology.pool(address), subscriber=False)
                link.open()
                load = load or self.packer.history is not None
            if load and self.packer.history is not None:
                self._load_script(link)
            link.send(b"".join([jobs[i].command for i in indexes]))
            links.append((link, indexes))
        results: list[Any] = [None] * len(jobs)
        for link, indexes in links:
            for i, result in zip(indexes, link.read(len(indexes)), strict=True):
                results[i] = result
        return results

    def _load_script(self, link: Link) -> None:
        assert self.packer.history is not None
        link.send(self.packer.history.load_command())
        [reply] = link.read(1)
        if isinstance(reply, ReplyError):
            # The EVALSHAs will fail with NOSCRIPT: counted as script errors.
            logger.error("federation %s: Redis refused the publish script: %s", self.node, reply)

    def _write_batches(self, out: Channel[Any], stopping: Callable[[], bool]) -> None:
        # One batch at a time: send every command in one write, then read
        # as many replies (Redis answers one connection's commands in order).
        backoff = 0.05
        while True:
            try:
                self._idle = True
                batch = out.get_batch(self._batch)
            except EndOfChannel:
                return
            finally:
                self._idle = False
            jobs, sent_now_unsent = self._take_sent_now(batch)
            new = self.packer.pack(batch)
            jobs += new
            # What is not on the wire yet (None: all of it, after a reconnect).
            unsent: bytes | None = sent_now_unsent + b"".join([job.command for job in new])
            self.in_hand = len(jobs)
            # NOSCRIPT (Redis lost the script, e.g. SCRIPT FLUSH): load it
            # and send those jobs again, once.
            load, retry = False, True
            while jobs:
                try:
                    if self._topology is not None:
                        results = self._round_trip_cluster(jobs, load)
                        load = False
                    else:
                        link = self._link or self._open()
                        if load:
                            self._load_script(link)
                            load = False
                        if unsent is None:
                            unsent = b"".join([job.command for job in jobs])
                        if unsent:
                            link.send(unsent)
                        unsent = None
                        results = link.read(len(jobs))
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    # Re-send the whole batch after reconnecting: receivers
                    # drop what they already had by sequence number, and the
                    # history's script drops what it applied already.
                    unsent = None
                    self.close()
                    self._refresh = self._topology is not None
                    self.reconnects += 1
                    logger.warning(
                        "federation %s: publishing failed (%s); retrying in %.2f s",
                        self.node,
                        exc,
                        backoff,
                    )
                    gevent.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    if stopping() and out.closed and backoff >= self._max_backoff:
                        self.dropped += len(jobs)
                        self.in_hand = 0
                        return
                    continue
                backoff = 0.05
                jobs = self._applied(jobs, results, retry)
                self.in_hand = len(jobs)
                if jobs and self._refresh:
                    # A cluster's slot moved (MOVED, ASK, TRYAGAIN,
                    # CLUSTERDOWN): ask where it went, and send those again.
                    gevent.sleep(backoff)
                elif jobs:
                    load, retry = True, False

    def _take_sent_now(self, batch: list[Any]) -> tuple[list[Job], bytes]:
        # The job _send_now packed (and wrote, but for the bytes returned):
        # taken out of ``batch``, where the put left it first.
        sent_now = self._sent_now
        if sent_now is None:
            return [], b""
        msg, jobs = sent_now
        unsent, self._sent_now, self._unsent = self._unsent, None, b""
        if batch and batch[0] is msg:
            del batch[0]
        else:
            # The full queue dropped its oldest, this one, though it is on
            # its way: not a drop after all.
            self.dropped -= 1
        return jobs, unsent

    def _applied(self, jobs: list[Job], results: list[Any], retry: bool) -> list[Job]:
        # What Redis answered for each job: a durable publish learns it now.
        # Returns the jobs to send again once the script is loaded (NOSCRIPT:
        # it did not run; with ``retry`` only, so a refused load cannot loop).
        again: list[Job] = []
        for job, result in zip(jobs, results, strict=True):
            error: str | None = None
            if retry and isinstance(result, ReplyError) and str(result).startswith("NOSCRIPT"):
                again.append(job)
                continue
            if isinstance(result, ReplyError) and str(result).startswith(_MOVING):
                self._refresh = True
                again.append(job)
                continue
            self.published += 1
            if isinstance(result, Exception):
                self.script_errors += 1
                error = f"Redis refused the message: {result}"
                logger.error("federation %s: %s (on %r)", self.node, error, job.topic)
            elif self.packer.history is not None and not result[0]:
                self.duplicates_dropped += 1  # applied already: acknowledge again
            if job.done is not None:
                job.done(error)
        return again
