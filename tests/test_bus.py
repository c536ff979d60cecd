"""Tests for greenbus.bus: Bus, Subscription and Message, against their contract.

Real gevent greenlets and real (unpatched) OS threads; nothing is mocked.
Tests wait on conditions (``wait_until``, ``sub.get(timeout=...)``), never on
the clock, and assert no durations.
"""

from __future__ import annotations

import itertools
import logging
import re
import subprocess
import sys
import threading

import gevent
import pytest
from conftest import ROOT, child_env, drain, records
from gevent.event import Event
from waiting import OSThread, call_in_thread, wait_until

import greenbus
from greenbus import (
    Bus,
    BusClosed,
    BusState,
    ChannelFull,
    GreenbusError,
    InvalidOption,
    InvalidTopic,
    NoResponders,
    ReceiveTimeout,
    RequestTimeout,
    WrongThread,
)

# -- emit ----------------------------------------------------------------------


def test_emit_returns_how_many_subscriptions_it_queued_to(bus):
    bus.subscribe("a.b")
    bus.subscribe("a.*")
    bus.subscribe("a.>")
    bus.subscribe("x.y")

    assert bus.emit("a.b", 1) == 3
    assert bus.emit("a.c") == 2
    assert bus.emit("a.b.c") == 1
    assert bus.emit("nobody.listens") == 0


def test_emit_never_runs_a_handler_inline_nor_switches_greenlets(bus):
    calls = []
    bus.on("a", lambda msg: calls.append(msg.data))
    other_ran = []
    gevent.spawn(other_ran.append, True)  # runs at the first switch to the hub

    for i in range(100):
        assert bus.emit("a", i) == 1

    assert calls == []
    assert other_ran == []
    wait_until(lambda: len(calls) == 100)
    assert calls == list(range(100))


def test_a_slow_handler_does_not_hold_up_the_emitter(bus):
    release = Event()
    bus.on("slow", lambda msg: release.wait())

    # Each emit returns while the handler is still stuck on the first message.
    assert [bus.emit("slow", i) for i in range(5)] == [1] * 5
    gevent.sleep(0)
    assert [bus.emit("slow", i) for i in range(5, 10)] == [1] * 5
    assert bus.subscriptions()[0].pending == 9
    release.set()
    wait_until(lambda: bus.subscriptions()[0].delivered == 10)


# -- the hub never blocks ------------------------------------------------------


def test_emit_from_a_hub_callback_into_a_full_block_subscription_raises_channel_full(bus):
    full = bus.subscribe("a", maxsize=1)
    other = bus.subscribe("a")
    bus.emit("a", 0)
    outcome = []

    def on_the_hub():
        try:
            outcome.append(bus.emit("a", 1))
        except ChannelFull as exc:
            outcome.append(exc)

    gevent.get_hub().loop.run_callback(on_the_hub)
    wait_until(lambda: outcome)

    exc = outcome[0]
    assert isinstance(exc, ChannelFull)
    assert exc.delivered == 1
    assert exc.full == ("a",)
    assert "hub" in exc.reason
    assert drain(other) == [0, 1]
    assert drain(full) == [0]


def test_emit_from_a_hub_callback_with_room_delivers(bus):
    sub = bus.subscribe("a", maxsize=1)
    outcome = []
    gevent.get_hub().loop.run_callback(lambda: outcome.append(bus.emit("a", 1)))

    assert sub.get(timeout=5).data == 1
    assert outcome == [1]


def test_a_handler_emitting_into_its_own_full_block_subscription_gets_channel_full(bus):
    outcome = []

    def handler(msg):
        if msg.data != "start":
            return
        outcome.append(bus.emit("loop", "echo1"))  # fits: the channel is empty now
        try:
            bus.emit("loop", "echo2")
        except ChannelFull as exc:
            outcome.append(exc)

    bus.subscribe("loop", handler, maxsize=1)
    witness = bus.subscribe("loop")
    bus.emit("loop", "start")

    wait_until(lambda: len(outcome) == 2)
    assert outcome[0] == 2
    exc = outcome[1]
    assert isinstance(exc, ChannelFull)
    assert exc.delivered == 1
    assert exc.full == ("loop",)
    assert drain(witness) == ["start", "echo1", "echo2"]


# -- request/reply -------------------------------------------------------------


def test_request_returns_the_reply(bus):
    bus.on("math.double", lambda msg: msg.reply(msg.data * 2))

    reply = bus.request("math.double", 21)

    assert reply.data == 42
    assert reply.topic.startswith("_INBOX.")


def test_request_returns_the_first_reply_and_discards_later_ones(bus):
    def responder(msg):
        assert msg.reply("first") == 1
        assert msg.reply("second") == 1

    bus.on("q", responder)

    assert bus.request("q", timeout=5).data == "first"
    assert [s.pattern for s in bus.subscriptions()] == ["q"]


def test_a_reply_can_carry_headers(bus):
    bus.on("q", lambda msg: msg.reply(msg.data, headers={"status": "ok"}))

    reply = bus.request("q", 1, headers={"trace": "x"}, timeout=5)

    assert dict(reply.headers) == {"status": "ok"}


def test_a_responder_sees_the_request_headers_and_reply_to(bus):
    requests = []

    def responder(msg):
        requests.append(msg)
        msg.reply()

    bus.on("q", responder)
    bus.request("q", headers={"trace": "x"}, timeout=5)

    assert dict(requests[0].headers) == {"trace": "x"}
    assert requests[0].reply_to.startswith("_INBOX.")


def test_a_handler_less_subscription_can_answer_a_request(bus):
    server = bus.subscribe("q")

    def serve():
        msg = server.get(timeout=5)
        msg.reply(msg.data + 1)

    gevent.spawn(serve)
    assert bus.request("q", 1, timeout=5).data == 2


def test_request_with_no_matching_subscription_raises_no_responders(bus):
    bus.subscribe("other")

    with pytest.raises(NoResponders) as info:
        bus.request("nobody", 1)

    assert info.value.topic == "nobody"
    assert [s.pattern for s in bus.subscriptions()] == ["other"]


def test_request_without_a_reply_raises_request_timeout_which_is_a_timeout_error(bus):
    bus.subscribe("silent")

    with pytest.raises(RequestTimeout) as info:
        bus.request("silent", 1, timeout=0.01)

    assert isinstance(info.value, ReceiveTimeout)
    assert isinstance(info.value, TimeoutError)
    assert info.value.topic == "silent"
    assert info.value.timeout == 0.01
    assert [s.pattern for s in bus.subscriptions()] == ["silent"]


def test_a_reply_after_the_requester_gave_up_reaches_nobody(bus):
    release = Event()
    late = []

    def responder(msg):
        release.wait()
        late.append(msg.reply("too late"))

    bus.on("slow", responder)
    with pytest.raises(RequestTimeout):
        bus.request("slow", timeout=0.01)
    release.set()

    wait_until(lambda: late)
    assert late == [0]


def test_each_bus_has_its_own_random_inbox_prefix_under_inbox(bus):
    other = Bus("other")
    try:
        assert bus.inbox_prefix != other.inbox_prefix
        for prefix in (bus.inbox_prefix, other.inbox_prefix):
            # At least 64 bits of randomness: nobody can guess a bus's prefix.
            assert re.fullmatch(r"_INBOX\.[0-9a-f]{16,}", prefix), prefix
    finally:
        other.close()


def test_inbox_prefix_is_read_only(bus):
    with pytest.raises(AttributeError):
        bus.inbox_prefix = "_INBOX.guessed"


def test_each_request_gets_an_unguessable_inbox_one_token_under_the_prefix(bus):
    reply_tos = []

    def responder(msg):
        reply_tos.append(msg.reply_to)
        msg.reply()

    bus.on("q", responder)
    for _ in range(32):
        bus.request("q", timeout=5)

    prefixes = {r.rpartition(".")[0] for r in reply_tos}
    tokens = [r.rpartition(".")[2] for r in reply_tos]
    assert prefixes == {bus.inbox_prefix}
    # One token after the prefix (what the bus's single ``{prefix}.*`` forward
    # serves), random: knowing one request's reply_to does not give the next.
    assert all(re.fullmatch(r"[0-9a-f]{16,}", t) for t in tokens), tokens
    assert len(set(tokens)) == 32
    # Not a counter in disguise: consecutive tokens are not in order, and
    # differ in more than their last digits.
    assert tokens != sorted(tokens)
    assert all(a[:8] != b[:8] for a, b in itertools.pairwise(tokens))
    # Every request is served by one wildcard forward, which topics() leaves out.
    assert [f.pattern for f in bus.forwards()] == [f"{bus.inbox_prefix}.*"]
    assert bus.topics() == ["q"]


@pytest.mark.parametrize("timeout", [-1, "1", None, True])
def test_request_with_an_invalid_timeout_raises_invalid_option(bus, timeout):
    bus.on("q", lambda msg: msg.reply())

    with pytest.raises(InvalidOption) as info:
        bus.request("q", timeout=timeout)
    assert info.value.name == "timeout"


# -- the default bus -----------------------------------------------------------


def test_module_level_functions_use_the_default_bus(default_bus):
    seen = []

    @greenbus.on("sensors.*.temp")
    def show(msg):
        seen.append((msg.topic, msg.data))

    sub = greenbus.subscribe("sensors.>")

    assert greenbus.default_bus() is default_bus
    assert default_bus.topics() == ["sensors.*.temp", "sensors.>"]
    assert greenbus.emit("sensors.room1.temp", 21.5) == 2
    assert sub.get(timeout=5).data == 21.5
    wait_until(lambda: seen)
    assert seen == [("sensors.room1.temp", 21.5)]


def test_module_level_request_uses_the_default_bus(default_bus):
    greenbus.on("math.double", lambda msg: msg.reply(msg.data * 2))

    assert greenbus.request("math.double", 21, timeout=5).data == 42
    with pytest.raises(NoResponders):
        greenbus.request("math.triple", 1)
    assert default_bus.topics() == ["math.double"]


def test_module_level_once_uses_the_default_bus(default_bus):
    calls = []
    greenbus.once("ping", calls.append)

    greenbus.emit("ping", 1)
    greenbus.emit("ping", 2)

    wait_until(lambda: calls and default_bus.stats().pending == 0)
    assert [m.data for m in calls] == [1]
    assert default_bus.topics() == []


def test_the_default_bus_is_replaced_once_it_is_closed(default_bus):
    assert greenbus.default_bus() is default_bus
    default_bus.close()

    fresh = greenbus.default_bus()

    assert fresh is not default_bus
    assert not fresh.closed
    assert greenbus.emit("a") == 0


def test_an_emit_from_a_worker_thread_before_any_default_bus_makes_none(default_bus):
    default_bus.close()  # no open default bus: nobody can be subscribed

    assert call_in_thread(greenbus.emit, "jobs.done", 1) == 0

    # The main thread makes (and owns) the default bus now, not the worker.
    seen = []
    greenbus.on("jobs.done", lambda msg: seen.append(msg.data))
    assert greenbus.default_bus() is not default_bus
    assert call_in_thread(greenbus.emit, "jobs.done", 2) == 1
    wait_until(lambda: seen)
    assert seen == [2]


def test_emit_with_no_open_default_bus_still_validates_its_arguments(default_bus):
    default_bus.close()

    with pytest.raises(InvalidTopic):
        greenbus.emit("a..b")
    with pytest.raises(InvalidTopic):
        call_in_thread(greenbus.emit, "a", reply_to="inbox.*")
    with pytest.raises(InvalidOption):
        greenbus.emit("a", headers=["no"])
    assert greenbus.emit("a", 1, headers={"h": 1}, reply_to="r") == 0
    assert greenbus.default_bus() is not default_bus


def test_a_bus_closed_raised_by_a_forward_of_the_open_default_bus_reaches_the_emitter(
    default_bus,
):
    elsewhere = Bus("elsewhere")
    elsewhere.close()
    default_bus.forward("relay", lambda msg: elsewhere.emit(msg.topic, msg.data) > 0)

    with pytest.raises(BusClosed) as info:
        greenbus.emit("relay", 1)
    assert info.value.name == "elsewhere"


def test_a_worker_threads_emit_reaches_the_main_threads_default_bus_subscriber(default_bus):
    sub = greenbus.subscribe("jobs.>")

    assert call_in_thread(lambda: [greenbus.emit("jobs.a", i) for i in range(3)]) == [1, 1, 1]

    assert [sub.get(timeout=5).data for _ in range(3)] == [0, 1, 2]
    assert default_bus.stats().thread_emits == 3


def test_threads_racing_for_the_default_bus_all_get_the_one_made_by_one_of_them(default_bus):
    default_bus.close()  # none is open: the race below makes it
    racers = 8
    start = threading.Barrier(racers)
    got = threading.Barrier(racers)

    def race():
        start.wait(5)
        bus = greenbus.default_bus()
        got.wait(5)  # everyone has one before its owner closes it
        # Only the owning thread may close it: exactly one racer can, and
        # does, so no default bus owned by a finished thread is left behind.
        try:
            bus.close(timeout=5)
        except WrongThread:
            return bus, False
        return bus, True

    # Switch threads every microsecond, so the racers interleave inside
    # default_bus() (where an unlocked check-then-make hands out several).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [OSThread(race) for _ in range(racers)]
        results = [thread.join() for thread in threads]
    finally:
        sys.setswitchinterval(interval)

    buses = {id(bus): bus for bus, _ in results}
    assert len(buses) == 1, f"{len(buses)} default buses made"
    assert [owner for _, owner in results].count(True) == 1
    [bus] = buses.values()
    assert bus is not default_bus and bus.closed


# -- closing the bus -----------------------------------------------------------


def test_close_delivers_what_is_queued_then_stops_the_handlers(bus):
    seen = []

    def handler(msg):
        gevent.sleep(0.001 if msg.data % 4 == 0 else 0)  # slow enough to need waiting for
        seen.append(msg.data)

    bus.on("a", handler)
    for i in range(20):
        bus.emit("a", i)

    bus.close()

    assert seen == list(range(20))
    assert bus.state is BusState.CLOSED
    assert bus.subscriptions() == []


def test_emit_subscribe_and_request_after_close_raise_bus_closed(bus):
    bus.on("a", lambda msg: None)
    bus.close()

    with pytest.raises(BusClosed):
        bus.emit("a")
    with pytest.raises(BusClosed):
        bus.subscribe("a")
    with pytest.raises(BusClosed):
        bus.on("a", lambda msg: None)
    with pytest.raises(BusClosed):
        bus.request("a")


def test_close_is_idempotent(bus):
    sub = bus.subscribe("a")
    bus.emit("a", 1)

    bus.close()
    bus.close()
    bus.close(timeout=0)

    assert bus.closed
    assert bus.stats().state == "closed"
    assert drain(sub) == [1]


def test_close_with_a_timeout_kills_a_stuck_handler_and_discards_the_rest(bus, caplog):
    started = []
    exited = []

    def stuck(msg):
        started.append(msg.data)
        try:
            Event().wait()  # never set
        finally:
            exited.append(msg.data)

    sub = bus.subscribe("a", stuck)
    for i in range(3):
        bus.emit("a", i)
    wait_until(lambda: started)

    with caplog.at_level(logging.WARNING, logger="greenbus.bus"):
        bus.close(timeout=0.01)

    assert started == [0]
    assert exited == [0]
    stats = sub.statistics()
    assert (stats.delivered, stats.discarded, stats.pending) == (1, 2, 0)
    assert not stats.active
    [warning] = records(caplog, logging.WARNING)
    assert "2 message(s) discarded" in warning.getMessage()


def test_close_from_inside_a_handler_does_not_deadlock(bus):
    seen = []
    closed = []

    def handler(msg):
        seen.append(msg.data)
        if msg.data == 0:
            bus.close()
            closed.append(bus.state)

    bus.on("a", handler)
    for i in range(3):
        bus.emit("a", i)

    wait_until(lambda: closed)
    assert closed == [BusState.CLOSED]
    wait_until(lambda: len(seen) == 3)
    assert seen == [0, 1, 2]
    with pytest.raises(BusClosed):
        bus.emit("a", 3)


def test_close_from_inside_a_handler_waits_for_the_other_handlers(bus):
    other = []

    def slow(msg):
        for _ in range(5):
            gevent.sleep(0)
        other.append(msg.data)

    bus.on("b", slow)
    bus.on("a", lambda msg: bus.close())
    bus.emit("b", 1)
    bus.emit("b", 2)
    bus.emit("a")

    wait_until(lambda: bus.state is BusState.CLOSED)
    assert other == [1, 2]


def test_iterating_a_handlerless_subscription_ends_after_close_has_drained_it(bus):
    sub = bus.subscribe("a")
    for i in range(3):
        bus.emit("a", i)

    bus.close()

    assert [m.data for m in sub] == [0, 1, 2]
    assert not sub.active


def test_a_consumer_parked_in_iteration_is_released_by_close(bus):
    sub = bus.subscribe("a")
    consumer = gevent.spawn(lambda: [m.data for m in sub])
    gevent.sleep(0)
    bus.emit("a", 1)

    bus.close()

    assert consumer.get(timeout=5) == [1]


def test_an_emitter_waiting_on_a_full_subscription_is_released_by_close(bus):
    sub = bus.subscribe("a", maxsize=1)
    bus.emit("a", 0)
    emitter = gevent.spawn(bus.emit, "a", 1)
    gevent.sleep(0)
    assert not emitter.ready()

    bus.close()

    emitter.join(timeout=5)
    assert emitter.ready()
    assert sub.statistics().discarded == 1
    assert [m.data for m in sub] == [0]


def test_a_bus_used_as_a_context_manager_is_closed_on_exit():
    seen = []
    with Bus("ctx") as bus:
        bus.on("a", seen.append)
        bus.emit("a", 1)

    assert bus.closed
    assert [m.data for m in seen] == [1]


def test_close_listeners_run_once_in_order_after_the_bus_has_closed_and_drained(bus):
    handled = []
    calls = []
    bus.on("a", handled.append)
    fwd = bus.forward("f", lambda msg: True)
    bus.emit("a", 1)

    def first():
        calls.append(("first", bus.state, len(handled), fwd.active, gevent.getcurrent()))

    bus.add_close_listener(first)
    bus.add_close_listener(lambda: calls.append(("second",)))
    bus.close()
    bus.close()

    assert calls == [
        ("first", BusState.CLOSED, 1, False, gevent.getcurrent()),
        ("second",),
    ]


def test_a_removed_close_listener_is_not_called(bus):
    calls = []
    bus.add_close_listener(calls.append)
    bus.remove_close_listener(calls.append)
    bus.remove_close_listener(print)  # never added: a no-op

    bus.close()

    assert calls == []


def test_adding_a_close_listener_to_a_closed_bus_raises_bus_closed(bus):
    bus.close()

    with pytest.raises(BusClosed):
        bus.add_close_listener(lambda: None)


def test_a_close_listener_that_raises_is_logged_and_the_others_still_run(bus, caplog):
    calls = []

    def broken():
        raise RuntimeError("listener bug")

    bus.add_close_listener(broken)
    bus.add_close_listener(lambda: calls.append("ran"))
    with caplog.at_level(logging.ERROR, logger="greenbus.bus"):
        bus.close()

    assert calls == ["ran"]
    [record] = records(caplog, logging.ERROR)
    assert "close listener" in record.getMessage()
    assert record.exc_info is not None and "listener bug" in str(record.exc_info[1])


def test_add_close_listener_from_another_thread_raises_wrong_thread(bus):
    with pytest.raises(WrongThread):
        call_in_thread(bus.add_close_listener, lambda: None)


# -- introspection -------------------------------------------------------------


def test_topics_lists_the_subscribed_patterns_sorted_without_duplicates(bus):
    bus.subscribe("b")
    bus.subscribe("a.>")
    bus.subscribe("b")
    closing = bus.subscribe("c")

    closing.close()

    assert bus.topics() == ["a.>", "b"]


def test_subscriptions_lists_the_active_ones_oldest_first_optionally_by_pattern(bus):
    first = bus.subscribe("a")
    second = bus.subscribe("b")
    third = bus.subscribe("a")

    assert bus.subscriptions() == [first, second, third]
    assert bus.subscriptions("a") == [first, third]
    assert bus.subscriptions("zzz") == []


def test_matching_returns_the_subscriptions_a_topic_would_reach_in_subscription_order(bus):
    exact = bus.subscribe("a.b.c")
    star = bus.subscribe("a.*.c")
    bus.subscribe("a.*")
    tail = bus.subscribe("a.>")
    bus.subscribe("b.>")

    assert bus.matching("a.b.c") == [exact, star, tail]
    assert bus.matching("q") == []
    with pytest.raises(InvalidTopic):
        bus.matching("a.*")


def test_stats_reports_pending_delivered_dropped_and_high_water_per_subscription(bus):
    sub = bus.subscribe("a", maxsize=3, overflow="drop_newest")
    for i in range(5):
        bus.emit("a", i)
    sub.get_nowait()

    stats = bus.stats()

    assert stats.name == bus.name
    assert stats.state == "open"
    [s] = stats.subscriptions
    assert (s.pattern, s.pending, s.delivered, s.dropped, s.high_water) == ("a", 2, 1, 2, 3)
    assert (s.maxsize, s.overflow, s.handler) == (3, "drop_newest", None)
    assert (s.handler_errors, s.slow_consumer_events) == (0, 1)
    assert (stats.pending, stats.delivered, stats.dropped) == (2, 1, 2)


def test_stats_counts_handler_errors_and_names_the_handler(bus, caplog):
    def flaky(msg):
        raise RuntimeError(msg.data)

    bus.on("a", flaky)
    with caplog.at_level(logging.CRITICAL, logger="greenbus.bus"):
        for i in range(3):
            bus.emit("a", i)
        wait_until(lambda: bus.stats().delivered == 3)
        gevent.sleep(0)

    [s] = bus.stats().subscriptions
    assert s.handler_errors == 3
    assert s.handler.endswith("flaky")


def test_high_water_remembers_the_deepest_backlog(bus):
    sub = bus.subscribe("a")
    for i in range(5):
        bus.emit("a", i)
    drain(sub)
    bus.emit("a", 5)

    [s] = bus.stats().subscriptions
    assert (s.pending, s.delivered, s.high_water) == (1, 5, 5)


def test_the_repr_of_a_bus_shows_its_name_state_and_size(bus):
    bus.subscribe("a")
    bus.subscribe("a")
    bus.subscribe("b")

    text = repr(bus)

    assert bus.name in text
    assert "open" in text
    assert "subscriptions=3" in text
    assert "patterns=2" in text
    bus.close()
    assert "closed" in repr(bus)


def test_the_repr_of_a_subscription_shows_its_pattern_handler_and_counters(bus):
    def on_temp(msg):
        pass

    handled = bus.subscribe("sensors.*", on_temp)
    plain = bus.subscribe("a", maxsize=1, overflow="drop_newest")
    bus.emit("a")
    bus.emit("a")

    assert "'sensors.*'" in repr(handled)
    assert "on_temp" in repr(handled)
    assert f"#{handled.id}" in repr(handled)
    assert "pending=1" in repr(plain)
    assert "dropped=1" in repr(plain)
    plain.close()
    assert "closed" in repr(plain)


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("", "empty"),
        ("a..b", "empty token"),
        (".a", "empty token"),
        ("a.", "empty token"),
        ("a b", "whitespace"),
        ("a.\nb", "control character"),
        ("a.*", "wildcard"),
        ("a.>", "wildcard"),
        ("a*", "reserved for wildcards"),
        (5, "str"),
        (None, "str"),
    ],
)
def test_emit_on_an_invalid_topic_raises_invalid_topic_naming_the_problem(bus, topic, problem):
    with pytest.raises(InvalidTopic) as info:
        bus.emit(topic)  # type: ignore[arg-type]

    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, GreenbusError)
    assert info.value.topic == topic
    assert problem in info.value.problem
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        ("a..b", "empty token"),
        ("a.>.b", "'>' must be the last token"),
        ("a.b*", "whole tokens"),
        ("a\tb", "whitespace"),
        (b"a", "str"),
    ],
)
def test_subscribe_to_an_invalid_pattern_raises_invalid_topic_naming_the_problem(
    bus, pattern, problem
):
    with pytest.raises(InvalidTopic) as info:
        bus.subscribe(pattern)  # type: ignore[arg-type]

    assert isinstance(info.value, ValueError)
    assert problem in str(info.value)
    assert bus.subscriptions() == []


def test_an_invalid_reply_to_raises_invalid_topic(bus):
    with pytest.raises(InvalidTopic):
        bus.emit("a", reply_to="inbox.*")


@pytest.mark.parametrize("maxsize", [0, -1, 1.5, "10", True])
def test_an_invalid_maxsize_raises_invalid_option(bus, maxsize):
    with pytest.raises(InvalidOption) as info:
        bus.subscribe("a", maxsize=maxsize)

    assert isinstance(info.value, ValueError)
    assert info.value.name == "maxsize"
    assert info.value.value == maxsize
    assert bus.subscriptions() == []


@pytest.mark.parametrize("overflow", ["bogus", "BLOCK", None, 3])
def test_an_invalid_overflow_raises_invalid_option(bus, overflow):
    with pytest.raises(InvalidOption) as info:
        bus.subscribe("a", overflow=overflow)

    assert isinstance(info.value, ValueError)
    assert info.value.name == "overflow"
    assert "drop_oldest" in str(info.value)


@pytest.mark.parametrize("subscribe", ["subscribe", "on"])
def test_a_handler_that_is_not_callable_raises_invalid_option(bus, subscribe):
    with pytest.raises(InvalidOption) as info:
        getattr(bus, subscribe)("a", "not callable")

    assert isinstance(info.value, ValueError)
    assert info.value.name == "handler"
    assert bus.subscriptions() == []


@pytest.mark.parametrize("headers", [[("a", 1)], "h=1", 42])
def test_headers_that_are_not_a_mapping_raise_invalid_option(bus, headers):
    sub = bus.subscribe("a")

    with pytest.raises(InvalidOption) as info:
        bus.emit("a", headers=headers)

    assert isinstance(info.value, ValueError)
    assert info.value.name == "headers"
    assert sub.pending == 0


# -- OS threads (no monkey-patching) -------------------------------------------


def test_emit_from_an_os_thread_is_delivered_in_that_threads_order(bus):
    sub = bus.subscribe("t.x")

    def produce():
        return [bus.emit("t.x", i) for i in range(300)]

    producer = OSThread(produce)
    got = [sub.get(timeout=5).data for _ in range(300)]

    assert got == list(range(300))
    assert producer.join() == [1] * 300


def test_emit_from_an_os_thread_reaches_handlers_and_wildcards(bus):
    exact = []
    wild = []
    bus.on("t.x", lambda msg: exact.append(msg.data))
    bus.on("t.>", lambda msg: wild.append(msg.data))

    call_in_thread(lambda: [bus.emit("t.x", i) for i in range(50)])

    wait_until(lambda: len(exact) == 50 and len(wild) == 50)
    assert exact == wild == list(range(50))


def test_several_os_threads_each_keep_their_own_order(bus):
    threads = 4
    per_thread = 250
    everything = bus.subscribe("t.*", maxsize=None)
    own = [bus.subscribe(f"t.{n}") for n in range(threads)]

    def produce(n):
        for i in range(per_thread):
            bus.emit(f"t.{n}", (n, i))

    producers = [OSThread(produce, n) for n in range(threads)]
    for producer in producers:
        producer.join()
    wait_until(lambda: everything.pending == threads * per_thread)

    merged = drain(everything)
    for n in range(threads):
        assert [i for (who, i) in merged if who == n] == list(range(per_thread))
        assert drain(own[n]) == [(n, i) for i in range(per_thread)]
    assert bus.stats().thread_emits == threads * per_thread


def test_a_thread_emit_into_a_full_block_subscription_waits_and_loses_nothing(bus):
    sub = bus.subscribe("t", maxsize=2)

    producer = OSThread(lambda: [bus.emit("t", i) for i in range(100)])
    producer.join()  # emits from a thread never wait: they are handed over
    got = [sub.get(timeout=5).data for _ in range(100)]

    assert got == list(range(100))
    assert sub.dropped == 0


def test_stats_count_the_emits_handed_in_from_other_threads(bus):
    sub = bus.subscribe("t")
    bus.emit("t", "local")

    call_in_thread(lambda: [bus.emit("t", i) for i in range(7)])
    wait_until(lambda: sub.pending == 8)

    stats = bus.stats()
    assert stats.thread_emits == 7
    assert stats.thread_pending == 0
    assert stats.thread_errors == 0


def test_a_channel_full_on_delivery_of_a_thread_emit_is_logged_and_counted(bus, caplog):
    full = bus.subscribe("t", maxsize=1, overflow="error")
    other = bus.subscribe("t")
    bus.emit("t", 0)

    with caplog.at_level(logging.ERROR, logger="greenbus.bus"):
        assert call_in_thread(bus.emit, "t", 1) == 2  # matched at hand-off
        wait_until(lambda: other.pending == 2)

    assert bus.stats().thread_errors == 1
    assert full.statistics().rejected == 1
    [record] = records(caplog, logging.ERROR)
    assert "another thread" in record.getMessage()
    assert drain(other) == [0, 1]


def test_emit_from_a_thread_returns_how_many_subscriptions_match(bus):
    bus.subscribe("t.x")
    bus.subscribe("t.*")

    assert call_in_thread(bus.emit, "t.x", 1) == 2
    assert call_in_thread(bus.emit, "t.y", 1) == 1
    assert call_in_thread(bus.emit, "u", 1) == 0


def test_emit_from_a_thread_validates_its_arguments_in_that_thread(bus):
    with pytest.raises(InvalidTopic):
        call_in_thread(bus.emit, "a..b")
    with pytest.raises(InvalidOption):
        call_in_thread(bus.emit, "a", headers=["no"])
    assert bus.stats().thread_emits == 0


def test_the_emitters_headers_are_copied_at_a_thread_emit(bus):
    sub = bus.subscribe("t")
    headers = {"h": 1}

    def produce():
        bus.emit("t", headers=headers)
        headers["h"] = 2

    call_in_thread(produce)

    assert dict(sub.get(timeout=5).headers) == {"h": 1}


@pytest.mark.parametrize(
    "call",
    [
        lambda bus: bus.subscribe("a"),
        lambda bus: bus.on("a", print),
        lambda bus: bus.off("a"),
        lambda bus: bus.close(),
        lambda bus: bus.subscriptions("a")[0].close(),
    ],
    ids=["subscribe", "on", "off", "close", "subscription.close"],
)
def test_calls_other_than_emit_from_another_thread_raise_wrong_thread(bus, call):
    sub = bus.subscribe("a")

    with pytest.raises(WrongThread) as info:
        call_in_thread(call, bus)

    assert isinstance(info.value, RuntimeError)
    assert not bus.closed
    assert bus.subscriptions() == [sub]


def test_emit_from_a_thread_after_close_raises_bus_closed(bus):
    bus.subscribe("t")
    bus.close()

    with pytest.raises(BusClosed):
        call_in_thread(bus.emit, "t", 1)
    assert bus.stats().thread_emits == 0


def test_close_routes_the_emits_already_handed_in_from_threads(bus):
    sub = bus.subscribe("t")
    call_in_thread(lambda: [bus.emit("t", i) for i in range(10)])

    bus.close()  # without letting the hub run first

    assert [m.data for m in sub] == list(range(10))


def test_close_delivers_a_thread_emit_that_is_waiting_for_room_in_a_block_subscription(bus):
    # close() "delivers what is queued": an emit accepted from a thread is
    # queued in the bus.  Here its hand-off is parked on a full maxsize=1
    # channel (the handler is busy) when close() is called.
    release = Event()
    seen = []

    def handler(msg):
        seen.append(msg.data)
        if msg.data == 0:
            release.wait()

    sub = bus.subscribe("t", handler, maxsize=1)
    bus.emit("t", 0)
    wait_until(lambda: seen == [0])
    bus.emit("t", 1)  # fills the channel
    call_in_thread(bus.emit, "t", 2)
    wait_until(lambda: bus.stats().thread_pending == 0)  # taken, and parked on the channel

    release.set()
    bus.close()

    assert seen == [0, 1, 2]
    assert sub.statistics().discarded == 0


def test_close_routes_a_threads_messages_in_order_even_through_a_full_subscription(bus):
    # The thread's two messages are still waiting to be handed over when
    # close() starts; "t.x" is full, so routing message 2 has to wait for
    # room.  Message 3 (on "t.y") must still reach "t.>" after message 2.
    release = Event()
    bus.subscribe("t.x", lambda msg: release.wait(), maxsize=1)
    everything = bus.subscribe("t.>", maxsize=None)
    bus.emit("t.x", 0)  # taken by the stuck handler
    bus.emit("t.x", 1)  # fills the channel
    gevent.sleep(0)

    def produce():
        bus.emit("t.x", 2)
        bus.emit("t.y", 3)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()  # a plain OS join: the hub does not run in between
    assert bus.stats().thread_pending == 2
    release.set()
    bus.close()

    assert [m.data for m in everything] == [0, 1, 2, 3]


# -- ordering (see also tests/test_ordering.py) -------------------------------


def test_exact_and_wildcard_subscribers_receive_one_publishers_messages_in_order(bus):
    exact = bus.subscribe("o.a")
    star = bus.subscribe("o.*")
    tail = bus.subscribe("o.>")
    handled = []
    bus.on("o.*", lambda msg: handled.append(msg.data))
    topics = ["o.a", "o.b", "o.a", "o.c.d", "o.a", "o.b"] * 10

    for i, topic in enumerate(topics):
        bus.emit(topic, i)

    wait_until(lambda: len(handled) == sum(t.count(".") == 1 for t in topics))
    assert drain(exact) == [i for i, t in enumerate(topics) if t == "o.a"]
    assert drain(star) == handled == [i for i, t in enumerate(topics) if t.count(".") == 1]
    assert drain(tail) == list(range(len(topics)))


def test_interleaved_greenlet_publishers_keep_their_order_for_every_subscriber(bus):
    small = bus.subscribe("p.>", maxsize=2)
    big = bus.subscribe("p.*", maxsize=None)
    seen = []

    def slow(msg):
        gevent.sleep(0)
        seen.append(msg.data)

    bus.on("p.*", slow, maxsize=3)

    def publish(n):
        for i in range(40):
            bus.emit(f"p.{n}", (n, i))
            if i % 3 == n:
                gevent.sleep(0)

    publishers = [gevent.spawn(publish, n) for n in range(3)]
    got_small = [small.get(timeout=5).data for _ in range(120)]
    gevent.joinall(publishers, timeout=5, raise_error=True)
    wait_until(lambda: len(seen) == 120)

    for got in (got_small, drain(big), seen):
        for n in range(3):
            assert [i for (who, i) in got if who == n] == list(range(40))


def test_drops_are_counted_and_never_reorder_what_is_kept(bus):
    seen = []

    def slow(msg):
        gevent.sleep(0)
        seen.append(msg.data)

    sub = bus.subscribe("d", slow, maxsize=4, overflow="drop_oldest")

    def publish():
        for i in range(200):
            bus.emit("d", i)
            if i % 7 == 0:
                gevent.sleep(0)

    gevent.spawn(publish).join()
    wait_until(lambda: len(seen) + sub.dropped == 200)

    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert sub.dropped > 0
    assert seen[-1] == 199


# -- waiting for other threads, requests from them, and closing with bad input --


#: Waits, with no timeout, for what a plain OS thread emits a moment later.
#: Run in a fresh interpreter: nothing else there keeps gevent's loop busy.
WAIT_FOR_A_THREAD = """
import sys, threading, time
import greenbus

bus = greenbus.Bus()
sub = bus.subscribe("x")

def later():
    time.sleep(0.2)  # the main thread is parked in get() by then
    for n in range(3):
        bus.emit("x", n)

threading.Thread(target=later).start()
if sys.argv[1] == "get":
    got = [sub.get().data for _ in range(3)]
else:
    got = []
    for msg in sub:
        got.append(msg.data)
        if len(got) == 3:
            break
print(got)
bus.close()
"""


@pytest.mark.parametrize("how", ["get", "iterate"])
def test_waiting_without_a_timeout_for_another_threads_emit_waits_for_it(how):
    # Issue 12: gevent saw nothing that could wake the parked consumer (the
    # other thread's hand-off was not an event it counted) and raised
    # LoopExit at once; s.get(timeout=5) worked.
    proc = subprocess.run(
        [sys.executable, "-c", WAIT_FOR_A_THREAD, how],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 1, 2]"


def test_a_request_from_another_os_thread_gets_the_reply(bus):
    # Issue 12: it raised WrongThread naming forward() when the bus had made
    # no request yet, and timed out although answered when it had.
    bus.on("math.double", lambda msg: msg.reply(msg.data * 2))

    first = call_in_thread(bus.request, "math.double", 21, timeout=5)
    bus.request("math.double", 1, timeout=5)  # the owner's own request still works
    second = call_in_thread(bus.request, "math.double", 4, timeout=5)

    assert (first.data, second.data) == (42, 8)
    assert first.topic.startswith(bus.inbox_prefix + ".")


def test_requests_from_several_os_threads_each_get_their_own_reply(bus):
    bus.on("echo", lambda msg: msg.reply(msg.data))
    threads = [OSThread(lambda n=n: bus.request("echo", n, timeout=5).data) for n in range(8)]
    assert [t.join() for t in threads] == list(range(8))


def test_a_request_from_another_thread_with_no_responder_raises_no_responders(bus):
    with pytest.raises(NoResponders):
        call_in_thread(bus.request, "nobody.home", timeout=5)


def test_a_request_from_another_thread_times_out_and_a_late_reply_is_not_queued(bus):
    held: list[greenbus.Message] = []
    bus.on("slow", held.append)

    with pytest.raises(RequestTimeout):
        call_in_thread(bus.request, "slow", timeout=0.05)
    wait_until(lambda: held, 5, "the request to arrive")
    assert held[0].reply("too late") == 0


@pytest.mark.parametrize("timeout", ["x", -1, True, float("nan")])
def test_close_with_a_bad_timeout_raises_invalid_option_and_leaves_the_bus_open(bus, timeout):
    # Issue 12: a bare TypeError, after the state had become CLOSING for good.
    sub = bus.subscribe("a")

    with pytest.raises(InvalidOption) as info:
        bus.close(timeout=timeout)

    assert info.value.name == "timeout"
    assert bus.state is BusState.OPEN
    assert sub.active
    bus.close(timeout=5)  # a good close still works
    assert bus.state is BusState.CLOSED
    assert not sub.active
