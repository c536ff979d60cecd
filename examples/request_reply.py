"""Request/reply: a responder service, and the two ways a request can fail.

A responder is an ordinary subscription whose handler answers with
``msg.reply(data)``.  ``bus.request(topic, data, timeout=...)`` emits the
request with a private ``reply_to`` inbox and waits, cooperatively, for the
first reply.  This script shows:

1. a successful request, and one answered with an error header;
2. several greenlets requesting at once (the responder answers one at a time);
3. ``NoResponders``: nobody subscribes to the topic, so request() fails at once;
4. ``RequestTimeout``: the responder is too slow, and its late reply reaches
   nobody (``msg.reply`` returns 0).

Run: ``python examples/request_reply.py``
"""

import time

import gevent
from gevent.event import Event

import greenbus

USERS = {1: "ada", 2: "grace", 3: "barbara"}


def main():
    bus = greenbus.Bus("request-reply")

    # 1. The responder service.  Its handler runs in the subscription's own
    # greenlet, one request at a time, in arrival order.
    @bus.on("users.get")
    def get_user(msg):
        name = USERS.get(msg.data)
        if name is None:
            # A reply can carry headers as well as data.
            msg.reply(None, headers={"error": f"no user with id {msg.data}"})
        else:
            msg.reply({"id": msg.data, "name": name})

    reply = bus.request("users.get", 1, timeout=1.0)
    print(f"users.get 1 -> {reply.data}")

    reply = bus.request("users.get", 99, timeout=1.0)
    print(f"users.get 99 -> data={reply.data}, error header={reply.headers['error']!r}")

    # 2. Many requesters at once: each request gets its own inbox, so every
    # greenlet receives its own answer.
    requests = [gevent.spawn(bus.request, "users.get", i, timeout=1.0) for i in (3, 2, 1)]
    gevent.joinall(requests, raise_error=True)
    print("three concurrent requests ->", [g.value.data["name"] for g in requests])

    # 3. No subscription matches the topic: request() raises at once rather
    # than waiting out its timeout for a reply that can never come.
    try:
        bus.request("orders.get", 7, timeout=1.0)
    except greenbus.NoResponders as exc:
        print(f"NoResponders: {exc}")

    # 4. A responder slower than the requester's patience.
    late_replies = []
    replied = Event()

    @bus.on("reports.build")
    def build_report(msg):
        gevent.sleep(0.3)  # cooperative: other greenlets keep running
        # The requester has given up and its inbox is gone: 0 receivers.
        late_replies.append(msg.reply("report.pdf"))
        replied.set()

    start = time.perf_counter()
    try:
        bus.request("reports.build", timeout=0.1)
    except greenbus.RequestTimeout as exc:
        waited = time.perf_counter() - start
        print(f"RequestTimeout after {waited:.1f} s: {exc}")

    # Wait for the slow responder before closing: once close() begins, emit
    # (and so msg.reply) raises BusClosed.
    replied.wait(timeout=2)
    print(f"the late reply reached {late_replies[0]} subscriber(s)")
    bus.close()


if __name__ == "__main__":
    main()
