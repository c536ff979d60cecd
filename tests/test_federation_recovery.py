"""Recovery across hubs: one history in Redis for every hub of a federation.

Real ``greenbus serve --redis`` processes on a real ``redis-server``: a
position from one hub replays on another, also after the first was killed
with SIGKILL; a publisher that moves to another hub sends what was not
confirmed, applied once; a hub that loses Redis for a while has its peers
resume.  See docs/recovery.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gevent
import pytest
import redis
from conftest import HubProcess, RedisServer
from hubclient import ask, client, recv, send, start_position
from hubclient import hello_v2 as hello
from relay import Relay
from waiting import wait_until

from greenbus import RemoteBus
from greenbus.history import Position

#: What the hub processes run with: the hub's own listener is enough here.
pytestmark = pytest.mark.parametrize("hub_transport", ["websockets"], indirect=True)


@pytest.fixture(params=["redis", "cluster"])
def federation_url(request: pytest.FixtureRequest) -> str:
    """What the hubs federate through: one redis-server, or a Redis Cluster of
    three masters (``redis+cluster://``: each topic root's history and
    channel on its shard)."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_server").url)


@pytest.fixture
def two_hubs(
    hub_factory: Callable[..., HubProcess], federation_url: str
) -> tuple[HubProcess, HubProcess]:
    """Two hubs federated through Redis, with history (the default 100 per topic)."""
    return hub_factory("--redis", federation_url), hub_factory("--redis", federation_url)


def test_a_position_from_one_hub_replays_on_the_other(
    two_hubs: tuple[HubProcess, HubProcess],
) -> None:
    a, b = two_hubs
    start = start_position(a.url, "orders.>")
    with client(b.url) as publisher:
        for n in range(3):
            assert ask(publisher, op="pub", topic=f"orders.{n}", data=n, id=n) == {
                "op": "ack",
                "id": n,
            }
    with client(b.url) as subscriber:
        hello(subscriber)
        ack = ask(subscriber, op="sub", sid=1, topic="orders.>", since=start, id=2)
        assert ack["recovered"] is True
        got = [recv(subscriber) for _ in range(3)]
        assert [m["data"] for m in got] == [0, 1, 2]
        positions = [Position.parse(m["pos"]).seq for m in got]
        assert positions == sorted(positions) and Position.parse(start).seq < positions[0]


def publish_steadily(publisher: RemoteBus, prefix: str, topics: int, count: int) -> None:
    """Emit 0..count-1 on ``prefix.<n % topics>``, one every 2 ms."""
    for n in range(count):
        publisher.emit(f"{prefix}.{n % topics}", n)
        gevent.sleep(0.002)


def test_a_subscriber_whose_hub_is_killed_resumes_on_the_other_with_nothing_lost(
    two_hubs: tuple[HubProcess, HubProcess], remote_bus: Callable[..., RemoteBus]
) -> None:
    a, b = two_hubs
    subscriber = remote_bus([a.url, b.url], name="subscriber", max_backoff=0.05)
    publisher = remote_bus(b.url, name="publisher", max_backoff=0.05)
    sub = subscriber.subscribe("steady.>", maxsize=None)
    wait_until(lambda: subscriber.position(sub) is not None, 5, "the sub's ack")
    count = 400
    worker = gevent.spawn(publish_steadily, publisher, "steady", 3, count)
    first = [sub.get(timeout=5).data for _ in range(50)]
    a.kill()  # SIGKILL, no goodbye: its peers see the TCP connection die
    rest = [sub.get(timeout=15).data for _ in range(count - 50)]
    worker.get(timeout=15)
    assert [*first, *rest] == list(range(count))
    assert subscriber.url == b.url
    stats = subscriber.statistics()
    assert (stats.recovered, stats.recoveries_failed) == (1, 0)
    publisher.publish("steady.end", "end", timeout=5)
    assert sub.get(timeout=5).data == "end"  # and nothing twice before it


def test_a_publisher_whose_hub_is_killed_sends_the_rest_through_the_other_once_each(
    two_hubs: tuple[HubProcess, HubProcess], remote_bus: Callable[..., RemoteBus]
) -> None:
    a, b = two_hubs
    subscriber = remote_bus(b.url, name="subscriber", max_backoff=0.05)
    sub = subscriber.subscribe("orders.>", maxsize=None)
    wait_until(lambda: subscriber.position(sub) is not None, 5, "the sub's ack")
    publisher = remote_bus([a.url, b.url], name="publisher", max_backoff=0.05)
    count = 300
    worker = gevent.spawn(publish_steadily, publisher, "orders", 2, count)
    first = [sub.get(timeout=5).data for _ in range(40)]
    a.kill()  # SIGKILL
    rest = [sub.get(timeout=15).data for _ in range(count - 40)]
    worker.get(timeout=15)
    assert [*first, *rest] == list(range(count))  # none lost, none twice
    wait_until(lambda: publisher.statistics().unconfirmed == 0, 10, "the last acks")
    assert publisher.url == b.url
    subscriber.publish("orders.end", "end", timeout=5)
    assert sub.get(timeout=5).data == "end"


@pytest.fixture
def redis_relay(redis_server: RedisServer) -> Iterator[Relay]:
    relay = Relay(redis_server.port).start()
    yield relay
    relay.stop()


def test_a_hub_that_loses_redis_for_a_while_has_its_peers_resume_with_nothing_lost(
    hub_factory: Callable[..., HubProcess],
    redis_relay: Relay,
    redis_server: RedisServer,
    remote_bus: Callable[..., RemoteBus],
) -> None:
    # The hub reaches Redis through a relay that cuts its connections; the
    # publisher's hub reaches it directly.
    cut_off = hub_factory("--redis", f"redis://127.0.0.1:{redis_relay.port}/0")
    direct = hub_factory("--redis", redis_server.url)
    subscriber = remote_bus(cut_off.url, name="subscriber", max_backoff=0.05)
    publisher = remote_bus(direct.url, name="publisher")
    sub = subscriber.subscribe("t", maxsize=None)
    wait_until(lambda: subscriber.position(sub) is not None, 5, "the sub's ack")
    publisher.publish("t", 0, timeout=5)
    assert sub.get(timeout=5).data == 0
    redis_relay.go_down()  # the hub's reader and writer lose Redis
    for n in range(1, 6):
        publisher.publish("t", n, timeout=5)  # published while that hub cannot see them
    redis_relay.come_back()
    assert [sub.get(timeout=15).data for _ in range(5)] == [1, 2, 3, 4, 5]
    wait_until(lambda: cut_off.metrics()["greenbus_feed_lost_total"] == 1, 10, "the 1012")
    stats = subscriber.statistics()
    assert stats.recovered >= 1 and stats.recoveries_failed == 0


def test_the_history_in_redis_is_bounded_by_size_per_topic_topics_and_ttl(
    hub_factory: Callable[..., HubProcess], redis_server: RedisServer
) -> None:
    hub = hub_factory(
        "--redis",
        redis_server.url,
        "--history",
        "20",
        "--history-topics",
        "5",
        "--history-ttl",
        "30",
    )
    # One message on each of 8 topics (the first 3 are forgotten), then 40
    # on each of the last 5 (20 are kept of each).
    frames = [(f"t.{n}", n) for n in range(8)]
    frames += [(f"t.{3 + n % 5}", n) for n in range(200)]
    with client(hub.url) as ws:
        for n, (topic, data) in enumerate(frames):
            send(ws, op="pub", topic=topic, data=data, id=n)
        while recv(ws)["id"] != len(frames) - 1:
            pass
    store = redis.Redis.from_url(redis_server.url)
    try:
        streams = sorted(k.decode() for k in store.scan_iter("greenbus:stream:*"))
        assert streams == [f"greenbus:stream:t.{n}" for n in range(3, 8)]
        assert all(store.xlen(k) == 20 for k in streams)
        assert all(0 < store.pttl(k) <= 30_000 for k in streams)
        assert store.zcard("greenbus:topics") == 5
        horizon = int(store.hget("greenbus:history", "horizon") or 0)
        assert horizon == 3  # t.2's last: positions before it cannot be replayed
    finally:
        store.close()
