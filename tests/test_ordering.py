"""A property test of the ordering contract (docs/ordering.md).

Every subscription receives messages in the order they were emitted: for
every (subscriber, publisher) pair, the publisher's sequence numbers arrive
strictly increasing, whether the subscriber is exact or wildcard, a handler
or an iterator, fast or slow, bounded or not.  Nothing is lost under
``overflow="block"``; under the drop policies every message a subscriber
matched was either received or counted as dropped (under ``"error"``,
counted as rejected).

Publishers are gevent greenlets plus one real (unpatched) OS thread.  Set
GREENBUS_HYPOTHESIS_EXAMPLES for a longer run, e.g. 2000.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import gevent
from hypothesis import example, given, settings
from hypothesis import strategies as st
from waiting import OSThread, wait_until

from greenbus import Bus, ChannelFull, Message, Subscription

EXAMPLES = int(os.environ.get("GREENBUS_HYPOTHESIS_EXAMPLES", "200"))

TOPICS = ("o.a", "o.b", "o.a.x", "o.b.y")
PATTERNS = ("o.a", "o.b", "o.*", "o.>", "o.*.x", "o.a.x", ">")
POLICIES = ("block", "drop_oldest", "drop_newest", "error")

#: A pause: None does not yield, 0 yields once (gevent.sleep(0) / time.sleep(0)),
#: a float sleeps that long.
pauses = st.sampled_from([None, None, 0, 0.0002])


def matches(pattern: str, topic: str) -> bool:
    """The wildcard rules, written independently of greenbus.topics."""
    p = pattern.split(".")
    t = topic.split(".")
    if p[-1] == ">":  # one or more trailing tokens
        if len(t) < len(p):
            return False
        p, t = p[:-1], t[: len(p) - 1]
    elif len(p) != len(t):
        return False
    return all(a in ("*", b) for a, b in zip(p, t, strict=True))


def pause_greenlet(pause: float | None) -> None:
    if pause is not None:
        gevent.sleep(pause)


def pause_thread(pause: float | None) -> None:
    if pause is not None:
        time.sleep(pause)


@dataclass(frozen=True)
class Subscriber:
    pattern: str
    consumer: str  # "handler" or "iterator"
    maxsize: int | None
    overflow: str
    pauses: tuple[float | None, ...]  # cycled: the pause after each message


subscribers = st.builds(
    Subscriber,
    pattern=st.sampled_from(PATTERNS),
    consumer=st.sampled_from(["handler", "iterator"]),
    maxsize=st.sampled_from([None, 1, 2, 3, 8]),
    overflow=st.sampled_from(POLICIES),
    pauses=st.lists(pauses, min_size=1, max_size=4).map(tuple),
)
#: One publisher: (topic, pause after the emit) per message.
publishers = st.lists(st.tuples(st.sampled_from(TOPICS), pauses), max_size=25)


def consume(sub_spec: Subscriber, received: list[tuple[int, int]]) -> Callable[[Message], None]:
    """The per-message work of a subscriber: record, then maybe be slow."""
    count = 0

    def on_message(msg: Message) -> None:
        nonlocal count
        received.append(msg.data)
        pause_greenlet(sub_spec.pauses[count % len(sub_spec.pauses)])
        count += 1

    return on_message


def run_scenario(
    specs: list[Subscriber],
    greenlet_publishers: list[list[tuple[str, float | None]]],
    thread_publisher: list[tuple[str, float | None]],
) -> tuple[list[Subscription], list[list[tuple[int, int]]]]:
    """Publish everything, let the consumers run, close the bus; return what arrived."""
    bus = Bus("ordering-property")
    try:
        subs: list[Subscription] = []
        received: list[list[tuple[int, int]]] = [[] for _ in specs]
        readers = []
        for spec, got in zip(specs, received, strict=True):
            work = consume(spec, got)
            if spec.consumer == "handler":
                subs.append(bus.subscribe(spec.pattern, work, **_opts(spec)))
            else:
                sub = bus.subscribe(spec.pattern, **_opts(spec))
                subs.append(sub)
                readers.append(gevent.spawn(_read_all, sub, work))

        def publish_greenlet(pid: int, plan: list[tuple[str, float | None]]) -> None:
            for seq, (topic, pause) in enumerate(plan):
                try:
                    bus.emit(topic, (pid, seq))
                except ChannelFull:
                    pass  # an "error" subscriber was full: counted as rejected
                pause_greenlet(pause)

        def publish_thread(pid: int, plan: list[tuple[str, float | None]]) -> None:
            for seq, (topic, pause) in enumerate(plan):
                bus.emit(topic, (pid, seq))  # never raises ChannelFull: handed over
                pause_thread(pause)

        thread_pid = len(greenlet_publishers)
        thread = OSThread(publish_thread, thread_pid, thread_publisher)
        greenlets = [
            gevent.spawn(publish_greenlet, pid, p) for pid, p in enumerate(greenlet_publishers)
        ]
        gevent.joinall(greenlets, timeout=20, raise_error=True)
        assert all(g.ready() for g in greenlets), "a publisher is stuck"
        thread.join(timeout=20)

        # Let every hand-off from the thread be routed before closing: only
        # "block" subscribers can hold it up, so wait until they have it all.
        plans = [*greenlet_publishers, thread_publisher]

        def routed() -> bool:
            if bus.stats().thread_pending:
                return False
            return all(
                len(got) == _expected_count(spec, plans)
                for spec, got in zip(specs, received, strict=True)
                if spec.overflow == "block"
            )

        wait_until(routed, timeout=20, what="block subscribers to receive everything")
        bus.close(timeout=20)
        gevent.joinall(readers, timeout=20, raise_error=True)
        assert all(r.ready() for r in readers), "an iterator did not end after close()"
        return subs, received
    finally:
        bus.close(timeout=1)


def _opts(spec: Subscriber) -> dict[str, object]:
    return {"maxsize": spec.maxsize, "overflow": spec.overflow}


def _read_all(sub: Subscription, work: Callable[[Message], None]) -> None:
    for msg in sub:
        work(msg)


def _expected(spec: Subscriber, plan: list[tuple[str, float | None]]) -> list[int]:
    return [seq for seq, (topic, _) in enumerate(plan) if matches(spec.pattern, topic)]


def _expected_count(spec: Subscriber, plans: list[list[tuple[str, float | None]]]) -> int:
    return sum(len(_expected(spec, plan)) for plan in plans)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    specs=st.lists(subscribers, min_size=1, max_size=4),
    greenlet_publishers=st.lists(publishers, min_size=1, max_size=3),
    thread_publisher=publishers,
)
@example(  # everyone bounded to one message and blocking: maximal back-pressure
    specs=[
        Subscriber("o.a", "handler", 1, "block", (0,)),
        Subscriber("o.*", "iterator", 1, "block", (None, 0)),
        Subscriber(">", "handler", 1, "block", (0.0002,)),
    ],
    greenlet_publishers=[[("o.a", None)] * 10, [("o.b", 0), ("o.a", None)] * 5],
    thread_publisher=[("o.a", None), ("o.a.x", None)] * 10,
)
@example(  # drop policies under a slow consumer
    specs=[
        Subscriber("o.>", "handler", 2, "drop_oldest", (0.0002,)),
        Subscriber("o.>", "iterator", 2, "drop_newest", (0.0002,)),
        Subscriber("o.>", "iterator", 2, "error", (0,)),
    ],
    greenlet_publishers=[[("o.a", None)] * 20, [("o.a.x", None)] * 20],
    thread_publisher=[("o.b.y", None)] * 20,
)
def test_no_subscriber_ever_sees_a_publishers_messages_out_of_order(
    specs, greenlet_publishers, thread_publisher
):
    subs, received = run_scenario(specs, greenlet_publishers, thread_publisher)

    plans = [*greenlet_publishers, thread_publisher]
    for spec, sub, got in zip(specs, subs, received, strict=True):
        stats = sub.statistics()
        assert stats.handler_errors == 0
        for pid, plan in enumerate(plans):
            seqs = [seq for (who, seq) in got if who == pid]
            expected = _expected(spec, plan)
            where = f"{spec} from publisher {pid}"
            assert all(a < b for a, b in pairwise(seqs)), f"reordered: {seqs} for {where}"
            assert set(seqs) <= set(expected), f"unmatched messages for {where}"
            if spec.overflow == "block":
                assert seqs == expected, f"lost under block for {where}"
        sent = _expected_count(spec, plans)
        if spec.overflow == "block":
            assert stats.dropped == stats.rejected == stats.discarded == 0
        elif spec.overflow == "error":
            assert len(got) + stats.rejected == sent, f"{spec}: {stats}"
        else:
            assert len(got) + stats.dropped == sent, f"{spec}: {stats}"
