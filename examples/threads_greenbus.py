"""The two-thread pattern on greenbus: same classes, no polling, no sleep.

``gevent.monkey.patch_all()`` first, so ``threading.Thread`` subclasses run as
greenlets.  thread1 emits ``data`` every 10 ms and times each ``emit``;
thread2 is pushed each message through its subscription (no queue polling)
and replies at once; thread1's ``reply`` handler records the round trip.
The printout has the same format as threads_pyee.py, line for line.

Run: ``python examples/threads_greenbus.py``
"""

from gevent import monkey

monkey.patch_all()

import threading  # noqa: E402  (after patching, on purpose)
import time  # noqa: E402

import greenbus  # noqa: E402

from _scenario import N, report  # noqa: E402


class Thread1(threading.Thread):
    def __init__(self, bus):
        super().__init__(name="thread1")
        self.bus = bus
        self.sent = {}
        self.block_us = []
        self.rtt_us = {}
        self.all_replied = threading.Event()
        bus.on("reply", self.on_reply)

    def on_reply(self, msg):
        self.rtt_us[msg.data] = (time.perf_counter() - self.sent[msg.data]) * 1e6
        if len(self.rtt_us) == N:
            self.all_replied.set()

    def run(self):
        for i in range(N):
            self.sent[i] = start = time.perf_counter()
            self.bus.emit("data", i)
            self.block_us.append((time.perf_counter() - start) * 1e6)
            time.sleep(0.01)
        self.all_replied.wait(timeout=5)


class Thread2(threading.Thread):
    def __init__(self, bus):
        super().__init__(name="thread2")
        self.bus = bus
        self.inbox = bus.subscribe("data")  # its own FIFO channel

    def run(self):
        for msg in self.inbox:  # pushed to us; ends when the subscription closes
            self.bus.emit("reply", msg.data)


def main():
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
