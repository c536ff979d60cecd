"""Recovery on the wire: history, positions, ``since``, and idempotent pubs.

A real ``greenbus serve`` process, talked to as a third-party client would,
with the ``websockets`` sync client and the protocol's frames (docs/
protocol.md, docs/recovery.md).  The Python and JavaScript clients' own
recovery is tested in test_client_recovery.py and the Node/Chromium suites.
"""

from __future__ import annotations

import time
from itertools import pairwise
from typing import Any

import pytest
from conftest import HubProcess
from hubclient import ask, client, metric_eventually, recv, send, start_position
from hubclient import hello_v2 as hello
from websockets.sync.client import ClientConnection

from greenbus.history import History, Position

#: Tests about what the hub decides run once, on the hub's own listener; the
#: first scenario runs on both transports.
websockets_only = pytest.mark.parametrize("hub_transport", ["websockets"], indirect=True)


def applied(ws: ClientConnection) -> None:
    """Return once the hub has applied every frame sent on ``ws`` before (a ping's pong)."""
    assert ask(ws, op="ping", id="sync") == {"op": "pong", "id": "sync"}


def publish(ws: ClientConnection, items: list[tuple[str, Any]]) -> None:
    for topic, data in items:
        send(ws, op="pub", topic=topic, data=data)
    applied(ws)


def seq(frame: dict[str, Any]) -> int:
    return Position.parse(frame["pos"]).seq


def test_a_subscriber_that_vanishes_gets_exactly_what_it_missed_in_order_then_live(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as publisher:
        with client(hub_process.url) as subscriber:
            hello(subscriber)
            assert ask(subscriber, op="sub", sid=1, topic="chat.>", id=1)["op"] == "ack"
            publish(publisher, [("chat.a", n) for n in range(5)])
            before = [recv(subscriber) for _ in range(5)]
            assert [m["data"] for m in before] == [0, 1, 2, 3, 4]
            last = before[-1]["pos"]
        # Gone mid-stream.  Meanwhile: its topics, a topic it never saw, and
        # one that does not match.
        missed = [
            ("chat.a", 5),
            ("news.x", 6),
            ("chat.b", 7),
            ("chat.new", 8),
            ("chat.a", 9),
            ("chat.b", 10),
        ]
        publish(publisher, missed)
        with client(hub_process.url) as subscriber:
            hello(subscriber)
            ack = ask(subscriber, op="sub", sid=1, topic="chat.>", since=last, id="again")
            assert ack["recovered"] is True, ack
            wanted = [(t, n) for t, n in missed if t.startswith("chat.")]
            replayed = [recv(subscriber) for _ in wanted]
            assert [(m["topic"], m["data"]) for m in replayed] == wanted
            publish(publisher, [("chat.a", 11), ("chat.z", 12)])
            live = [recv(subscriber), recv(subscriber)]
            assert [m["data"] for m in live] == [11, 12]
            positions = [seq(m) for m in [*before, *replayed, *live]]
            assert all(a < b for a, b in pairwise(positions)), positions
            # The ack's position is where the new subscription starts: after
            # everything replayed, before everything live.
            assert seq(replayed[-1]) == Position.parse(ack["pos"]).seq < seq(live[0])


@websockets_only
def test_a_subscription_recovers_from_its_acks_position_before_any_message_arrived(
    hub_process: HubProcess,
) -> None:
    start = start_position(hub_process.url, "orders.*")
    with client(hub_process.url) as publisher:
        publish(publisher, [("orders.new", "first"), ("orders.paid", "second")])
    with client(hub_process.url) as subscriber:
        hello(subscriber)
        ack = ask(subscriber, op="sub", sid="s", topic="orders.*", since=start, id=2)
        assert ack["recovered"] is True
        assert [recv(subscriber)["data"] for _ in range(2)] == ["first", "second"]


@websockets_only
@pytest.mark.parametrize("hub_process", [("--history", "3")], indirect=True)
def test_a_gap_the_history_cannot_cover_is_answered_recovered_false_and_nothing_replayed(
    hub_process: HubProcess,
) -> None:
    start = start_position(hub_process.url, "t")
    with client(hub_process.url) as publisher:
        publish(publisher, [("t", n) for n in range(10)])  # 7 of them trimmed
        with client(hub_process.url) as subscriber:
            hello(subscriber)
            ack = ask(subscriber, op="sub", sid=1, topic="t", since=start, id=2)
            assert ack["recovered"] is False
            assert Position.parse(ack["pos"]).seq == 10  # it continues from here
            publish(publisher, [("t", "live")])
            assert recv(subscriber)["data"] == "live"  # not one of the last 3
    samples = hub_process.metrics()
    assert samples["greenbus_recoveries_failed_total"] == 1
    assert samples["greenbus_history_messages"] == 3


@websockets_only
@pytest.mark.parametrize("since", [42, "nope", "zz:1:1", "ab:1", None, ["ab:1:2"]], ids=repr)
def test_a_malformed_since_gets_an_error_with_the_frames_id_and_the_connection_stays_open(
    hub_process: HubProcess, since: Any
) -> None:
    with client(hub_process.url) as ws:
        hello(ws)
        frame = {"op": "sub", "sid": 1, "topic": "t", "since": since, "id": "bad"}
        if since is None:
            frame["since"] = None  # null: as if absent
            assert ask(ws, **frame)["op"] == "ack"
            return
        error = ask(ws, **frame)
        assert (error["op"], error["code"], error["id"]) == ("error", "bad_frame", "bad")
        assert "since" in error["reason"]
        applied(ws)
        assert ask(ws, op="sub", sid=2, topic="t", id="good")["op"] == "ack"


@websockets_only
def test_an_old_client_gets_exactly_the_frames_it_always_got(hub_process: HubProcess) -> None:
    with client(hub_process.url) as old, client(hub_process.url) as new:
        assert ask(old, op="hello", protocol=1, id="h")["protocol"] == 1
        assert ask(old, op="sub", sid=1, topic="t", id="s") == {"op": "ack", "id": "s"}
        hello(new)
        assert set(ask(new, op="sub", sid=1, topic="t", id="s")) == {"op", "id", "pos"}
        with client(hub_process.url) as publisher:
            publish(publisher, [("t", {"n": 1})])
        assert recv(old) == {"op": "msg", "sid": 1, "topic": "t", "data": {"n": 1}}
        assert set(recv(new)) == {"op", "sid", "topic", "data", "pos"}
        # A v1 connection knows no since: it is an unknown field there.
        error = ask(old, op="sub", sid=2, topic="t", since=None, id="x")
        assert (error["code"], error["id"]) == ("bad_frame", "x")


@websockets_only
@pytest.mark.parametrize(
    "hub_process", [("--history", "20000", "--max-pending", "300")], indirect=True
)
def test_a_long_replay_is_paced_within_the_peers_limits_and_live_messages_follow_it(
    hub_process: HubProcess,
) -> None:
    start = start_position(hub_process.url, "t.>")
    with client(hub_process.url) as publisher:
        publish(publisher, [(f"t.{n % 7}", n) for n in range(3000)])
        with client(hub_process.url) as subscriber:
            hello(subscriber)
            ack = ask(subscriber, op="sub", sid=1, topic="t.>", since=start, id=2)
            assert ack["recovered"] is True
            # Live messages while the replay (10x max_pending) is paced out:
            # the hub holds them until it is over.
            publish(publisher, [(f"t.{n % 7}", n) for n in range(3000, 3100)])
            got = [recv(subscriber)["data"] for _ in range(3100)]
            assert got == list(range(3100))
    samples = hub_process.metrics()
    assert samples["greenbus_slow_consumers_total"] == 0
    assert samples["greenbus_replayed_total"] == 3000


@websockets_only
def test_a_resent_pub_of_the_same_session_is_acked_again_and_applied_once(
    hub_process: HubProcess,
) -> None:
    def connection_publishing(numbers: tuple[int, ...]) -> None:
        with client(hub_process.url) as publisher:
            hello(publisher, session="pub-7f3a")
            for n in numbers:
                send(publisher, op="pub", topic="t", data=n, id=n)
            assert [recv(publisher) for _ in numbers] == [{"op": "ack", "id": n} for n in numbers]

    with client(hub_process.url) as subscriber:
        assert ask(subscriber, op="sub", sid=1, topic="t", id=1)["op"] == "ack"
        connection_publishing((1, 2, 3))
        # The connection dropped before acks 2 and 3 arrived, say: the client
        # sends them again, then its next one.
        connection_publishing((2, 3, 4))
        # Another session numbers its own pubs: not a resend.
        with client(hub_process.url) as other:
            hello(other, session="pub-other")
            assert ask(other, op="pub", topic="t", data=5, id=2) == {"op": "ack", "id": 2}
        assert [recv(subscriber)["data"] for _ in range(5)] == [1, 2, 3, 4, 5]
    metric_eventually(hub_process, "greenbus_duplicate_pubs_total", lambda v: v == 2)


@websockets_only
@pytest.mark.parametrize("hub_process", [("--history", "0")], indirect=True)
def test_with_history_off_there_are_no_positions_and_every_since_is_not_recovered(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as ws, client(hub_process.url) as publisher:
        hello(ws)
        assert ask(ws, op="sub", sid=1, topic="t", id=1) == {"op": "ack", "id": 1}
        publish(publisher, [("t", 1)])
        assert recv(ws) == {"op": "msg", "sid": 1, "topic": "t", "data": 1}
        ack = ask(ws, op="sub", sid=2, topic="t", since="ab:1:2", id=2)
        assert ack == {"op": "ack", "id": 2, "recovered": False}


@websockets_only
@pytest.mark.parametrize("hub_process", [("--history", "50", "--history-ttl", "1")], indirect=True)
def test_the_history_is_bounded_by_its_size_per_topic_and_by_its_ttl(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as ws:
        publish(ws, [(f"t.{n % 10}", n) for n in range(2000)])
        samples = hub_process.metrics()
        assert samples["greenbus_history_messages"] == 10 * 50
        assert samples["greenbus_history_trimmed_total"] == 2000 - 500
        # Once the ttl has passed, a new message finds every other one expired.
        time.sleep(1.2)  # not a race: the ttl is a span of time that must pass
        publish(ws, [("t.0", "later")])
        assert hub_process.metrics()["greenbus_history_messages"] == 1


def test_a_kept_message_costs_its_frame_body_and_under_160_bytes_more() -> None:
    # The footprint per kept message beyond its body, measured as the perf
    # suite's history_memory does (the figure is in perf/RESULTS.md): what
    # tracemalloc sees the history allocate, the bodies made beforehand.
    import tracemalloc

    count = 20_000
    bodies = [b',"topic":"sensors.t","data":{"n":%05d,"unit":"C"}}' % n for n in range(count)]
    history: History[bytes] = History(1000, 600)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n, body in enumerate(bodies):
            history.record(f"sensors.{n % 20}", body)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_message = held / count
    assert history.statistics().messages == count
    # About 138 bytes on CPython 3.11: a (seq, ms, body) tuple, two ints, a list slot.
    assert 100 < per_message < 160, per_message
