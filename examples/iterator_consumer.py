"""Goroutine-style consumers: worker greenlets iterate over their subscriptions.

A subscription made without a handler is a channel you read yourself, like a
Go channel: ``for msg in sub`` waits for each message in turn and ends
cleanly when the bus is closed, *after* the messages already queued have been
read.  So the shutdown below loses nothing: the producer finishes, the main
greenlet calls ``bus.close()``, and each worker drains its backlog and leaves
its loop.

Run: ``python examples/iterator_consumer.py``
"""

import gevent

import greenbus

JOBS = [
    ("jobs.image.resize", "cat.png"),
    ("jobs.email.send", "ada@example.com"),
    ("jobs.image.resize", "dog.png"),
    ("jobs.image.crop", "cat.png"),
    ("jobs.email.send", "grace@example.com"),
    ("jobs.image.resize", "owl.png"),
]


def worker(bus, name, pattern, seconds_per_job, done):
    # Leaving the `with` block closes the subscription (a no-op once the
    # bus is closed).
    with bus.subscribe(pattern) as sub:
        for msg in sub:  # waits for the next message; ends after close + drain
            gevent.sleep(seconds_per_job)  # the "work": cooperative, so others run
            done[name].append(f"{msg.topic.split('.', 1)[1]}:{msg.data}")


def producer(bus):
    for topic, data in JOBS:
        bus.emit(topic, data)  # never waits for the workers
        gevent.sleep(0.001)


def main():
    bus = greenbus.Bus("jobs")
    done = {"audit": [], "images": []}

    # Greenlets start in spawn order, so both workers have subscribed before
    # the producer emits its first job.
    workers = [
        gevent.spawn(worker, bus, "audit", "jobs.>", 0.002, done),  # every job
        gevent.spawn(worker, bus, "images", "jobs.image.*", 0.02, done),  # image jobs, slowly
    ]
    gevent.spawn(producer, bus).join()

    # All jobs are emitted; the slow image worker is still busy.
    print(f"producer done: {len(JOBS)} jobs emitted")
    for name, finished in done.items():
        print(f"  {name} has finished {len(finished)} so far")

    # The clean end: no new messages, but each worker reads what is queued
    # and then its `for` loop ends.  (Subscription.close() instead would
    # discard the backlog.)
    bus.close()
    gevent.joinall(workers, raise_error=True)

    print("after bus.close(), every worker drained its queue and returned:")
    for name, finished in done.items():
        print(f"  {name} ({len(finished)} jobs): {', '.join(finished)}")


if __name__ == "__main__":
    main()
