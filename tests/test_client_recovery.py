"""The Python client resumes after a cut: nothing lost, nothing twice, gaps reported.

A real ``greenbus serve`` process; the clients reach it through a TCP relay
(tests/relay.py) that resets every connection on demand, as a dropped
network would.  See docs/recovery.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from conftest import HubProcess
from relay import Relay
from waiting import wait_until

import greenbus
from greenbus import RecoveryFailed, RemoteBus

websockets_only = pytest.mark.parametrize("hub_transport", ["websockets"], indirect=True)


@pytest.fixture
def relay(hub_process: HubProcess) -> Iterator[Relay]:
    relay = Relay(hub_process.port).start()
    yield relay
    relay.stop()


def settled(subscriber: RemoteBus, sub: greenbus.Subscription, publisher: RemoteBus) -> None:
    """Return once ``sub`` is in place on the hub, with nothing queued on it.

    The publisher's connection is not the subscriber's, so its markers may
    reach the hub before the sub: publish until one arrives, then read up to
    the last one published.
    """
    topic = sub.pattern.replace(">", "ready").replace("*", "ready")
    for attempt in range(50):
        publisher.publish(topic, f"ready {attempt}", timeout=5)
        try:
            first = sub.get(timeout=0.1).data
        except greenbus.ReceiveTimeout:
            continue
        while first != f"ready {attempt}":
            first = sub.get(timeout=5).data
        return
    raise AssertionError(f"{sub!r} never got a marker")


def test_through_cut_after_cut_every_message_arrives_once_and_in_order_on_both_sides(
    hub_process: HubProcess, relay: Relay, remote_bus: Callable[..., RemoteBus]
) -> None:
    subscriber = remote_bus(relay.url, name="subscriber", max_backoff=0.05)
    publisher = remote_bus(relay.url, name="publisher", max_backoff=0.05)
    sub = subscriber.subscribe("steady.>", maxsize=None)
    settled(subscriber, sub, publisher)
    count, cuts = 600, 6

    def publish_steadily() -> None:
        for n in range(count):
            publisher.emit(f"steady.{n % 3}", n)
            gevent.sleep(0.002)

    def cut_repeatedly() -> None:
        for _ in range(cuts):
            gevent.sleep(0.15)
            relay.cut()

    workers = [gevent.spawn(publish_steadily), gevent.spawn(cut_repeatedly)]
    got = [sub.get(timeout=15).data for _ in range(count)]
    gevent.joinall(workers, raise_error=True)
    assert got == list(range(count))  # each once, in publish order
    # The publisher's side: every emit confirmed by the hub, none left.
    wait_until(lambda: publisher.statistics().unconfirmed == 0, 10, "the last acks")
    publisher.publish("steady.end", "end", timeout=5)
    assert sub.get(timeout=5).data == "end"  # and nothing extra before it
    assert relay.cuts == cuts
    stats = subscriber.statistics()
    assert stats.reconnects >= cuts and stats.recoveries_failed == 0
    assert stats.recovered >= cuts  # every resume was replayed (perhaps nothing)
    assert publisher.statistics().reconnects >= cuts


@websockets_only
@pytest.mark.parametrize("hub_process", [("--history", "5")], indirect=True)
def test_a_gap_the_hub_cannot_replay_is_reported_by_counter_hook_and_log(
    hub_process: HubProcess,
    relay: Relay,
    remote_bus: Callable[..., RemoteBus],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "greenbus.bridge.client")
    reported: list[tuple[BaseException, Any]] = []
    subscriber = remote_bus(
        relay.url, max_backoff=0.05, on_error=lambda exc, sub, msg: reported.append((exc, sub))
    )
    publisher = remote_bus(hub_process.url, max_backoff=0.05)  # not through the relay: never cut
    sub = subscriber.subscribe("t", maxsize=None)
    settled(subscriber, sub, publisher)
    relay.go_down()  # the subscriber is gone, and stays gone
    wait_until(lambda: not subscriber.connected, 5, "the subscriber to see the cut")
    for n in range(20):
        publisher.publish("t", n, timeout=5)  # more than the 5 the hub keeps
    relay.come_back()
    wait_until(lambda: subscriber.statistics().recoveries_failed == 1, 10, "the report")
    publisher.publish("t", "live", timeout=5)
    assert sub.get(timeout=5).data == "live"  # nothing replayed, live goes on
    (failure, where), *_ = reported
    assert isinstance(failure, RecoveryFailed) and where is sub
    assert failure.pattern == "t" and "does not cover" in failure.reason
    assert any("resumed with a gap" in r.getMessage() for r in caplog.records)


@websockets_only
def test_a_position_kept_by_one_client_resumes_another_from_there(
    hub_process: HubProcess, remote_bus: Callable[..., RemoteBus]
) -> None:
    first = remote_bus(hub_process.url, max_backoff=0.05)
    publisher = remote_bus(hub_process.url, max_backoff=0.05)
    sub = first.subscribe("orders.*", maxsize=None)
    settled(first, sub, publisher)
    kept = first.position(sub)
    assert kept is not None
    first.close()
    for n in range(3):
        publisher.publish(f"orders.{n}", n, timeout=5)
    second = remote_bus(hub_process.url, max_backoff=0.05)
    resumed = second.subscribe("orders.*", maxsize=None, since=kept)
    assert [resumed.get(timeout=5).data for _ in range(3)] == [0, 1, 2]
    wait_until(lambda: second.statistics().recovered == 1, 5, "the replay's ack")
    with pytest.raises(greenbus.InvalidOption):
        second.subscribe("orders.*", since="not a position")
