"""The client processes of the hub's load and soak benchmarks (``perf/load.py``).

Run as ``python -m perf.load_worker COMMAND OPTIONS``, OPTIONS a JSON object
of the command's keyword arguments:

* ``subscribers``: opens ``count`` connections, each subscribed to
  ``load.<group>`` (sid 1) and ``load.all`` (sid 2), and checks every
  message: each subscription must see ``0 .. expected-1`` in order.
* ``publisher``: publishes the load test's fan-out traffic, a window at a
  time (the last ``pub`` of each window carries an id; its ack says the hub
  has routed the window), and reports what it sent.
* ``soak``: the soak's whole mix for ``seconds``: connections with churn,
  subscribe/unsubscribe on fresh topics, a fixed-rate publisher, and one
  slow consumer that the hub closes as slow.

They talk JSON lines on stdout (:mod:`perf.procs`) and take ``report`` and
``close`` lines on stdin (EOF means close).  Each connection is a
:class:`Client`: ``websockets``' sans-I/O ``ClientProtocol`` driven by a
gevent socket, as greenbus's own bridge drives it.
"""

from __future__ import annotations

import faulthandler
import itertools
import json
import logging
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.os
import gevent.pool
import gevent.socket
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState
from websockets.protocol import State
from websockets.uri import parse_uri

from .procs import HOST, Tally, raise_fd_limit, run_worker, say

__all__ = ["Client", "HandshakeFailed", "take_frames"]

logger = logging.getLogger("perf.load_worker")

#: Seconds to open a connection and finish its handshake; to wait for an ack;
#: for the hub's close frame after ours; without messages before a worker gives up.
CONNECT_TIMEOUT = ACK_TIMEOUT = IDLE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
#: Connections opened at once by one process (the hub's listen backlog is 128).
CONNECT_CONCURRENCY = 25
#: Seconds between progress lines.
PROGRESS_EVERY = 0.25
#: Problems described in a result, at most (all are counted).
SHOWN = 5
#: The soak's slow consumer: subscriptions to ``soak.>``, and seconds it reads slowly.
SLOW_SUBSCRIPTIONS, SLOW_PHASE = 16, 20.0
#: Fresh topics published to before the soak starts (fills the hub's caches).
PREFILL_TOPICS = 5000
#: The padding in every payload, so a message is about 120 bytes on the wire.
PAD = "x" * 48
#: What a connection that fails to open or subscribe raises.
FAILED = (OSError, RuntimeError, gevent.Timeout)

clock = time.monotonic


class HandshakeFailed(RuntimeError):
    """The opening handshake did not end with a WebSocket connection."""


class Client:
    """One WebSocket connection to the hub: websockets' ``ClientProtocol`` on a gevent socket.

    A reader greenlet takes the hub's text frames off the stream itself and
    gives the protocol every other frame (pings, the close): websockets'
    frame parser costs about 2 µs more per frame, which would make the load
    test's subscribers, sharing the CPUs with the hub, the bottleneck of the
    delivered rate.  ``msg`` goes to ``on_msg(client, sid, topic, data)``,
    an error without an id to ``on_error``, the end to ``on_end``.  A slow
    consumer sets a small ``rcvbuf``, and ``read_size``/``read_pause``.
    """

    def __init__(
        self,
        port: int,
        name: str,
        on_msg: Callable[[Client, Any, str, Any], None] | None = None,
        on_error: Callable[[Client, dict[str, Any]], None] | None = None,
        on_end: Callable[[Client], None] | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self.port, self.name, self.rcvbuf = port, name, rcvbuf
        self.on_msg, self.on_error, self.on_end = on_msg, on_error, on_end
        self.read_size, self.read_pause = 65536, 0.0
        self.protocol = ClientProtocol(parse_uri(f"ws://{HOST}:{port}/"), max_size=1 << 20)
        self.sock: Any = None
        self.ended = gevent.event.Event()
        #: The close code the hub sent, or 1006 when the TCP connection just ended.
        self.close_code: int | None = None
        self.close_reason = ""
        #: True once we started closing (a close frame, or an abort).
        self.closing = False
        self._buffer = bytearray()
        self._lock = gevent.lock.Semaphore()
        self._waiting: dict[int, gevent.event.AsyncResult] = {}
        self._ids = itertools.count(1)
        self._reader: Any = None

    def __repr__(self) -> str:
        state = "ended" if self.ended.is_set() else "closing" if self.closing else "open"
        return f"<Client {self.name} {state}>"

    @property
    def open(self) -> bool:
        return self.sock is not None and not self.closing and not self.ended.is_set()

    def connect(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Connect, run the opening handshake, start the reader (or raise one of FAILED)."""
        protocol = self.protocol
        sock = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with gevent.Timeout(timeout):
                sock.connect((HOST, self.port))
                protocol.send_request(protocol.connect())
                sock.sendall(b"".join(protocol.data_to_send()))
                response = b""
                while b"\r\n\r\n" not in response:
                    if not (chunk := sock.recv(4096)):
                        raise HandshakeFailed("the hub closed the connection in the handshake")
                    response += chunk
            head, _, rest = response.partition(b"\r\n\r\n")
            protocol.receive_data(head + b"\r\n\r\n")  # frames after it go to the reader
            protocol.events_received()  # the response
            if protocol.state is not State.OPEN:
                raise HandshakeFailed(str(protocol.handshake_exc)) from protocol.handshake_exc
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._reader = gevent.spawn(self._read_loop, rest)

    def _write(self, frame: Callable[[], object] = lambda: None) -> bool:
        """Call ``frame()`` (the protocol's ``send_*``), write what the protocol has to send;
        False if the connection is gone."""
        if self.sock is None or self.ended.is_set():
            return False
        try:
            with self._lock:  # one writer at a time, in the protocol's order
                frame()
                if data := self.protocol.data_to_send():
                    self.sock.sendall(b"".join(data))
        except (OSError, InvalidState) as exc:
            logger.debug("%s: write failed: %s", self.name, exc)
            return False
        return True

    def send(self, *objs: dict[str, Any]) -> bool:
        """One text frame per object, written at once; False if the connection is gone."""
        text = self.protocol.send_text

        def frames() -> None:
            for obj in objs:
                text(json.dumps(obj, separators=(",", ":")).encode())

        return self._write(frames)

    def call(self, obj: dict[str, Any], timeout: float = ACK_TIMEOUT) -> None:
        """Send ``obj`` with a fresh id and wait for its ack; RuntimeError if the hub refused
        it or the connection ended, gevent.Timeout if no answer came within ``timeout``."""
        ident = next(self._ids)
        self._waiting[ident] = waiter = gevent.event.AsyncResult()
        try:
            if not self.send({**obj, "id": ident}):
                raise RuntimeError(f"{self.name}: connection gone before {obj['op']}")
            answer = waiter.get(timeout=timeout)
        finally:
            self._waiting.pop(ident, None)
        if answer.get("op") != "ack":
            raise RuntimeError(f"{self.name}: {obj['op']} refused: {answer}")

    def subscribe(self, *topics: str) -> None:
        """Subscribe to each topic in turn (sids 1, 2...), waiting for each ack."""
        for sid, topic in enumerate(topics, 1):
            self.call({"op": "sub", "sid": sid, "topic": topic})

    def close(self, code: int = 1000, timeout: float = CLOSE_TIMEOUT) -> bool:
        """The closing handshake: our close frame, then the hub's; True if it ended in time."""
        if not self.closing and not self.ended.is_set():
            self.closing = True
            self._write(lambda: self.protocol.send_close(code, "bye"))
        done: bool = self.ended.wait(timeout)
        self.abort()
        return done

    def abort(self) -> None:
        """Drop the TCP connection with no close frame."""
        self.closing = True
        if self.sock is not None:
            self.sock.close()
        if not self.ended.is_set() and self._reader is not None:
            self._reader.kill(block=False)
            self._end(1006, "aborted by the client")

    def _read_loop(self, data: bytes) -> None:
        protocol = self.protocol
        try:
            while True:
                self._buffer += data
                texts, others = take_frames(self._buffer)
                for frame in others:
                    protocol.receive_data(frame)
                protocol.events_received()  # pings and the close: answered by the protocol
                for text in texts:
                    self._text(text)
                self._write()  # pongs, the echo of the hub's close frame
                if (close := protocol.close_rcvd) is not None:
                    return self._end(close.code, close.reason)
                if protocol.parser_exc is not None:
                    logger.error("%s: %s", self.name, protocol.parser_exc)
                    return self._end(1002, str(protocol.parser_exc))
                if self.read_pause:
                    gevent.sleep(self.read_pause)
                if not (data := self.sock.recv(self.read_size)):
                    return self._end(1006, "EOF without a close frame")
        except OSError as exc:
            self._end(1006, f"socket error: {exc}")
        except Exception as exc:
            logger.exception("%s: reader failed", self.name)
            self._end(1006, f"reader failed: {exc!r}")

    def _text(self, payload: bytes) -> None:
        obj = json.loads(payload)
        if obj["op"] == "msg":
            if self.on_msg is not None:
                self.on_msg(self, obj["sid"], obj["topic"], obj["data"])
        elif obj["op"] in ("ack", "error") and obj.get("id") in self._waiting:
            self._waiting[obj["id"]].set(obj)
        elif obj["op"] == "error" and self.on_error is not None:
            self.on_error(self, obj)

    def _end(self, code: int, reason: str) -> None:
        if self.ended.is_set():
            return
        self.close_code, self.close_reason = code, reason
        for waiter in self._waiting.values():
            waiter.set({"op": "closed", "code": code, "reason": reason})
        if self.sock is not None:
            self.sock.close()
        self.ended.set()
        if self.on_end is not None:
            self.on_end(self)


def take_frames(buf: bytearray) -> tuple[list[bytes], list[bytes]]:
    """Take the whole frames off the front of ``buf``: final text frames' payloads, other frames.

    RFC 6455 section 5.2: a frame is 2 bytes, 2 or 8 more of length if it
    says 126 or 127, a 4-byte key if masked (a server must not mask: such a
    frame is one of the others, which the protocol refuses), the payload.
    """
    texts, others, pos, end = [], [], 0, len(buf)
    while end - pos >= 2:
        b1, b2 = buf[pos], buf[pos + 1]
        size, head = b2 & 0x7F, 2
        if size >= 126:
            head = 4 if size == 126 else 10
            if end - pos < head:
                break
            size = int.from_bytes(buf[pos + 2 : pos + head], "big")
        stop = pos + head + (4 if b2 & 0x80 else 0) + size
        if stop > end:
            break
        if b1 == 0x81 and not b2 & 0x80:  # FIN, text, unmasked
            texts.append(bytes(buf[pos + head : stop]))
        else:
            others.append(bytes(buf[pos:stop]))
        pos = stop
    del buf[:pos]
    return texts, others


# -- shared by the commands --------------------------------------------------------


def read_commands() -> Iterator[str]:
    """The lines of stdin, read cooperatively, until EOF."""
    fd = sys.stdin.fileno()
    gevent.os.make_nonblocking(fd)
    buf = b""
    while chunk := gevent.os.nb_read(fd, 4096):
        *lines, buf = (buf + chunk).split(b"\n")
        yield from (line.decode().strip() for line in lines)


def progress_loop(fields: Callable[[], dict[str, Any]]) -> gevent.Greenlet:
    """A greenlet that says ``{"progress": fields()}`` every PROGRESS_EVERY seconds."""

    def loop() -> None:
        while True:
            say(progress=fields())
            gevent.sleep(PROGRESS_EVERY)

    return gevent.spawn(loop)


def close_all(clients: Sequence[Client]) -> dict[str, Any]:
    """Close every client (the closing handshake, in parallel); count how it went."""
    results = gevent.pool.Pool(100).map(lambda c: c.sock is None or c.close(), clients)
    codes = Counter(str(c.close_code) for c in clients)
    return {"clients": len(clients), "clean": sum(map(bool, results)), "codes": dict(codes)}


def wait_quiet(missing: Callable[[], int], received: Callable[[], int]) -> None:
    """Wait until nothing is ``missing()``, or nothing was ``received()`` for IDLE_TIMEOUT."""
    idle_since, seen = clock(), received()
    while missing() > 0 and clock() - idle_since < IDLE_TIMEOUT:
        gevent.sleep(0.05)
        if received() != seen:
            idle_since, seen = clock(), received()


def _pub(topic: str, n: int) -> dict[str, Any]:
    return {"op": "pub", "topic": topic, "data": {"n": n, "pad": PAD}}


@dataclass
class Conn:
    """One connection of a :class:`Population`, and a tally per subscription (by sid)."""

    client: Client
    group: int
    stable: bool = True
    tallies: dict[int, Tally] = field(default_factory=lambda: {1: Tally(), 2: Tally()})
    #: The soak's extra subscription (sid, topic), and the sids it takes.
    extra: tuple[int, str] | None = None
    sids: Iterator[int] = field(default_factory=lambda: itertools.count(3))


@dataclass
class Population:
    """Connections to the hub, each subscribed to ``{prefix}.<group>`` (sid 1) and
    ``{prefix}.all`` (sid 2), every message checked by its subscription's tally."""

    port: int
    prefix: str
    groups: int
    conns: dict[str, Conn] = field(default_factory=dict)
    received: int = 0
    last: float | None = None
    #: "connects", "late" (a message for a sid not subscribed), "hub_errors"...
    counts: Counter[str] = field(default_factory=Counter)
    #: How connections the hub ended (not we) ended, by close code.
    ends: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: Gaps and disorder of the subscriptions :meth:`fold`-ed.
    gaps: int = 0
    disorder: int = 0
    closing: bool = False

    def problem(self, text: str) -> None:
        if len(self.problems) < SHOWN:
            self.problems.append(text)

    def on_msg(self, client: Client, sid: Any, topic: str, data: Any) -> None:
        conn = self.conns.get(client.name)
        if (tally := conn.tallies.get(sid) if conn is not None else None) is None:
            # After the ack of an unsub nothing more may arrive on its sid.
            self.counts["late"] += 1
            self.problem(f"{client.name}: a message on {topic} for sid {sid}, not subscribed")
            return
        tally.add(data["n"])
        self.received += 1
        self.last = clock()

    def on_error(self, client: Client, obj: dict[str, Any]) -> None:
        self.counts["hub_errors"] += 1
        self.problem(f"{client.name}: error {obj.get('code')}: {obj.get('reason')}")

    def on_end(self, client: Client) -> None:
        if not client.closing and not self.closing:
            self.ends[str(client.close_code)] += 1
            self.problem(f"{client.name} ended: {client.close_code} {client.close_reason}")

    def open(self, name: str, group: int, stable: bool = True) -> Conn | None:
        """Connect and subscribe; None (counted in ``failures``) if that failed."""
        client = Client(self.port, name, self.on_msg, self.on_error, self.on_end)
        self.conns[name] = conn = Conn(client, group, stable)
        try:
            client.connect()
            client.subscribe(f"{self.prefix}.{group}", f"{self.prefix}.all")
        except FAILED as exc:
            self.failures.append(f"{name}: {exc!r}")
            self.conns.pop(name, None)
            client.abort()
            return None
        self.counts["connects"] += 1
        return conn

    def check_failures(self) -> None:
        if self.failures:
            failed = "; ".join(self.failures[:SHOWN])
            raise RuntimeError(f"{len(self.failures)} connection(s) failed: {failed}")

    def audit(self, conn: Conn, sid: int, want: int) -> bool:
        """Whether subscription ``sid`` got ``0 .. want-1`` in order (if not: a problem)."""
        tally, bad = conn.tallies[sid], []
        if tally.count != want:
            bad.append(f"{tally.count} of {want}")
        if tally.count and tally.first != 0:
            bad.append(f"first {tally.first}")
        if not tally.clean:
            bad.append(f"{tally.gaps} skipped, {tally.disorder} out of order")
        if bad:
            self.problem(f"{conn.client.name} sid {sid}: {', '.join(bad)}")
        return not bad

    def fold(self, conn: Conn, sid: int) -> None:
        """Count a finished subscription's gaps and disorder."""
        if (tally := conn.tallies.pop(sid, None)) is None:
            return
        self.gaps += tally.gaps
        self.disorder += tally.disorder
        if not tally.clean:
            self.problem(
                f"{conn.client.name} sid {sid}: {tally.gaps} skipped, {tally.disorder} out of order"
            )


# -- subscribers and publisher: the load test ----------------------------------------------


def subscribers(
    port: int, first: int, count: int, groups: int, expect_group: int, expect_all: int
) -> None:
    """Open ``count`` connections, subscribe each twice, count what arrives until ``close``."""
    state = Population(port, "load", groups)
    expected = (expect_group + expect_all) * count
    ticker = progress_loop(lambda: {"connected": len(state.conns), "received": state.received})
    try:
        gevent.pool.Pool(CONNECT_CONCURRENCY).map(
            lambda i: state.open(f"s{i}", i % groups), range(first, first + count)
        )
        state.check_failures()
        say(ready={"connections": len(state.conns)})
        for command in read_commands():
            if command == "report":
                wait_quiet(lambda: expected - state.received, lambda: state.received)
                subs = [(c, sid, c.tallies[sid]) for c in state.conns.values() for sid in (1, 2)]
                wants = {1: expect_group, 2: expect_all}
                result = {
                    "connections": len(state.conns),
                    "received": state.received,
                    "expected": expected,
                    "last": state.last,
                    "incomplete": sum(not state.audit(c, sid, wants[sid]) for c, sid, _ in subs),
                    "gaps": sum(tally.gaps for *_, tally in subs),
                    "disorder": sum(tally.disorder for *_, tally in subs),
                    "early_ends": dict(state.ends),
                }
                say(result={**result, **state.counts, "examples": state.problems})
            elif command == "close":
                break
        state.closing = True
        say(closed=close_all([conn.client for conn in state.conns.values()]))
    finally:
        ticker.kill(block=False)
        for conn in state.conns.values():
            conn.client.abort()


def load_schedule(groups: int, per_all: int, per_group: int) -> Iterator[tuple[str, int]]:
    """The load test's pubs, interleaved: ``(topic, n)``, each topic numbered from 0."""
    for n in range(max(per_all, per_group)):
        if n < per_all:
            yield "load.all", n
        if n < per_group:
            yield from ((f"load.{g}", n) for g in range(groups))


def publisher(port: int, groups: int, per_all: int, per_group: int, window: int = 200) -> None:
    """Publish the load test's traffic, a window at a time; say when it started and ended."""
    sent: Counter[str] = Counter()
    client = Client(port, "publisher")
    client.connect()
    ticker = progress_loop(lambda: {"sent": sum(sent.values())})
    try:
        schedule = load_schedule(groups, per_all, per_group)
        start = clock()
        while batch := list(itertools.islice(schedule, window)):
            if not client.send(*(_pub(topic, n) for topic, n in batch[:-1])):
                raise RuntimeError("the hub closed the publisher's connection")
            client.call(_pub(*batch[-1]))
            sent.update(topic for topic, _ in batch)
        say(result={"start": start, "end": clock(), "sent": dict(sent)})
        client.close()
    finally:
        ticker.kill(block=False)
        client.abort()


# -- soak -------------------------------------------------------------------------------


@dataclass
class Soak(Population):
    """The soak's mix and its counts (see :func:`soak`): ``population``, the open connections."""

    rate: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    population: list[Conn] = field(default_factory=list)
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    extra_names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    #: Published so far per topic (groups, all, live extra topics).
    published: Counter[str] = field(default_factory=Counter)
    published_total: int = 0
    void_published: int = 0
    live_extras: list[str] = field(default_factory=list)
    slow_ends: Counter[str] = field(default_factory=Counter)
    slow_received: int = 0
    slow_lifetimes: list[float] = field(default_factory=list)

    # -- the population --

    def open_conn(self, stable: bool) -> None:
        index = next(self.names)
        name = f"{'k' if stable else 'c'}{index}"
        if (conn := self.open(name, index % self.groups, stable)) is not None:
            self.population.append(conn)

    def drop_conn(self, conn: Conn, abrupt: bool) -> None:
        """Close (or abort) a connection already taken out of the population."""
        if conn.extra is not None:
            self._forget_extra(conn.extra[1])
            conn.extra = None
        if abrupt:
            conn.client.abort()
        else:
            conn.client.close()
        self.counts["aborts" if abrupt else "closes"] += 1
        for sid in list(conn.tallies):
            self.fold(conn, sid)
        self.conns.pop(conn.client.name, None)

    def _movable(self, count: int) -> list[Conn]:
        movable = [c for c in self.population if not c.stable and c.client.open]
        return self.rng.sample(movable, min(count, len(movable)))

    def churn(self, count: int) -> None:
        """Close ``count`` churning connections (one in five abruptly) and open as many."""
        for conn in self._movable(count):
            abrupt = self.rng.random() < 0.2
            self.population.remove(conn)
            gevent.spawn(self.drop_conn, conn, abrupt)
            gevent.spawn(self.open_conn, False)

    def resubscribe(self, count: int) -> None:
        """On ``count`` churning connections, drop the extra subscription and take a fresh one."""
        for conn in self._movable(count):
            gevent.spawn(self._resubscribe_one, conn)

    def _resubscribe_one(self, conn: Conn) -> None:
        client = conn.client
        try:
            if conn.extra is not None:
                sid, topic = conn.extra
                conn.extra = None
                self._forget_extra(topic)
                client.call({"op": "unsub", "sid": sid})
                self.fold(conn, sid)
                self.counts["unsubs"] += 1
            sid, topic = next(conn.sids), f"soak.extra.{next(self.extra_names)}"
            conn.tallies[sid] = Tally()
            client.call({"op": "sub", "sid": sid, "topic": topic})
            if client.closing:
                return  # churned away meanwhile
            conn.extra = (sid, topic)
            self.live_extras.append(topic)
            self.counts["subs"] += 1
        except FAILED as exc:
            if client.open:  # a connection churned away meanwhile is not a finding
                self.failures.append(f"{client.name} resubscribe: {exc!r}")

    def _forget_extra(self, topic: str) -> None:
        # The publisher stops choosing it at once; its count goes with it.
        if topic in self.live_extras:
            self.live_extras.remove(topic)
        self.published.pop(topic, None)

    # -- publishing --

    def next_pub(self, i: int) -> tuple[str, bool]:
        """The topic of the ``i``-th pub, and whether it is counted per topic.

        In every 20: 5 to ``soak.all``, 9 to the groups in turn, 2 to a live
        extra topic, 4 to a topic never seen before (no subscriber but the
        slow consumer's wildcard: the hub's route cache must stay bounded).
        """
        slot = i % 20
        if slot < 5:
            return "soak.all", True
        if slot < 14:
            return f"soak.{(i // 20 * 9 + slot - 5) % self.groups}", True
        if slot < 16:
            return (self.rng.choice(self.live_extras) if self.live_extras else "soak.all"), True
        return f"soak.void.{i}", False

    def publish_loop(self, publisher: Client) -> None:
        start, i = clock(), 0
        while not self.closing:
            pubs = []
            for _ in range(max(0, int((clock() - start) * self.rate) - i)):
                topic, counted = self.next_pub(i)
                if counted:
                    pubs.append(_pub(topic, self.published[topic]))
                    self.published[topic] += 1
                else:
                    pubs.append(_pub(topic, 0))
                    self.void_published += 1
                i += 1
            if pubs and not publisher.send(*pubs):
                self.failures.append("the hub closed the publisher's connection")
                return
            self.published_total = i
            gevent.sleep(0.01)

    def prefill(self, publisher: Client, topics: int) -> None:
        """Publish once to ``topics`` fresh topics, a window of 500 at a time.

        The hub remembers up to 4,096 validated topics and 4,096 routes; the
        soak's fresh topics would fill those caches during the first minutes,
        which is bounded growth, not a leak, so it happens before sampling.
        """
        for first in range(0, topics, 500):
            pubs = [
                {"op": "pub", "topic": f"soak.warm.{i}", "data": None}
                for i in range(first, min(first + 500, topics))
            ]
            publisher.send(*pubs[:-1])
            publisher.call(pubs[-1])

    # -- the slow consumer --

    def slow_loop(self) -> None:
        """The slow consumer: subscribed SLOW_SUBSCRIPTIONS times to ``soak.>``.

        Each message reaches it once per subscription, so the hub's socket
        buffer (up to 4 MiB on Linux) fills within seconds; it reads 1 KiB
        every 0.2 s for SLOW_PHASE seconds, then catches up at full speed.
        The hub's ``error slow_consumer`` and close 1013 wait behind the
        full buffer; if they are not written within the hub's close_timeout
        (5 s), the hub aborts the connection and this consumer sees 1006.
        When the hub closes it, it reconnects a second later.
        """

        def count(client: Client, sid: Any, topic: str, data: Any) -> None:
            self.slow_received += 1

        def on_error(client: Client, obj: dict[str, Any]) -> None:
            self.counts[f"slow_error_{obj.get('code')}"] += 1

        while not self.closing:
            client = Client(self.port, "slow", count, on_error, rcvbuf=4096)
            connected = clock()
            try:
                client.connect()
                client.subscribe(*["soak.>"] * SLOW_SUBSCRIPTIONS)
                self.counts["slow_connects"] += 1
                while not self.closing and not client.ended.is_set():
                    client.read_size, client.read_pause = 1024, 0.2
                    client.ended.wait(SLOW_PHASE)
                    client.read_size, client.read_pause = 65536, 0.0
                    client.ended.wait(5.0)
            except FAILED as exc:
                if not self.closing:
                    self.failures.append(f"slow consumer: {exc!r}")
            finally:
                if client.ended.is_set():
                    self.slow_ends[str(client.close_code)] += 1
                    self.slow_lifetimes.append(round(clock() - connected, 1))
                client.abort()
            if not self.closing:
                gevent.sleep(1.0)

    # -- the end --

    def stable_missing(self) -> int:
        stable = [c for c in self.population if c.stable]
        want = sum(self.published[f"soak.{c.group}"] + self.published["soak.all"] for c in stable)
        return want - sum(c.tallies[1].count + c.tallies[2].count for c in stable)


def soak(
    port: int,
    seconds: float,
    connections: int,
    rate: float,
    churn: int,
    resubscribe: int,
    groups: int,
    seed: int = 1,
) -> None:
    """Run the soak's mix for ``seconds``; then check, close everything, and report."""
    state = Soak(port, "soak", groups, rate=rate, rng=random.Random(seed))
    stable = max(1, connections // 4)
    gevent.pool.Pool(CONNECT_CONCURRENCY).map(
        lambda i: state.open_conn(i < stable), range(connections)
    )
    state.check_failures()
    pub = Client(port, "soak-publisher", on_end=state.on_end)
    pub.connect()
    state.prefill(pub, PREFILL_TOPICS)
    say(ready={"connections": len(state.population) + 1})
    start = clock()
    workers = [gevent.spawn(state.publish_loop, pub), gevent.spawn(state.slow_loop)]
    ticker = progress_loop(
        lambda: {
            "t": round(clock() - start, 3),
            "open": len(state.population) + 2,
            "published": state.published_total,
            "received": state.received,
            **state.counts,
        }
    )
    try:
        for tick in itertools.count(1):
            if clock() - start >= seconds:
                break
            gevent.sleep(max(0.0, start + tick - clock()))
            state.churn(churn)
            state.resubscribe(resubscribe)
        state.closing = True
        workers[0].join(timeout=CLOSE_TIMEOUT)
        gevent.killall(workers[1:], timeout=CLOSE_TIMEOUT)  # the slow consumer may be mid-phase
        # Let the last messages reach the stable connections (or give up when idle).
        wait_quiet(state.stable_missing, lambda: state.received)
        gevent.sleep(0.5)  # drops and resubscriptions spawned in the last second
        # Every stable connection must have every message of its two topics, from 0.
        stable_conns = [c for c in state.population if c.stable]
        incomplete = sum(
            not state.audit(conn, sid, state.published[topic])
            for conn in stable_conns
            for sid, topic in ((1, f"soak.{conn.group}"), (2, "soak.all"))
        )
        for conn in list(state.population):
            for sid in list(conn.tallies):
                state.fold(conn, sid)
        closed = close_all([c.client for c in state.population] + [pub])
        result = {
            "seconds": round(clock() - start, 3),
            "connections": connections,
            "published": state.published_total,
            "published_to_nobody": state.void_published,
            "received": state.received,
            "gaps": state.gaps,
            "disorder": state.disorder,
            "stable_connections": len(stable_conns),
            "stable_incomplete": incomplete,
            "counts": dict(state.counts),
            "unexpected_ends": dict(state.ends),
            "slow_consumer": {
                "received": state.slow_received,
                "ends": dict(state.slow_ends),
                "lifetimes_s": state.slow_lifetimes,
            },
            "failures": state.failures[:SHOWN],
            "failure_count": len(state.failures),
            "examples": state.problems,
            "closed": closed,
        }
        say(result=result)
    finally:
        state.closing = True
        ticker.kill(block=False)
        gevent.killall(workers, block=False)
        for conn in state.population:
            conn.client.abort()
        pub.abort()


if __name__ == "__main__":
    faulthandler.enable()  # a crash in C (gevent, greenlet) still leaves a traceback
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s {sys.argv[1]}[%(process)d] %(message)s"
    )
    raise_fd_limit()
    run_worker({f.__name__: f for f in (subscribers, publisher, soak)})
