"""The hub's memory per idle subscribed connection, for ``python -m perf``.

One sample: a fresh ``greenbus serve`` process; a few warm-up peers first
(the first peers make the hub import and allocate what every later one
reuses), then ``n`` connections from up to four ``perf.load_worker
subscribers`` processes, each connection subscribed to ``load.<group>`` and
``load.all`` (as ``python -m perf.load`` does).  The sample is the hub's RSS
growth divided by ``n``, in KiB; the hub must count exactly ``n`` peers and
``2n`` subscriptions, else the sample is an error.
"""

from __future__ import annotations

import math
import time

from .load import READY_TIMEOUT, Hub, _close, worker
from .procs import MeasurementError, Processes, gather, raise_fd_limit

__all__ = ["GROUPS", "kib_per_connection"]

#: Group topics the connections are spread over.
GROUPS = 10
#: Client processes at most (each holds n / processes connections).
MAX_PROCESSES = 4


def kib_per_connection(n: int) -> float:
    """Open ``n`` idle subscribed connections to a fresh hub; its RSS growth / n, in KiB."""
    raise_fd_limit()  # the children inherit it
    processes_n = min(MAX_PROCESSES, max(1, math.ceil(n / 250)))
    shares = [n // processes_n + (i < n % processes_n) for i in range(processes_n)]
    with Processes() as processes:
        hub = Hub(processes, "memory-hub")
        warm = worker(
            processes,
            "warm-subscribers",
            "subscribers",
            port=hub.port,
            groups=GROUPS,
            first=0,
            count=20,
            expect_group=0,
            expect_all=0,
        )
        warm.expect("ready", READY_TIMEOUT)
        _close([warm], hub.check_alive)
        hub.wait_drained()
        time.sleep(1.0)
        before = hub.rss_settled()
        subscribers = [
            worker(
                processes,
                f"subscribers-{i}",
                "subscribers",
                port=hub.port,
                groups=GROUPS,
                first=sum(shares[:i]),
                count=k,
                expect_group=0,
                expect_all=0,
            )
            for i, k in enumerate(shares)
        ]
        gather(subscribers, "ready", READY_TIMEOUT, None, hub.check_alive)
        time.sleep(1.0)
        after = hub.rss_settled()
        counted = hub.metrics()
        if counted.get("greenbus_connections") != n:
            raise MeasurementError(f"the hub counts {counted.get('greenbus_connections')} peers")
        if counted.get("greenbus_remote_subscriptions") != 2 * n:
            raise MeasurementError(
                f"the hub counts {counted.get('greenbus_remote_subscriptions')} subscriptions"
            )
        _close(subscribers, hub.check_alive)
    return (after - before) / n
