"""Tests for greenbus._portal.ThreadPortal: hand-offs from real OS threads to a hub.

Real (unpatched) OS threads and the test thread's own gevent hub; nothing is
mocked.  The test waits on conditions (``wait_until``), never on the clock.
"""

from __future__ import annotations

import sys
from typing import Any

from waiting import OSThread, preemptible, wait_until

from greenbus._portal import ThreadPortal

#: Enough submissions, from enough threads, that a lost count shows up: with
#: ``preemptible`` below, the unlocked ``+= 1`` lost thousands on every run.
THREADS = 8
PER_THREAD = 5_000


def test_submitted_counts_every_item_handed_in_by_racing_os_threads_exactly() -> None:
    handled: list[tuple[int, int]] = []
    errors: list[tuple[BaseException, Any]] = []
    portal = ThreadPortal(handled.append, lambda exc, item: errors.append((exc, item)), "test")

    def submit_many(n: int) -> None:
        with preemptible(ThreadPortal.submit.__code__):
            for i in range(PER_THREAD):
                portal.submit((n, i))

    # Switch threads every microsecond, so they interleave inside submit().
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        producers = [OSThread(submit_many, n) for n in range(THREADS)]
        for producer in producers:
            producer.join(30)
    finally:
        sys.setswitchinterval(interval)
    total = THREADS * PER_THREAD
    wait_until(lambda: len(handled) == total, 10, "the pump handling every item")
    assert portal.close(timeout=5) == 0

    assert portal.submitted == total
    assert errors == []
    assert portal.pending == 0 and portal.lost == 0
    for n in range(THREADS):
        assert [i for (who, i) in handled if who == n] == list(range(PER_THREAD))
