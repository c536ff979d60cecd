"""The classic pattern greenbus replaces: two OS threads share a pyee EventEmitter.

thread1 emits ``data`` every 10 ms and times how long each ``emit`` holds it;
thread2's ``data`` handler parks the item in a ``queue.Queue``; thread2's loop
polls that queue every 10 ms and emits ``reply``; thread1's ``reply`` handler
records the round trip.  pyee runs every handler inline, in the emitting
thread, so the emitter is held while handlers run, and the round trip is
set by the polling sleep.

Run: ``python -m greenbus.demo.threads_pyee`` (``--json``: the figures as JSON)
"""

from __future__ import annotations

import queue
import threading
import time

from pyee import EventEmitter

from ._scenario import N, report


class Thread1(threading.Thread):
    """Emits ``data`` i = 0..N-1, 10 ms apart; records emit times and round trips."""

    def __init__(self, ee: EventEmitter) -> None:
        super().__init__(name="thread1")
        self.ee = ee
        self.sent: dict[int, float] = {}
        self.block_us: list[float] = []
        self.rtt_us: dict[int, float] = {}
        self.all_replied = threading.Event()
        ee.on("reply", self.on_reply)

    def on_reply(self, i: int) -> None:
        self.rtt_us[i] = (time.perf_counter() - self.sent[i]) * 1e6
        if len(self.rtt_us) == N:
            self.all_replied.set()

    def run(self) -> None:
        for i in range(N):
            self.sent[i] = start = time.perf_counter()
            self.ee.emit("data", i)
            self.block_us.append((time.perf_counter() - start) * 1e6)
            time.sleep(0.01)
        self.all_replied.wait(timeout=5)


class Thread2(threading.Thread):
    """Queues each ``data`` item; every 10 ms, until stopped, replies to those queued."""

    def __init__(self, ee: EventEmitter) -> None:
        super().__init__(name="thread2")
        self.ee = ee
        self.q: queue.Queue[int] = queue.Queue()
        self.stopped = threading.Event()
        ee.on("data", self.on_data)

    def on_data(self, i: int) -> None:
        self.q.put(i)

    def run(self) -> None:
        while not self.stopped.is_set():
            while not self.q.empty():
                self.ee.emit("reply", self.q.get_nowait())
            time.sleep(0.01)


def main() -> None:
    """Run the scenario once and print its figures (``report``)."""
    ee = EventEmitter()
    thread1, thread2 = Thread1(ee), Thread2(ee)
    thread2.start()
    thread1.start()
    thread1.join()
    thread2.stopped.set()
    thread2.join()
    title = f"{EventEmitter.__module__}.EventEmitter, two OS threads, 10 ms polling"
    report(title, thread1.block_us, thread1.rtt_us)


if __name__ == "__main__":
    main()
