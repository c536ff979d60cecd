"""Hand work from any OS thread to a gevent hub's thread, keeping order.

Internal.  A :class:`ThreadPortal` belongs to one hub (the thread that made
it).  ``submit(item)`` may be called from any OS thread: it appends to a
thread-safe deque and, at most once per batch, wakes the hub with
``loop.run_callback_threadsafe``.  A pump greenlet on the hub calls
``handler(item)`` for each item in FIFO order; the handler may block
cooperatively (a full channel), which only delays later items, never
reorders them.
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

__all__ = ["ThreadPortal", "get_ident"]

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
        self._scheduled = False
        self._event = Event()
        self._pump: gevent.Greenlet | None = None
        self._closing = False
        self._closed = False
        #: Items submitted so far, and items lost at close (see close()).
        #: ``submitted`` is written by every submitting thread, under
        #: ``_count_lock``; ``lost`` only on the hub's thread.
        self.submitted = 0
        self.lost = 0
        self._count_lock = _allocate_lock()

    @property
    def pending(self) -> int:
        """Items submitted but not yet handled."""
        return len(self._items)

    def __repr__(self) -> str:
        return f"<ThreadPortal {self._name} pending={len(self._items)} closed={self._closed}>"

    def submit(self, item: Any) -> None:
        """Queue ``item`` for the hub thread.  Thread-safe; never waits for the hub.

        The count in :attr:`submitted` is exact however the threads race:
        its ``+= 1`` (a read, then a write) runs under a real OS-thread lock.
        The lock is held for that increment only, never across a greenlet
        switch, so a submitter waits at most for another's increment, never
        for the hub, and a hub's own greenlets cannot deadlock on it.
        """
        self._items.append(item)  # deque.append is atomic: no lock needed
        with self._count_lock:
            self.submitted += 1
        # The flag is cleared on the hub *before* it drains, so an item
        # appended after the clear schedules a new wake-up: none is lost.
        if not self._scheduled:
            self._scheduled = True
            self._hub.loop.run_callback_threadsafe(self._wake)

    def _wake(self) -> None:
        # On the hub: never block here, just wake (or start) the pump.
        self._scheduled = False
        if self._closed:
            self._drop_stranded()
            return
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
        self._closed = True
        return lost + self._drop_stranded()

    def _drop_stranded(self) -> int:
        # Items submitted after close() (a thread that raced the close) or
        # left behind by a timeout: count and log them, never drop silently.
        n = 0
        while self._items:
            self._items.popleft()
            n += 1
        if n:
            self.lost += n
            logger.warning("%s: %d hand-off(s) from other threads lost at close", self._name, n)
        return n


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
