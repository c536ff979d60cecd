"""Federation over a Redis Cluster (greenbus/federation/cluster.py), against a real
three-master cluster of redis-server processes (the ``redis_cluster`` fixture).

Two hubs on a cluster behaving as one bus (order, no duplicates, recovery
across hubs) are the recovery tests of test_federation_recovery.py, which run
on one Redis and on a cluster.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.cluster
from conftest import HubProcess, RedisCluster, free_port, run_child
from hubclient import ask, client, recv
from hubclient import hello_v2 as hello
from waiting import wait_until

from greenbus import Bus, Federation
from greenbus.federation.cluster import parse_cluster_url, root_channel, root_of

PREFIX = "greenbus"

Nodes = Callable[..., tuple[Bus, Federation]]


@pytest.fixture
def nodes(redis_cluster: RedisCluster) -> Iterator[Nodes]:
    """``make(name, **options)``: a bus federated through the cluster, connected; all
    stopped afterwards."""
    made: list[tuple[Bus, Federation]] = []

    def make(name: str, **options: Any) -> tuple[Bus, Federation]:
        bus = Bus(name)
        federation = Federation(bus, redis_cluster.url, **options).start()
        made.append((bus, federation))
        assert federation.wait_connected(10), f"{federation!r} did not connect"
        return bus, federation

    yield make
    for bus, federation in made:
        federation.stop(timeout=2)
        bus.close(timeout=2)


def heard(federation: Federation, node: str, patterns: int) -> Callable[[], bool]:
    return lambda: (
        federation.interest_settled()
        and len(federation.remote_interest().get(node, [])) == patterns
    )


def collect(bus: Bus, pattern: str) -> list[Any]:
    got: list[Any] = []
    bus.subscribe(pattern, lambda msg: got.append((msg.topic, msg.data)), maxsize=None)
    return got


# -- naming (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "root"),
    [
        ("chat.room1", "chat"),
        ("chat.*", "chat"),
        ("chat.>", "chat"),
        ("chat", "chat"),
        ("_INBOX.abc.7", "_INBOX.abc"),
        ("_INBOX.abc.*", "_INBOX.abc"),
        ("_INBOX.*", "_INBOX"),
        ("*.temp", None),
        (">", None),
    ],
)
def test_the_root_of_a_topic_or_pattern_is_its_first_token(pattern: str, root: str | None) -> None:
    assert root_of(pattern) == root


def test_a_roots_channel_carries_its_hash_tag() -> None:
    assert root_channel("greenbus", "chat") == "greenbus:{chat}"


def test_a_cluster_url_names_its_nodes_and_credentials() -> None:
    seeds, options = parse_cluster_url("redis+cluster://u:p%40ss@h1:7000,h2:7001/")
    assert seeds == [("h1", 7000), ("h2", 7001)]
    assert options == {"username": "u", "password": "p@ss"}
    assert parse_cluster_url("redis+cluster://h:1") == ([("h", 1)], {})


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:1",
        "redis+cluster://",
        "redis+cluster://h",
        "redis+cluster://h:99999",
        "redis+cluster://h:1/3",
    ],
)
def test_a_bad_cluster_url_is_refused_with_its_reason(url: str) -> None:
    with pytest.raises(ValueError):
        parse_cluster_url(url)


# -- against a real cluster ------------------------------------------------------------------


def test_messages_go_by_sharded_pubsub_on_their_roots_master_in_order_once(
    nodes: Nodes, redis_cluster: RedisCluster
) -> None:
    a_bus, a = nodes("a")
    b_bus, b = nodes("b")
    got = collect(b_bus, "chat.*")
    sensors = collect(b_bus, "sensors.x")
    wait_until(heard(a, b.node, 2), 10, "a hearing b's interest")
    spublish, publish = (
        redis_cluster.commandstats("spublish"),
        redis_cluster.commandstats("publish"),
    )
    chat_master = redis_cluster.master_of(root_channel(PREFIX, "chat"))
    before_on_chat_master = stats_on(redis_cluster, chat_master, "spublish")

    for n in range(300):
        a_bus.emit(f"chat.{n % 3}", n)
        a_bus.emit("sensors.x", n)
        a_bus.emit("nobody.x", n)  # wanted nowhere: not published

    wait_until(lambda: len(got) == 300 and len(sensors) == 300, 10, "every message")
    assert [data for _, data in got] == list(range(300))
    assert [data for _, data in sensors] == list(range(300))
    assert redis_cluster.commandstats("spublish") - spublish == 600
    assert redis_cluster.commandstats("publish") == publish  # no classic broadcast
    assert stats_on(redis_cluster, chat_master, "spublish") - before_on_chat_master >= 300
    assert (b.stats().duplicates, b.stats().gaps, b.stats().received) == (0, 0, 600)


def stats_on(cluster: RedisCluster, port: int, command: str) -> int:
    """``command``'s calls on the node at ``port`` alone."""
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))
    finally:
        client.close()


def test_with_history_each_roots_streams_live_on_its_master(
    nodes: Nodes, redis_cluster: RedisCluster, redis_cluster_cli: redis.cluster.RedisCluster
) -> None:
    a_bus, a = nodes("a", history=50)
    b_bus, b = nodes("b", history=50)
    got = collect(b_bus, "orders.>")
    wait_until(heard(a, b.node, 1), 10, "a hearing b's interest")

    for n in range(20):
        a_bus.emit("orders.eu", n)
        a_bus.emit("stock.eu", n)
    wait_until(lambda: len(got) == 20, 10, "the orders")

    assert [data for _, data in got] == list(range(20))
    for root, topic in (("orders", "orders.eu"), ("stock", "stock.eu")):
        key = f"{root_channel(PREFIX, root)}:stream:{topic}"
        owner = redis.Redis(host="127.0.0.1", port=redis_cluster.master_of(key))
        try:
            assert owner.xlen(key) == 20  # on the master of its root's slot
        finally:
            owner.close()
    # Every position counts per root: each root's sequence ran 1..20.
    assert redis_cluster_cli.hget(f"{root_channel(PREFIX, 'orders')}:history", "seq") == "20"
    assert redis_cluster_cli.hget(f"{root_channel(PREFIX, 'stock')}:history", "seq") == "20"


def test_a_pattern_whose_first_token_is_a_wildcard_is_not_federated_and_says_so(
    nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    bus, federation = nodes("a")
    with caplog.at_level(logging.WARNING, logger="greenbus.federation"):
        bus.subscribe("*.temp")
    assert federation.stats().unshardable == 1
    assert federation.stats().subscriptions == 0
    assert any("literal first token" in r.getMessage() for r in caplog.records)


def test_request_and_reply_work_across_nodes_on_a_cluster(nodes: Nodes) -> None:
    a_bus, a = nodes("a")
    b_bus, b = nodes("b")
    b_bus.on("svc.echo", lambda msg: msg.reply(msg.data))
    wait_until(heard(a, b.node, 1), 10, "a hearing b's responder")
    # The reply goes to a's inbox: a root of its own (_INBOX.<id>), on its master.
    assert a_bus.request("svc.echo", "ping", timeout=10).data == "ping"


def test_serve_on_a_cluster_nobody_answers_says_so_in_one_line() -> None:
    port = free_port()  # nothing listens there
    done = run_child(
        [sys.executable, "-m", "greenbus", "serve", "--port", "0", "--redis",
         f"redis+cluster://127.0.0.1:{port}"]
    )  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"greenbus serve: cannot reach the Redis Cluster redis+cluster://127.0.0.1:{port}: "
        f"Error 111 connecting to 127.0.0.1:{port}. Connection refused."
    ]


@pytest.mark.parametrize("hub_transport", ["websockets"], indirect=True)
def test_a_hub_with_its_history_on_a_cluster_refuses_a_pattern_no_root_holds_and_goes_on(
    hub_factory: Callable[..., HubProcess], redis_cluster: RedisCluster
) -> None:
    hub = hub_factory("--redis", redis_cluster.url)
    with client(hub.url) as ws:
        hello(ws)
        refused = ask(ws, op="sub", sid=1, topic="*.temp", id=1)
        assert refused == {
            "op": "error",
            "code": "bad_topic",
            "reason": "over a Redis Cluster a pattern needs a literal first token",
            "id": 1,
        }
        ack = ask(ws, op="sub", sid=2, topic="room.*", id=2)
        assert ack["op"] == "ack" and ack["id"] == 2  # the connection goes on
        frames = [ask(ws, op="pub", topic="room.1", data="hi", id=3), recv(ws)]
        assert sorted(f["op"] for f in frames) == ["ack", "msg"]
        assert [f["data"] for f in frames if f["op"] == "msg"] == ["hi"]
