"""greenbus.subscription: subscriptions and forwards, their handlers, overflow and closing.

Subscriptions are made through a Bus (``bus.subscribe``), as users make them.
"""

from __future__ import annotations

import logging
import weakref

import gevent
import pytest
from conftest import drain, records
from gevent.event import Event
from waiting import wait_until

import greenbus
from greenbus import (
    Bus,
    ChannelEmpty,
    ChannelFull,
    EndOfChannel,
    InvalidOption,
    Message,
    ReceiveTimeout,
    SlowConsumer,
)

# -- subscriptions without a handler -------------------------------------------


def test_a_subscription_without_a_handler_is_read_with_get_get_nowait_and_iteration(bus):
    sub = bus.subscribe("a")
    for i in range(4):
        bus.emit("a", i)

    assert sub.get(timeout=5).data == 0
    assert sub.get().data == 1
    assert sub.get_nowait().data == 2
    got = []
    for msg in sub:
        got.append(msg.data)
        if len(got) == 1:
            bus.emit("a", 4)
        if msg.data == 4:
            break
    assert got == [3, 4]


def test_get_nowait_on_an_empty_subscription_raises_channel_empty(bus):
    sub = bus.subscribe("a")

    with pytest.raises(ChannelEmpty):
        sub.get_nowait()


def test_get_with_a_timeout_raises_receive_timeout_which_is_a_timeout_error(bus):
    sub = bus.subscribe("a")

    with pytest.raises(ReceiveTimeout) as info:
        sub.get(timeout=0.01)
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.01


def test_get_waits_for_a_message_emitted_by_another_greenlet(bus):
    sub = bus.subscribe("a")
    gevent.spawn(bus.emit, "a", "later")

    assert sub.get(timeout=5).data == "later"


def test_get_on_a_subscription_with_a_handler_raises_invalid_option(bus):
    sub = bus.subscribe("a", lambda msg: None)

    with pytest.raises(InvalidOption):
        sub.get(timeout=0)
    with pytest.raises(InvalidOption):
        sub.get_nowait()


def test_a_subscription_exposes_its_pattern_pending_delivered_and_dropped(bus):
    sub = bus.subscribe("a.*", maxsize=2, overflow="drop_newest")
    for i in range(3):
        bus.emit("a.x", i)

    assert sub.pattern == "a.*"
    assert sub.maxsize == 2
    assert sub.overflow == "drop_newest"
    assert (sub.pending, sub.delivered, sub.dropped) == (2, 0, 1)
    sub.get_nowait()
    assert (sub.pending, sub.delivered, sub.dropped) == (1, 1, 1)


def test_the_default_is_a_block_subscription_of_65536_messages(bus):
    sub = bus.subscribe("a")

    assert sub.maxsize == greenbus.DEFAULT_MAXSIZE == 65536
    assert sub.overflow == greenbus.Overflow.BLOCK


# -- subscriptions with a handler ----------------------------------------------


def test_a_handler_runs_one_message_at_a_time_in_emission_order(bus):
    active = 0
    peak = 0
    seen = []

    def handler(msg):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(msg.data % 3 + 1):
            gevent.sleep(0)  # let the publisher emit more while we are busy
        seen.append(msg.data)
        active -= 1

    bus.on("work", handler)

    def publish():
        for i in range(60):
            bus.emit("work", i)
            if i % 4 == 0:
                gevent.sleep(0)

    gevent.spawn(publish)
    wait_until(lambda: len(seen) == 60)
    assert seen == list(range(60))
    assert peak == 1


def test_a_handler_runs_in_its_own_greenlet(bus):
    where = []
    bus.on("a", lambda msg: where.append(gevent.getcurrent()))
    bus.emit("a")

    wait_until(lambda: where)
    assert where[0] is not gevent.getcurrent()
    assert where[0] is not gevent.get_hub()


def test_each_subscription_has_its_own_handler_greenlet(bus):
    release = Event()
    fast = []
    bus.on("a", lambda msg: release.wait())
    bus.on("a", lambda msg: fast.append(msg.data))

    for i in range(3):
        bus.emit("a", i)

    # The first handler is stuck; the second is not held up by it.
    wait_until(lambda: fast == [0, 1, 2])
    release.set()


def test_a_handler_sees_what_is_still_pending_while_it_works_through_a_batch(bus):
    # The messages taken in one batch but not yet handled are still pending,
    # not delivered: exactly, at every step.
    seen = []

    def handler(msg):
        seen.append((msg.data, sub.pending, sub.delivered))

    sub = bus.subscribe("a", handler)
    for i in range(5):
        bus.emit("a", i)  # all queued before the handler greenlet runs
    wait_until(lambda: len(seen) == 5)
    assert seen == [(i, 4 - i, i + 1) for i in range(5)]
    assert (sub.pending, sub.delivered) == (0, 5)


def test_closing_a_subscription_while_its_handler_waits_discards_the_rest_of_its_batch(bus):
    go = Event()
    calls = []

    def handler(msg):
        calls.append(msg.data)
        go.wait(timeout=5)

    sub = bus.subscribe("a", handler)
    for i in range(5):
        bus.emit("a", i)
    wait_until(lambda: calls == [0])
    assert (sub.pending, sub.delivered) == (4, 1)

    sub.close()
    go.set()
    gevent.sleep(0)
    stats = sub.statistics()
    assert calls == [0]
    assert (stats.delivered, stats.discarded, stats.pending) == (1, 4, 0)


def test_a_handled_message_is_not_kept_alive_by_its_subscription(bus):
    class Payload:
        pass

    handled = []
    bus.subscribe("a", lambda msg: handled.append(msg.data is not None))
    bus.subscribe("b", lambda msg: handled.append(msg.data is not None))
    payloads = [Payload(), Payload()]
    refs = [weakref.ref(p) for p in payloads]
    bus.emit("a", payloads[0])  # a lone subscriber's plain fields
    bus.emit("b", payloads[1])
    del payloads
    wait_until(lambda: len(handled) == 2)
    # Both handler greenlets are parked again, waiting for their next message.
    assert [ref() for ref in refs] == [None, None]


def _backlog_run(bus, monkeypatch, interval):
    # A handler with a deep backlog, and a greenlet spawned after it was
    # queued: how far the handler got when that greenlet first ran.
    monkeypatch.setattr(greenbus.subscription, "getswitchinterval", lambda: interval)
    total = 4 * greenbus.subscription._BATCH + 10
    handled = []
    bus.subscribe("a", lambda msg: handled.append(msg.data))
    for i in range(total):
        bus.emit("a", i)
    observed = gevent.spawn(lambda: len(handled))
    wait_until(lambda: len(handled) == total)
    assert handled == list(range(total))
    return observed.get(timeout=5), total


def test_a_handler_with_a_deep_backlog_yields_to_other_greenlets_after_the_switch_interval(
    bus, monkeypatch
):
    # With no time allowed, it yields after its first full batch or two.
    seen, total = _backlog_run(bus, monkeypatch, 0.0)
    assert 0 < seen <= 2 * greenbus.subscription._BATCH < total


def test_a_handler_with_a_backlog_does_not_yield_before_the_switch_interval(bus, monkeypatch):
    # Yielding is bounded by time, not by a count of messages: within the
    # interval, a backlog is worked through at once.
    seen, total = _backlog_run(bus, monkeypatch, 1e9)
    assert seen == total


# -- on, once, off -------------------------------------------------------------


def test_on_works_as_a_decorator_and_returns_the_function(bus):
    seen = []

    @bus.on("a.*", maxsize=10)
    def handler(msg):
        seen.append(msg.topic)

    assert callable(handler)
    assert handler.__name__ == "handler"
    assert bus.subscriptions()[0].maxsize == 10
    bus.emit("a.b")
    wait_until(lambda: seen == ["a.b"])


def test_on_works_as_a_direct_call_and_returns_the_handler(bus):
    seen = []
    handler = seen.append

    assert bus.on("a", handler) is handler
    bus.emit("a", 1)
    wait_until(lambda: len(seen) == 1)
    assert seen[0].data == 1


def test_once_calls_its_handler_exactly_once_even_with_several_messages_queued(bus):
    calls = []
    assert bus.once("a", calls.append) == calls.append
    for i in range(5):
        assert bus.emit("a", i) == 1

    wait_until(lambda: calls and bus.stats().pending == 0)
    assert [m.data for m in calls] == [0]
    assert bus.subscriptions("a") == []
    assert bus.emit("a", 99) == 0


def test_once_works_as_a_decorator(bus):
    calls = []

    @bus.once("a")
    def handler(msg):
        calls.append(msg.data)

    bus.emit("a", 1)
    bus.emit("a", 2)
    wait_until(lambda: calls and bus.stats().pending == 0)
    assert calls == [1]
    assert bus.subscriptions() == []


def test_once_with_a_handler_that_is_not_callable_raises_invalid_option(bus):
    with pytest.raises(InvalidOption) as info:
        bus.once("a", 42)  # type: ignore[arg-type]
    assert info.value.name == "handler"


def test_off_closes_the_subscriptions_of_a_pattern_and_handler(bus):
    kept = []
    removed = []
    bus.on("a", kept.append)
    bus.on("a", removed.append)
    bus.on("b", removed.append)

    assert bus.off("a", lambda msg: None) == 0
    assert bus.off("a", removed.append) == 1

    assert [s.pattern for s in bus.subscriptions()] == ["a", "b"]
    assert bus.emit("a", 1) == 1
    assert bus.emit("b", 2) == 1
    wait_until(lambda: kept and removed)
    assert [m.data for m in kept] == [1]
    assert [m.data for m in removed] == [2]


def test_off_without_a_handler_closes_every_subscription_on_the_pattern(bus):
    bus.on("a", lambda msg: None)
    bus.subscribe("a")
    bus.subscribe("a.>")

    assert bus.off("a") == 2
    assert bus.topics() == ["a.>"]


def test_off_undoes_a_once_by_its_handler(bus):
    calls = []
    bus.once("a", calls.append)

    assert bus.off("a", calls.append) == 1
    assert bus.emit("a") == 0


# -- closing a subscription ----------------------------------------------------


def test_closing_a_subscription_is_idempotent_and_removes_it_from_the_bus(bus):
    sub = bus.subscribe("a")
    other = bus.subscribe("a")

    sub.close()
    sub.close()

    assert not sub.active
    assert bus.subscriptions() == [other]
    assert bus.emit("a") == 1


def test_a_closed_subscription_delivers_nothing_more_even_what_was_queued(bus):
    sub = bus.subscribe("a")
    for i in range(3):
        bus.emit("a", i)

    sub.close()

    with pytest.raises(EndOfChannel):
        sub.get_nowait()
    with pytest.raises(EndOfChannel):
        sub.get(timeout=5)
    assert list(sub) == []
    stats = sub.statistics()
    assert (stats.delivered, stats.discarded, stats.pending) == (0, 3, 0)


def test_a_closed_handler_subscription_never_calls_its_handler_for_queued_messages(bus):
    closed_calls = []
    witness_calls = []
    sub = bus.subscribe("a", closed_calls.append)
    bus.subscribe("a", witness_calls.append)
    for i in range(3):
        bus.emit("a", i)

    sub.close()

    # The witness subscription received the same messages after the close.
    wait_until(lambda: len(witness_calls) == 3)
    assert closed_calls == []
    assert sub.delivered == 0
    assert sub.statistics().discarded == 3


def test_a_handler_closing_its_own_subscription_gets_no_further_message(bus):
    calls = []

    def handler(msg):
        calls.append(msg.data)
        sub.close()

    sub = bus.subscribe("a", handler)
    for i in range(3):
        bus.emit("a", i)

    wait_until(lambda: not bus.subscriptions())
    bus.subscribe("a")  # a witness, so the emit below has somewhere to go
    bus.emit("a", 3)
    gevent.sleep(0)
    assert calls == [0]


def test_leaving_a_subscription_context_closes_it(bus):
    with bus.subscribe("a") as sub:
        bus.emit("a", 1)
        assert sub.get(timeout=5).data == 1
        assert sub.active

    assert not sub.active
    assert bus.subscriptions() == []
    assert bus.emit("a") == 0


def test_a_consumer_parked_in_iteration_is_released_when_its_subscription_closes(bus):
    sub = bus.subscribe("a")
    consumer = gevent.spawn(list, sub)
    gevent.sleep(0)
    assert not consumer.ready()

    sub.close()

    assert consumer.get(timeout=5) == []


# -- overflow policies ---------------------------------------------------------


def test_a_full_block_subscription_makes_emit_wait_cooperatively_and_lose_nothing(bus):
    sub = bus.subscribe("a", maxsize=1)
    assert bus.emit("a", 0) == 1
    emitter = gevent.spawn(bus.emit, "a", 1)

    gevent.sleep(0)  # one turn of the hub: the emitter runs and parks
    assert not emitter.ready()

    assert sub.get(timeout=5).data == 0
    assert emitter.get(timeout=5) == 1
    assert sub.get(timeout=5).data == 1
    assert sub.dropped == 0


def test_several_emitters_waiting_on_a_full_subscription_are_served_in_order(bus):
    sub = bus.subscribe("a", maxsize=1)
    bus.emit("a", 0)
    emitters = []
    for i in range(1, 6):
        emitters.append(gevent.spawn(bus.emit, "a", i))
        gevent.sleep(0)  # each parks before the next starts

    got = [sub.get(timeout=5).data for _ in range(6)]

    assert got == [0, 1, 2, 3, 4, 5]
    gevent.joinall(emitters, timeout=5, raise_error=True)


def test_an_unbounded_subscription_takes_everything_without_waiting(bus):
    sub = bus.subscribe("a", maxsize=None)

    for i in range(greenbus.DEFAULT_MAXSIZE + 10):
        bus.emit("a", i)

    assert sub.maxsize is None
    assert sub.pending == greenbus.DEFAULT_MAXSIZE + 10
    assert sub.dropped == 0


def test_drop_newest_keeps_the_queued_messages_and_counts_the_drops(bus):
    sub = bus.subscribe("a", maxsize=2, overflow="drop_newest")

    assert [bus.emit("a", i) for i in range(5)] == [1, 1, 0, 0, 0]

    assert drain(sub) == [0, 1]
    assert sub.dropped == 3


def test_drop_oldest_keeps_the_newest_messages_and_counts_the_drops(bus):
    sub = bus.subscribe("a", maxsize=2, overflow="drop_oldest")

    assert [bus.emit("a", i) for i in range(5)] == [1] * 5

    assert drain(sub) == [3, 4]
    assert sub.dropped == 3


def test_overflow_error_raises_channel_full_after_offering_the_message_to_the_others(bus):
    full = bus.subscribe("a.*", maxsize=1, overflow="error")
    other = bus.subscribe("a.b")
    bus.emit("a.b", 0)

    with pytest.raises(ChannelFull) as info:
        bus.emit("a.b", 1)

    assert info.value.maxsize == 1
    assert info.value.delivered == 1
    assert info.value.full == ("a.*",)
    assert drain(other) == [0, 1]
    assert drain(full) == [0]
    assert full.statistics().rejected == 1


def test_a_slow_consumer_is_reported_once_per_overflow_episode_not_per_drop(bus, caplog):
    reports = []
    bus.on_error = lambda exc, sub, msg: reports.append((exc, sub, msg))
    sub = bus.subscribe("a", maxsize=4, overflow="drop_newest")

    with caplog.at_level(logging.WARNING, logger="greenbus.bus"):
        for i in range(10):
            bus.emit("a", i)

    assert sub.dropped == 6
    assert len(reports) == 1
    exc, who, message = reports[0]
    assert isinstance(exc, SlowConsumer)
    assert who is sub
    assert message is None
    assert (exc.pattern, exc.maxsize, exc.overflow, exc.dropped) == ("a", 4, "drop_newest", 1)
    assert len(records(caplog, logging.WARNING)) == 1
    assert bus.stats().subscriptions[0].slow_consumer_events == 1

    # Catching up to half the capacity ends the episode; the next drop starts another.
    sub.get_nowait()
    sub.get_nowait()
    for i in range(10, 20):
        bus.emit("a", i)

    assert len(reports) == 2
    assert reports[1][0].dropped == 7
    assert bus.stats().subscriptions[0].slow_consumer_events == 2


def test_drop_oldest_reports_a_slow_consumer_once_for_a_handler_that_lags(bus):
    reports = []
    bus.on_error = lambda exc, sub, msg: reports.append(exc)
    seen = []
    sub = bus.subscribe("a", seen.append, maxsize=3, overflow="drop_oldest")

    for i in range(10):
        bus.emit("a", i)

    wait_until(lambda: len(seen) == 3)
    assert [m.data for m in seen] == [7, 8, 9]
    assert sub.dropped == 7
    assert [type(e) for e in reports] == [SlowConsumer]


# -- failure isolation ---------------------------------------------------------


def test_a_handler_exception_never_reaches_the_emitter_nor_stops_the_subscription(bus, caplog):
    seen = []

    def handler(msg):
        if msg.data == 1:
            raise RuntimeError("boom")
        seen.append(msg.data)

    bus.on("a", handler)
    with caplog.at_level(logging.ERROR, logger="greenbus.bus"):
        for i in range(4):
            assert bus.emit("a", i) == 1
        wait_until(lambda: len(seen) == 3)

    assert seen == [0, 2, 3]


def test_a_handler_exception_is_logged_and_passed_to_on_error(caplog):
    reports = []
    error = ValueError("bad payload")

    def handler(msg):
        raise error

    with Bus("hooked", on_error=lambda *args: reports.append(args)) as bus:
        sub = bus.subscribe("a.*", handler)
        with caplog.at_level(logging.ERROR, logger="greenbus.bus"):
            bus.emit("a.b", 7)
            wait_until(lambda: reports)

        assert len(reports) == 1
        exc, who, msg = reports[0]
        assert exc is error
        assert who is sub
        assert (msg.topic, msg.data) == ("a.b", 7)
        [record] = records(caplog, logging.ERROR)
        assert record.exc_info is not None
        assert record.exc_info[1] is error
        assert "a.b" in record.getMessage()
        assert bus.stats().subscriptions[0].handler_errors == 1


def test_an_on_error_hook_that_raises_is_logged_and_not_propagated(bus, caplog):
    seen = []

    def hook(exc, sub, msg):
        raise KeyError("hook is broken")

    def handler(msg):
        seen.append(msg.data)
        raise RuntimeError("handler is broken")

    bus.on_error = hook
    bus.on("a", handler)
    with caplog.at_level(logging.ERROR, logger="greenbus.bus"):
        bus.emit("a", 1)
        bus.emit("a", 2)
        wait_until(lambda: len(seen) == 2)

    hook_logs = [r for r in records(caplog, logging.ERROR) if "hook itself" in r.getMessage()]
    assert len(hook_logs) == 2
    assert isinstance(hook_logs[0].exc_info[1], KeyError)
    assert bus.stats().subscriptions[0].handler_errors == 2


def test_an_on_error_hook_that_raises_on_a_slow_consumer_does_not_reach_the_emitter(bus, caplog):
    def hook(exc, sub, msg):
        raise RuntimeError("hook is broken")

    bus.on_error = hook
    sub = bus.subscribe("a", maxsize=1, overflow="drop_oldest")
    with caplog.at_level(logging.WARNING, logger="greenbus.bus"):
        assert bus.emit("a", 1) == 1
        assert bus.emit("a", 2) == 1

    assert drain(sub) == [2]
    assert any("hook itself" in r.getMessage() for r in records(caplog, logging.ERROR))


# -- forwards (the transports' sinks) ------------------------------------------


def test_a_forward_sink_gets_each_matching_message_inside_emit_in_order() -> None:
    bus = Bus("fwd")
    got: list[Message] = []
    with bus.forward("a.*", lambda msg: got.append(msg) is None):
        assert bus.emit("a.x", 1, headers={"k": "v"}) == 1
        assert bus.emit("b.x", 2) == 0
        assert bus.emit("a.y", 3, reply_to="_INBOX.r") == 1
    assert bus.emit("a.z", 4) == 0  # closed: no longer forwarded
    assert [(m.topic, m.data, m.reply_to) for m in got] == [
        ("a.x", 1, None),
        ("a.y", 3, "_INBOX.r"),
    ]
    assert isinstance(got[0], Message)
    assert got[0].headers == {"k": "v"}
    bus.close()


def test_raw_forwards_share_the_emits_own_tuple_and_get_a_new_one_per_emit() -> None:
    bus = Bus("raw")
    seen: list[tuple[str, tuple[object, ...]]] = []

    def sink(name: str, item: tuple[object, ...]) -> bool:
        seen.append((name, item))
        return True

    # The same callable twice: each forward is still added and removed on its own.
    first = bus.forward("t", lambda item: sink("first", item), raw=True)
    second = bus.forward("t", lambda item: sink("second", item), raw=True)
    assert bus.emit("t", {"n": 1}) == 2
    assert bus.emit("t", {"n": 2}) == 2
    (a1, i1), (b1, j1), (a2, i2), (b2, j2) = seen
    assert (a1, b1, a2, b2) == ("first", "second", "first", "second")
    assert i1 is j1 and i2 is j2  # one object per emit, for every raw sink
    assert i1 is not i2
    assert i1 == ("t", {"n": 1}, None, None)
    first.close()
    assert bus.emit("t", 3) == 1
    second.close()
    assert bus.emit("t", 4) == 0
    assert bus.forwards() == []
    bus.close()


def test_forwards_raw_or_not_and_subscriptions_of_an_emit_share_one_message() -> None:
    bus = Bus("shared")
    got: list[object] = []
    bus.forward("t", lambda item: got.append(item) is None, raw=True)
    bus.forward("t", lambda msg: got.append(msg) is None)
    sub = bus.subscribe("t")
    assert bus.emit("t", 1) == 3
    got.append(sub.get_nowait())
    assert got[0] is got[1] is got[2]
    assert type(got[0]) is bus.message_class
    bus.close()


def test_put_queues_plain_fields_that_are_delivered_as_a_message_of_the_owner(bus):
    # What the remote client does with a frame's fields.
    sub = bus.subscribe("a")
    assert sub.put(("a", 1, {"h": 2}, "inbox.1")) is True
    msg = sub.get_nowait()
    assert type(msg) is bus.message_class
    assert (msg.topic, msg.data, dict(msg.headers), msg.reply_to) == ("a", 1, {"h": 2}, "inbox.1")
    replies = bus.subscribe("inbox.1")
    assert msg.reply("r") == 1 and replies.get_nowait().data == "r"


def test_two_raw_forwards_of_one_sink_are_two_forwards() -> None:
    bus = Bus("same-sink")
    got: list[object] = []

    def sink(item: tuple[object, ...]) -> bool:
        got.append(item[1])
        return True

    one = bus.forward("t", sink, raw=True)
    two = bus.forward("t", sink, raw=True)
    assert bus.emit("t", "x") == 2
    one.close()
    assert bus.emit("t", "y") == 1
    two.close()
    assert got == ["x", "x", "y"]
    bus.close()
