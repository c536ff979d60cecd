"""The per-hub run queue that wakes greenlets parked in channels.

A greenlet parked in :meth:`greenbus.Channel.get` (or ``put`` on a full
channel) is a :class:`Waiter`.  A put into a channel with a parked getter
schedules that channel here; the next greenlet to park switches straight to
the ready getter (:meth:`Scheduler.switch_out`), with no hub pass, and a hub
callback wakes whatever is left.  It knows channels only through
:class:`ReadyChannel`.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Protocol

__all__ = ["DIRECT_SWITCH_BUDGET", "ReadyChannel", "Scheduler", "Waiter", "scheduler_for"]


class ReadyChannel(Protocol):
    """What the scheduler needs of a channel with a parked getter to wake."""

    def wake_getters(self) -> None:
        """Wake the parked getters that have something to take (on the hub)."""

    def take_ready_getter(self) -> Waiter | None:
        """The first parked getter that has something to take, or None."""


class Waiter:
    # One parked greenlet.  ``parked`` guards against stale wake-ups (a waiter
    # that left through a timeout or a kill must not be switched into later).
    __slots__ = ("greenlet", "item", "parked", "served")

    def __init__(self, greenlet: object, item: object = None) -> None:
        self.greenlet = greenlet
        self.item = item
        self.parked = False
        self.served = False

    def wake(self) -> None:
        if self.parked:
            self.parked = False
            self.greenlet.switch(self)  # type: ignore[attr-defined]


#: How many direct greenlet-to-greenlet hand-offs may happen before a parking
#: greenlet goes through the hub anyway, so timers, I/O and greenlets woken by
#: other gevent primitives are never starved by a busy ping-pong.
DIRECT_SWITCH_BUDGET = 64


class Scheduler:
    """Per-hub run queue of channels whose parked getters are ready to wake.

    ``put`` into a channel with a parked getter appends the channel here and
    makes sure one hub callback (``run_ready``) is pending.  When a greenlet
    is about to park in a channel (``switch_out``), it switches straight to
    the first ready getter instead of to the hub: a round trip between two
    greenlets then costs two greenlet switches and no hub pass.  The hub
    callback is the fallback for greenlets that park elsewhere (sockets,
    sleeps); it finds nothing left to do when the direct path got there
    first.  Wake-ups stay FIFO, and a receiver still never runs inside
    ``put``: only when the putting greenlet parks.
    """

    __slots__ = ("hub", "ready", "callback_pending", "budget", "__weakref__")

    def __init__(self, hub: object) -> None:
        self.hub = hub
        self.ready: deque[ReadyChannel] = deque()
        self.callback_pending = False
        self.budget = DIRECT_SWITCH_BUDGET

    def schedule(self, channel: ReadyChannel) -> None:
        self.ready.append(channel)
        if not self.callback_pending:
            self.callback_pending = True
            self.hub.loop.run_callback(self.run_ready)  # type: ignore[attr-defined]

    def run_ready(self) -> None:
        # On the hub.
        self.callback_pending = False
        self.budget = DIRECT_SWITCH_BUDGET
        ready = self.ready
        # Only the channels ready now: a ping-pong started from here must not
        # keep this callback (and so the event loop) busy forever.  Channels
        # made ready meanwhile have scheduled the next callback.
        for _ in range(len(ready)):
            if not ready:
                break
            ready.popleft().wake_getters()

    def switch_out(self) -> object:
        """Park the current greenlet; return the value it is switched back with."""
        ready = self.ready
        while ready and self.budget > 0:
            waiter = ready.popleft().take_ready_getter()
            if waiter is not None:
                self.budget -= 1
                waiter.parked = False
                return waiter.greenlet.switch(waiter)  # type: ignore[attr-defined]
        return self.hub.switch()  # type: ignore[attr-defined]


_schedulers: weakref.WeakKeyDictionary[object, Scheduler] = weakref.WeakKeyDictionary()


def scheduler_for(hub: object) -> Scheduler:
    """The hub's scheduler, made on first use (one per hub, dropped with it)."""
    scheduler = _schedulers.get(hub)
    if scheduler is None:
        scheduler = _schedulers[hub] = Scheduler(hub)
    return scheduler
