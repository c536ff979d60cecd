"""Tests for greenbus.channel: the FIFO buffer every subscription owns.

Real greenlets, no mocks.  Tests synchronise with ``gevent.sleep(0)`` (one
pass of the hub's callbacks), joins and events with generous timeouts; they
never assert on elapsed time.
"""

from __future__ import annotations

import dataclasses
import random

import gevent
import pytest
from gevent.event import AsyncResult

from greenbus.channel import (
    DEFAULT_MAXSIZE,
    Channel,
    ChannelStatistics,
    Overflow,
    Sink,
    put_each,
)
from greenbus.exceptions import (
    ChannelClosed,
    ChannelEmpty,
    ChannelError,
    ChannelFull,
    EndOfChannel,
    GreenbusError,
    InvalidOption,
    ReceiveTimeout,
)

#: Upper bound for any wait in these tests; reaching it means a hang, not slowness.
PATIENCE = 5


@pytest.fixture
def spawn():
    """gevent.spawn, but every greenlet left running is killed after the test."""
    greenlets = []

    def _spawn(function, *args, **kwargs):
        greenlet = gevent.spawn(function, *args, **kwargs)
        greenlets.append(greenlet)
        return greenlet

    yield _spawn
    gevent.killall(greenlets, timeout=PATIENCE)


def outcome_of(function, *args):
    """Call ``function``; return its result, or the exception it raised.

    Spawning this instead of ``function`` keeps expected exceptions from being
    reported by the hub as crashed greenlets.
    """
    try:
        return function(*args)
    except Exception as exc:
        return exc


def results(greenlets):
    """Join every greenlet and return their values, failing on a hang."""
    gevent.joinall(greenlets, timeout=PATIENCE, raise_error=True)
    assert all(g.dead for g in greenlets), "a greenlet did not finish in time"
    return [g.value for g in greenlets]


def run_on_hub(function, *args):
    """Run ``function`` as a loop callback on the hub; return (greenlet, outcome)."""
    done = AsyncResult()

    def callback():
        done.set((gevent.getcurrent(), outcome_of(function, *args)))

    gevent.get_hub().loop.run_callback(callback)
    return done.get(timeout=PATIENCE)


def drain(channel):
    """Everything queued now, without waiting."""
    items = []
    while True:
        try:
            items.append(channel.get_nowait())
        except (ChannelEmpty, EndOfChannel):
            return items


def parked_getter(spawn, channel, *args):
    greenlet = spawn(outcome_of, channel.get, *args)
    gevent.sleep(0)
    return greenlet


def assert_a_parked_getter_gets(spawn, channel, item, *args):
    """A getter that parks on ``channel`` (``get(*args)``) gets the ``item`` put next."""
    getter = parked_getter(spawn, channel, *args)
    channel.put(item)
    assert results([getter]) == [item]


def full_block_channel(maxsize=1):
    channel = Channel(maxsize, "block")
    for i in range(maxsize):
        channel.put(f"queued{i}")
    return channel


# -- FIFO and the fast path ------------------------------------------------------


def test_items_come_out_in_the_order_they_were_put():
    channel = Channel()
    for i in range(1000):
        assert channel.put(i) is True
    assert len(channel) == 1000
    assert [channel.get() for _ in range(1000)] == list(range(1000))
    assert len(channel) == 0


def test_put_nowait_on_a_channel_with_room_queues_like_put():
    channel = Channel(2)
    assert channel.put_nowait("a") is True
    assert channel.put("b") is True
    assert drain(channel) == ["a", "b"]


def test_put_does_not_run_a_consumer_that_was_spawned_before_it(spawn):
    channel = Channel()
    received = []
    consumer = spawn(lambda: received.extend(channel.get() for _ in range(3)))
    for i in range(3):
        channel.put(i)
    assert received == []
    assert not consumer.dead
    assert channel.statistics().waiting_getters == 0  # it has not even started
    results([consumer])
    assert received == [0, 1, 2]


def test_put_returns_before_a_parked_consumer_runs(spawn):
    channel = Channel()
    received = []

    def consume():
        for item in channel:
            received.append(item)

    spawn(consume)
    gevent.sleep(0)
    assert channel.statistics().waiting_getters == 1
    for i in range(3):
        channel.put(i)
    assert received == []
    assert len(channel) == 3
    gevent.sleep(0)
    assert received == [0, 1, 2]


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "error"])
def test_put_never_switches_greenlets_even_on_a_full_non_blocking_channel(spawn, overflow):
    channel = Channel(2, overflow)
    ran = []
    spawn(ran.append, "other greenlet ran")
    for i in range(5):
        outcome_of(channel.put, i)
    assert ran == []
    assert len(channel) == 2
    gevent.sleep(0)
    assert ran == ["other greenlet ran"]


def test_a_woken_getter_drains_everything_queued_in_one_wakeup(spawn):
    channel = Channel()
    batches = []

    def consume():
        while True:
            batch = [channel.get()]
            while len(channel):
                batch.append(channel.get())
            batches.append(batch)

    spawn(consume)
    gevent.sleep(0)
    for i in range(5):
        channel.put(i)
    gevent.sleep(0)  # one pass of the hub
    assert batches == [[0, 1, 2, 3, 4]]
    assert channel.statistics().waiting_getters == 1
    channel.put(5)
    channel.put(6)
    gevent.sleep(0)
    assert batches == [[0, 1, 2, 3, 4], [5, 6]]


def test_parked_getters_are_served_in_the_order_they_parked(spawn):
    channel = Channel()
    getters = [spawn(channel.get) for _ in range(3)]
    gevent.sleep(0)
    assert channel.statistics().waiting_getters == 3
    for item in "abc":
        channel.put(item)
    assert results(getters) == ["a", "b", "c"]
    assert channel.statistics().waiting_getters == 0


def test_a_parked_getter_whose_item_was_taken_by_another_keeps_waiting(spawn):
    channel = Channel()
    getter = parked_getter(spawn, channel)
    channel.put("x")
    assert channel.get() == "x"  # the main greenlet gets there first
    gevent.sleep(0)
    assert not getter.dead
    assert channel.statistics().waiting_getters == 1
    channel.put("y")
    assert results([getter]) == ["y"]


# -- batches -----------------------------------------------------------------------


@pytest.mark.parametrize("queued", [1, 5, 64, 65, 100, 256, 257, 1000])
def test_get_batch_takes_up_to_max_items_oldest_first_and_leaves_the_rest_in_order(queued):
    # Every way a batch is taken: all that is queued, most of it (taken and
    # the rest given back), or a small part of a deep backlog.
    channel = Channel(None)
    for i in range(queued):
        channel.put(i)
    batch = channel.get_batch(64)
    taken = min(queued, 64)
    assert batch == list(range(taken))
    assert drain(channel) == list(range(taken, queued))
    stats = channel.statistics()
    assert (stats.delivered, stats.high_water) == (queued, queued)


def test_get_batch_waits_for_one_item_then_takes_what_came_with_it(spawn):
    channel = Channel()
    batch = spawn(channel.get_batch, 3)
    gevent.sleep(0)
    assert channel.statistics().waiting_getters == 1
    for i in range(5):
        channel.put(i)
    assert batch.get(timeout=PATIENCE) == [0, 1, 2]
    assert drain(channel) == [3, 4]


def test_get_batch_makes_room_for_waiting_putters_in_order(spawn):
    channel = Channel(4, "block")
    for i in range(4):
        channel.put(i)
    putters = [spawn(channel.put, i) for i in range(4, 7)]
    gevent.sleep(0)
    assert channel.get_batch(3) == [0, 1, 2]
    results(putters)
    assert drain(channel) == [3, 4, 5, 6]


# -- put_each: one item into several channels ------------------------------------------


def test_put_each_queues_the_same_object_in_every_channel_in_order():
    channels = [Channel() for _ in range(3)]
    item = object()
    assert put_each(channels, item, repr) == 3
    assert put_each(channels, "next", repr) == 3
    for channel in channels:
        got = drain(channel)
        assert got[0] is item and got[1:] == ["next"]


def test_put_each_wakes_each_parked_getter_once_the_putter_parks(spawn):
    channels = [Channel() for _ in range(3)]
    getters = [spawn(channel.get_batch, 10) for channel in channels]
    gevent.sleep(0)
    for i in range(3):
        put_each(channels, i, repr)
    assert all(not g.ready() for g in getters)  # put_each never switches
    assert results(getters) == [[0, 1, 2]] * 3


def test_put_each_calls_a_sink_and_counts_it_if_it_took_the_item():
    got = []
    channel = Channel()
    targets = [Sink(lambda item: got.append(item) is None), channel, Sink(lambda item: False)]
    assert put_each(targets, "x", repr) == 2
    assert got == ["x"] and drain(channel) == ["x"]


def test_a_sink_calls_its_function_and_each_is_distinct():
    got = []
    one, two = Sink(got.append), Sink(got.append)
    one("a")
    two("b")
    assert got == ["a", "b"]
    assert one is not two and one != two
    assert "Sink" in repr(one)


def test_put_each_offers_the_item_to_every_target_before_reporting_the_full_ones():
    first, second, ok = Channel(1, "error"), Channel(1, "error"), Channel()
    first.put("old")
    second.put("old")
    names = {first: "first", second: "second"}
    with pytest.raises(ChannelFull) as info:
        put_each([first, ok, second], "new", names.__getitem__)
    assert (info.value.delivered, info.value.full, info.value.maxsize) == (
        1,
        ("first", "second"),
        1,
    )
    assert drain(ok) == ["new"]
    assert drain(first) == drain(second) == ["old"]
    assert first.statistics().rejected == second.statistics().rejected == 1


def test_put_each_reports_a_sink_that_raises_channel_full_with_the_full_channels():
    def full(item):
        raise ChannelFull(7, "sink is full")

    sink, ok = Sink(full), Channel()
    with pytest.raises(ChannelFull) as info:
        put_each([sink, ok], "x", lambda target: "the sink")
    assert (info.value.delivered, info.value.full, info.value.maxsize) == (1, ("the sink",), 7)
    assert drain(ok) == ["x"]


def test_put_each_skips_a_closed_channel_and_does_not_count_it():
    closed, open_ = Channel(), Channel()
    closed.close()
    assert put_each([closed, open_], "x", repr) == 1
    assert drain(open_) == ["x"]


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "block"])
def test_put_each_applies_each_channels_overflow_policy_as_put_does(spawn, overflow):
    full, other = Channel(1, overflow), Channel()
    full.put("old")
    if overflow == "block":
        consumer = spawn(lambda: [full.get(), full.get()])
        assert put_each([full, other], "new", repr) == 2  # waited for room
        assert results([consumer]) == [["old", "new"]]
    else:
        took = put_each([full, other], "new", repr)
        assert took == (2 if overflow == "drop_oldest" else 1)
        assert drain(full) == (["new"] if overflow == "drop_oldest" else ["old"])
        assert full.dropped == 1
    assert drain(other) == ["new"]


def test_put_each_lets_other_errors_of_a_sink_through():
    after = Channel()

    def broken(item):
        raise ValueError(item)

    with pytest.raises(ValueError):
        put_each([Sink(broken), after], "x", repr)
    assert len(after) == 0


# -- get, get_nowait and timeouts ------------------------------------------------


def test_get_nowait_on_an_empty_channel_raises_channel_empty():
    channel = Channel()
    with pytest.raises(ChannelEmpty):
        channel.get_nowait()
    channel.put(1)
    assert channel.get_nowait() == 1
    with pytest.raises(ChannelEmpty):
        channel.get_nowait()


def test_get_with_a_timeout_raises_receive_timeout_and_leaves_no_waiter():
    channel = Channel()
    with pytest.raises(ReceiveTimeout) as info:
        channel.get(timeout=0.01)
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.01
    assert channel.statistics().waiting_getters == 0
    assert "getters=0" in repr(channel)
    channel.put("later")
    assert channel.get(timeout=PATIENCE) == "later"


def test_get_with_a_zero_timeout_on_an_empty_channel_raises_at_once(spawn):
    channel = Channel()
    ran = []
    spawn(ran.append, "other greenlet ran")
    with pytest.raises(ReceiveTimeout):
        channel.get(timeout=0)
    assert ran == []  # it did not even yield
    assert channel.statistics().waiting_getters == 0


def test_a_timed_out_getter_does_not_take_a_later_item(spawn):
    channel = Channel()
    timed_out = spawn(outcome_of, channel.get, 0.01)
    results([timed_out])
    assert isinstance(timed_out.value, ReceiveTimeout)
    assert_a_parked_getter_gets(spawn, channel, "item")  # a patient one


def test_get_with_a_timeout_returns_an_item_that_arrives_in_time(spawn):
    channel = Channel()
    assert_a_parked_getter_gets(spawn, channel, "item", PATIENCE)
    assert channel.statistics().waiting_getters == 0


@pytest.mark.parametrize("timeout", [-1, True, "1"])
def test_an_invalid_timeout_is_rejected(timeout):
    channel = Channel()
    with pytest.raises(InvalidOption) as info:
        channel.get(timeout=timeout)
    assert info.value.name == "timeout"


@pytest.mark.parametrize("timeout", [None, PATIENCE])
def test_get_on_the_hub_from_an_empty_channel_raises_channel_empty(timeout):
    # The docstring of get(): "ChannelEmpty: called on the gevent hub, which
    # must never wait" -- with or without a timeout, the hub did not wait.
    channel = Channel()
    where, outcome = run_on_hub(channel.get, timeout)
    assert where is gevent.get_hub()
    assert isinstance(outcome, ChannelEmpty), outcome
    channel.put("x")
    assert run_on_hub(channel.get, timeout)[1] == "x"


def test_a_closed_channel_ends_cleanly_on_the_hub_too():
    channel = Channel()
    channel.put(1)
    channel.close()
    assert run_on_hub(list, channel)[1] == [1]
    outcome = run_on_hub(channel.get)[1]
    assert isinstance(outcome, EndOfChannel), outcome


# -- waking by direct switch ----------------------------------------------------
#
# A greenlet that parks in a channel switches straight to a ready getter
# instead of going through the hub, within a budget; these tests drive that
# path by parking in channels rather than in gevent.sleep().


def test_getters_woken_while_the_producer_parks_in_a_channel_are_served_in_order(spawn):
    channel, done = Channel(), Channel()
    served = []

    def getter(name):
        served.append((name, channel.get()))
        done.put(name)

    for name in "abc":
        spawn(getter, name)
    gevent.sleep(0)
    for item in range(3):
        channel.put(item)
    assert served == []
    finished = [done.get(timeout=PATIENCE) for _ in range(3)]
    assert served == [("a", 0), ("b", 1), ("c", 2)]
    assert finished == ["a", "b", "c"]


def test_a_getter_whose_item_was_taken_keeps_waiting_when_the_taker_parks_in_a_channel(spawn):
    channel, other = Channel(), Channel()
    getter = parked_getter(spawn, channel)
    channel.put("x")
    assert channel.get() == "x"  # taken before the getter was woken
    spawn(other.put, "go")
    assert other.get(timeout=PATIENCE) == "go"  # parks in a channel, not in the hub
    assert not getter.dead
    assert channel.statistics().waiting_getters == 1
    channel.put("y")
    assert results([getter]) == ["y"]


def test_a_long_ping_pong_between_two_greenlets_delivers_everything_in_order(spawn):
    pings, pongs = Channel(), Channel()

    def echo():
        for item in pings:
            pongs.put(item)
        pongs.close()

    spawn(echo)
    got = []
    # Many times the direct-switch budget, so the hub fallback is taken too.
    for i in range(1000):
        pings.put(i)
        got.append(pongs.get(timeout=PATIENCE))
    pings.close()
    assert got == list(range(1000))
    assert list(pongs) == []  # echo saw the end and closed its side


def test_a_busy_ping_pong_does_not_starve_other_greenlets(spawn):
    progress = []
    got = []

    def bystander():
        while True:
            progress.append(len(got))
            gevent.sleep(0)

    spawn(bystander)
    gevent.sleep(0)
    pings, pongs = Channel(), Channel()

    def echo():
        for item in pings:
            pongs.put(item)

    spawn(echo)
    for i in range(1000):
        pings.put(i)
        got.append(pongs.get(timeout=PATIENCE))
    assert got == list(range(1000))
    during = [n for n in progress if 0 < n < 1000]
    assert during, "the bystander never ran while the ping-pong was busy"


@pytest.mark.parametrize("seed", range(6))
def test_a_pipeline_of_small_blocking_channels_loses_and_reorders_nothing(spawn, seed):
    rng = random.Random(seed)
    stages = 4
    channels = [Channel(rng.randint(1, 3), "block") for _ in range(stages + 1)]
    producers = 3
    per_producer = 60

    def produce(name):
        for i in range(per_producer):
            channels[0].put((name, i))
            if rng.random() < 0.2:
                gevent.sleep(0)

    def relay(inbox, outbox):
        for item in inbox:
            outbox.put(item)
            if rng.random() < 0.1:
                gevent.sleep(0)
        outbox.close()

    relays = [spawn(relay, channels[i], channels[i + 1]) for i in range(stages)]
    workers = [spawn(produce, name) for name in range(producers)]

    received = []
    finished = spawn(lambda: received.extend(channels[-1]))
    results(workers)
    channels[0].close()
    results([*relays, finished])

    assert len(received) == producers * per_producer
    for name in range(producers):
        assert [i for n, i in received if n == name] == list(range(per_producer))
    for channel in channels:
        stats = channel.statistics()
        assert (stats.pending, stats.dropped, stats.discarded) == (0, 0, 0)
        assert (stats.waiting_getters, stats.waiting_putters) == (0, 0)


# -- overflow="block" ---------------------------------------------------------------


def test_a_producer_blocked_on_a_full_channel_waits_cooperatively_and_loses_nothing(spawn):
    channel = Channel(2, "block")
    sent = []

    def produce():
        for i in range(10):
            channel.put(i)
            sent.append(i)
        return "done"

    producer = spawn(produce)
    gevent.sleep(0)
    assert sent == [0, 1]  # the third put is waiting for room
    stats = channel.statistics()
    assert (stats.pending, stats.waiting_putters) == (2, 1)
    assert "putters=1" in repr(channel)
    received = [channel.get() for _ in range(10)]
    assert received == list(range(10))
    assert results([producer]) == ["done"]
    stats = channel.statistics()
    assert (stats.delivered, stats.dropped, stats.rejected, stats.discarded) == (10, 0, 0, 0)
    assert stats.waiting_putters == 0
    assert stats.high_water == 2


def test_blocked_putters_are_resumed_in_fifo_order_and_their_items_stay_in_order(spawn):
    channel = full_block_channel(1)
    resumed = []

    def put(item):
        channel.put(item)
        resumed.append(item)

    putters = [spawn(put, i) for i in range(5)]
    gevent.sleep(0)
    assert channel.statistics().waiting_putters == 5
    assert resumed == []
    received = [channel.get() for _ in range(6)]
    assert received == ["queued0", 0, 1, 2, 3, 4]
    results(putters)
    assert resumed == [0, 1, 2, 3, 4]


def test_a_later_putter_cannot_overtake_an_earlier_waiting_one(spawn):
    channel = full_block_channel(2)
    early = [spawn(channel.put, "early1"), spawn(channel.put, "early2")]
    gevent.sleep(0)
    assert channel.get() == "queued0"  # room for one: early1 takes it
    late = spawn(channel.put, "late")
    gevent.sleep(0)
    # early2 still waits, so "late" must queue behind it even though early1 has
    # just been resumed.
    assert channel.statistics().waiting_putters == 2
    with pytest.raises(ChannelFull):
        channel.put_nowait("main")
    received = [channel.get() for _ in range(4)]
    assert received == ["queued1", "early1", "early2", "late"]
    assert results([*early, late]) == [True, True, True]


def test_put_nowait_on_a_full_block_channel_raises_channel_full():
    channel = full_block_channel(1)
    with pytest.raises(ChannelFull) as info:
        channel.put_nowait("x")
    assert info.value.maxsize == 1
    assert "put_nowait" in info.value.reason
    assert channel.statistics().rejected == 1
    assert drain(channel) == ["queued0"]


def test_full_block_channel_on_the_hub_raises_instead_of_deadlocking():
    channel = full_block_channel(1)
    where, outcome = run_on_hub(channel.put, "from the hub")
    assert where is gevent.get_hub()
    assert isinstance(outcome, ChannelFull)
    assert "hub" in outcome.reason
    assert outcome.maxsize == 1
    stats = channel.statistics()
    assert (stats.rejected, stats.waiting_putters, stats.pending) == (1, 0, 1)
    assert drain(channel) == ["queued0"]


def test_a_block_channel_with_room_accepts_a_put_from_the_hub_and_wakes_a_getter(spawn):
    channel = Channel(1, "block")
    getter = parked_getter(spawn, channel)
    where, outcome = run_on_hub(channel.put, "from the hub")
    assert where is gevent.get_hub()
    assert outcome is True
    assert results([getter]) == ["from the hub"]


def test_full_block_channel_put_by_its_own_owner_raises_instead_of_waiting_for_itself(spawn):
    channel = full_block_channel(1)

    def consumer():
        channel.owner = gevent.getcurrent()
        return outcome_of(channel.put, "from the owner")

    [outcome] = results([spawn(consumer)])
    assert isinstance(outcome, ChannelFull)
    assert "own consumer" in outcome.reason
    stats = channel.statistics()
    assert (stats.rejected, stats.waiting_putters) == (1, 0)
    assert drain(channel) == ["queued0"]


def test_a_greenlet_other_than_the_owner_still_blocks(spawn):
    channel = full_block_channel(1)
    channel.owner = object()
    putter = spawn(channel.put, "x")
    gevent.sleep(0)
    assert channel.statistics().waiting_putters == 1
    assert channel.get() == "queued0"
    assert results([putter]) == [True]
    assert channel.get_nowait() == "x"


def test_discard_makes_room_for_waiting_putters_in_order(spawn):
    channel = full_block_channel(2)
    putters = [spawn(channel.put, item) for item in "abc"]
    gevent.sleep(0)
    assert channel.discard() == 2
    assert channel.statistics().waiting_putters == 1
    assert channel.get() == "a"  # room again: "c" is queued behind "b"
    assert channel.get() == "b"
    assert results(putters) == [True, True, True]
    assert drain(channel) == ["c"]
    assert channel.statistics().discarded == 2


# -- overflow="drop_oldest" / "drop_newest" / "error" --------------------------------------


def test_drop_oldest_keeps_the_newest_items_and_counts_the_drops():
    channel = Channel(3, "drop_oldest")
    assert [channel.put(i) for i in range(7)] == [True] * 7
    stats = channel.statistics()
    assert (stats.dropped, stats.pending, stats.rejected) == (4, 3, 0)
    assert drain(channel) == [4, 5, 6]


def test_drop_newest_keeps_the_oldest_items_and_reports_each_drop_to_the_putter():
    channel = Channel(3, "drop_newest")
    assert [channel.put(i) for i in range(7)] == [True, True, True, False, False, False, False]
    stats = channel.statistics()
    assert (stats.dropped, stats.pending, stats.rejected) == (4, 3, 0)
    assert drain(channel) == [0, 1, 2]


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_a_dropping_channel_with_room_drops_nothing(overflow):
    channel = Channel(3, overflow)
    assert [channel.put(i) for i in range(3)] == [True] * 3
    assert channel.get() == 0
    assert channel.put(3) is True
    assert channel.statistics().dropped == 0
    assert drain(channel) == [1, 2, 3]


def test_drop_oldest_with_room_for_one_keeps_only_the_last_item():
    channel = Channel(1, "drop_oldest")
    for i in range(5):
        channel.put(i)
    assert drain(channel) == [4]
    assert channel.statistics().dropped == 4


def test_error_policy_raises_channel_full_and_counts_the_rejection():
    channel = Channel(2, "error")
    channel.put("a")
    channel.put("b")
    for attempt in range(3):
        with pytest.raises(ChannelFull) as info:
            channel.put(f"c{attempt}")
        assert info.value.maxsize == 2
        assert "overflow='error'" in info.value.reason
    with pytest.raises(ChannelFull):
        channel.put_nowait("d")
    stats = channel.statistics()
    assert (stats.rejected, stats.dropped, stats.pending) == (4, 0, 2)
    assert drain(channel) == ["a", "b"]
    assert channel.put("e") is True


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_on_overflow_is_called_once_per_episode(overflow):
    calls = []
    channel = Channel(4, overflow, on_overflow=lambda ch: calls.append(ch.statistics().dropped))
    for i in range(10):
        channel.put(i)
    assert calls == [1]  # the first drop only, not one call per drop
    assert channel.statistics().dropped == 6

    channel.get()  # pending 3: above half capacity, the episode goes on
    channel.put("x")
    channel.put("y")
    assert calls == [1]
    assert channel.statistics().dropped == 7

    channel.get()
    channel.get()  # pending 2 = half capacity: the episode ends
    channel.put("p")
    channel.put("q")  # full again, but nothing dropped yet
    assert calls == [1]
    channel.put("r")  # a new episode starts with this drop
    assert calls == [1, 8]
    channel.put("s")
    assert calls == [1, 8]


def test_on_overflow_receives_the_channel():
    seen = []
    channel = Channel(1, "drop_newest", on_overflow=seen.append)
    channel.put(1)
    channel.put(2)
    assert seen == [channel]


def test_discard_ends_an_overflow_episode():
    calls = []
    channel = Channel(2, "drop_newest", on_overflow=calls.append)
    for i in range(3):
        channel.put(i)
    assert channel.discard() == 2
    for i in range(3):
        channel.put(i)
    assert len(calls) == 2


@pytest.mark.parametrize("overflow", ["block", "error"])
def test_on_overflow_is_not_called_by_policies_that_do_not_drop(overflow):
    calls = []
    channel = Channel(1, overflow, on_overflow=calls.append)
    channel.put(1)
    outcome_of(channel.put_nowait, 2)
    assert calls == []


# -- close, discard and iteration ---------------------------------------------------------


def test_close_is_idempotent():
    channel = Channel()
    channel.put(1)
    channel.close()
    channel.close()
    assert channel.closed is True
    assert channel.statistics().closed is True
    assert channel.statistics().discarded == 0
    assert drain(channel) == [1]


@pytest.mark.parametrize("method", ["put", "put_nowait"])
@pytest.mark.parametrize("overflow", list(Overflow))
def test_put_after_close_raises_channel_closed(method, overflow):
    channel = Channel(4, overflow)
    channel.close()
    with pytest.raises(ChannelClosed):
        getattr(channel, method)("x")
    assert len(channel) == 0


def test_getters_drain_what_is_queued_then_get_end_of_channel():
    channel = Channel()
    channel.put(1)
    channel.put(2)
    channel.close()
    assert channel.get() == 1
    assert channel.get_nowait() == 2
    with pytest.raises(EndOfChannel):
        channel.get()
    with pytest.raises(EndOfChannel):
        channel.get_nowait()
    with pytest.raises(EndOfChannel):
        channel.get(timeout=PATIENCE)
    assert channel.statistics().delivered == 2


def test_close_wakes_every_parked_getter_with_end_of_channel(spawn):
    channel = Channel()
    getters = [parked_getter(spawn, channel) for _ in range(3)]
    assert channel.statistics().waiting_getters == 3
    channel.close()
    outcomes = results(getters)
    assert all(isinstance(outcome, EndOfChannel) for outcome in outcomes), outcomes
    assert channel.statistics().waiting_getters == 0


def test_parked_getters_woken_by_close_still_receive_what_was_queued_first(spawn):
    channel = Channel()
    getters = [parked_getter(spawn, channel) for _ in range(3)]
    channel.put("last words")
    channel.close()
    first, *rest = results(getters)
    assert first == "last words"
    assert all(isinstance(outcome, EndOfChannel) for outcome in rest), rest


def test_close_wakes_parked_putters_with_channel_closed_and_counts_their_items(spawn):
    channel = full_block_channel(1)
    putters = [spawn(outcome_of, channel.put, item) for item in "ab"]
    gevent.sleep(0)
    assert channel.statistics().waiting_putters == 2
    channel.close()
    outcomes = results(putters)
    assert all(isinstance(outcome, ChannelClosed) for outcome in outcomes), outcomes
    stats = channel.statistics()
    assert (stats.discarded, stats.waiting_putters, stats.pending) == (2, 0, 1)
    assert drain(channel) == ["queued0"]
    with pytest.raises(EndOfChannel):
        channel.get()


def test_discard_returns_how_many_items_it_dropped():
    channel = Channel()
    assert channel.discard() == 0
    for i in range(5):
        channel.put(i)
    assert channel.discard() == 5
    assert len(channel) == 0
    channel.put("after")
    assert channel.discard() == 1
    assert channel.statistics().discarded == 6
    assert channel.statistics().delivered == 0


def test_discard_on_a_closed_channel_makes_the_next_get_end_the_channel():
    channel = Channel()
    channel.put(1)
    channel.close()
    assert channel.discard() == 1
    with pytest.raises(EndOfChannel):
        channel.get()


def test_iteration_stops_at_the_end_of_the_channel():
    channel = Channel()
    for i in range(3):
        channel.put(i)
    channel.close()
    assert list(channel) == [0, 1, 2]
    assert list(channel) == []


def test_iteration_follows_a_live_producer_until_it_closes(spawn):
    channel = Channel(2, "block")

    def produce():
        for i in range(20):
            channel.put(i)
        channel.close()

    spawn(produce)
    assert list(channel) == list(range(20))
    assert channel.statistics().delivered == 20


# -- killed waiters ---------------------------------------------------------------------


def test_a_killed_getter_leaves_no_waiter_behind(spawn):
    channel = Channel()
    getter = parked_getter(spawn, channel)
    assert channel.statistics().waiting_getters == 1
    getter.kill(timeout=PATIENCE)
    assert getter.dead
    assert channel.statistics().waiting_getters == 0
    assert "getters=0" in repr(channel)
    channel.put("x")
    assert channel.get_nowait() == "x"
    assert_a_parked_getter_gets(spawn, channel, "y")  # a replacement


def test_a_getter_killed_while_waiting_with_a_timeout_leaves_no_waiter_behind(spawn):
    channel = Channel()
    getter = parked_getter(spawn, channel, PATIENCE)
    getter.kill(timeout=PATIENCE)
    assert channel.statistics().waiting_getters == 0
    channel.put("x")
    assert channel.get(timeout=PATIENCE) == "x"


def test_a_killed_putter_leaves_no_waiter_behind_and_puts_flow_again(spawn):
    channel = full_block_channel(1)
    putter = spawn(channel.put, "never queued")
    gevent.sleep(0)
    assert channel.statistics().waiting_putters == 1
    putter.kill(timeout=PATIENCE)
    assert putter.dead
    assert channel.statistics().waiting_putters == 0
    assert "putters=0" in repr(channel)
    assert channel.get() == "queued0"
    assert len(channel) == 0
    ran = []
    spawn(ran.append, "other greenlet ran")
    assert channel.put("next") is True  # the fast path again: no switch
    assert ran == []
    assert drain(channel) == ["next"]


def test_a_killed_putter_in_the_middle_of_the_queue_is_skipped(spawn):
    channel = full_block_channel(1)
    putters = [spawn(channel.put, item) for item in "abc"]
    gevent.sleep(0)
    putters[1].kill(timeout=PATIENCE)
    assert channel.statistics().waiting_putters == 2
    received = [channel.get() for _ in range(3)]
    assert received == ["queued0", "a", "c"]
    assert results([putters[0], putters[2]]) == [True, True]
    assert channel.statistics().waiting_putters == 0


def test_a_putter_that_gives_up_under_an_outer_timeout_leaves_no_waiter_behind():
    channel = full_block_channel(1)
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.01):
        channel.put("given up")
    assert channel.statistics().waiting_putters == 0
    assert channel.get() == "queued0"
    assert channel.put("next") is True
    assert drain(channel) == ["next"]


def test_an_outer_timeout_reaches_a_getter_as_itself_not_as_receive_timeout():
    channel = Channel()
    outer = gevent.Timeout(0.01)
    with pytest.raises(gevent.Timeout) as info, outer:
        channel.get(timeout=PATIENCE)
    assert info.value is outer
    assert not isinstance(info.value, ReceiveTimeout)
    assert channel.statistics().waiting_getters == 0
    channel.put("x")
    assert channel.get_nowait() == "x"


@pytest.mark.parametrize("side", ["getter", "putter"])
def test_a_foreign_switch_into_a_waiter_is_reported_and_leaves_no_waiter(spawn, side):
    if side == "getter":
        channel = Channel()
        waiter = spawn(outcome_of, channel.get)
    else:
        channel = full_block_channel(1)
        waiter = spawn(outcome_of, channel.put, "x")
    gevent.sleep(0)
    gevent.get_hub().loop.run_callback(waiter.switch, "not my waiter")
    [outcome] = results([waiter])
    assert isinstance(outcome, AssertionError)
    assert "invalid switch" in str(outcome)
    stats = channel.statistics()
    assert (stats.waiting_getters, stats.waiting_putters) == (0, 0)


# -- statistics and repr ----------------------------------------------------------


def test_statistics_is_a_frozen_snapshot():
    channel = Channel(8, "drop_newest")
    stats = channel.statistics()
    assert isinstance(stats, ChannelStatistics)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.pending = 3
    channel.put(1)
    assert stats.pending == 0
    assert channel.statistics().pending == 1


def test_statistics_records_every_counter():
    channel = Channel(3, "drop_oldest")
    for i in range(5):
        channel.put(i)
    channel.get()
    assert channel.statistics() == ChannelStatistics(
        pending=2,
        maxsize=3,
        overflow="drop_oldest",
        delivered=1,
        dropped=2,
        discarded=0,
        rejected=0,
        high_water=3,
        waiting_getters=0,
        waiting_putters=0,
        closed=False,
    )
    channel.close()
    assert channel.discard() == 2
    stats = channel.statistics()
    assert (stats.pending, stats.delivered, stats.dropped, stats.discarded) == (0, 1, 2, 2)
    assert stats.closed is True


def test_high_water_is_the_exact_peak_of_pending():
    channel = Channel(None)
    assert channel.statistics().high_water == 0
    for i in range(3):
        channel.put(i)
    assert channel.statistics().high_water == 3
    channel.get()
    channel.put(3)
    channel.put(4)  # pending 4
    assert channel.statistics().high_water == 4
    drain(channel)
    channel.put(5)
    assert channel.statistics().high_water == 4
    assert channel.statistics().pending == 1


def test_high_water_of_a_dropping_channel_is_its_capacity():
    channel = Channel(3, "drop_newest")
    for i in range(10):
        channel.put(i)
    drain(channel)
    assert channel.statistics().high_water == 3


def test_high_water_remembers_a_peak_that_was_discarded():
    channel = Channel(None)
    for i in range(5):
        channel.put(i)
    assert channel.discard() == 5
    channel.put("after")
    assert channel.statistics().high_water == 5


def test_repr_shows_state_pending_and_waiters(spawn):
    channel = Channel(1, "block")
    assert repr(channel) == (
        "<Channel open pending=0 maxsize=1 overflow=block getters=0 putters=0 dropped=0>"
    )
    parked_getter(spawn, channel)
    assert "getters=1" in repr(channel)
    channel.put("a")
    gevent.sleep(0)
    channel.put("b")
    spawn(outcome_of, channel.put, "c")
    gevent.sleep(0)
    assert repr(channel) == (
        "<Channel open pending=1 maxsize=1 overflow=block getters=0 putters=1 dropped=0>"
    )
    channel.close()
    gevent.sleep(0)
    assert repr(channel) == (
        "<Channel closed pending=1 maxsize=1 overflow=block getters=0 putters=0 dropped=0>"
    )


def test_repr_of_an_unbounded_dropping_channel():
    channel = Channel(None, Overflow.DROP_OLDEST)
    assert "unbounded" in repr(channel)
    assert "overflow=drop_oldest" in repr(channel)


# -- options ------------------------------------------------------------------------


def test_the_defaults_are_a_large_blocking_channel():
    channel = Channel()
    assert channel.maxsize == DEFAULT_MAXSIZE
    assert channel.overflow is Overflow.BLOCK
    assert channel.closed is False
    assert channel.owner is None


def test_maxsize_none_is_unbounded():
    channel = Channel(None, "block")
    count = DEFAULT_MAXSIZE + 10
    for i in range(count):
        assert channel.put_nowait(i) is True
    stats = channel.statistics()
    assert stats.maxsize is None
    assert (stats.pending, stats.dropped, stats.rejected) == (count, 0, 0)


@pytest.mark.parametrize("overflow", ["drop_oldest", Overflow.DROP_OLDEST])
def test_overflow_accepts_a_policy_or_its_name(overflow):
    channel = Channel(1, overflow)
    assert channel.overflow is Overflow.DROP_OLDEST
    assert str(channel.overflow) == "drop_oldest"


@pytest.mark.parametrize("maxsize", [0, -1, 1.5, True, False, "10"])
def test_an_invalid_maxsize_is_rejected_with_a_clear_message(maxsize):
    with pytest.raises(InvalidOption) as info:
        Channel(maxsize)
    exc = info.value
    assert isinstance(exc, ValueError)
    assert isinstance(exc, GreenbusError)
    assert (exc.name, exc.value) == ("maxsize", maxsize)
    assert (
        str(exc) == f"invalid maxsize={maxsize!r}: expected a positive int, or None for unbounded"
    )


@pytest.mark.parametrize("overflow", ["BLOCK", "drop", "", None, 1, ["block"]])
def test_an_invalid_overflow_is_rejected_naming_the_policies(overflow):
    with pytest.raises(InvalidOption) as info:
        Channel(4, overflow)
    exc = info.value
    assert isinstance(exc, ValueError)
    assert (exc.name, exc.value) == ("overflow", overflow)
    for policy in ("'block'", "'drop_oldest'", "'drop_newest'", "'error'"):
        assert policy in str(exc)


def test_a_non_callable_on_overflow_is_rejected():
    with pytest.raises(InvalidOption) as info:
        Channel(4, "drop_newest", on_overflow="log it")
    assert info.value.name == "on_overflow"


def test_channel_errors_share_one_base():
    for error in (ChannelFull(1), ChannelEmpty(), ChannelClosed(), EndOfChannel()):
        assert isinstance(error, ChannelError)
        assert isinstance(error, GreenbusError)
