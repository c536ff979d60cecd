"""greenbus.bridge.feed: every message for a hub's peers encoded, positioned and routed once.

The feed with a remote history (a federation's) is tested end to end in
test_federation_recovery.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import greenbus
from greenbus.bridge.feed import Feed, Opened, Sink
from greenbus.bridge.metrics import HubCounters
from greenbus.history import History, Position


@contextmanager
def running_feed(
    history: History[Any] | None = None, counters: HubCounters | None = None
) -> Iterator[Feed]:
    """A started feed on a fresh bus (``feed.bus``), stopped and closed after."""
    bus = greenbus.Bus("feed")
    feed = Feed(bus, history=history, counters=counters or HubCounters())
    feed.start()
    try:
        yield feed
    finally:
        feed.stop()
        bus.close()


def routed(feed: Feed, pattern: str, sink: Sink, *, public: bool = True) -> Opened:
    """Open a route and release it at once (no ack, no replay to send first)."""
    opened = feed.open(pattern, sink, public=public)
    opened.route.release()
    return opened


def test_the_feed_encodes_an_emit_once_for_all_its_routes() -> None:
    with running_feed() as feed:
        bus = feed.bus
        seen: list[tuple[str, bytes, bytes]] = []

        def sink(topic: str, body: bytes, posbody: bytes) -> bool:
            seen.append((topic, body, posbody))
            return True

        routed(feed, "a.*", sink, public=True)
        routed(feed, "a.b", sink, public=False)
        assert bus.emit("a.b", {"x": 1}) == 1  # the feed is one forward, however many peers
        assert seen[0] == ("a.b", b',"topic":"a.b","data":{"x":1}}', seen[0][1])
        assert seen[1][1] is seen[0][1]  # one body for both routes


def test_a_message_that_cannot_be_encoded_is_counted_once_however_many_peers() -> None:
    counters = HubCounters()
    with running_feed(counters=counters) as feed:
        bus = feed.bus
        for _ in range(3):
            routed(feed, ">", lambda *args: True, public=True)
        assert bus.emit("a.b", object()) == 0
        assert counters.encode_errors == 1


@pytest.mark.usefixtures("codec")
def test_a_lone_surrogate_is_counted_as_unencodable_and_the_next_message_goes() -> None:
    counters = HubCounters()
    with running_feed(counters=counters) as feed:
        seen: list[bytes] = []
        routed(feed, ">", lambda topic, body, posbody: seen.append(body) is None)
        assert feed.bus.emit("a", "\ud800") == 0
        assert feed.bus.emit("a", "é") == 1
        assert counters.encode_errors == 1
        assert seen == [',"topic":"a","data":"é"}'.encode()]


def test_with_history_every_route_gets_the_position_and_inboxes_only_their_owner() -> None:
    with running_feed(history=History(10, 60, epoch="ab")) as feed:
        bus = feed.bus
        wild: list[bytes] = []
        owner: list[bytes] = []
        routed(feed, ">", lambda topic, body, posbody: wild.append(posbody) is None)
        routed(feed, "_INBOX.x", lambda *args: owner.append(args[2]) is None, public=False)
        bus.emit("a", 1)
        bus.emit("_INBOX.x", 2)
        assert wild == [b',"topic":"a","data":1,"pos":"ab:1:%d"}' % feed.history.head().ms]
        assert owner == [b',"topic":"_INBOX.x","data":2}']  # a reply has no position


def test_a_route_opened_with_since_gets_the_replay_then_the_live_messages() -> None:
    with running_feed(history=History(10, 60, epoch="ab")) as feed:
        bus = feed.bus
        start = routed(feed, "t.*", lambda *args: True, public=True).head
        assert start is not None
        bus.emit("t.a", 1)
        bus.emit("x", 2)
        bus.emit("t.b", 3)
        live: list[bytes] = []
        opened = feed.open(
            "t.*",
            lambda *args: live.append(args[2]) is None,
            public=True,
            since=Position.parse(start),
        )
        assert opened.recovered is True
        assert [body.split(b'"data":')[1][0:1] for _, body in opened.replay] == [b"1", b"3"]
        assert opened.head == feed.head()
        bus.emit("t.c", 4)  # held until the replay is sent
        assert live == []
        opened.route.release()
        bus.emit("t.d", 5)
        assert [b'"data":4' in live[0], b'"data":5' in live[1]] == [True, True]
        gone = feed.open("t.*", lambda *args: True, public=True, since=Position("zz", 1, 1))
        assert (gone.recovered, gone.replay) == (False, [])
