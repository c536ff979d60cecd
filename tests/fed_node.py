"""A federated bus in its own process, driven by the tests in test_federation.py.

Run as ``python tests/fed_node.py REDIS_URL NAME [INTEREST_TTL]``.  It makes a
:class:`greenbus.Bus`, federates it, waits until the federation is
connected and prints ``{"ev": "ready", "node": ...}``.  Then it reads one
JSON command per line on stdin and prints JSON lines on stdout:

* ``{"op": "sub", "sid": S, "pattern": P}``: subscribe; every message the
  subscription gets is printed as ``{"ev": "msg", "sid": S, "topic": ...,
  "data": ...}``, in the order it got them.
* ``{"op": "unsub", "sid": S}``: close that subscription.
* ``{"op": "emit", "topic": T, "start": K, "count": N, "pace": s}``: emit
  the data K .. K+N-1 on T, in a greenlet of its own (so other commands are
  served meanwhile), sleeping ``pace`` seconds between emits if given.
* ``{"op": "respond", "pattern": P}``: answer requests on P with
  ``{"echo": data, "by": NAME}``.
* ``{"op": "request", "topic": T, "data": D, "timeout": s}``: print the
  reply's data as ``{"ev": "reply", "data": ...}``, or the error's class
  name as ``{"ev": "error", "error": ...}``.
* ``{"op": "stats"}``: the federation's statistics, as ``{"ev": "stats", ...}``,
  and whether its interest is settled (``Federation.interest_settled``).
* ``{"op": "quit"}`` (or end of input): stop the federation, close the bus,
  print ``{"ev": "bye"}`` and exit 0.

Every command carries an ``id``; the line that answers it (``ok``, ``reply``,
``error``, ``stats``; for ``emit``, once the last message was emitted)
carries the same ``id``.  Nothing here prints anything else on stdout.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import gevent
from gevent.fileobject import FileObjectPosix

import greenbus


def main(url: str, name: str, interest_ttl: str = "6") -> int:
    out = sys.stdout

    def say(**line: Any) -> None:
        out.write(json.dumps(line) + "\n")
        out.flush()

    bus = greenbus.Bus(name)
    federation = greenbus.federate(bus, url, interest_ttl=float(interest_ttl))
    if not federation.wait_connected(10):
        say(ev="error", error="not connected to Redis within 10 s")
        return 1
    subs: dict[Any, greenbus.Subscription] = {}
    say(ev="ready", node=federation.node)

    def emit(cmd: dict[str, Any]) -> None:
        start, pace = cmd.get("start", 0), cmd.get("pace")
        for n in range(start, start + cmd["count"]):
            bus.emit(cmd["topic"], n)
            if pace:
                gevent.sleep(pace)
        say(ev="ok", id=cmd["id"])

    def request(cmd: dict[str, Any]) -> None:
        try:
            reply = bus.request(cmd["topic"], cmd.get("data"), timeout=cmd.get("timeout", 5))
        except greenbus.GreenbusError as exc:
            say(ev="error", id=cmd["id"], error=type(exc).__name__)
        else:
            say(ev="reply", id=cmd["id"], data=reply.data)

    def subscribe(cmd: dict[str, Any]) -> None:
        sid = cmd["sid"]

        def handler(msg: greenbus.Message) -> None:
            say(ev="msg", sid=sid, topic=msg.topic, data=msg.data)

        subs[sid] = bus.subscribe(cmd["pattern"], handler, maxsize=None)
        say(ev="ok", id=cmd["id"])

    stdin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    for raw in stdin:
        cmd = json.loads(raw)
        op = cmd["op"]
        if op == "quit":
            break
        if op == "sub":
            subscribe(cmd)
        elif op == "unsub":
            subs.pop(cmd["sid"]).close()
            say(ev="ok", id=cmd["id"])
        elif op == "emit":
            gevent.spawn(emit, cmd)
        elif op == "respond":
            bus.on(cmd["pattern"], lambda msg: msg.reply({"echo": msg.data, "by": name}))
            say(ev="ok", id=cmd["id"])
        elif op == "request":
            gevent.spawn(request, cmd)
        elif op == "stats":
            say(
                ev="stats",
                id=cmd["id"],
                settled=federation.interest_settled(),
                **dataclasses.asdict(federation.stats()),
            )
        else:
            say(ev="error", id=cmd["id"], error=f"unknown op {op!r}")
    federation.stop()
    bus.close(timeout=5)
    say(ev="bye")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
