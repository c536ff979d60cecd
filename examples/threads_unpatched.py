"""Emitting from real OS threads, without monkey-patching.

A bus belongs to the OS thread that created it; its greenlets run there.
``emit`` may still be called from any other OS thread (a worker pool, a
C-library callback): the message is validated in the calling thread, handed
to the bus's thread, and routed there in that thread's order.  So each
thread's messages reach every subscriber in the order that thread emitted
them; how the threads interleave is up to the OS scheduler.

The bus's thread must keep running its gevent hub to receive the hand-offs:
here the main greenlet waits in ``sub.get()``, never in a plain blocking
call such as ``Thread.join()`` while messages are still coming.

Run: ``python examples/threads_unpatched.py``
"""

import itertools
import threading
import time

import greenbus

THREADS = ["A", "B", "C"]
PER_THREAD = 100


def sensor_thread(bus, name, start, errors):
    start.wait()  # all threads start emitting together, to interleave
    for i in range(PER_THREAD):
        bus.emit(f"readings.{name}", i)  # safe from any OS thread
        time.sleep(0.0002)  # a real, blocking sleep: this thread is not a greenlet
    # Everything else on the bus must be called from the bus's own thread.
    try:
        bus.subscribe("readings.>")
    except greenbus.WrongThread as exc:
        errors.append(exc)


def main():
    bus = greenbus.Bus("threads")  # owned by the main thread
    sub = bus.subscribe("readings.>")  # consumed by the main greenlet

    start = threading.Barrier(len(THREADS))
    errors = []
    threads = [
        threading.Thread(target=sensor_thread, args=(bus, name, start, errors), name=name)
        for name in THREADS
    ]
    for t in threads:
        t.start()

    # Consume in the main greenlet: get() yields to the hub, which routes the
    # threads' hand-offs into our subscription.
    received = [sub.get(timeout=5) for _ in range(len(THREADS) * PER_THREAD)]
    for t in threads:
        t.join()  # they have emitted everything already, so this is quick
    handed_in = bus.stats().thread_emits
    bus.close()

    origins = [msg.topic.split(".")[1] for msg in received]
    print(f"received {len(received)} messages; bus.stats().thread_emits = {handed_in}")
    print("first 30 arrivals, by thread:", "".join(origins[:30]))
    switches = sum(1 for a, b in itertools.pairwise(origins) if a != b)
    print(f"the stream switched threads {switches} times (varies from run to run)")
    for name in THREADS:
        values = [msg.data for msg in received if msg.topic == f"readings.{name}"]
        in_order = values == list(range(PER_THREAD))
        print(f"thread {name}: {len(values)} messages, in its own order: {in_order}")
    print(f"subscribe() from a thread raised WrongThread {len(errors)} times: {errors[0]}")


if __name__ == "__main__":
    main()
