"""The client processes of the hub's load and soak benchmarks (``perf/load.py``).

Run as ``python -m perf.load_worker COMMAND ...`` (``--help`` lists them):

* ``subscribers``: opens ``--count`` connections, each subscribed to
  ``load.<group>`` (sid 1) and ``load.all`` (sid 2), and checks every message
  that arrives: each subscription must see ``0 .. expected-1`` in order.
* ``publisher``: publishes the load test's fan-out traffic, a window at a
  time (the last ``pub`` of each window carries an id; its ack says the hub
  has routed the window), and reports what it sent.
* ``soak``: the soak's whole mix for ``--seconds``: a population of
  connections with churn, subscribe/unsubscribe on fresh topics, a
  fixed-rate publisher, and one slow consumer that the hub closes as slow.

Talking to the benchmark: JSON lines on stdout (``{"progress": ...}`` lines,
``{"ready": ...}``, then ``{"result": ...}``; a failure is ``{"error": "..."}``
and exit status 1) and command lines on stdin (``report``, ``close``; EOF
means close).  Logs go to stderr.  Times are ``time.monotonic()``: one
clock for every process of the machine, so they can be compared.

The clients are raw WebSocket clients on gevent sockets, so the client side
costs little next to the hub it measures: a hand-written opening handshake
(RFC 6455 section 4.1), masked frames out (section 5.3), and
:class:`FrameReader`, a sans-I/O parser of the hub's frames.
"""

from __future__ import annotations

import argparse
import base64
import faulthandler
import itertools
import json
import logging
import os
import random
import resource
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FrameError",
    "FrameReader",
    "HandshakeFailed",
    "Tally",
    "mask_frame",
    "raise_fd_limit",
]

logger = logging.getLogger("perf.load_worker")

#: Every connection goes to loopback only.
HOST = "127.0.0.1"
#: Seconds to open a connection and finish its handshake; to wait for an ack.
CONNECT_TIMEOUT = 10.0
ACK_TIMEOUT = 10.0
#: A worker waiting for messages gives up after this many idle seconds.
IDLE_TIMEOUT = 10.0
#: Seconds to wait for the hub's close frame after ours.
CLOSE_TIMEOUT = 5.0
#: Connections opened at once by one process (the hub's listen backlog is 128).
CONNECT_CONCURRENCY = 25
#: Seconds between progress lines.
PROGRESS_EVERY = 0.25
#: Problems described in a result, at most (all are counted).
SHOWN = 5
#: The soak's slow consumer: subscriptions to ``soak.>``, and seconds it reads slowly.
SLOW_SUBSCRIPTIONS = 16
SLOW_PHASE = 20.0
#: Fresh topics published to before the soak starts (fills the hub's caches).
PREFILL_TOPICS = 5000
#: The padding in every payload, so a message is about 120 bytes on the wire.
PAD = "x" * 48

# RFC 6455 section 5.2 opcodes.
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

clock = time.monotonic


class FrameError(Exception):
    """The hub sent a frame this client does not accept (masked, fragmented, too big)."""


class HandshakeFailed(Exception):
    """The opening handshake did not end with 101 and the right Sec-WebSocket-Accept."""


def raise_fd_limit() -> int:
    """Raise this process's open-files soft limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def say(**fields: Any) -> None:
    """One JSON line to the benchmark."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# -- frames, sans-I/O ----------------------------------------------------------------


class FrameReader:
    """Parse the hub's frames: feed bytes, get ``(opcode, payload)`` pairs.

    The hub never masks (RFC 6455 section 5.1 forbids a server to) and never
    fragments a message, so either is an error here rather than a case.
    """

    def __init__(self, max_size: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._max_size = max_size

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Append ``data``; return every frame it completes, in order.

        Raises:
            FrameError: a masked or fragmented frame, reserved bits, or a
                frame over ``max_size``.
        """
        buf = self._buf
        buf += data
        frames: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b1, b2 = buf[pos], buf[pos + 1]
            if b2 & 0x80:
                raise FrameError("the server masked a frame (RFC 6455 section 5.1)")
            if b1 & 0x70:
                raise FrameError(f"reserved bits set: {b1:#04x}")
            if not b1 & 0x80 or b1 & 0x0F == OP_CONT:
                raise FrameError("a fragmented message (the hub sends whole messages)")
            length, head = b2 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if length > self._max_size:
                raise FrameError(f"a {length}-byte frame (max {self._max_size})")
            stop = pos + head + length
            if stop > end:
                break
            frames.append((b1 & 0x0F, bytes(buf[pos + head : stop])))
            pos = stop
        if pos:
            del buf[:pos]
        return frames


try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame: masked with a fresh random key (RFC 6455 section 5.3)."""
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def text_frame(obj: Any) -> bytes:
    return mask_frame(OP_TEXT, json.dumps(obj, separators=(",", ":")).encode())


def close_frame(code: int, reason: str = "") -> bytes:
    return mask_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode())


def handshake_request(host: str, port: int, key: str) -> bytes:
    """The opening handshake's request (RFC 6455 section 4.1)."""
    return (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nUser-Agent: greenbus-perf-load\r\n\r\n"
    ).encode()


def check_handshake_response(head: bytes, key: str) -> None:
    """Raise HandshakeFailed unless ``head`` (up to the blank line) accepts ``key``."""
    from websockets.utils import accept_key

    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        raise HandshakeFailed(f"the hub answered {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise HandshakeFailed("wrong Sec-WebSocket-Accept")


# -- checking what arrives -----------------------------------------------------------


@dataclass
class Tally:
    """The payload numbers of one subscription, checked as they arrive.

    The hub keeps one peer's messages in emit order, and one publisher's
    ``pub`` frames are routed in order, so the numbers of one topic must be
    consecutive from the first one that arrives.
    """

    first: int | None = None
    last: int | None = None
    count: int = 0
    #: Numbers skipped between two arrivals.
    gaps: int = 0
    #: Arrivals not above the one before (duplicates, reorders).
    disorder: int = 0

    def add(self, n: int) -> None:
        last = self.last
        if last is None:
            self.first = self.last = n
        elif n == last + 1:
            self.last = n
        elif n > last:
            self.gaps += n - last - 1
            self.last = n
        else:
            self.disorder += 1
        self.count += 1

    @property
    def clean(self) -> bool:
        return self.gaps == 0 and self.disorder == 0


# -- the client ----------------------------------------------------------------------


def _gevent() -> Any:
    # Imported by the commands, so ``import perf.load_worker`` (the tests, the
    # benchmark's own process) does not load gevent.
    import gevent
    import gevent.event
    import gevent.lock
    import gevent.os
    import gevent.pool
    import gevent.socket

    return gevent


class RawClient:
    """One WebSocket connection to the hub, on a gevent socket.

    A reader greenlet parses frames and JSON; ``msg`` goes to ``on_msg(client,
    sid, topic, data)``; ``ack`` and ``error`` with an id wake :meth:`call`;
    an error without an id goes to ``on_error``.  Writes take a lock, so
    greenlets may send concurrently.

    Args:
        rcvbuf: SO_RCVBUF, set before connecting (a slow consumer's small window).
        read_size: bytes per ``recv``.
        read_pause: seconds to sleep before each ``recv`` (a slow consumer).
    """

    def __init__(
        self,
        port: int,
        name: str,
        *,
        on_msg: Callable[[RawClient, Any, str, Any], None],
        on_error: Callable[[RawClient, dict[str, Any]], None] | None = None,
        on_end: Callable[[RawClient], None] | None = None,
        rcvbuf: int | None = None,
        read_size: int = 65536,
        read_pause: float = 0.0,
    ) -> None:
        gevent = _gevent()
        self.port = port
        self.name = name
        self.on_msg = on_msg
        self.on_error = on_error
        self.on_end = on_end
        self.rcvbuf = rcvbuf
        self.read_size = read_size
        self.read_pause = read_pause
        self.sock: Any = None
        self.frames = FrameReader()
        self.ended = gevent.event.Event()
        #: The close code the hub sent, or 1006 when the TCP connection just ended.
        self.close_code: int | None = None
        self.close_reason = ""
        #: True once we started closing (a close frame, or an abort).
        self.closing = False
        self.received = 0
        self._lock = gevent.lock.Semaphore()
        self._waiting: dict[int, Any] = {}
        self._ids = itertools.count(1)
        self._reader: Any = None

    def __repr__(self) -> str:
        state = "ended" if self.ended.is_set() else "closing" if self.closing else "open"
        return f"<RawClient {self.name} {state} received={self.received}>"

    @property
    def open(self) -> bool:
        return self.sock is not None and not self.closing and not self.ended.is_set()

    def connect(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Connect and finish the opening handshake; start the reader.

        Raises:
            OSError, HandshakeFailed, gevent.Timeout.
        """
        gevent = _gevent()
        sock = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with gevent.Timeout(timeout):
                sock.connect((HOST, self.port))
                key = base64.b64encode(os.urandom(16)).decode()
                sock.sendall(handshake_request(HOST, self.port, key))
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise HandshakeFailed("the hub closed the connection during the handshake")
                    data += chunk
                    if len(data) > 65536:
                        raise HandshakeFailed("no end to the handshake response")
            head, _, rest = data.partition(b"\r\n\r\n")
            check_handshake_response(head, key)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._reader = gevent.spawn(self._read_loop, rest)

    # -- sending ------------------------------------------------------------------

    def send_raw(self, data: bytes) -> bool:
        """Write bytes (whole frames); False if the connection is gone."""
        if self.sock is None or self.ended.is_set():
            return False
        try:
            with self._lock:
                self.sock.sendall(data)
        except OSError as exc:
            logger.debug("%s: write failed: %s", self.name, exc)
            return False
        return True

    def send(self, obj: dict[str, Any]) -> bool:
        return self.send_raw(text_frame(obj))

    def call(self, obj: dict[str, Any], timeout: float = ACK_TIMEOUT) -> None:
        """Send ``obj`` with a fresh id and wait for its ack.

        Raises:
            RuntimeError: the hub answered with an error, or the connection ended.
            gevent.Timeout: no answer within ``timeout``.
        """
        gevent = _gevent()
        ident = next(self._ids)
        waiter = gevent.event.AsyncResult()
        self._waiting[ident] = waiter
        try:
            if not self.send({**obj, "id": ident}):
                raise RuntimeError(f"{self.name}: connection gone before {obj['op']}")
            answer = waiter.get(timeout=timeout)
        finally:
            self._waiting.pop(ident, None)
        if answer.get("op") != "ack":
            raise RuntimeError(f"{self.name}: {obj['op']} refused: {answer}")

    def close(self, code: int = 1000, timeout: float = CLOSE_TIMEOUT) -> bool:
        """The closing handshake: our close frame, then wait for the hub's.

        Returns True if it ended within ``timeout`` (the socket is closed either way).
        """
        if not self.closing and not self.ended.is_set():
            self.closing = True
            self.send_raw(close_frame(code, "bye"))
        done: bool = self.ended.wait(timeout)
        self.abort()
        return done

    def abort(self) -> None:
        """Drop the TCP connection with no close frame."""
        self.closing = True
        sock = self.sock
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        if not self.ended.is_set() and self._reader is not None:
            self._reader.kill(block=False)
            self._end(1006, "aborted by the client")

    # -- receiving ----------------------------------------------------------------

    def _read_loop(self, initial: bytes) -> None:
        gevent = _gevent()
        sock = self.sock
        try:
            if initial and not self._handle(self.frames.feed(initial)):
                return
            while True:
                if self.read_pause:
                    gevent.sleep(self.read_pause)
                data = sock.recv(self.read_size)
                if not data:
                    self._end(1006, "EOF without a close frame")
                    return
                if not self._handle(self.frames.feed(data)):
                    return
        except OSError as exc:
            self._end(1006, f"socket error: {exc}")
        except FrameError as exc:
            logger.error("%s: %s", self.name, exc)
            self.send_raw(close_frame(1002, "protocol error"))
            self._end(1002, str(exc))
        except gevent.GreenletExit:
            raise
        except Exception as exc:
            logger.exception("%s: reader failed", self.name)
            self._end(1006, f"reader failed: {exc!r}")

    def _handle(self, frames: list[tuple[int, bytes]]) -> bool:
        # False once a close frame arrived.
        for opcode, payload in frames:
            if opcode == OP_TEXT:
                self._text(payload)
            elif opcode == OP_PING:
                self.send_raw(mask_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.closing:
                    # Echo the code (RFC 6455 section 5.5.1), then the hub closes TCP.
                    self.closing = True
                    self.send_raw(close_frame(code))
                self._end(code, payload[2:].decode("utf-8", "replace"))
                return False
            elif opcode != OP_PONG:
                raise FrameError(f"unexpected opcode {opcode:#x}")
        return True

    def _text(self, payload: bytes) -> None:
        obj = json.loads(payload)
        op = obj["op"]
        if op == "msg":
            self.received += 1
            self.on_msg(self, obj["sid"], obj["topic"], obj["data"])
            return
        ident = obj.get("id")
        if op in ("ack", "error") and ident in self._waiting:
            self._waiting[ident].set(obj)
        elif op == "error" and self.on_error is not None:
            self.on_error(self, obj)

    def _end(self, code: int, reason: str) -> None:
        if self.ended.is_set():
            return
        self.close_code = code
        self.close_reason = reason
        for waiter in self._waiting.values():
            waiter.set({"op": "closed", "code": code, "reason": reason})
        sock = self.sock
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self.ended.set()
        if self.on_end is not None:
            self.on_end(self)


# -- stdin commands ------------------------------------------------------------------


def read_commands() -> Iterator[str]:
    """The lines of stdin, waiting cooperatively; ends at EOF."""
    gevent = _gevent()
    fd = sys.stdin.fileno()
    gevent.os.make_nonblocking(fd)
    buf = b""
    while True:
        chunk = gevent.os.nb_read(fd, 4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode().strip()


def progress_loop(fields: Callable[[], dict[str, Any]]) -> Any:
    """A greenlet that says ``{"progress": fields()}`` every PROGRESS_EVERY seconds."""
    gevent = _gevent()

    def loop() -> None:
        while True:
            say(progress=fields())
            gevent.sleep(PROGRESS_EVERY)

    return gevent.spawn(loop)


def close_all(clients: Sequence[RawClient]) -> dict[str, Any]:
    """Close every client (the closing handshake, in parallel); count how it went."""
    gevent = _gevent()
    pool = gevent.pool.Pool(100)
    results = pool.map(lambda c: c.close() if c.sock is not None else True, clients)
    codes = Counter(str(c.close_code) for c in clients)
    return {"clients": len(clients), "clean": sum(map(bool, results)), "codes": dict(codes)}


# -- subscribers ---------------------------------------------------------------------


@dataclass
class Subscribers:
    """The state of the ``subscribers`` command."""

    expect_group: int
    expect_all: int
    clients: list[RawClient] = field(default_factory=list)
    tallies: dict[str, dict[int, Tally]] = field(default_factory=dict)
    received: int = 0
    first: float | None = None
    last: float | None = None
    hub_errors: list[str] = field(default_factory=list)
    unknown_sid: int = 0
    early_ends: Counter[str] = field(default_factory=Counter)
    closing: bool = False

    def on_msg(self, client: RawClient, sid: Any, topic: str, data: Any) -> None:
        tally = self.tallies[client.name].get(sid)
        if tally is None:
            self.unknown_sid += 1
            return
        tally.add(data["n"])
        self.received += 1
        now = clock()
        if self.first is None:
            self.first = now
        self.last = now

    def on_error(self, client: RawClient, obj: dict[str, Any]) -> None:
        self.hub_errors.append(f"{client.name}: {obj.get('code')}: {obj.get('reason')}")

    def on_end(self, client: RawClient) -> None:
        if not self.closing and not client.closing:
            self.early_ends[str(client.close_code)] += 1
            logger.warning(
                "%s ended early: %s %s", client.name, client.close_code, client.close_reason
            )

    @property
    def expected(self) -> int:
        return len(self.clients) * (self.expect_group + self.expect_all)

    def result(self) -> dict[str, Any]:
        problems: list[str] = []
        incomplete = gaps = disorder = not_from_zero = 0
        for name, tallies in self.tallies.items():
            for sid, tally in tallies.items():
                want = self.expect_group if sid == 1 else self.expect_all
                bad = []
                if tally.count != want:
                    incomplete += 1
                    bad.append(f"{tally.count} of {want}")
                if tally.count and tally.first != 0:
                    not_from_zero += 1
                    bad.append(f"first {tally.first}")
                gaps += tally.gaps
                disorder += tally.disorder
                if not tally.clean:
                    bad.append(f"{tally.gaps} skipped, {tally.disorder} out of order")
                if bad and len(problems) < SHOWN:
                    problems.append(f"{name} sid {sid}: {', '.join(bad)}")
        return {
            "connections": len(self.clients),
            "received": self.received,
            "expected": self.expected,
            "first": self.first,
            "last": self.last,
            "incomplete": incomplete,
            "not_from_zero": not_from_zero,
            "gaps": gaps,
            "disorder": disorder,
            "unknown_sid": self.unknown_sid,
            "early_ends": dict(self.early_ends),
            "hub_errors": len(self.hub_errors),
            "examples": problems + self.hub_errors[:SHOWN],
        }


def cmd_subscribers(args: argparse.Namespace) -> int:
    gevent = _gevent()
    raise_fd_limit()
    state = Subscribers(args.expect_group, args.expect_all)
    failures: list[str] = []

    def open_one(index: int) -> None:
        name = f"s{index}"
        client = RawClient(
            args.port, name, on_msg=state.on_msg, on_error=state.on_error, on_end=state.on_end
        )
        state.tallies[name] = {1: Tally(), 2: Tally()}
        try:
            client.connect()
            client.call({"op": "sub", "sid": 1, "topic": f"load.{index % args.groups}"})
            client.call({"op": "sub", "sid": 2, "topic": "load.all"})
        except (OSError, HandshakeFailed, RuntimeError, gevent.Timeout) as exc:
            failures.append(f"{name}: {exc!r}")
            client.abort()
            return
        state.clients.append(client)

    ticker = progress_loop(lambda: {"connected": len(state.clients), "received": state.received})
    try:
        pool = gevent.pool.Pool(CONNECT_CONCURRENCY)
        pool.map(open_one, range(args.first, args.first + args.count))
        if failures:
            say(error=f"{len(failures)} connection(s) failed: {'; '.join(failures[:SHOWN])}")
            return 1
        say(ready={"connections": len(state.clients)})
        for command in read_commands():
            if command == "report":
                # Wait for everything, or until nothing has arrived for IDLE_TIMEOUT.
                idle_since, seen = clock(), state.received
                while state.received < state.expected and clock() - idle_since < IDLE_TIMEOUT:
                    gevent.sleep(0.05)
                    if state.received != seen:
                        idle_since, seen = clock(), state.received
                say(result=state.result())
            elif command == "close":
                break
        state.closing = True
        say(closed=close_all(state.clients))
        return 0
    finally:
        ticker.kill(block=False)
        for client in state.clients:
            client.abort()


# -- publisher -----------------------------------------------------------------------


def load_schedule(groups: int, per_all: int, per_group: int) -> Iterator[tuple[str, int]]:
    """The load test's pubs, interleaved: ``(topic, n)``, each topic numbered from 0."""
    for n in range(max(per_all, per_group)):
        if n < per_all:
            yield "load.all", n
        if n < per_group:
            for g in range(groups):
                yield f"load.{g}", n


def cmd_publisher(args: argparse.Namespace) -> int:
    gevent = _gevent()
    raise_fd_limit()
    sent: Counter[str] = Counter()
    client = RawClient(args.port, "publisher", on_msg=lambda *a: None)
    client.connect()
    ticker = progress_loop(lambda: {"sent": sum(sent.values())})
    try:
        schedule = load_schedule(args.groups, args.per_all, args.per_group)
        start = clock()
        while True:
            window = list(itertools.islice(schedule, args.window))
            if not window:
                break
            frames = [
                text_frame({"op": "pub", "topic": topic, "data": {"n": n, "pad": PAD}})
                for topic, n in window[:-1]
            ]
            if not client.send_raw(b"".join(frames)):
                raise RuntimeError("the hub closed the publisher's connection")
            topic, n = window[-1]
            client.call({"op": "pub", "topic": topic, "data": {"n": n, "pad": PAD}})
            sent.update(topic for topic, _ in window)
        end = clock()
        say(result={"start": start, "end": end, "sent": dict(sent)})
        client.close()
        return 0
    except (RuntimeError, gevent.Timeout) as exc:
        say(error=f"publisher: {exc!r}")
        return 1
    finally:
        ticker.kill(block=False)
        client.abort()


# -- soak ----------------------------------------------------------------------------


@dataclass
class SoakConn:
    """One connection of the soak's population and what it is subscribed to."""

    client: RawClient
    stable: bool
    group: int
    tallies: dict[int, Tally] = field(default_factory=dict)
    extra: tuple[int, str] | None = None
    sids: Iterator[int] = field(default_factory=lambda: itertools.count(3))


@dataclass
class Soak:
    """The soak's mix and its counts (see :func:`cmd_soak`)."""

    port: int
    groups: int
    rate: float
    rng: random.Random
    population: list[SoakConn] = field(default_factory=list)
    by_name: dict[str, SoakConn] = field(default_factory=dict)
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    extra_names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    #: Published so far per topic (groups, all, live extra topics).
    published: Counter[str] = field(default_factory=Counter)
    published_total: int = 0
    void_published: int = 0
    live_extras: list[str] = field(default_factory=list)
    received: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    #: Gaps and disorder of subscriptions already closed.
    gaps: int = 0
    disorder: int = 0
    problems: list[str] = field(default_factory=list)
    unexpected_ends: Counter[str] = field(default_factory=Counter)
    slow_ends: Counter[str] = field(default_factory=Counter)
    slow_received: int = 0
    slow_lifetimes: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stopping: bool = False

    def problem(self, text: str) -> None:
        if len(self.problems) < SHOWN:
            self.problems.append(text)

    # -- callbacks --

    def on_msg(self, client: RawClient, sid: Any, topic: str, data: Any) -> None:
        conn = self.by_name.get(client.name)
        tally = conn.tallies.get(sid) if conn is not None else None
        if tally is None:
            # After the ack of an unsub nothing more may arrive on its sid.
            self.counts["late"] += 1
            self.problem(f"{client.name}: a message on {topic} for sid {sid}, not subscribed")
            return
        tally.add(data["n"])
        self.received += 1

    def on_error(self, client: RawClient, obj: dict[str, Any]) -> None:
        self.counts["hub_errors"] += 1
        self.problem(f"{client.name}: error {obj.get('code')}: {obj.get('reason')}")

    def on_end(self, client: RawClient) -> None:
        if not client.closing and not self.stopping:
            self.unexpected_ends[str(client.close_code)] += 1
            self.problem(f"{client.name} ended: {client.close_code} {client.close_reason}")

    def fold(self, conn: SoakConn, sid: int) -> None:
        """Count a finished subscription's gaps and disorder."""
        tally = conn.tallies.pop(sid, None)
        if tally is None:
            return
        self.gaps += tally.gaps
        self.disorder += tally.disorder
        if not tally.clean:
            self.problem(
                f"{conn.client.name} sid {sid}: {tally.gaps} skipped, {tally.disorder} out of order"
            )

    # -- the population --

    def open_conn(self, stable: bool) -> SoakConn | None:
        gevent = _gevent()
        index = next(self.names)
        name = f"{'k' if stable else 'c'}{index}"
        client = RawClient(
            self.port, name, on_msg=self.on_msg, on_error=self.on_error, on_end=self.on_end
        )
        conn = SoakConn(client, stable, index % self.groups)
        conn.tallies = {1: Tally(), 2: Tally()}
        self.by_name[name] = conn
        try:
            client.connect()
            client.call({"op": "sub", "sid": 1, "topic": f"soak.{conn.group}"})
            client.call({"op": "sub", "sid": 2, "topic": "soak.all"})
        except (OSError, HandshakeFailed, RuntimeError, gevent.Timeout) as exc:
            self.failures.append(f"{name}: {exc!r}")
            self.by_name.pop(name, None)
            client.abort()
            return None
        self.population.append(conn)
        self.counts["connects"] += 1
        return conn

    def drop_conn(self, conn: SoakConn, abrupt: bool) -> None:
        """Close (or abort) a connection already taken out of the population."""
        if conn.extra is not None:
            self._forget_extra(conn.extra[1])
            conn.extra = None
        if abrupt:
            conn.client.abort()
            self.counts["aborts"] += 1
        else:
            conn.client.close()
            self.counts["closes"] += 1
        for sid in list(conn.tallies):
            self.fold(conn, sid)
        self.by_name.pop(conn.client.name, None)

    def churn(self, count: int) -> None:
        """Close ``count`` churning connections (one in five abruptly) and open as many."""
        gevent = _gevent()
        movable = [c for c in self.population if not c.stable and c.client.open]
        for conn in self.rng.sample(movable, min(count, len(movable))):
            abrupt = self.rng.random() < 0.2
            self.population.remove(conn)
            gevent.spawn(self.drop_conn, conn, abrupt)
            gevent.spawn(self.open_conn, False)

    def resubscribe(self, count: int) -> None:
        """On ``count`` churning connections, drop the extra subscription and take a fresh one."""
        gevent = _gevent()
        movable = [c for c in self.population if not c.stable and c.client.open]
        for conn in self.rng.sample(movable, min(count, len(movable))):
            gevent.spawn(self._resubscribe_one, conn)

    def _resubscribe_one(self, conn: SoakConn) -> None:
        gevent = _gevent()
        client = conn.client
        try:
            if conn.extra is not None:
                sid, topic = conn.extra
                conn.extra = None
                self._forget_extra(topic)
                client.call({"op": "unsub", "sid": sid})
                self.fold(conn, sid)
                self.counts["unsubs"] += 1
            sid = next(conn.sids)
            topic = f"soak.extra.{next(self.extra_names)}"
            conn.tallies[sid] = Tally()
            client.call({"op": "sub", "sid": sid, "topic": topic})
            if client.closing:
                return  # churned away meanwhile
            conn.extra = (sid, topic)
            self.live_extras.append(topic)
            self.counts["subs"] += 1
        except (RuntimeError, gevent.Timeout) as exc:
            # A connection churned away meanwhile is not a finding.
            if client.open:
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
        if slot < 16 and self.live_extras:
            return self.rng.choice(self.live_extras), True
        if slot < 16:
            return "soak.all", True
        return f"soak.void.{i}", False

    def publish_loop(self, publisher: RawClient) -> None:
        gevent = _gevent()
        start = clock()
        i = 0
        while not self.stopping:
            due = int((clock() - start) * self.rate) - i
            frames = []
            for _ in range(max(0, due)):
                topic, counted = self.next_pub(i)
                if counted:
                    n = self.published[topic]
                    self.published[topic] += 1
                else:
                    n = 0
                    self.void_published += 1
                frames.append(
                    text_frame({"op": "pub", "topic": topic, "data": {"n": n, "pad": PAD}})
                )
                i += 1
            if frames and not publisher.send_raw(b"".join(frames)):
                self.failures.append("the hub closed the publisher's connection")
                return
            self.published_total = i
            gevent.sleep(0.01)

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
        gevent = _gevent()

        def count(client: RawClient, sid: Any, topic: str, data: Any) -> None:
            self.slow_received += 1

        def on_error(client: RawClient, obj: dict[str, Any]) -> None:
            self.counts[f"slow_error_{obj.get('code')}"] += 1

        while not self.stopping:
            client = RawClient(self.port, "slow", on_msg=count, on_error=on_error, rcvbuf=4096)
            connected = clock()
            try:
                client.connect()
                for sid in range(1, SLOW_SUBSCRIPTIONS + 1):
                    client.call({"op": "sub", "sid": sid, "topic": "soak.>"})
                self.counts["slow_connects"] += 1
                while not self.stopping and not client.ended.is_set():
                    client.read_size, client.read_pause = 1024, 0.2
                    client.ended.wait(SLOW_PHASE)
                    client.read_size, client.read_pause = 65536, 0.0
                    client.ended.wait(5.0)
            except (OSError, HandshakeFailed, RuntimeError, gevent.Timeout) as exc:
                if not self.stopping:
                    self.failures.append(f"slow consumer: {exc!r}")
            finally:
                if client.ended.is_set():
                    self.slow_ends[str(client.close_code)] += 1
                    self.slow_lifetimes.append(round(clock() - connected, 1))
                client.abort()
            if not self.stopping:
                gevent.sleep(1.0)

    def prefill(self, publisher: RawClient, topics: int) -> None:
        """Publish once to ``topics`` fresh topics, a window at a time.

        The hub remembers up to 4,096 validated topics and 4,096 routes; the
        soak's fresh topics would fill those caches during the first minutes,
        which is bounded growth, not a leak, so it happens before sampling.
        """
        for first in range(0, topics, 500):
            names = [f"soak.warm.{i}" for i in range(first, min(first + 500, topics))]
            frames = [text_frame({"op": "pub", "topic": t, "data": None}) for t in names[:-1]]
            publisher.send_raw(b"".join(frames))
            publisher.call({"op": "pub", "topic": names[-1], "data": None})

    # -- the end --

    def stable_check(self) -> dict[str, Any]:
        """Every stable connection must have every message of its two topics, from 0."""
        incomplete = 0
        for conn in self.population:
            if not conn.stable:
                continue
            for sid, topic in ((1, f"soak.{conn.group}"), (2, "soak.all")):
                tally, want = conn.tallies[sid], self.published[topic]
                if tally.count != want or (want and tally.first != 0):
                    incomplete += 1
                    self.problem(
                        f"{conn.client.name} {topic}: {tally.count} of {want}, first {tally.first}"
                    )
        return {
            "stable_connections": sum(c.stable for c in self.population),
            "stable_incomplete": incomplete,
        }

    def stable_missing(self) -> int:
        return sum(
            self.published[f"soak.{c.group}"]
            - c.tallies[1].count
            + self.published["soak.all"]
            - c.tallies[2].count
            for c in self.population
            if c.stable
        )


def cmd_soak(args: argparse.Namespace) -> int:
    gevent = _gevent()
    raise_fd_limit()
    soak = Soak(args.port, args.groups, args.rate, random.Random(args.seed))
    stable = max(1, args.connections // 4)
    pool = gevent.pool.Pool(CONNECT_CONCURRENCY)
    pool.map(lambda i: soak.open_conn(i < stable), range(args.connections))
    if soak.failures:
        say(error=f"soak: {len(soak.failures)} connection(s) failed: {soak.failures[:SHOWN]}")
        return 1
    publisher = RawClient(args.port, "soak-publisher", on_msg=lambda *a: None, on_end=soak.on_end)
    publisher.connect()
    soak.prefill(publisher, args.prefill)
    say(ready={"connections": len(soak.population) + 1})
    start = clock()
    workers = [gevent.spawn(soak.publish_loop, publisher)]
    workers += [gevent.spawn(soak.slow_loop) for _ in range(args.slow_consumers)]

    def fields() -> dict[str, Any]:
        return {
            "t": round(clock() - start, 3),
            "open": len(soak.population) + 2,
            "published": soak.published_total,
            "received": soak.received,
            **soak.counts,
        }

    ticker = progress_loop(fields)
    try:
        tick = 0
        while clock() - start < args.seconds:
            tick += 1
            gevent.sleep(max(0.0, start + tick - clock()))
            soak.churn(args.churn)
            soak.resubscribe(args.resubscribe)
        soak.stopping = True
        workers[0].join(timeout=CLOSE_TIMEOUT)
        gevent.killall(workers[1:], timeout=CLOSE_TIMEOUT)  # slow consumers may be mid-phase
        # Let the last messages reach the stable connections (or give up when idle).
        idle_since, seen = clock(), soak.received
        while soak.stable_missing() > 0 and clock() - idle_since < IDLE_TIMEOUT:
            gevent.sleep(0.05)
            if soak.received != seen:
                idle_since, seen = clock(), soak.received
        gevent.sleep(0.5)  # drops and resubscriptions spawned in the last second
        check = soak.stable_check()
        for conn in list(soak.population):
            for sid in list(conn.tallies):
                soak.fold(conn, sid)
        closed = close_all([c.client for c in soak.population] + [publisher])
        result = {
            "seconds": round(clock() - start, 3),
            "connections": args.connections,
            "published": soak.published_total,
            "published_to_nobody": soak.void_published,
            "received": soak.received,
            "gaps": soak.gaps,
            "disorder": soak.disorder,
            **check,
            "counts": dict(soak.counts),
            "unexpected_ends": dict(soak.unexpected_ends),
            "slow_consumer": {
                "received": soak.slow_received,
                "ends": dict(soak.slow_ends),
                "lifetimes_s": soak.slow_lifetimes,
            },
            "failures": soak.failures[:SHOWN],
            "failure_count": len(soak.failures),
            "examples": soak.problems,
            "closed": closed,
        }
        say(result=result)
        return 0
    finally:
        soak.stopping = True
        ticker.kill(block=False)
        gevent.killall(workers, block=False)
        for conn in soak.population:
            conn.client.abort()
        publisher.abort()


# -- command line --------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.load_worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    subs = commands.add_parser("subscribers", help="open connections, subscribe, count")
    subs.add_argument("--first", type=int, default=0, help="index of the first connection")
    subs.add_argument("--count", type=int, required=True)
    subs.add_argument("--expect-group", type=int, required=True, help="messages per load.<g>")
    subs.add_argument("--expect-all", type=int, required=True, help="messages to load.all")
    pub = commands.add_parser("publisher", help="publish the fan-out traffic")
    pub.add_argument("--per-all", type=int, required=True, help="messages to load.all")
    pub.add_argument("--per-group", type=int, required=True, help="messages to each load.<g>")
    pub.add_argument("--window", type=int, default=200, help="pubs per acknowledged window")
    soak = commands.add_parser("soak", help="run the soak mix")
    soak.add_argument("--seconds", type=float, required=True)
    soak.add_argument("--connections", type=int, required=True, help="steady population")
    soak.add_argument("--rate", type=float, default=200.0, help="pubs per second")
    soak.add_argument("--churn", type=int, default=5, help="connections replaced per second")
    soak.add_argument("--resubscribe", type=int, default=10, help="unsub+sub per second")
    soak.add_argument("--seed", type=int, default=1)
    soak.add_argument("--prefill", type=int, default=PREFILL_TOPICS, help="fresh topics first")
    soak.add_argument("--slow-consumers", type=int, default=1, help="slow consumers (0: none)")
    for cmd in (subs, pub, soak):
        cmd.add_argument("--port", type=int, required=True, help="the hub's port on 127.0.0.1")
        cmd.add_argument("--groups", type=int, default=10)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    faulthandler.enable()  # a crash in C (gevent, greenlet) still leaves a traceback in the log
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s {args.command}[%(process)d] %(message)s"
    )
    command = {"subscribers": cmd_subscribers, "publisher": cmd_publisher, "soak": cmd_soak}
    try:
        return command[args.command](args)
    except Exception as exc:
        logger.exception("%s failed", args.command)
        say(error=f"{args.command}: {exc!r}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
