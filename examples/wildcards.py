"""Wildcard subscriptions: which topics ``*`` and ``>`` receive, next to an exact one.

A topic is dot-separated tokens (``sensors.room1.temp``).  A subscription
pattern may use ``*`` for exactly one token and ``>`` for one or more trailing
tokens, so ``sensors.>`` matches ``sensors.room1`` and ``sensors.room1.temp``
but not ``sensors`` itself.  The script emits a handful of topics to four
subscriptions and prints who received what, then shows the errors that
malformed topics and patterns raise.

Run: ``python examples/wildcards.py``
"""

import greenbus

PATTERNS = ["sensors.room1.temp", "sensors.*.temp", "sensors.*", "sensors.>"]

TOPICS = [
    "sensors",
    "sensors.room1",
    "sensors.room1.temp",
    "sensors.room2.temp",
    "sensors.room1.humidity",
    "sensors.room1.temp.max",
    "alarms.room1",
]


def show_matching():
    bus = greenbus.Bus("wildcards")

    # Subscriptions without a handler queue what they receive; we read them
    # after the bus is closed.
    subs = {pattern: bus.subscribe(pattern) for pattern in PATTERNS}
    for topic in TOPICS:
        bus.emit(topic)

    # close() stops new emits; subscriptions without a handler keep what they
    # had queued, and iterating them ends after the last message.
    bus.close()
    received = {pattern: {msg.topic for msg in sub} for pattern, sub in subs.items()}

    # One row per emitted topic, one column per pattern: x = received.
    width = max(map(len, TOPICS))
    print(f"{'topic':<{width}}  " + "  ".join(PATTERNS))
    for topic in TOPICS:
        cells = [f"{'x' if topic in received[p] else '-':^{len(p)}}" for p in PATTERNS]
        row = "  ".join(cells)
        print(f"{topic:<{width}}  {row}".rstrip())
    print()
    print("'sensors.>' receives 'sensors'?", "sensors" in received["sensors.>"])
    print(
        "'sensors.*' receives 'sensors.room1.temp'?", "sensors.room1.temp" in received["sensors.*"]
    )


def show_invalid_topics():
    # A topic may not contain wildcards, empty tokens or whitespace; a pattern
    # may use wildcards only as whole tokens, and '>' only last.  Both raise
    # InvalidTopic (also a ValueError), whose message names the problem
    # (``exc.problem`` holds just the problem).
    with greenbus.Bus("invalid") as bus:  # leaving the block closes the bus
        for bad_topic in ["sensors.*.temp", "sensors..temp", "sensors.room 1"]:
            try:
                bus.emit(bad_topic)
            except greenbus.InvalidTopic as exc:
                print(f"emit({bad_topic!r})\n    InvalidTopic: {exc}")
        for bad_pattern in ["sensors.room*", "sensors.>.temp"]:
            try:
                bus.subscribe(bad_pattern)
            except greenbus.InvalidTopic as exc:
                print(f"subscribe({bad_pattern!r})\n    InvalidTopic: {exc}")


def main():
    show_matching()
    print()
    show_invalid_topics()


if __name__ == "__main__":
    main()
