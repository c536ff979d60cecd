"""The two-thread pattern on greenbus: same classes, no polling, no sleep.

``gevent.monkey.patch_all()`` first, so ``threading.Thread`` subclasses run as
greenlets.  thread1 emits ``data`` every 10 ms and times each ``emit``;
thread2 is pushed each message through its subscription (no queue polling)
and replies at once; thread1's ``reply`` handler records the round trip.
The printout has the same format as threads_pyee.py, line for line.

Run: ``python -m greenbus.demo.threads_greenbus`` (``--json``: the figures as JSON)
"""

from __future__ import annotations

from gevent import monkey

# Run with -m, this module comes after its packages: greenbus is imported
# already, and ssl with it.  The scenario uses no TLS, so ssl stays unpatched
# rather than patched late, which gevent warns about (gevent issue 1016).
# Patching after greenbus is safe: it takes the real thread id and locks from
# gevent.monkey.get_original.
monkey.patch_all(ssl=False)

import threading  # noqa: E402  (after patching, on purpose)
import time  # noqa: E402

import greenbus  # noqa: E402

from ._scenario import N, report  # noqa: E402


class Thread1(threading.Thread):
    """Emits ``data`` i = 0..N-1, 10 ms apart; records emit times and round trips."""

    def __init__(self, bus: greenbus.Bus) -> None:
        super().__init__(name="thread1")
        self.bus = bus
        self.sent: dict[int, float] = {}
        self.block_us: list[float] = []
        self.rtt_us: dict[int, float] = {}
        self.all_replied = threading.Event()
        bus.on("reply", self.on_reply)

    def on_reply(self, msg: greenbus.Message) -> None:
        self.rtt_us[msg.data] = (time.perf_counter() - self.sent[msg.data]) * 1e6
        if len(self.rtt_us) == N:
            self.all_replied.set()

    def run(self) -> None:
        for i in range(N):
            self.sent[i] = start = time.perf_counter()
            self.bus.emit("data", i)
            self.block_us.append((time.perf_counter() - start) * 1e6)
            time.sleep(0.01)
        self.all_replied.wait(timeout=5)


class Thread2(threading.Thread):
    """Replies to each ``data`` message as it is pushed, until its inbox closes."""

    def __init__(self, bus: greenbus.Bus) -> None:
        super().__init__(name="thread2")
        self.bus = bus
        self.inbox = bus.subscribe("data")  # its own FIFO channel

    def run(self) -> None:
        for msg in self.inbox:  # pushed to us; ends when the subscription closes
            self.bus.emit("reply", msg.data)


def main() -> None:
    """Run the scenario once and print its figures (``report``)."""
    bus = greenbus.Bus()
    thread1, thread2 = Thread1(bus), Thread2(bus)
    thread2.start()
    thread1.start()
    thread1.join()
    thread2.inbox.close()
    thread2.join()
    bus.close()
    report("greenbus.Bus, gevent-patched threads, pushed", thread1.block_us, thread1.rtt_us)


if __name__ == "__main__":
    main()
