"""``greenbus serve`` with a probe for the tests: no change to greenbus itself.

Run as ``python tests/greenlet_probe.py serve ARGS`` with
``GREENBUS_PROBE_FILE`` set.  On SIGUSR1 the hub counts its live greenlets
(after a garbage collection) and writes ``{"seq": n, "greenlets": count}``
to that file, where ``n`` counts the signals answered so far.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import signal
import sys

import gevent
from greenlet import greenlet

from greenbus.cli import main

_answers = itertools.count(1)


def report() -> None:
    gc.collect()
    live = sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead)
    path = os.environ["GREENBUS_PROBE_FILE"]
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        json.dump({"seq": next(_answers), "greenlets": live}, out)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    gevent.signal_handler(signal.SIGUSR1, report)
    sys.exit(main(sys.argv[1:]))
