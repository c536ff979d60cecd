"""A hub's peers in process: the feed encodes, positions and routes once per emit."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hubclient import RawClient
from waiting import OSThread, preemptible

import greenbus
import greenbus.acl
from greenbus.bridge.feed import Feed
from greenbus.bridge.peer import PeerLimits


def serve_and_check(index: int, count: int) -> int:
    """In its own OS thread: a hub, a raw subscriber, ``count`` emits; how
    many frames arrived with another hub's data."""
    bus = greenbus.Bus(f"hub{index}")
    hub = greenbus.serve(bus, port=0, stats_interval=None).start()
    wrong = 0
    try:
        with RawClient(hub.url) as raw, preemptible(Feed._on_emit.__code__):
            raw.send_json(op="sub", sid=1, topic="t", id=1)
            assert raw.recv_json()["op"] == "ack"
            for first in range(0, count, 100):
                for n in range(first, first + 100):
                    bus.emit("t", {"hub": index, "n": n})
                for _ in range(100):
                    frame: dict[str, Any] = raw.recv_json()
                    wrong += frame["data"]["hub"] != index
    finally:
        hub.stop(timeout=2)
        bus.close(timeout=2)
    return wrong


def test_hubs_in_two_threads_never_send_each_other_s_messages() -> None:
    # Issue 11: the encode cache was one module global for every hub and
    # thread: a thread switch between storing it and reading it back sent
    # one hub's message body to another hub's peer.  Each hub's feed now
    # encodes once per emit, keeping nothing between emits.  A tiny switch
    # interval, and a thread switch allowed between any two bytecodes of the
    # feed, make such switches frequent.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [OSThread(serve_and_check, index, 20_000) for index in (1, 2)]
        wrong = [thread.join(60) for thread in threads]
    finally:
        sys.setswitchinterval(interval)
    assert wrong == [0, 0]


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"max_pending": 0}, "max_pending"),
        ({"max_pending_bytes": -5}, "max_pending_bytes"),
        ({"slow_policy": "block"}, "slow_policy"),
        ({"hello_timeout": 0}, "hello_timeout"),
        ({"max_pending": "10"}, "max_pending"),
    ],
)
def test_bad_peer_limits_raise_invalid_option_naming_the_setting(
    options: dict[str, Any], name: str
) -> None:
    with pytest.raises(greenbus.InvalidOption) as caught:
        PeerLimits(**options)
    assert caught.value.name == name


ACL_ONE_USER = '[users.alice]\ntoken = "t"\npublish = ["a.>"]\nsubscribe = ["a.>"]\n'


def test_every_refusal_has_a_log_line_and_a_flood_of_them_cannot_fill_the_log(
    local_hub: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 12: forbidden and limit refusals had an error frame and a
    # counter, but no log line, even at debug level.
    acl = tmp_path / "users.toml"
    acl.write_text(ACL_ONE_USER, encoding="utf-8")
    hub = local_hub(acl=greenbus.acl.Acl.load(acl), max_subscriptions=1, max_errors=10_000)
    with caplog.at_level("INFO", logger="greenbus.bridge.peer"), RawClient(hub.url) as raw:
        raw.send_json(op="hello", protocol=1, token="t", name="curious", id=0)
        assert raw.recv_json()["op"] == "welcome"
        raw.send_json(op="pub", topic="b.c", data=1, id=1)
        assert raw.recv_json()["code"] == "forbidden"
        raw.send_json(op="sub", sid=1, topic="a.x", id=2)
        raw.send_json(op="sub", sid=2, topic="a.y", id=3)
        assert raw.recv_json() == {"op": "ack", "id": 2}
        assert raw.recv_json()["code"] == "limit"
        refusals = [r for r in caplog.records if "refused with" in r.getMessage()]
        assert [(r.levelname, r.getMessage().split(": ", 1)[1]) for r in refusals] == [
            ("WARNING", "refused with forbidden: user 'alice' may not publish to 'b.c'"),
            ("INFO", "refused with limit: at most 1 subscriptions per connection"),
        ]
        assert "(curious)" in refusals[0].getMessage()
        caplog.clear()
        raw.send_burst([{"op": "pub", "topic": "b.c", "data": n, "id": n} for n in range(2000)])
        for _ in range(2000):
            assert raw.recv_json()["code"] == "forbidden"
    lines = [r for r in caplog.records if "refused with" in r.getMessage()]
    assert 1 <= len(lines) <= 40  # the burst, and what the rate let through meanwhile
    assert hub.counters.errors["forbidden"] == 2001  # the counter counts every one
