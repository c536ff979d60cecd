"""The classic pattern greenbus replaces: two OS threads share a pyee EventEmitter.

thread1 emits ``data`` every 10 ms and times how long each ``emit`` holds it;
thread2's ``data`` handler parks the item in a ``queue.Queue``; thread2's loop
polls that queue every 10 ms and emits ``reply``; thread1's ``reply`` handler
records the round trip.  pyee runs every handler inline, in the emitting
thread, so the emitter is held while handlers run, and the round trip is
set by the polling sleep.

Run: ``python examples/threads_pyee.py``
"""

import queue
import threading
import time

from pyee import EventEmitter

from _scenario import N, report


class Thread1(threading.Thread):
    def __init__(self, ee):
        super().__init__(name="thread1")
        self.ee = ee
        self.sent = {}
        self.block_us = []
        self.rtt_us = {}
        self.all_replied = threading.Event()
        ee.on("reply", self.on_reply)

    def on_reply(self, i):
        self.rtt_us[i] = (time.perf_counter() - self.sent[i]) * 1e6
        if len(self.rtt_us) == N:
            self.all_replied.set()

    def run(self):
        for i in range(N):
            self.sent[i] = start = time.perf_counter()
            self.ee.emit("data", i)
            self.block_us.append((time.perf_counter() - start) * 1e6)
            time.sleep(0.01)
        self.all_replied.wait(timeout=5)


class Thread2(threading.Thread):
    def __init__(self, ee):
        super().__init__(name="thread2")
        self.ee = ee
        self.q = queue.Queue()
        self.stopped = threading.Event()
        ee.on("data", self.on_data)

    def on_data(self, i):
        self.q.put(i)

    def run(self):
        while not self.stopped.is_set():
            while not self.q.empty():
                self.ee.emit("reply", self.q.get_nowait())
            time.sleep(0.01)


def main():
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
