"""Federation through Redis (greenbus/federation/redis.py), against a real redis-server.

Every test runs its own ``redis-server`` on a free port of 127.0.0.1 (the
``redis_server`` fixture) and looks into it with redis-py (``PUBSUB
NUMSUB``, ``CLIENT LIST``) to see what the nodes asked it for.  Nodes are:

* buses of the test process, federated in it (the ``federated`` fixture),
  whose greenlets run whenever the test waits with ``wait_until``;
* buses in child processes (``tests/fed_node.py``, the ``fed_node``
  fixture), driven by JSON commands on stdin and reporting on stdout;
* ``greenbus serve --redis`` hub processes, with WebSocket clients.

Fault tests order who reconnects first by *freezing* the test process: a
wait that does not yield to the gevent hub (``wait_frozen``, or a
``frozen=True`` call to a child) keeps the test's own federations exactly
where they are while the other process and Redis move on.  That turns "who
lost what in an outage" (docs/scaling.md) from a race into a scenario.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import logging
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest
import redis
from conftest import ROOT, HubProcess, RedisServer, child_env, show_log_tail, stop_process
from waiting import wait_until

import greenbus
from greenbus import Bus, Federation, RemoteBus
from greenbus.federation import Envelope, encode_envelope, redis_glob

PREFIX = "greenbus"
NODE_SCRIPT = Path(__file__).with_name("fed_node.py")

#: The ``federated`` fixture: ``make(name, start=True, url=None, **options)``.
Federated = Callable[..., tuple[Bus, Federation]]
#: The ``fed_node`` fixture: ``start(*names)``.
StartNodes = Callable[..., Any]

# -- looking into Redis ----------------------------------------------------------------


def channels(r: redis.Redis) -> set[str]:
    """The topics some node SUBSCRIBEs to (each node's private channel and the
    interest registry's left out)."""
    names = r.pubsub_channels(f"{PREFIX}:*")
    return {
        n.removeprefix(f"{PREFIX}:")
        for n in names
        if not n.startswith(f"{PREFIX}:_node.") and n != f"{PREFIX}:$interest"
    }


def subscribers(r: redis.Redis, topic: str) -> int:
    """How many connections SUBSCRIBE to ``topic``'s channel."""
    return int(r.pubsub_numsub(f"{PREFIX}:{topic}")[0][1])


def pattern_subscriptions(r: redis.Redis) -> int:
    """PSUBSCRIBEs held, summed over connections (NUMPAT counts distinct patterns)."""
    return sum(int(c["psub"]) for c in r.client_list())


def publish_raw(r: redis.Redis, topic: str, payload: bytes) -> int:
    """PUBLISH ``payload`` as another node would on ``topic``; the receivers' count."""
    return int(r.publish(f"{PREFIX}:{topic}", payload))


def stranger(topic: str, data: Any, seq: int = 1) -> bytes:
    """An envelope from a node that is not in the test."""
    return encode_envelope(Envelope("stranger/0", seq, time.time(), topic, data))


def wait_frozen(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` without yielding to gevent: the test's greenlets stay frozen."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or predicate}")
        time.sleep(0.005)


#: The test's nodes (in this process, and child processes), for :func:`settle`.
NODES: list[Federation | NodeProcess] = []


def settle(r: redis.Redis) -> None:
    """Wait until every running node of the test has its interest in Redis and
    has heard everybody's: each node's view is at Redis's registry version.

    A node publishes a topic only while another node wants it
    (docs/scaling.md), so a test that subscribes on one node and emits on
    another waits for this first.
    """

    def settled() -> bool:
        version = int(r.hget(f"{{{PREFIX}}}:registry", "v") or 0)
        for node in NODES:
            if isinstance(node, Federation):
                if node._writer is None or node._stopped:
                    continue
                if not (node.interest_settled() and node.stats().interest_version == version):
                    return False
            elif node.proc.poll() is None:
                stats = node.stats()
                if not (stats["settled"] and stats["interest_version"] == version):
                    return False
        return True

    wait_until(settled, 10, "every node's interest settled")


def wait_subscribed(r: redis.Redis, topic: str, count: int = 1) -> None:
    """Wait until ``count`` connections SUBSCRIBE to ``topic`` (0: until none does),
    and the nodes' interest has :func:`settle`\\ d."""
    wait_until(lambda: subscribers(r, topic) == count, 5, f"{count} SUBSCRIBE {topic}")
    settle(r)


def wait_patterns(r: redis.Redis, count: int, what: str) -> None:
    """Wait until the connections hold ``count`` PSUBSCRIBEs between them, and the
    nodes' interest has :func:`settle`\\ d."""
    wait_until(lambda: pattern_subscriptions(r) == count, 5, what)
    settle(r)


def wait_asked_for(r: redis.Redis, topics: set[str], patterns: int) -> None:
    """Wait until the nodes SUBSCRIBE to exactly ``topics`` and hold ``patterns``
    PSUBSCRIBEs, and their interest has :func:`settle`\\ d."""
    wait_until(
        lambda: channels(r) == topics and pattern_subscriptions(r) == patterns,
        5,
        f"SUBSCRIBE to {sorted(topics)} and {patterns} PSUBSCRIBEs",
    )
    settle(r)


def subscribed(bus: Bus, r: redis.Redis, *topics: str) -> list[greenbus.Subscription]:
    """``bus.subscribe(topic, maxsize=None)`` for each topic in order, returned once Redis
    has the SUBSCRIBE of the last one, which must be a plain topic.

    The node's connection sends its commands in order, so whatever the
    earlier subscriptions asked of Redis (a PSUBSCRIBE, or nothing for a
    ``$`` topic) has taken effect by then too: the last topic is a fence.
    """
    subs = [bus.subscribe(topic, maxsize=None) for topic in topics]
    wait_subscribed(r, topics[-1])
    return subs


def collect(bus: Bus, pattern: str) -> list[Any]:
    """The data of what ``bus`` delivers on ``pattern`` from now on, filled in by a handler."""
    got: list[Any] = []
    bus.subscribe(pattern, lambda msg: got.append(msg.data), maxsize=None)
    return got


def emit_all(bus: Bus, topic: str, items: Iterable[Any]) -> None:
    """``bus.emit(topic, item)`` for each item, in order."""
    for item in items:
        bus.emit(topic, item)


def take(sub: greenbus.Subscription, count: int) -> list[Any]:
    """The data of the next ``count`` messages of ``sub``, each waited for up to 5 s."""
    return [sub.get(timeout=5).data for _ in range(count)]


def wait_published(federation: Federation, count: int) -> None:
    """Wait until ``federation`` counts ``count`` messages published into Redis."""
    wait_until(lambda: federation.stats().published == count, 5, f"{count} publishes")


def wait_outage_noticed(federation: Federation) -> None:
    """Wait until ``federation`` knows it lost Redis (after a kill)."""
    wait_until(lambda: not federation.stats().connected, 5, "the node noticing the outage")


def wait_writer_took_all(federation: Federation) -> None:
    """Wait until the writer holds what was emitted: nothing left in the outbound queue."""
    wait_until(lambda: federation.stats().outbound_pending == 0, 5, "the writer taking them")


def wait_only_the_tests_connection(r: redis.Redis) -> None:
    """Wait until the nodes closed every connection: only ``r``'s own is left."""
    wait_until(lambda: len(r.client_list()) == 1, 5, "only the test's own connection")


def live_greenlets() -> set[gevent.Greenlet]:
    # issubclass(type(...)): isinstance() looks through a weakref.proxy, and a
    # dead one raises ReferenceError.
    return {g for g in gc.get_objects() if issubclass(type(g), gevent.Greenlet) and not g.dead}


def named_url(server: RedisServer, name: str) -> str:
    """The server's URL, for connections that name themselves ``name`` (CLIENT SETNAME)."""
    return f"{server.url}?client_name={name}"


def connections_named(r: redis.Redis, name: str) -> list[dict[str, Any]]:
    """``CLIENT LIST`` entries of the connections named ``name`` (see :func:`named_url`)."""
    return [c for c in r.client_list() if c["name"] == name]


# -- nodes in the test process ----------------------------------------------------------


@pytest.fixture
def federated(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Federated]:
    """``make(name, start=True, url=None, **options)``: a bus and its federation; both
    stopped afterwards.

    Started (the default), it has connected to Redis when ``make`` returns.
    ``url`` defaults to the test's server (see :func:`named_url`).
    """
    made: list[tuple[Bus, Federation]] = []

    def make(
        name: str, *, start: bool = True, url: str | None = None, **options: Any
    ) -> tuple[Bus, Federation]:
        bus = Bus(f"{request.node.name}:{name}")
        federation = Federation(bus, url or redis_server.url, **options)
        made.append((bus, federation))
        NODES.append(federation)
        if start:
            federation.start()
            assert federation.wait_connected(5), f"{federation!r} did not connect"
        return bus, federation

    yield make
    for bus, federation in made:
        NODES.remove(federation)
        federation.stop(timeout=2)
        bus.close(timeout=2)


@dataclasses.dataclass
class Link:
    """Node ``b``, whose subscription ``sub`` to one topic Redis has the SUBSCRIBE of, and
    node ``a`` (its bus and federation), started after it: what ``a`` emits there reaches ``b``."""

    a_bus: Bus
    a: Federation
    b: Federation
    sub: greenbus.Subscription


@pytest.fixture
def link(federated: Federated, redis_cli: redis.Redis) -> Callable[[str], Link]:
    """``make(topic)``: a :class:`Link` on ``topic``."""

    def make(topic: str) -> Link:
        b_bus, b = federated("b")
        [sub] = subscribed(b_bus, redis_cli, topic)
        a_bus, a = federated("a")
        settle(redis_cli)
        return Link(a_bus, a, b, sub)

    return make


# -- nodes in child processes ----------------------------------------------------------


class NodeProcess:
    """``python tests/fed_node.py URL NAME``: a federated bus in a process of its own.

    A reader thread files what the node prints: messages per subscription id
    in :attr:`got`, answers by command id in :attr:`answers`.
    """

    def __init__(self, name: str, url: str, log_path: Path, *options: str) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(NODE_SCRIPT), url, name, *options],
                cwd=ROOT,
                env=child_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.node: str | None = None
        self.got: defaultdict[str, list[tuple[str, Any]]] = defaultdict(list)
        self.answers: dict[int, dict[str, Any]] = {}
        self.ended = False
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._reader = threading.Thread(target=self._read, name=f"node {name}", daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"<NodeProcess {self.name} pid={self.proc.pid} node={self.node}>"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = json.loads(raw)
            with self._cond:
                if line["ev"] == "msg":
                    self.got[line["sid"]].append((line["topic"], line["data"]))
                elif line["ev"] == "ready":
                    self.node = line["node"]
                elif "id" in line:
                    self.answers[line["id"]] = line
                self._cond.notify_all()
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(
        self,
        predicate: Callable[[], object],
        what: str,
        timeout: float = 10.0,
        *,
        frozen: bool = False,
    ) -> None:
        """Wait until ``predicate()``; ``frozen`` waits without yielding to gevent."""

        def done() -> bool:
            return bool(predicate()) or self.ended

        if frozen:
            with self._cond:
                self._cond.wait_for(done, timeout)
        else:
            wait_until(done, timeout, f"{self.name}: {what}")
        if not predicate():
            raise AssertionError(f"{self!r}: not {what} within {timeout} s\n{self.log()}")

    def wait_ready(self) -> NodeProcess:
        self.wait_for(lambda: self.node is not None, "ready", 15, frozen=True)
        return self

    def send(self, op: str, **args: Any) -> int:
        """Send a command; its id."""
        ident = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "id": ident, **args}).encode() + b"\n")
        self.proc.stdin.flush()
        return ident

    def answer(self, ident: int, timeout: float = 10.0, *, frozen: bool = False) -> dict[str, Any]:
        self.wait_for(lambda: ident in self.answers, f"answering #{ident}", timeout, frozen=frozen)
        return self.answers[ident]

    def call(self, op: str, *, timeout: float = 10.0, frozen: bool = False, **args: Any) -> Any:
        """Send a command and wait for its answer."""
        return self.answer(self.send(op, **args), timeout, frozen=frozen)

    def subscribe(self, **patterns: str) -> None:
        """Subscribe to each pattern, under its keyword as subscription id, in order."""
        for sid, pattern in patterns.items():
            self.call("sub", sid=sid, pattern=pattern)

    def stats(self, *, frozen: bool = False) -> dict[str, Any]:
        return self.call("stats", frozen=frozen)  # type: ignore[no-any-return]

    def wait_published(self, count: int) -> None:
        """Wait until the node counts ``count`` published: its writer counts a
        batch once Redis answered, which may be after a receiver got it."""
        self.wait_for(lambda: self.stats()["published"] == count, f"counting {count} published")

    def data(self, sid: str) -> list[Any]:
        return [data for _, data in self.got[sid]]

    def quit_and_show_log(self) -> None:
        """At teardown: :meth:`quit`, then :func:`conftest.show_log_tail`."""
        code = self.quit()
        show_log_tail(f"node {self.name} (pid {self.proc.pid}, exit {code})", self.log())

    def quit(self, timeout: float = 10.0) -> int:
        """Ask the node to stop and exit; its exit code (killed if it does not)."""
        if self.proc.poll() is None:
            try:
                self.send("quit")
            except OSError:
                pass  # it is gone already
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        code = stop_process(self.proc) if self.proc.poll() is None else self.proc.returncode
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        return code


@pytest.fixture
def fed_node(redis_server: RedisServer, tmp_path: Path) -> Iterator[StartNodes]:
    """``start(*names)``: one ready node process per name (a list if several); all stopped."""
    nodes: list[NodeProcess] = []

    def start(*names: str) -> Any:
        started = [NodeProcess(n, redis_server.url, tmp_path / f"{n}.log") for n in names]
        nodes.extend(started)
        NODES.extend(started)
        for node in started:
            node.wait_ready()
        return started[0] if len(started) == 1 else started

    yield start
    for node in nodes:
        NODES.remove(node)
        node.quit_and_show_log()


@pytest.fixture
def redis_hub(
    redis_server: RedisServer, hub_factory: Callable[..., HubProcess]
) -> Callable[[], HubProcess]:
    """``start()``: a ``greenbus serve --redis`` hub process, federated through the server."""
    return lambda: hub_factory("--redis", redis_server.url)


def assert_ended_cleanly(*nodes: NodeProcess) -> None:
    """Each node quits with exit code 0 and logged no traceback: nothing crashed."""
    for node in nodes:
        assert node.quit() == 0, node.log()
        assert "Traceback" not in node.log(), node.log()


# -- redis_glob: topics and patterns to Redis channels (pure) -----------------------------


def test_an_exact_topic_maps_to_a_plain_channel_under_the_prefix() -> None:
    assert redis_glob("greenbus", "sensors.room1.temp") == ("greenbus:sensors.room1.temp", False)


def test_glob_characters_in_an_exact_topic_stay_as_they_are() -> None:
    # An exact topic is SUBSCRIBEd to, never matched as a glob.
    assert redis_glob("greenbus", "odd.[x].a?") == ("greenbus:odd.[x].a?", False)


@pytest.mark.parametrize(
    ("pattern", "glob"),
    [
        ("sensors.*", "app:sensors.*"),
        ("sensors.>", "app:sensors.*"),
        ("*.temp", "app:*.temp"),
        ("a.*.c.>", "app:a.*.c.*"),
        (">", "app:*"),
    ],
)
def test_star_and_greater_than_both_become_the_redis_star(pattern: str, glob: str) -> None:
    assert redis_glob("app", pattern) == (glob, True)


@pytest.mark.parametrize(
    ("pattern", "glob"),
    [
        ("odd.[x].*", r"app:odd.\[x\].*"),
        ("why.a?.>", r"app:why.a\?.*"),
        ("back.a\\b.*", r"app:back.a\\b.*"),
        ("lit.a*b.*", r"app:lit.a\*b.*"),
        ("all.[?*\\].>", r"app:all.\[\?\*\\\].*"),
    ],
)
def test_glob_characters_in_the_literal_tokens_of_a_pattern_are_escaped(
    pattern: str, glob: str
) -> None:
    assert redis_glob("app", pattern) == (glob, True)


def test_glob_characters_in_the_prefix_of_a_pattern_are_escaped_too() -> None:
    assert redis_glob("tenant[1]", "sensors.*") == (r"tenant\[1\]:sensors.*", True)


# -- what a node asks Redis for -------------------------------------------------------------


def test_a_node_without_subscribers_asks_redis_for_nothing_and_publishes_nothing_unwanted(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    bus, federation = federated("quiet")
    settle(redis_cli)
    # Nobody anywhere wants it: the federation is not even offered it.
    assert bus.emit("anything.at.all", 1) == 0
    assert (federation.stats().published, federation.stats().outbound_pending) == (0, 0)

    assert channels(redis_cli) == set()
    assert pattern_subscriptions(redis_cli) == 0
    assert federation.stats().subscriptions == 0


def test_a_node_subscribes_in_redis_to_what_its_subscribers_want_and_leaves_with_the_last(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    bus, federation = federated("b")
    first = bus.subscribe("sensors.temp")
    second = bus.subscribe("sensors.temp")
    wild = bus.subscribe("sensors.>")
    wait_asked_for(redis_cli, {"sensors.temp"}, 1)
    assert subscribers(redis_cli, "sensors.temp") == 1
    assert federation.stats().subscriptions == 2

    first.close()
    wild.close()
    # The PUNSUBSCRIBE went after anything first.close() sent on the same
    # connection: once it took effect, so would have a wrong UNSUBSCRIBE.
    wait_patterns(redis_cli, 0, "PUNSUBSCRIBE")
    assert channels(redis_cli) == {"sensors.temp"}

    second.close()
    wait_asked_for(redis_cli, set(), 0)  # UNSUBSCRIBE after the last subscriber
    assert federation.stats().subscriptions == 0


def test_two_patterns_sharing_one_glob_hold_one_redis_pattern_until_both_leave(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    bus, federation = federated("b")
    # "jobs.>" is also "greenbus:jobs.*" in Redis.
    star, tail, marker = subscribed(bus, redis_cli, "jobs.*", "jobs.>", "marker")
    assert pattern_subscriptions(redis_cli) == 1
    assert federation.stats().subscriptions == 2

    star.close()
    marker.close()  # sent after anything star.close() sent
    wait_subscribed(redis_cli, "marker", 0)
    assert pattern_subscriptions(redis_cli) == 1

    tail.close()
    wait_patterns(redis_cli, 0, "PUNSUBSCRIBE")


def test_subscriptions_made_before_federating_are_asked_for_when_it_connects(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    bus, federation = federated("late", start=False)
    exact = bus.subscribe("early.a", maxsize=None)
    wild = bus.subscribe("early.*", maxsize=None)
    federation.start()
    assert federation.wait_connected(5)
    wait_asked_for(redis_cli, {"early.a"}, 1)  # the subscriptions made before start

    other, _ = federated("other")
    other.emit("early.a", "hi")

    assert exact.get(timeout=5).data == "hi"
    assert wild.get(timeout=5).data == "hi"


def test_a_node_receives_from_redis_only_the_topics_its_subscribers_want(
    link: Callable[[str], Link],
) -> None:
    nodes = link("x.a")

    # Nobody wants x.b: a publishes only x.a.
    assert [nodes.a_bus.emit("x.b", n) for n in range(100)] == [0] * 100
    assert nodes.a_bus.emit("x.a", "last") == 1
    assert nodes.sub.get(timeout=5).data == "last"
    wait_published(nodes.a, 1)
    assert nodes.b.stats().received == 1


def test_a_pattern_with_glob_characters_gets_only_its_literal_topics_from_redis(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    b_bus, b = federated("b")
    subs = [b_bus.subscribe(p, maxsize=None) for p in ("odd.[x].*", "why.a?.>", "back.a\\b.*")]
    wait_patterns(redis_cli, 3, "three PSUBSCRIBEs")
    a_bus, _ = federated("a")

    # Unescaped, "[x]" would match "x", "a?" would match "ab", and "a\b" would match "ab".
    for topic in ("odd.x.1", "odd.[x].1", "why.ab.1", "why.a?.1", "back.ab.1", "back.a\\b.1"):
        a_bus.emit(topic, topic)
    a_bus.emit("odd.[x].end", "end")

    assert [subs[0].get(timeout=5).data for _ in range(2)] == ["odd.[x].1", "end"]
    assert subs[1].get_nowait().data == "why.a?.1"
    assert subs[2].get_nowait().data == "back.a\\b.1"
    assert b.stats().received == 4
    assert [s.pending for s in subs] == [0, 0, 0]


def test_a_dollar_topic_emitted_on_a_node_stays_on_that_node(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    b_bus, _ = federated("b")
    elsewhere, fence = subscribed(b_bus, redis_cli, "$sys.x", "sys.end")
    a_bus, a = federated("a")
    here = a_bus.subscribe("$sys.x", maxsize=None)

    assert a_bus.emit("$sys.x", "mine") == 1  # the local subscriber; the federation declined
    a_bus.emit("sys.end", "end")

    assert fence.get(timeout=5).data == "end"
    assert here.get_nowait().data == "mine"
    assert elsewhere.pending == 0
    wait_published(a, 1)  # sys.end


def test_a_node_does_not_ask_redis_for_dollar_topics_that_are_never_federated(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    bus, federation = federated("hub")
    # What a hub's dashboard client subscribes to, then a fence.
    subscribed(bus, redis_cli, "$greenbus.stats", "marker")

    assert channels(redis_cli) == {"marker"}
    assert federation.stats().subscriptions == 1


def test_a_dollar_topic_arriving_from_redis_is_not_delivered_to_local_subscribers(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    bus, _ = federated("hub")
    stats, marker = subscribed(bus, redis_cli, "$greenbus.stats", "marker")

    # Published into Redis by something else (a node of an older version, say).
    publish_raw(redis_cli, "$greenbus.stats", stranger("$greenbus.stats", {"hub": "other"}))
    publish_raw(redis_cli, "marker", stranger("marker", "end"))

    assert marker.get(timeout=5).data == "end"
    assert stats.pending == 0, "another node's $greenbus.stats reached this node's subscribers"


# -- messages between processes -----------------------------------------------------------


def test_a_message_from_another_process_reaches_exact_and_wildcard_subscribers_as_in_process(
    fed_node: StartNodes, redis_cli: redis.Redis
) -> None:
    publisher, receiver = fed_node("publisher", "receiver")
    receiver.subscribe(exact="orders.new", star="orders.*", tail="orders.>", new="*.new")
    wait_asked_for(redis_cli, {"orders.new"}, 2)

    for n, topic in enumerate(["orders.new", "orders.eu.new", "stock.new", "orders", "orders.eu"]):
        publisher.call("emit", topic=topic, start=n, count=1)
    expected = {"exact": 1, "star": 2, "tail": 3, "new": 2}
    receiver.wait_for(
        lambda: all(len(receiver.got[sid]) >= n for sid, n in expected.items()), "receiving"
    )

    assert receiver.got == {
        "exact": [("orders.new", 0)],
        "star": [("orders.new", 0), ("orders.eu", 4)],
        "tail": [("orders.new", 0), ("orders.eu.new", 1), ("orders.eu", 4)],
        "new": [("orders.new", 0), ("stock.new", 2)],
    }
    # Redis's "*" matches dots too, so "greenbus:*.new" and "greenbus:orders.*"
    # both deliver orders.eu.new; the node keeps one copy of each message.
    stats = receiver.stats()
    assert (stats["received"], stats["duplicates"], stats["gaps"]) == (4, 3, 0)
    assert_ended_cleanly(publisher, receiver)


def test_five_thousand_messages_cross_processes_in_order_once_per_overlapping_subscription(
    fed_node: StartNodes, redis_cli: redis.Redis
) -> None:
    count = 5000
    publisher, receiver = fed_node("publisher", "receiver")
    receiver.subscribe(exact="seq.a", star="seq.*", tail="seq.>")
    wait_asked_for(redis_cli, {"seq.a"}, 1)

    publisher.call("emit", topic="seq.a", count=count)
    receiver.wait_for(
        lambda: all(len(receiver.got[sid]) >= count for sid in ("exact", "star", "tail")),
        f"receiving {count} messages per subscription",
        30,
    )

    for sid in ("exact", "star", "tail"):
        assert receiver.data(sid) == list(range(count)), sid
    # Redis delivered every message twice (channel and pattern): each copy
    # after the first is dropped and counted, never delivered.
    stats = receiver.stats()
    assert (stats["received"], stats["duplicates"], stats["gaps"]) == (count, count, 0)
    publisher.wait_published(count)
    assert_ended_cleanly(publisher, receiver)


def test_three_nodes_each_get_the_other_two_streams_in_order_and_their_own_only_once(
    fed_node: StartNodes, redis_cli: redis.Redis
) -> None:
    count = 1000
    nodes = fed_node("n1", "n2", "n3")
    for node in nodes:
        node.subscribe(room="room.>")
    wait_patterns(redis_cli, 3, "three PSUBSCRIBEs")

    emits = [(node, node.send("emit", topic=f"room.{node.name}", count=count)) for node in nodes]
    for node, ident in emits:
        node.answer(ident)
    for node in nodes:
        node.wait_for(lambda node=node: len(node.got["room"]) >= 3 * count, "all three streams")

    for node in nodes:
        got = node.got["room"]
        assert len(got) == 3 * count, node.name
        for origin in nodes:
            topic = f"room.{origin.name}"
            assert [data for t, data in got if t == topic] == list(range(count)), (node, topic)
        node.wait_published(count)
        stats = node.stats()
        assert stats["received"] == 2 * count
        assert (stats["duplicates"], stats["gaps"]) == (0, 0)
    assert_ended_cleanly(*nodes)


def test_a_node_does_not_get_its_own_messages_back_from_redis(
    federated: Federated,
    fed_node: StartNodes,
    redis_cli: redis.Redis,
) -> None:
    count = 1000
    bus, federation = federated("a")
    local: list[tuple[str, Any]] = []
    bus.subscribe("t.>", lambda msg: local.append((msg.topic, msg.data)), maxsize=None)
    other = fed_node("other")
    other.subscribe(t="t.>")
    wait_patterns(redis_cli, 2, "both nodes' PSUBSCRIBE t.*")

    emit_all(bus, "t.mine", range(count))
    other.wait_for(lambda: len(other.got["t"]) == count, "receiving them")
    # Redis sent the echoes to this node before other's reply, and the
    # reader handles what arrives in order: once "t.done" is here, so were they.
    other.call("emit", topic="t.done", count=1)
    wait_until(lambda: ("t.done", 0) in local, 5, "t.done from the other node")

    assert local == [*(("t.mine", n) for n in range(count)), ("t.done", 0)]
    wait_published(federation, count)
    stats = federation.stats()
    assert (stats.published, stats.received, stats.duplicates) == (count, 1, 0)


# -- request/reply across nodes ------------------------------------------------------------


def test_a_request_is_answered_by_a_responder_in_another_process(
    federated: Federated,
    fed_node: StartNodes,
    redis_cli: redis.Redis,
) -> None:
    responder = fed_node("responder")
    responder.call("respond", pattern="svc.echo")
    wait_subscribed(redis_cli, "svc.echo")
    bus, _ = federated("requester")

    assert bus.request("svc.echo", "hi", timeout=5).data == {"echo": "hi", "by": "responder"}
    jobs = [gevent.spawn(bus.request, "svc.echo", n, timeout=5) for n in range(20)]
    assert [job.get(timeout=10).data["echo"] for job in jobs] == list(range(20))


def test_a_request_from_another_process_is_answered_by_a_local_responder(
    federated: Federated,
    fed_node: StartNodes,
    redis_cli: redis.Redis,
) -> None:
    bus, _ = federated("responder")
    bus.on("svc.add", lambda msg: msg.reply(sum(msg.data)))
    wait_subscribed(redis_cli, "svc.add")
    requester = fed_node("requester")

    answer = requester.call("request", topic="svc.add", data=[1, 2, 3], timeout=5)

    assert (answer["ev"], answer.get("data")) == ("reply", 6)


def test_a_request_another_node_wants_but_nobody_answers_times_out(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    bus, _ = federated("requester")
    silent_bus, _ = federated("silent")
    silent_bus.subscribe("svc.silent", maxsize=None)  # wants it, never replies
    settle(redis_cli)

    # The federation counts as a receiver: no NoResponders, a timeout.
    with pytest.raises(greenbus.RequestTimeout):
        bus.request("svc.silent", 1, timeout=0.3)
    # Nobody anywhere wants this one: the requester's node knows.
    with pytest.raises(greenbus.NoResponders):
        bus.request("svc.nobody", 1, timeout=0.3)


# -- faults: Redis killed and restarted ----------------------------------------------------


def test_messages_emitted_while_redis_is_down_are_published_once_it_is_back(
    federated: Federated, fed_node: StartNodes, redis_server: RedisServer, redis_cli: redis.Redis
) -> None:
    bus, federation = federated("a")
    local = collect(bus, "feed.>")
    receiver = fed_node("receiver")
    receiver.subscribe(feed="feed.>")
    wait_patterns(redis_cli, 2, "both PSUBSCRIBEs")
    emit_all(bus, "feed.x", range(100))
    receiver.wait_for(lambda: len(receiver.got["feed"]) == 100, "the first 100")

    redis_server.kill()
    wait_outage_noticed(federation)
    emit_all(bus, "feed.x", range(100, 200))
    # The local bus keeps working: local subscribers get local messages at once.
    wait_until(lambda: len(local) == 200, 5, "local delivery during the outage")
    wait_writer_took_all(federation)
    assert federation.stats().published == 100

    redis_server.start()
    # Frozen: this node cannot publish before the receiver has re-subscribed.
    wait_frozen(lambda: pattern_subscriptions(redis_cli) == 1, 10, "the receiver re-subscribing")
    receiver.wait_for(lambda: len(receiver.got["feed"]) == 200, "the 100 queued in the outage")

    assert receiver.data("feed") == list(range(200))
    assert local == list(range(200))
    wait_published(federation, 200)
    stats = federation.stats()
    assert (stats.published, stats.dropped, stats.outbound_pending) == (200, 0, 0)
    assert stats.reconnects >= 1
    wait_until(lambda: federation.stats().connected, 10, "the node's reader reconnecting")
    received = receiver.stats()
    assert (received["received"], received["gaps"], received["duplicates"]) == (200, 0, 0)
    assert_ended_cleanly(receiver)


def test_messages_published_while_a_subscriber_is_cut_off_are_counted_as_its_gap(
    federated: Federated, fed_node: StartNodes, redis_server: RedisServer, redis_cli: redis.Redis
) -> None:
    bus, federation = federated("b")
    got = collect(bus, "feed.x")
    wait_subscribed(redis_cli, "feed.x")
    publisher = fed_node("publisher")
    publisher.call("emit", topic="feed.x", count=100)
    wait_until(lambda: len(got) == 100, 5, "the first 100")

    redis_server.kill()
    wait_outage_noticed(federation)
    publisher.call("emit", topic="feed.x", start=100, count=50)  # queued by the publisher
    redis_server.start()
    # Frozen: the publisher reconnects and publishes its queue while this
    # node's reader is still cut off, so these 50 are lost for it.
    wait_frozen(
        lambda: publisher.stats(frozen=True)["published"] == 150,
        10,
        "the publisher publishing the 50 queued in the outage",
    )
    assert channels(redis_cli) == set()

    assert federation.wait_connected(10)
    wait_subscribed(redis_cli, "feed.x")  # again
    publisher.call("emit", topic="feed.x", start=150, count=50)
    wait_until(lambda: len(got) == 150, 5, "the 50 after the reconnection")

    assert got == [*range(100), *range(150, 200)]
    stats = federation.stats()
    assert (stats.received, stats.gaps, stats.duplicates) == (150, 50, 0)
    assert stats.reconnects >= 1
    publisher.wait_published(200)
    assert_ended_cleanly(publisher)


def test_a_stream_through_a_redis_kill_arrives_in_order_without_repeats_and_every_loss_is_a_gap(
    fed_node: StartNodes, redis_server: RedisServer, redis_cli: redis.Redis
) -> None:
    count = 800
    publisher, receiver = fed_node("publisher", "receiver")
    receiver.subscribe(s="stream.x")
    wait_subscribed(redis_cli, "stream.x")

    streaming = publisher.send("emit", topic="stream.x", count=count, pace=0.002)
    receiver.wait_for(lambda: len(receiver.got["s"]) >= 100, "the stream flowing")
    redis_server.kill()
    receiver.wait_for(lambda: not receiver.stats()["connected"], "noticing the outage")
    redis_server.start()
    publisher.answer(streaming, timeout=30)
    # One more once the receiver is back for sure: it closes the sequence,
    # so whatever the outage cost shows as a gap.
    receiver.wait_for(lambda: receiver.stats()["connected"], "reconnecting")
    wait_subscribed(redis_cli, "stream.x")  # again
    publisher.call("emit", topic="stream.x", start=count, count=1)
    receiver.wait_for(lambda: receiver.data("s")[-1] == count, "the last message")

    data = receiver.data("s")
    assert data == sorted(set(data)), "out of order or repeated"
    received = receiver.stats()
    assert received["received"] == len(data)
    assert received["received"] + received["gaps"] == count + 1
    assert received["reconnects"] >= 1
    publisher.wait_published(count + 1)
    assert publisher.stats()["dropped"] == 0
    assert_ended_cleanly(publisher, receiver)


def test_a_full_outbound_queue_drops_the_oldest_counts_them_and_logs_once(
    federated: Federated,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus, federation = federated("a", max_pending=10)
    redis_server.kill()
    wait_outage_noticed(federation)
    bus.emit("q.x", 0)
    # The writer holds message 0 and retries; the queue takes 10 more.
    wait_writer_took_all(federation)
    with caplog.at_level(logging.WARNING, logger="greenbus.federation"):
        for n in range(1, 25):
            assert bus.emit("q.x", n) == 1

    stats = federation.stats()
    assert (stats.outbound_pending, stats.dropped) == (10, 14)
    full = [r for r in caplog.records if "outbound queue full" in r.getMessage()]
    assert len(full) == 1

    redis_server.start()
    wait_until(lambda: federation.stats().published == 11, 10, "publishing what was kept")
    assert federation.stats().dropped == 14


@pytest.mark.parametrize(
    "poison",
    [
        b"not json",
        b'{"v":2,"o":"x/0","q":1,"ts":1,"t":"t.x"}',
        b'{"v":1,"o":"x/0","q":1,"ts":1' + b"0" * 400 + b',"t":"t.x"}',
    ],
    ids=["not-json", "version-2", "timestamp-too-big-for-a-float"],
)
def test_a_bad_envelope_is_counted_and_the_node_keeps_receiving(
    federated: Federated, redis_cli: redis.Redis, poison: bytes
) -> None:
    bus, federation = federated("b")
    [sub] = subscribed(bus, redis_cli, "t.x")

    assert publish_raw(redis_cli, "t.x", poison) == 1
    assert publish_raw(redis_cli, "t.x", stranger("t.x", "fine")) == 1

    assert sub.get(timeout=3).data == "fine"
    stats = federation.stats()
    assert (stats.bad_envelopes, stats.received) == (1, 1)


def test_a_subscribed_node_quiet_for_longer_than_the_urls_socket_timeout_stays_connected(
    federated: Federated, redis_server: RedisServer, redis_cli: redis.Redis
) -> None:
    # The URL's socket_timeout bounds waits for replies; a subscribed
    # connection waits for messages, however long they take to come.
    b_bus, b = federated("b", url=f"{redis_server.url}?socket_timeout=0.1")
    sub = b_bus.subscribe("calm.a", maxsize=None)
    wait_subscribed(redis_cli, "calm.a")
    gevent.sleep(1.0)  # ten timeouts' worth of silence
    a_bus, _ = federated("a")
    a_bus.emit("calm.a", "still here")
    assert sub.get(timeout=5).data == "still here"
    assert b.stats().reconnects == 0


# -- statistics -----------------------------------------------------------------------


def test_statistics_count_published_received_and_duplicate_messages(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    b_bus, b = federated("b")
    exact = b_bus.subscribe("s.a", maxsize=None)
    wild = b_bus.subscribe("s.*", maxsize=None)
    wait_asked_for(redis_cli, {"s.a"}, 1)
    a_bus, a = federated("a")
    settle(redis_cli)
    emit_all(a_bus, "s.a", range(10))
    emit_all(a_bus, "s.b", range(5))
    assert a_bus.emit("nobody.wants", 1) == 0  # a knows: not published

    assert take(exact, 10) == list(range(10))
    assert take(wild, 15) == [*range(10), *range(5)]
    wait_published(a, 15)
    sent, got = a.stats(), b.stats()
    assert dataclasses.asdict(sent) | {"lag_ms": 0, "max_lag_ms": 0} == {
        "node": a.node,
        "connected": True,
        "published": 15,
        "outbound_pending": 0,
        "dropped": 0,
        "unencodable": 0,
        "received": 0,
        "duplicates": 0,
        "gaps": 0,
        "bad_envelopes": 0,
        "reconnects": 0,
        "subscriptions": 0,
        "duplicates_dropped": 0,
        "script_errors": 0,
        "lag_ms": 0,
        "max_lag_ms": 0,
        "unwanted": 0,
        "unshardable": 0,
        "remote_nodes": 1,
        "remote_patterns": 2,
        "interest_version": got.interest_version,
    }
    assert (got.received, got.duplicates, got.gaps, got.subscriptions) == (15, 10, 0, 2)
    assert (got.remote_nodes, got.remote_patterns, got.unwanted) == (0, 0, 0)
    assert (got.published, got.reconnects, got.bad_envelopes) == (0, 0, 0)
    assert 0 <= got.lag_ms <= got.max_lag_ms < 5000


def test_an_unencodable_message_is_counted_and_shows_no_gap_at_the_receivers(
    link: Callable[[str], Link], caplog: pytest.LogCaptureFixture
) -> None:
    nodes = link("u.x")
    local = nodes.a_bus.subscribe("u.x", maxsize=None)

    with caplog.at_level(logging.ERROR, logger="greenbus.federation"):
        emit_all(nodes.a_bus, "u.x", (1, object(), 2))
        assert take(nodes.sub, 2) == [1, 2]

    assert local.pending == 3  # local subscribers still got it
    wait_published(nodes.a, 2)
    assert nodes.a.stats().unencodable == 1
    assert any("'u.x'" in r.getMessage() for r in caplog.records)
    # Nothing was lost in an outage: a gap here would send someone looking for one.
    assert (nodes.b.stats().received, nodes.b.stats().gaps) == (2, 0)


# -- stop() ------------------------------------------------------------------------------


def test_stop_publishes_what_is_queued_before_it_returns(link: Callable[[str], Link]) -> None:
    nodes = link("q.x")

    emit_all(nodes.a_bus, "q.x", range(2000))
    nodes.a.stop()

    assert nodes.a.stats().published == 2000
    assert take(nodes.sub, 2000) == list(range(2000))


def test_stop_is_idempotent_closes_its_connections_and_leaves_no_greenlet_running(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    before = live_greenlets()
    _, unused = federated("unused", start=False)
    unused.stop()
    bus, federation = federated("a")
    bus.subscribe("a.b")
    settle(redis_cli)
    assert bus.emit("a.b", 1) == 1  # its own subscriber, not the federation
    # No node wants svc.nobody (the federation knows): nobody can reply.
    with pytest.raises(greenbus.NoResponders):
        bus.request("svc.nobody", timeout=0.05)
    assert bus.emit("_INBOX.x.1", "a reply always goes") == 1
    wait_published(federation, 1)

    federation.stop()
    federation.stop()

    assert live_greenlets() - before == set()
    assert not federation.stats().connected
    wait_only_the_tests_connection(redis_cli)
    # The bus lives on, unfederated.
    late = bus.subscribe("late.x", maxsize=None)
    assert bus.emit("late.x", 2) == 1 and late.get_nowait().data == 2
    assert channels(redis_cli) == set()
    assert federation.stats().published == 1


def test_stop_during_an_outage_counts_the_messages_it_could_not_publish_as_dropped(
    federated: Federated, redis_server: RedisServer
) -> None:
    before = live_greenlets()
    bus, federation = federated("a")
    redis_server.kill()
    wait_outage_noticed(federation)
    emit_all(bus, "q.x", range(10))
    wait_writer_took_all(federation)

    started = time.monotonic()
    federation.stop(timeout=0.3)

    assert time.monotonic() - started < 2
    assert live_greenlets() - before == set()
    stats = federation.stats()
    assert (stats.published, stats.dropped) == (0, 10)


def test_stopping_after_the_bus_closed_still_ends_the_federations_greenlets(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    before = live_greenlets()
    bus, federation = federated("b")
    subscribed(bus, redis_cli, "z.x")

    # stop() right after the close, before the federation's greenlets have
    # run to notice it.
    bus.close(timeout=1)
    federation.stop()

    assert live_greenlets() - before == set()
    assert not federation.stats().connected
    wait_only_the_tests_connection(redis_cli)


# -- the bus closing under a federation ----------------------------------------------------


def test_a_node_whose_bus_closed_leaves_redis_by_itself_after_publishing_what_it_had_queued(
    federated: Federated,
    redis_server: RedisServer,
    redis_cli: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    b_bus, _ = federated("b")
    [last] = subscribed(b_bus, redis_cli, "t.last")
    a_bus, a = federated("a", url=named_url(redis_server, "node-a"))
    subscribed(a_bus, redis_cli, "t.x")
    assert subscribers(redis_cli, f"_node.{a.node}") == 1  # a's reader, on its own channel
    # a's reader, and the connection of its interest registry's heartbeats.
    assert len(connections_named(redis_cli, "node-a")) == 2

    with caplog.at_level(logging.INFO, logger="greenbus.federation"):
        a_bus.emit("t.last", "last words")  # accepted by the bus, queued for Redis
        a_bus.close(timeout=2)  # and not a.stop()
        # Traffic for a's old subscription does not keep its reader around.
        b_bus.emit("t.x", "anyone there?")
        wait_until(lambda: a._reader.dead and a._writer.dead, 5, "a's reader and writer to end")

    assert last.get(timeout=5).data == "last words"  # the writer published it first
    assert not a.stats().connected
    assert a.stats().published == 1
    wait_until(lambda: connections_named(redis_cli, "node-a") == [], 5, "a's connections to go")
    assert subscribers(redis_cli, f"_node.{a.node}") == 0
    assert subscribers(redis_cli, "t.x") == 0
    [record] = [
        r for r in caplog.records if r.name == "greenbus.federation" and r.levelno == logging.INFO
    ]
    assert "bus" in record.getMessage() and "closed" in record.getMessage()
    assert a.node in record.getMessage()


def test_a_message_arriving_while_the_bus_is_closing_makes_the_reader_leave_redis(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    bus, federation = federated("b")
    release = gevent.event.Event()
    handled: list[object] = []

    def busy(msg: greenbus.Message) -> None:
        handled.append(msg.data)
        release.wait()

    bus.on("z.x", busy)
    wait_subscribed(redis_cli, "z.x")
    assert publish_raw(redis_cli, "z.x", stranger("z.x", 1)) == 1
    wait_until(lambda: handled == [1], 5, "the handler to be busy with the first")
    # close() waits for the busy handler: the bus is closing, not yet closed,
    # and Redis still sends this node what its subscription asked for.
    closer = gevent.spawn(bus.close, timeout=5)
    try:
        wait_until(lambda: bus.closed, 5, "close() to begin")
        assert publish_raw(redis_cli, "z.x", stranger("z.x", 2, seq=2)) == 1

        # The reader emits it, gets BusClosed, and leaves Redis there and then.
        wait_until(lambda: federation._reader.dead, 5, "the reader to end")
        assert federation.stats().received == 2
        assert not federation.stats().connected
        assert subscribers(redis_cli, f"_node.{federation.node}") == 0
        assert bus.state is greenbus.BusState.CLOSING
    finally:
        release.set()
        closer.join(5)
    assert handled == [1]
    wait_until(lambda: federation._writer.dead, 5, "the writer to end")


# -- hubs: greenbus serve --redis ----------------------------------------------------------


def test_a_websocket_client_of_one_hub_receives_what_a_client_of_another_hub_publishes(
    redis_hub: Callable[[], HubProcess],
    redis_cli: redis.Redis,
    remote_bus: Callable[..., RemoteBus],
) -> None:
    sub = remote_bus(redis_hub().url).subscribe("chat.>", maxsize=None)
    wait_patterns(redis_cli, 1, "hub A's PSUBSCRIBE chat.*")
    publisher = remote_bus(redis_hub().url)

    for n in range(500):
        publisher.emit("chat.room1", n, headers={"n": n} if n == 0 else None)

    got = [sub.get(timeout=5) for _ in range(500)]
    assert [m.data for m in got] == list(range(500))
    assert {m.topic for m in got} == {"chat.room1"}
    assert got[0].headers == {"n": 0}


def test_a_websocket_client_of_a_hub_and_an_in_process_bus_federated_reach_each_other(
    redis_hub: Callable[[], HubProcess],
    redis_cli: redis.Redis,
    remote_bus: Callable[..., RemoteBus],
    federated: Federated,
) -> None:
    bus, _ = federated("app")
    client = remote_bus(redis_hub().url)
    events = client.subscribe("app.events", maxsize=None)
    commands = bus.subscribe("app.commands", maxsize=None)
    wait_asked_for(redis_cli, {"app.events", "app.commands"}, 0)

    emit_all(bus, "app.events", range(200))
    client.emit("app.commands", {"cmd": "stop"})

    assert take(events, 200) == list(range(200))
    assert commands.get(timeout=5).data == {"cmd": "stop"}


def test_a_websocket_clients_request_is_answered_by_a_client_of_another_hub(
    redis_hub: Callable[[], HubProcess],
    redis_cli: redis.Redis,
    remote_bus: Callable[..., RemoteBus],
) -> None:
    responder = remote_bus(redis_hub().url)
    responder.on("svc.upper", lambda msg: msg.reply(msg.data.upper()))
    wait_subscribed(redis_cli, "svc.upper")  # by hub B
    requester = remote_bus(redis_hub().url)

    assert requester.request("svc.upper", "hello", timeout=5).data == "HELLO"
