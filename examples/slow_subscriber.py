"""A slow subscriber holds back neither the emitter nor the other subscribers.

Every subscription owns a FIFO channel and a greenlet, so ``emit`` only
appends to each channel and returns; a slow handler fills its own channel and
nothing else.  This script shows:

1. a fast and a slow handler on the same topic: the emitter finishes at once,
   the fast handler has every message while the slow one is still working,
   and ``bus.close()`` lets the slow one finish, in order;
2. a bounded ``overflow="drop_oldest"`` subscription that cannot keep up: it
   keeps the newest messages, counts what it dropped, and the overflow is
   reported once (not once per message) to ``bus.on_error`` and the log.

Run: ``python examples/slow_subscriber.py``
"""

import logging
import sys
import time

import gevent
from gevent.event import Event

import greenbus

N = 20
SLOW_HANDLER_S = 0.01  # how long the slow handler takes per message


def fast_and_slow_subscribers():
    bus = greenbus.Bus("fan-out")
    fast_got, slow_got = [], []
    fast_done = Event()

    def fast(msg):
        fast_got.append(msg.data)
        if len(fast_got) == N:
            fast_done.set()

    def slow(msg):
        gevent.sleep(SLOW_HANDLER_S)  # say, a write to a slow database
        slow_got.append(msg.data)

    bus.subscribe("prices", fast)
    slow_sub = bus.subscribe("prices", slow)

    # emit() appends to both channels and returns: it runs no handler.
    start = time.perf_counter()
    for i in range(N):
        bus.emit("prices", i)
    emit_ms = (time.perf_counter() - start) * 1000
    print(
        f"emitter: {N} emits took {emit_ms:.2f} ms "
        f"(the slow handler needs {N * SLOW_HANDLER_S * 1000:.0f} ms for them)"
    )

    # Waiting lets the handler greenlets run; the fast one is done at once.
    fast_done.wait(timeout=2)
    print(f"fast subscriber: {len(fast_got)}/{N} handled")
    print(
        f"slow subscriber: {len(slow_got)}/{N} handled so far "
        f"({slow_sub.delivered} started, {slow_sub.pending} queued in its own channel)"
    )

    # close() lets each handler drain its channel before it stops.
    bus.close()
    in_order = slow_got == list(range(N))
    print(f"after bus.close(): slow subscriber {len(slow_got)}/{N} handled, in order: {in_order}")


def bounded_drop_oldest():
    bus = greenbus.Bus("bounded")

    # The error hook receives handler exceptions, and a SlowConsumer on the
    # first drop of each overflow episode (message is None then).
    reports = []

    def on_error(exc, subscription, message):
        reports.append(exc)

    bus.on_error = on_error

    # A price display only needs recent prices: keep at most 5 queued and,
    # when full, drop the oldest to make room for the newest.
    shown = []

    def display(msg):
        gevent.sleep(SLOW_HANDLER_S)
        shown.append(msg.data)

    sub = bus.subscribe("prices", display, maxsize=5, overflow="drop_oldest")

    # A burst of 50: the emitter never waits, so the display falls behind.
    print("emitting 50 prices into a drop_oldest subscription of maxsize 5 ...")
    for i in range(50):
        bus.emit("prices", i)
    print(f"after the burst: pending={sub.pending}, dropped={sub.dropped}")

    # Read the statistics before close(): a closed bus has no subscriptions.
    stats = bus.stats()
    bus.close()
    print(f"the display showed {shown} (the newest five)")
    print(f"bus.stats(): dropped={stats.dropped}, pending={stats.pending}")
    print(f"on_error was called {len(reports)} time(s) for {sub.dropped} drops:")
    for exc in reports:
        print(f"  {type(exc).__name__}: {exc}")


def main():
    # The SlowConsumer report is also logged on the 'greenbus.bus' logger;
    # print log records here, next to the output, to see it appear once.
    logging.basicConfig(
        level=logging.WARNING, format="  [log %(name)s] %(message)s", stream=sys.stdout
    )
    fast_and_slow_subscribers()
    print()
    bounded_drop_oldest()


if __name__ == "__main__":
    main()
