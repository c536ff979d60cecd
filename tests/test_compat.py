"""Tests for ``greenbus.compat.EventEmitter``, the pyee drop-in.

These tests run without monkey-patching, so the listeners run in greenbus's
shared daemon hub thread while the test runs in its own OS thread.  The test
thread waits for them with ``threading.Event`` or :func:`wait_until`, never
with a fixed sleep; ``shutdown(wait=True)`` is the barrier where a test must
know that nothing more will be delivered.  Emits from the listeners' own
thread take another path (the one every emit takes once monkey-patched):
the tests of it run their scenario there, with :func:`on_home`.  One test
runs a monkey-patched interpreter in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pyee
import pytest

from greenbus import BusClosed, ChannelFull, InvalidOption
from greenbus.compat import EventEmitter

TIMEOUT = 5.0
ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT) -> bool:
    """Poll ``predicate`` from the test thread; return False if it stays false."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def recorded(ee: EventEmitter, event: str = "data") -> list[Any]:
    """A list that a new listener of ``event``, the list's own ``append``, fills with the
    argument of each event."""
    got: list[Any] = []
    ee.on(event, got.append)
    return got


def emit_each(ee: EventEmitter, values: Iterable[Any], event: str = "data") -> None:
    """``ee.emit(event, value)`` for each value, in order."""
    for value in values:
        ee.emit(event, value)


def run_script(source: str) -> dict[str, Any]:
    """Run ``source`` in a fresh interpreter from the checkout, warnings fatal, and return
    the JSON object it prints last; it must exit with 0."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", source],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def on_home(ee: EventEmitter, scenario: Callable[[], Any]) -> Any:
    """Run ``scenario()`` on ``ee``'s home thread, in a listener greenlet of another
    emitter, where ``ee.emit`` takes its fast path; return its result or raise its
    exception here."""
    done = threading.Event()
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, scenario()))
        except BaseException as exc:
            outcome.append((False, exc))
        finally:
            done.set()

    host = EventEmitter()
    host.on("run", run)
    host.emit("run")
    assert done.wait(TIMEOUT)
    host.shutdown()
    [(returned, value)] = outcome
    if not returned:
        raise value
    return value


def green_wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT) -> bool:
    """:func:`wait_until` for a greenlet of the hub thread: yields to the others."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0)
    return True


@contextlib.contextmanager
def hub_thread_held(ee: EventEmitter) -> Iterator[None]:
    """Block the shared hub thread for real: no listener runs inside the block."""
    held = threading.Event()
    let_go = threading.Event()

    def hold() -> None:
        held.set()
        let_go.wait(TIMEOUT)

    ee.on("hold", hold)
    ee.emit("hold")
    assert held.wait(TIMEOUT)
    try:
        yield
    finally:
        let_go.set()


@pytest.fixture
def make_emitter(request: pytest.FixtureRequest) -> Callable[..., EventEmitter]:
    """Make emitters that are shut down when the test ends."""

    def make(**options: Any) -> EventEmitter:
        emitter = EventEmitter(**options)
        request.addfinalizer(emitter.shutdown)
        return emitter

    return make


@pytest.fixture
def ee(make_emitter: Callable[..., EventEmitter]) -> EventEmitter:
    return make_emitter()


# -- the pyee surface --------------------------------------------------------


def test_the_emitter_is_a_pyee_event_emitter(ee: EventEmitter) -> None:
    assert isinstance(ee, pyee.EventEmitter)


def test_emit_returns_true_when_a_listener_is_attached(ee: EventEmitter) -> None:
    ee.on("data", lambda value: None)

    assert ee.emit("data", 1) is True


def test_emit_returns_false_without_listeners_like_pyee(ee: EventEmitter) -> None:
    assert pyee.EventEmitter().emit("data", 1) is False
    assert ee.emit("data", 1) is False


def test_emitting_error_without_a_listener_raises_the_exception_like_pyee(
    ee: EventEmitter,
) -> None:
    boom = ValueError("boom")

    with pytest.raises(ValueError) as raised:
        ee.emit("error", boom)

    assert raised.value is boom


def test_emitting_error_without_a_listener_or_an_exception_raises_pyee_error(
    ee: EventEmitter,
) -> None:
    with pytest.raises(pyee.PyeeError, match="Uncaught, unspecified 'error' event"):
        ee.emit("error", "not an exception")


def test_emitting_error_with_a_listener_delivers_it_instead_of_raising(ee: EventEmitter) -> None:
    received = recorded(ee, "error")
    boom = ValueError("boom")

    assert ee.emit("error", boom) is True
    assert wait_until(lambda: received == [boom])


def test_listeners_and_event_names_match_pyee_after_each_change(ee: EventEmitter) -> None:
    reference = pyee.EventEmitter()

    def first() -> None: ...

    def second() -> None: ...

    def third() -> None: ...

    def snapshot(emitter: pyee.EventEmitter) -> tuple[object, ...]:
        return (
            emitter.event_names(),
            emitter.listeners("a"),
            emitter.listeners("b"),
            emitter.listeners("never"),
        )

    steps: list[Callable[[pyee.EventEmitter], object]] = [
        lambda e: e.on("a", first),
        lambda e: e.on("a", second),
        lambda e: e.once("b", third),
        lambda e: e.remove_listener("a", first),
        lambda e: e.remove_all_listeners("b"),  # pyee keeps "b" as an empty event
        lambda e: e.remove_all_listeners(),
    ]
    for step in steps:
        step(reference)
        step(ee)
        assert snapshot(ee) == snapshot(reference)
    assert ee.event_names() == set()


def test_new_listener_is_fired_with_the_event_and_the_function(ee: EventEmitter) -> None:
    added: list[tuple[str, Callable[..., Any]]] = []
    ee.on("new_listener", lambda event, f: added.append((event, f)))

    def on_data() -> None: ...

    def on_done() -> None: ...

    ee.on("data", on_data)
    ee.once("done", on_done)

    assert wait_until(lambda: len(added) == 2)
    assert added == [("data", on_data), ("done", on_done)]


def test_positional_and_keyword_arguments_are_passed_through(ee: EventEmitter) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    ee.on("data", lambda *args, **kwargs: calls.append((args, kwargs)))
    ee.once("data", lambda *args, **kwargs: calls.append((args, kwargs)))

    ee.emit("data", 1, "two", key="value", other=None)

    assert wait_until(lambda: len(calls) == 2)
    assert calls == [((1, "two"), {"key": "value", "other": None})] * 2


def test_invalid_channel_options_are_rejected_up_front() -> None:
    with pytest.raises(InvalidOption):
        EventEmitter(maxsize=0)
    with pytest.raises(InvalidOption):
        EventEmitter(overflow="sometimes")


# -- emit never blocks; order and concurrency --------------------------------


def test_a_blocking_listener_does_not_hold_the_emitter(ee: EventEmitter) -> None:
    emit_returned = threading.Event()
    finished = threading.Event()

    def slow(value: int) -> None:
        time.sleep(0.02)  # real, blocking
        # A blocking emit would make this wait time out; the assertion below
        # would then fail instead of racing the sleep.
        emit_returned.wait(TIMEOUT)
        finished.set()

    ee.on("data", slow)

    assert ee.emit("data", 1) is True
    assert not finished.is_set()
    emit_returned.set()
    assert finished.wait(TIMEOUT)


def test_every_listener_sees_a_thousand_events_in_emit_order(ee: EventEmitter) -> None:
    first = recorded(ee)
    second = recorded(ee)

    emit_each(ee, range(1000))

    assert wait_until(lambda: len(first) == len(second) == 1000)
    assert first == list(range(1000))
    assert second == list(range(1000))


def test_each_emitting_thread_keeps_its_own_order(ee: EventEmitter) -> None:
    seen: list[tuple[int, int]] = []
    ee.on("data", lambda thread, i: seen.append((thread, i)))
    start = threading.Barrier(3)

    def emit_all(thread: int) -> None:
        start.wait(TIMEOUT)
        for i in range(1000):
            ee.emit("data", thread, i)

    threads = [threading.Thread(target=emit_all, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)

    assert wait_until(lambda: len(seen) == 3000)
    for n in range(3):
        assert [i for thread, i in seen if thread == n] == list(range(1000))


def test_one_listeners_calls_never_overlap(ee: EventEmitter) -> None:
    active = 0
    most_active = 0
    calls = 0

    def listener(i: int) -> None:
        nonlocal active, most_active, calls
        active += 1
        most_active = max(most_active, active)
        gevent.sleep(0)  # let any other call of this listener start, if it could
        active -= 1
        calls += 1

    ee.on("data", listener)
    emit_each(ee, range(200))

    assert wait_until(lambda: calls == 200)
    assert most_active == 1


def test_a_slow_listener_does_not_delay_a_fast_one(ee: EventEmitter) -> None:
    # The slow listener waits cooperatively, in gevent, for a 'release' event
    # that the test emits only after checking the fast listener.  (Unpatched,
    # a listener blocked for real, in time.sleep, holds the whole shared hub
    # thread, and with it every listener of every emitter.)
    release = gevent.event.Event()
    slow_started = threading.Event()
    slow_done: list[int] = []

    def slow(i: int) -> None:
        slow_started.set()
        release.wait(TIMEOUT)
        slow_done.append(i)

    ee.on("data", slow)
    fast_done = recorded(ee)
    ee.on("release", release.set)
    emit_each(ee, range(100))

    assert wait_until(lambda: len(fast_done) == 100)
    assert slow_started.is_set()
    assert slow_done == []
    ee.emit("release")
    assert wait_until(lambda: len(slow_done) == 100)
    assert fast_done == slow_done == list(range(100))


def test_listeners_of_every_emitter_run_in_one_shared_daemon_thread(
    make_emitter: Callable[..., EventEmitter],
) -> None:
    threads: list[threading.Thread] = []
    for emitter in (make_emitter(), make_emitter()):
        emitter.on("data", lambda: threads.append(threading.current_thread()))
        emitter.emit("data")

    assert wait_until(lambda: len(threads) == 2)
    assert threads[0] is threads[1]
    assert threads[0] is not threading.current_thread()
    assert threads[0].daemon


# -- once and removal --------------------------------------------------------


def test_once_runs_exactly_once_when_several_events_were_emitted_before_it_ran(
    ee: EventEmitter,
) -> None:
    calls: list[int] = []
    ee.once("data", calls.append)

    with hub_thread_held(ee):
        emit_each(ee, range(5))
    ee.shutdown()

    assert calls == [0]
    assert ee.listeners("data") == []


def test_emit_returns_false_once_the_once_listener_has_had_its_event_like_pyee(
    ee: EventEmitter,
) -> None:
    reference = pyee.EventEmitter()
    reference.once("data", lambda i: None)
    ee.once("data", lambda i: None)

    with hub_thread_held(ee):
        returned = [ee.emit("data", i) for i in range(3)]

    assert [reference.emit("data", i) for i in range(3)] == [True, False, False]
    assert returned == [True, False, False]


def test_remove_listener_stops_later_deliveries_but_keeps_earlier_ones(ee: EventEmitter) -> None:
    removed = recorded(ee)
    kept = recorded(ee)

    emit_each(ee, range(5))
    ee.remove_listener("data", removed.append)
    emit_each(ee, range(5, 10))
    ee.shutdown()

    assert removed == [0, 1, 2, 3, 4]
    assert kept == list(range(10))
    assert ee.listeners("data") == [kept.append]


def test_remove_all_listeners_of_one_event_leaves_the_others(ee: EventEmitter) -> None:
    x1 = recorded(ee, "x")
    x2 = recorded(ee, "x")
    y = recorded(ee, "y")
    for i in range(3):
        ee.emit("x", i)
        ee.emit("y", i)

    ee.remove_all_listeners("x")

    assert ee.emit("x", 3) is False
    assert ee.emit("y", 3) is True
    ee.shutdown()
    assert x1 == x2 == [0, 1, 2]
    assert y == [0, 1, 2, 3]
    assert ee.listeners("x") == []


def test_remove_all_listeners_removes_every_listener(ee: EventEmitter) -> None:
    x = recorded(ee, "x")
    y = recorded(ee, "y")
    ee.emit("x", 0)
    ee.emit("y", 0)

    ee.remove_all_listeners()

    assert ee.emit("x", 1) is False
    assert ee.emit("y", 1) is False
    ee.shutdown()
    assert x == [0]
    assert y == [0]
    assert ee.event_names() == set()


REMOVALS: dict[str, Callable[[EventEmitter, Callable[..., Any]], None]] = {
    "remove_listener": lambda e, f: e.remove_listener("data", f),
    "remove_all_listeners(event)": lambda e, f: e.remove_all_listeners("data"),
    "remove_all_listeners()": lambda e, f: e.remove_all_listeners(),
}


@pytest.mark.parametrize("remove", REMOVALS.values(), ids=REMOVALS.keys())
def test_a_once_listener_removed_after_an_emit_still_gets_that_event(
    ee: EventEmitter, remove: Callable[[EventEmitter, Callable[..., Any]], None]
) -> None:
    # As with pyee, whose emit has called the listener before removal returns.
    calls: list[int] = []
    ee.once("data", calls.append)

    with hub_thread_held(ee):
        assert ee.emit("data", 0) is True
        remove(ee, calls.append)
        assert ee.emit("data", 1) is False
    ee.shutdown()

    assert calls == [0]


# -- on the listeners' own thread: emit's fast path ---------------------------


def test_on_the_home_thread_emit_returns_before_any_listener_runs(ee: EventEmitter) -> None:
    got = recorded(ee)

    def scenario() -> tuple[bool, list[Any]]:
        return ee.emit("data", 0), list(got)

    assert on_home(ee, scenario) == (True, [])
    ee.shutdown()
    assert got == [0]


def test_on_the_home_thread_a_listener_added_or_removed_between_emits_is_seen_by_the_next(
    ee: EventEmitter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="greenbus.compat")
    first: list[int] = []
    second: list[int] = []

    def scenario() -> None:
        ee.on("data", first.append)
        ee.emit("data", 0)  # the event's channels are known from here on
        ee.on("data", second.append)
        ee.emit("data", 1)
        ee.remove_listener("data", first.append)
        ee.emit("data", 2)
        ee.on("data", first.append)
        ee.emit("data", 3)

    on_home(ee, scenario)
    ee.shutdown()

    assert first == [0, 1, 3]
    assert second == [1, 2, 3]
    assert caplog.records == []  # nothing was put into a removed listener's channel


@pytest.mark.parametrize("remove", REMOVALS.values(), ids=REMOVALS.keys())
def test_on_the_home_thread_emit_after_a_removal_returns_false_like_pyee(
    ee: EventEmitter, remove: Callable[[EventEmitter, Callable[..., Any]], None]
) -> None:
    got: list[int] = []

    def scenario() -> list[bool]:
        ee.on("data", got.append)
        returned = [ee.emit("data", 0)]
        remove(ee, got.append)
        return [*returned, ee.emit("data", 1)]

    assert on_home(ee, scenario) == [True, False]
    ee.shutdown()
    assert got == [0]


def test_on_the_home_thread_once_gets_one_event_beside_a_plain_listener(
    ee: EventEmitter,
) -> None:
    once: list[int] = []
    always: list[int] = []
    alone: list[int] = []

    def scenario() -> tuple[list[bool], list[bool]]:
        ee.once("data", once.append)
        ee.on("data", always.append)
        ee.once("solo", alone.append)
        return [ee.emit("data", i) for i in range(3)], [ee.emit("solo", i) for i in range(3)]

    assert on_home(ee, scenario) == ([True] * 3, [True, False, False])
    ee.shutdown()
    assert once == [0]
    assert always == [0, 1, 2]
    assert alone == [0]
    assert ee.listeners("data") == [always.append]


def test_on_the_home_thread_error_without_a_listener_raises_even_after_one_was_removed(
    ee: EventEmitter,
) -> None:
    boom = ValueError("boom")
    errors: list[BaseException] = []

    def scenario() -> None:
        ee.on("error", errors.append)
        ee.emit("error", boom)
        ee.remove_listener("error", errors.append)
        ee.emit("error", boom)

    with pytest.raises(ValueError) as raised:
        on_home(ee, scenario)

    assert raised.value is boom
    ee.shutdown()
    assert errors == [boom]


def test_a_full_listener_does_not_keep_the_call_from_the_listeners_after_it(
    make_emitter: Callable[..., EventEmitter],
) -> None:
    ee = make_emitter(maxsize=1, overflow="error")
    release = gevent.event.Event()
    stuck: list[int] = []
    free: list[int] = []

    def stuck_listener(i: int) -> None:
        stuck.append(i)
        release.wait(TIMEOUT)

    def scenario() -> bool:
        ee.on("data", stuck_listener)
        ee.on("data", free.append)
        ee.emit("data", 0)
        assert green_wait_until(lambda: stuck == [0] and free == [0])
        ee.emit("data", 1)  # queued behind the stuck call: that channel is full now
        assert green_wait_until(lambda: free == [0, 1])
        try:
            with pytest.raises(ChannelFull):
                ee.emit("data", 2)
            return green_wait_until(lambda: free == [0, 1, 2])
        finally:
            release.set()

    assert on_home(ee, scenario)
    ee.shutdown()
    assert stuck == [0, 1]
    assert free == [0, 1, 2]


def test_on_the_home_thread_emit_after_shutdown_raises(ee: EventEmitter) -> None:
    got = recorded(ee)
    on_home(ee, lambda: ee.emit("data", 0))
    ee.shutdown()

    with pytest.raises(BusClosed):
        on_home(ee, lambda: ee.emit("data", 1))
    assert got == [0]


# -- errors ------------------------------------------------------------------


def test_a_listener_exception_is_emitted_as_an_error_event(ee: EventEmitter) -> None:
    boom = ValueError("boom")
    errors: list[BaseException] = []
    calls: list[int] = []

    def fragile(i: int) -> None:
        calls.append(i)
        if i == 0:
            raise boom

    ee.on("data", fragile)
    ee.on("error", errors.append)
    ee.emit("data", 0)
    ee.emit("data", 1)

    assert wait_until(lambda: len(calls) == 2 and len(errors) == 1)
    assert errors[0] is boom
    assert calls == [0, 1]  # the listener carries on after raising


def test_a_listener_exception_without_an_error_listener_is_logged(
    ee: EventEmitter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="greenbus.compat")
    boom = ValueError("boom")

    def fragile() -> None:
        raise boom

    ee.on("data", fragile)
    ee.emit("data")

    assert wait_until(lambda: any(r.exc_info for r in caplog.records))
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.name == "greenbus.compat"
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[1] is boom


RAISING_ERROR_LISTENER = textwrap.dedent(
    """
    import json
    import logging
    import threading
    import time

    from greenbus.compat import EventEmitter

    logged = []
    handler = logging.Handler()
    handler.emit = logged.append
    logging.getLogger("greenbus.compat").addHandler(handler)

    ee = EventEmitter()
    other = EventEmitter()
    error_calls = []
    other_got = threading.Event()


    def broken_error_listener(exc):
        error_calls.append(type(exc).__name__)
        raise RuntimeError("the error listener broke")


    def fragile():
        raise ValueError("boom")


    ee.on("error", broken_error_listener)
    ee.on("data", fragile)
    other.on("ping", other_got.set)
    ee.emit("data")
    deadline = time.monotonic() + 5
    while not error_calls and time.monotonic() < deadline:
        time.sleep(0.001)
    other.emit("ping")  # can the shared hub thread still run other emitters?
    other_delivered = other_got.wait(2)


    def shut_down_both():
        other.shutdown()
        ee.shutdown()


    stopper = threading.Thread(target=shut_down_both, daemon=True)
    stopper.start()
    stopper.join(2)
    print(json.dumps({
        "other_emitter_delivered": other_delivered,
        "shutdown_returned": not stopper.is_alive(),
        "error_listener_calls": error_calls[:3],
        "logged": [r.exc_info[1].args[0] for r in logged if r.exc_info][:3],
    }))
    """
)


def test_an_error_listener_that_raises_is_logged_and_not_fed_its_own_exception() -> None:
    # In a subprocess: if the error loops, it takes the shared hub thread with it.
    assert run_script(RAISING_ERROR_LISTENER) == {
        "other_emitter_delivered": True,
        "shutdown_returned": True,
        "error_listener_calls": ["ValueError"],
        "logged": ["the error listener broke"],
    }


# -- shutdown and the context manager ----------------------------------------


def test_shutdown_delivers_everything_queued(ee: EventEmitter) -> None:
    seen: list[int] = []

    def slow(i: int) -> None:
        gevent.sleep(0.001)
        seen.append(i)

    ee.on("data", slow)
    emit_each(ee, range(100))
    ee.shutdown(wait=True)

    assert seen == list(range(100))


def test_shutdown_delivers_what_listeners_emit_while_it_drains(ee: EventEmitter) -> None:
    ee.on("a", lambda i: ee.emit("b", i))
    relayed = recorded(ee, "b")

    emit_each(ee, range(50), "a")
    ee.shutdown(wait=True)

    assert relayed == list(range(50))


def test_shutdown_keeps_a_listeners_order_and_one_call_at_a_time_while_draining(
    ee: EventEmitter,
) -> None:
    # 'relay' re-emits each 'a' as 'b', slowly, so it is still emitting when
    # shutdown starts draining.  The 'b' listener holds its first call until
    # the relay is done, so that call is still running when the later 'b'
    # events arrive: they must queue behind it, not run beside it.
    count = 200
    relay_done = gevent.event.Event()
    seen: list[int] = []
    active = 0
    most_active = 0

    def relay(i: int) -> None:
        gevent.sleep(0.001)
        ee.emit("b", i)
        if i == count:
            relay_done.set()

    def record(i: int) -> None:
        nonlocal active, most_active
        active += 1
        most_active = max(most_active, active)
        if i == 0:
            relay_done.wait(TIMEOUT)
        gevent.sleep(0)
        seen.append(i)
        active -= 1

    ee.on("a", relay)
    ee.on("b", record)
    ee.emit("b", 0)
    emit_each(ee, range(1, count + 1), "a")
    ee.shutdown(wait=True)

    assert seen == list(range(count + 1))
    assert most_active == 1


def test_emit_after_shutdown_raises_like_executor_event_emitter(ee: EventEmitter) -> None:
    seen = recorded(ee)
    ee.emit("data", 0)
    ee.shutdown()

    with pytest.raises(BusClosed) as excinfo:
        ee.emit("data", 1)

    # pyee's ExecutorEventEmitter raises RuntimeError after shutdown; so do we.
    assert isinstance(excinfo.value, RuntimeError)
    assert "shut down" in str(excinfo.value)
    assert seen == [0]


def test_shutdown_twice_is_harmless(ee: EventEmitter) -> None:
    seen = recorded(ee)
    ee.emit("data", 0)

    ee.shutdown()
    ee.shutdown()

    assert seen == [0]


def test_the_context_manager_delivers_everything_before_leaving(
    make_emitter: Callable[..., EventEmitter],
) -> None:
    emitter = make_emitter()
    seen: list[int] = []

    def slow(i: int) -> None:
        gevent.sleep(0.001)
        seen.append(i)

    with emitter as entered:
        entered.on("data", slow)
        for i in range(20):
            entered.emit("data", i)

    assert entered is emitter
    assert seen == list(range(20))


# -- with monkey-patching ----------------------------------------------------

PATCHED_ROUND_TRIP = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import threading
    import time

    from greenbus.compat import EventEmitter

    os_thread_id = monkey.get_original("_thread", "get_ident")
    COUNT = 200
    ee = EventEmitter()
    replies = []
    listener_os_threads = set()
    all_replied = threading.Event()


    class Replier(threading.Thread):
        def __init__(self):
            super().__init__()
            self.ready = threading.Event()
            self.stop = threading.Event()

        def run(self):
            ee.on("data", self.on_data)
            self.ready.set()
            self.stop.wait()

        def on_data(self, i):
            listener_os_threads.add(os_thread_id())
            ee.emit("reply", i)


    class Producer(threading.Thread):
        def run(self):
            for i in range(COUNT):
                ee.emit("data", i)
                if i % 10 == 0:
                    time.sleep(0)


    @ee.on("reply")
    def on_reply(i):
        listener_os_threads.add(os_thread_id())
        replies.append(i)
        if len(replies) == COUNT:
            all_replied.set()


    with ee:
        replier = Replier()
        replier.start()
        replier.ready.wait(10)
        producer = Producer()
        producer.start()
        producer.join(10)
        arrived = all_replied.wait(10)
        replier.stop.set()
        replier.join(10)
    print(json.dumps({
        "arrived": arrived,
        "replies": replies,
        "listeners_ran_on_main_os_thread": listener_os_threads == {os_thread_id()},
    }))
    """
)


def test_monkey_patched_threads_round_trip_in_order() -> None:
    assert run_script(PATCHED_ROUND_TRIP) == {
        "arrived": True,
        "replies": list(range(200)),
        "listeners_ran_on_main_os_thread": True,
    }
