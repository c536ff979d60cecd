"""Interest-based federation against a real redis-server: a node publishes a
topic only while another node wants it (greenbus/federation/registry.py,
docs/scaling.md).

Redis's own ``INFO commandstats`` is the judge of what was published: it
counts every PUBLISH, those run inside scripts included.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import redis
from conftest import RedisServer
from relay import Relay
from test_federation import (
    NODES,
    PREFIX,
    Federated,
    NodeProcess,
    StartNodes,
    collect,
    emit_all,
    fed_node,
    federated,
    settle,
    subscribed,
    wait_published,
)
from waiting import wait_until

# The fixtures of test_federation.py, used here too.
__all__ = ["fed_node", "federated"]

import greenbus
from greenbus import Federation


def publish_calls(r: redis.Redis) -> int:
    """PUBLISH calls Redis has run so far, inside scripts too."""
    return int(r.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))


def script_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha",))


def heard(federation: Federation, pattern: str) -> Callable[[], bool]:
    """True once ``federation`` has heard that another node wants ``pattern``."""
    return lambda: any(pattern in ps for ps in federation.remote_interest().values())


def emit_quietly(bus: greenbus.Bus, topic: str, count: int) -> list[int]:
    """Emit ``count`` messages, yielding every 1,000 so the node's greenlets run;
    the distinct values ``emit`` returned."""
    returned = set()
    for n in range(count):
        returned.add(bus.emit(topic, n))
        if n % 1000 == 999:
            gevent.sleep(0)
    return sorted(returned)


def test_a_node_makes_no_publish_for_100000_messages_nobody_else_wants_then_they_flow_in_order(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    a_bus, a = federated("a")
    b_bus, b = federated("b")
    b_bus.subscribe("elsewhere.x")
    local = collect(a_bus, "quiet.x")  # a's own subscriber does not count
    settle(redis_cli)
    before = publish_calls(redis_cli)

    # Each emit reaches a's own subscriber only: the federation is not offered it.
    assert emit_quietly(a_bus, "quiet.x", 100_000) == [1]

    wait_until(lambda: len(local) == 100_000, 10, "a's own subscriber getting them all")
    assert (a.stats().published, a.stats().outbound_pending) == (0, 0)
    assert publish_calls(redis_cli) == before

    got = collect(b_bus, "quiet.*")
    wait_until(heard(a, "quiet.*"), 5, "a hearing that b wants quiet.*")
    emit_all(a_bus, "quiet.x", range(100_000, 101_000))
    wait_until(lambda: len(got) == 1000, 10, "the 1,000 after b subscribed")
    assert got == list(range(100_000, 101_000))
    assert publish_calls(redis_cli) - before >= 1000
    assert (b.stats().gaps, b.stats().duplicates) == (0, 0)


def test_with_history_every_message_is_kept_but_none_published_until_a_node_wants_it(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    a_bus, a = federated("a", history=1000)
    b_bus, b = federated("b", history=1000)
    b_bus.subscribe("elsewhere.x")
    settle(redis_cli)
    publishes, scripts = publish_calls(redis_cli), script_calls(redis_cli)

    assert emit_quietly(a_bus, "kept.x", 100_000) == [1]  # kept: the federation takes each
    wait_published(a, 100_000)

    assert script_calls(redis_cli) - scripts >= 100_000  # every one went through the script
    assert publish_calls(redis_cli) == publishes  # and none was published
    assert redis_cli.xlen(f"{PREFIX}:stream:kept.x") == 1000  # the history kept the newest
    assert a.stats().unwanted == 100_000

    got = collect(b_bus, "kept.x")
    assert b.wait_registered("kept.x", 5)
    emit_all(a_bus, "kept.x", range(100_000, 100_500))
    wait_until(lambda: len(got) == 500, 10, "the 500 after b subscribed")
    assert got == list(range(100_000, 100_500))
    assert (b.stats().gaps, b.stats().duplicates) == (0, 0)


def test_a_subscription_appearing_mid_stream_gets_an_unbroken_ordered_run(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    a_bus, _ = federated("a")
    b_bus, b = federated("b")
    settle(redis_cli)
    total = 3000
    taken: list[int] = []  # what each emit returned: 1 once b is wanted by a's view

    def stream() -> None:
        for n in range(total):
            taken.append(a_bus.emit("mid.x", n))
            if n % 10 == 9:
                gevent.sleep(0.001)

    emitter = gevent.spawn(stream)
    wait_until(lambda: len(taken) >= 500, 10, "a few hundred unwanted")
    got = collect(b_bus, "mid.x")
    emitter.join(30)
    wait_until(lambda: got and got[-1] == total - 1, 10, "the end of the stream")

    first = got[0]
    assert got == list(range(first, total))  # in order, no repeats, no holes
    assert taken == [0] * first + [1] * (total - first)
    assert (b.stats().gaps, b.stats().duplicates) == (0, 0)


def test_a_node_that_stops_is_forgotten_at_once(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    a_bus, a = federated("a")
    b_bus, b = federated("b")
    subscribed(b_bus, redis_cli, "gone.x")
    assert heard(a, "gone.x")()

    b.stop()

    wait_until(lambda: a.remote_interest() == {}, 5, "a forgetting b")
    assert a_bus.emit("gone.x", 1) == 0


def test_a_node_that_dies_stops_counting_after_its_interest_ttl(
    federated: Federated, redis_server: RedisServer, redis_cli: redis.Redis, tmp_path: Path
) -> None:
    a_bus, a = federated("a")
    b = NodeProcess("b", redis_server.url, tmp_path / "b.log", "1.0")  # interest_ttl 1 s
    NODES.append(b)
    try:
        b.wait_ready()
        b.subscribe(s="dead.x")
        wait_until(heard(a, "dead.x"), 5, "a hearing that b wants dead.x")
        os.kill(b.proc.pid, signal.SIGKILL)  # no goodbye
        b.proc.wait(5)

        # Removed by a's heartbeat (every third of a's own ttl) once b's expired.
        wait_until(lambda: a.remote_interest() == {}, 10, "a forgetting the dead b")
        assert redis_cli.zscore(f"{{{PREFIX}}}:nodes", str(b.node)) is None
        assert not redis_cli.exists(f"{{{PREFIX}}}:interest:{b.node}")
        assert a_bus.emit("dead.x", 1) == 0
    finally:
        NODES.remove(b)
        b.quit()


def test_a_node_dropped_as_dead_while_alive_registers_again(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    a_bus, a = federated("a")
    b_bus, b = federated("b", interest_ttl=1.0)
    got = collect(b_bus, "back.x")
    settle(redis_cli)
    # As if b had been cut off for longer than its ttl: another node removed it.
    redis_cli.zrem(f"{{{PREFIX}}}:nodes", b.node)
    redis_cli.delete(f"{{{PREFIX}}}:interest:{b.node}")

    wait_until(lambda: redis_cli.hexists(f"{{{PREFIX}}}:interest:{b.node}", "back.x"), 5, "b back")
    wait_until(heard(a, "back.x"), 5, "a hearing of b again")
    a_bus.emit("back.x", "hello again")
    wait_until(lambda: got == ["hello again"], 5, "the message after b registered again")


def test_after_redis_restarts_empty_every_node_registers_again(
    federated: Federated, redis_server: RedisServer, redis_cli: redis.Redis
) -> None:
    a_bus, a = federated("a")
    b_bus, b = federated("b")
    got = collect(b_bus, "again.x")
    settle(redis_cli)

    redis_server.kill()
    wait_until(lambda: not a.stats().connected and not b.stats().connected, 10, "the outage")
    redis_server.start()  # no persistence: the registry is gone
    wait_until(lambda: a.stats().connected and b.stats().connected, 15, "both back")
    settle(redis_cli)

    assert heard(a, "again.x")()
    a_bus.emit("again.x", "after")
    wait_until(lambda: got == ["after"], 5, "the message after the restart")


def test_request_replies_always_go_even_to_an_inbox_this_node_has_not_heard_of(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    a_bus, _ = federated("a")
    b_bus, b = federated("b")
    b_bus.on("svc.echo", lambda msg: msg.reply(msg.data))
    settle(redis_cli)

    # A requester's inbox may be too new to have reached the responder's view.
    assert b_bus.emit("_INBOX.unheard.1", "a reply") == 1
    wait_published(b, 1)
    # a's first request makes its inbox, and gets b's reply.
    assert a_bus.request("svc.echo", "ping", timeout=5).data == "ping"


def test_the_statistics_say_who_wants_what(federated: Federated, redis_cli: redis.Redis) -> None:
    _, a = federated("a")
    b_bus, b = federated("b")
    b_bus.subscribe("s.*")
    b_bus.subscribe("t.x")
    settle(redis_cli)

    stats = a.stats()
    assert (stats.remote_nodes, stats.remote_patterns) == (1, 2)
    assert a.remote_interest() == {b.node: ["s.*", "t.x"]}
    assert stats.interest_version == int(redis_cli.hget(f"{{{PREFIX}}}:registry", "v") or 0)
    assert a.wants("s.q") and a.wants("_INBOX.anything.1") and not a.wants("u.x")


def test_nodes_in_processes_see_one_bus(fed_node: StartNodes, redis_cli: redis.Redis) -> None:
    a, b = fed_node("a", "b")
    b.subscribe(s="proc.*")
    settle(redis_cli)
    a.call("emit", topic="proc.x", count=200)
    b.wait_for(lambda: len(b.got["s"]) == 200, "the 200")
    assert b.data("s") == list(range(200))
    stats: dict[str, Any] = a.stats()
    assert stats["published"] == 200 and stats["remote_patterns"] == 1


def test_a_node_that_wants_everything_gets_everything_once_the_view_is_live(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    b_bus, b = federated("b")
    got = collect(b_bus, ">")  # the pattern a forwards everything on until its view is live
    settle(redis_cli)
    a_bus, a = federated("a")  # its view loads b's ">", then goes live
    settle(redis_cli)
    assert a.remote_interest() == {b.node: [">"]}
    emit_all(a_bus, "any.topic", range(3))
    wait_until(lambda: got == [0, 1, 2], 5, "everything")


def test_another_node_leaving_the_inbox_pattern_leaves_this_nodes_replies_going(
    federated: Federated, redis_cli: redis.Redis
) -> None:
    a_bus, a = federated("a")
    b_bus, _ = federated("b")
    sub = b_bus.subscribe("_INBOX.>")  # the pattern of a's own forward for replies
    settle(redis_cli)
    sub.close()
    settle(redis_cli)
    assert a.remote_interest() == {}
    assert a_bus.emit("_INBOX.q.1", "a reply") == 1
    wait_published(a, 1)


def test_a_node_cut_off_from_redis_cannot_tell_who_wants_what_so_it_queues_everything(
    federated: Federated, redis_server: RedisServer, redis_cli: redis.Redis
) -> None:
    relay = Relay(redis_server.port).start()
    try:
        a_bus, a = federated("a", url=f"redis://127.0.0.1:{relay.port}/0")
        settle(redis_cli)
        assert a_bus.emit("nobody.x", 1) == 0  # live view: nobody wants it
        relay.go_down()  # every connection reset, new ones refused
        wait_until(lambda: not a.stats().connected, 5, "a noticing")
        # Notifications may be missed now: a wants everything, queued for later.
        assert a_bus.emit("nobody.x", 2) == 1
        relay.come_back()
        wait_until(a.interest_settled, 10, "a's view loaded again")
        assert a_bus.emit("nobody.x", 3) == 0
    finally:
        relay.stop()
