"""Hand work from any OS thread to a gevent hub's thread, keeping order.

Internal.  A :class:`ThreadPortal` belongs to one hub (the thread that made
it).  ``submit(item)`` may be called from any OS thread: it appends to a
deque and wakes the hub through the portal's own libev *async watcher*, the
event loop's thread-safe doorbell (several rings before the hub answers make
one wake-up).  A pump greenlet on the hub calls ``handler(item)`` for each
item in FIFO order; the handler may block cooperatively (a full channel),
which only delays later items, never reorders them.

The watcher is referenced while the portal is open: it keeps the hub's loop
alive, so a greenlet of the hub's thread that waits for what another OS
thread will hand in (``sub.get()`` with no timeout) waits for it, instead of
gevent concluding that nothing can ever wake it (``LoopExit``).
"""

from __future__ import annotations

import logging
from _thread import LockType
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.monkey import get_original

__all__ = ["HandOff", "ThreadPortal", "get_ident"]

#: The real OS thread id, even when ``threading`` is monkey-patched.
get_ident: Callable[[], int] = get_original("_thread", "get_ident")

#: A real OS-thread lock, even when ``threading`` is monkey-patched (a
#: patched one would be a greenlet lock of the calling thread's hub only).
_allocate_lock: Callable[[], LockType] = get_original("_thread", "allocate_lock")

logger = logging.getLogger("greenbus.portal")


class ThreadPortal:
    """Run ``handler(item)`` on the creating thread's hub for items from any thread.

    Args:
        handler: called on the hub's thread, in a dedicated greenlet, once per
            item, in submission order.  Exceptions go to ``on_error``.
        on_error: called with ``(exc, item)`` when ``handler`` raises.
    """

    def __init__(
        self,
        handler: Callable[[Any], object],
        on_error: Callable[[BaseException, Any], None],
        name: str = "portal",
    ) -> None:
        self._handler = handler
        self._on_error = on_error
        self._name = name
        self._items: deque[Any] = deque()
        self._hub = gevent.get_hub()
        self._thread = get_ident()
        self._event = Event()
        self._pump: gevent.Greenlet | None = None
        self._closing = False
        self._closed = False
        #: Items submitted so far, and items lost at close (see close()).
        self.submitted = 0
        self.lost = 0
        # Held by submit() around its append, count and ring, and by close()
        # while it shuts the door: an item is either in before the close
        # (handled, or counted lost) or refused and counted, never stranded;
        # and the watcher is never rung after it was closed.  Never held
        # across a greenlet switch.
        self._lock = _allocate_lock()
        self._doorbell = self._hub.loop.async_()
        self._doorbell.start(self._wake)

    @property
    def pending(self) -> int:
        """Items submitted but not yet handled."""
        return len(self._items)

    def __repr__(self) -> str:
        return f"<ThreadPortal {self._name} pending={len(self._items)} closed={self._closed}>"

    def submit(self, item: Any) -> bool:
        """Queue ``item`` for the hub thread.  Thread-safe; never waits for the hub.

        Returns:
            True if it was queued; False if the portal is closed (the item is
            counted in :attr:`lost` and logged).
        """
        with self._lock:
            if self._closed:
                self.lost += 1
                closed = True
            else:
                self._items.append(item)
                self.submitted += 1
                self._doorbell.send()
                return True
        if closed:
            logger.warning("%s: a hand-off from another thread came after close; lost", self._name)
        return False

    def _wake(self) -> None:
        # On the hub (the watcher's callback): never block here, just wake
        # (or start) the pump.
        if self._pump is None:
            self._pump = gevent.spawn(self._run)
        self._event.set()

    def _run(self) -> None:
        # The only consumer of the deque, so hand-offs stay FIFO even while
        # a handler call blocks (a full channel) and close() is waiting.
        items = self._items
        while True:
            self._event.wait()
            self._event.clear()
            while items:
                item = items.popleft()
                try:
                    self._handler(item)
                except Exception as exc:  # the submitting thread is gone; report here
                    self._on_error(exc, item)
            if self._closing:
                return

    def close(self, timeout: float | None = None) -> int:
        """Handle what is queued (in order, on the pump), then stop.  Idempotent.

        From then on :meth:`submit` refuses items, and the hub's loop is no
        longer kept alive by this portal.

        Args:
            timeout: seconds to wait for the pump to finish; None waits.

        Returns:
            how many items were lost: still queued (or being handled) when
            the timeout ran out.  They are logged.
        """
        if self._closed:
            return 0
        self._closing = True
        if self._pump is None:
            self._pump = gevent.spawn(self._run)
        self._event.set()
        self._pump.join(timeout)
        lost = 0
        if not self._pump.dead:
            self._pump.kill(block=True)
            lost = 1  # the item the pump was handling when killed
            self.lost += 1
            logger.warning("%s: hand-off pump killed after %s s; 1 item lost", self._name, timeout)
        with self._lock:
            self._closed = True
            self._doorbell.close()
            stranded = self._drop_stranded()
        return lost + stranded

    def _drop_stranded(self) -> int:
        # Items the pump did not get to (a timeout): count and log them,
        # never drop silently.
        n = len(self._items)
        self._items.clear()
        if n:
            self.lost += n
            logger.warning("%s: %d hand-off(s) from other threads lost at close", self._name, n)
        return n


class HandOff:
    """One value handed, once, from any OS thread to a greenlet of the thread that made it.

    The waiting side makes it (on its own thread, whose gevent hub is made
    if it has none) and calls :meth:`wait`; another thread calls
    :meth:`offer`, which rings the waiter's hub through an async watcher.
    What :meth:`Bus.request` made from another OS thread waits on.
    """

    __slots__ = ("_closed", "_doorbell", "_event", "_lock", "_value")

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._value: Any = None
        self._closed = False
        self._event = Event()
        self._doorbell = gevent.get_hub().loop.async_()
        self._doorbell.start(self._event.set)

    def offer(self, value: Any) -> bool:
        """Hand ``value`` (not None) over; from any thread.

        Returns:
            False if a value was handed over already, or it is closed.
        """
        with self._lock:
            if self._closed or self._value is not None:
                return False
            self._value = value
            self._doorbell.send()
        return True

    def wait(self, timeout: float | None) -> Any:
        """Wait (on the making thread) up to ``timeout`` seconds; the value, or None."""
        self._event.wait(timeout)
        with self._lock:
            return self._value

    def close(self) -> None:
        """Take nothing more (an offer after it returns False).  Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._doorbell.close()


def _call_job(job: Callable[[], object]) -> None:
    job()


def _log_job_error(exc: BaseException, job: object) -> None:
    logger.error("job %r handed to a hub thread failed", job, exc_info=exc)


def job_portal() -> ThreadPortal:
    """A portal running zero-argument callables on the calling thread's hub."""
    return ThreadPortal(_call_job, _log_job_error, "jobs")


class HubThread:
    """A daemon OS thread that runs a gevent hub for greenlets of other threads.

    Used where the caller's own thread cannot be trusted to run its hub
    (plain ``threading`` code without monkey-patching, whose threads block
    in ``join()`` or ``time.sleep``).  One is shared per process; see
    :meth:`shared`.
    """

    _shared: HubThread | None = None
    _shared_lock = get_original("threading", "Lock")()

    def __init__(self, name: str = "greenbus-hub") -> None:
        real_thread = get_original("threading", "Thread")
        ready = get_original("threading", "Event")()
        self.portal: ThreadPortal
        self.ident = 0
        self._ready = ready
        self._thread = real_thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        ready.wait()

    @classmethod
    def shared(cls) -> HubThread:
        """The process-wide hub thread, started on first use."""
        with cls._shared_lock:
            if cls._shared is None or not cls._shared._thread.is_alive():
                cls._shared = cls()
            return cls._shared

    def _main(self) -> None:
        hub = gevent.get_hub()
        # A referenced async watcher keeps the loop running while idle.
        self._keepalive = hub.loop.async_()
        stop = Event()
        self._keepalive.start(stop.set)
        self.portal = job_portal()
        self.ident = get_ident()
        self._ready.set()
        stop.wait()
        self.portal.close()
        self._keepalive.close()

    def submit(self, job: Callable[[], object]) -> None:
        """Run ``job()`` in a greenlet of the hub thread.  Thread-safe, FIFO."""
        self.portal.submit(job)
