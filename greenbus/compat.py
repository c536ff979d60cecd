"""A drop-in ``pyee.EventEmitter`` whose ``emit`` never blocks.

Change one import::

    from greenbus.compat import EventEmitter   # was: from pyee import EventEmitter

Like pyee's own variants (``AsyncIOEventEmitter``, ``ExecutorEventEmitter``)
this subclasses :class:`pyee.EventEmitter` and overrides only the hook that
runs a listener, ``_emit_run``.  Instead of calling the listener, ``emit``
appends the call to that listener's own greenlet channel; a greenlet per
listener makes the calls one at a time, in emit order.  So:

* ``emit`` returns after an append: a slow listener never holds the emitter;
* each listener sees events in the order they were emitted (per emitting
  thread), unlike ``ExecutorEventEmitter``, whose thread pool reorders;
* one listener's calls never overlap; different listeners run concurrently;
* a listener's exception is emitted as an ``error`` event (as
  ``ExecutorEventEmitter`` does); with no ``error`` listener it is logged on
  ``greenbus.compat``.

Where listeners run: with ``gevent.monkey.patch_all()`` (threads are
greenlets), in greenlets of the creating thread's hub.  Without patching, in
a shared daemon "hub thread", because plain threads block in ``join()`` and
``time.sleep`` and would never let a hub run; emits from any thread are
handed to it in order.  Either way, listeners run in greenlets, not in the
emitting thread.

``on``, ``once``, ``remove_listener``, ``remove_all_listeners``,
``listeners``, ``event_names`` and the ``new_listener`` event behave as in
pyee (``new_listener`` listeners are called asynchronously too).  It is a
context manager; ``shutdown(wait=True)`` delivers what is queued and stops
the greenlets, like ``ExecutorEventEmitter.shutdown``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import pyee
from gevent.monkey import get_original, is_module_patched

from ._portal import HubThread, ThreadPortal, get_ident, job_portal
from .channel import Channel, Overflow
from .exceptions import ChannelClosed, EndOfChannel

__all__ = ["EventEmitter"]

logger = logging.getLogger("greenbus.compat")


class _Feed:
    # One listener's channel and greenlet.
    __slots__ = ("channel", "greenlet", "listener")

    def __init__(self, emitter: EventEmitter, listener: Callable[..., Any]) -> None:
        self.listener = listener
        self.channel: Channel[tuple[tuple[Any, ...], dict[str, Any]]] = Channel(
            emitter._maxsize, emitter._overflow
        )
        self.greenlet = gevent.spawn(self._run, emitter)
        self.channel.owner = self.greenlet

    def _run(self, emitter: EventEmitter) -> None:
        get = self.channel.get
        listener = self.listener
        while True:
            try:
                args, kwargs = get()
            except EndOfChannel:
                return
            try:
                listener(*args, **kwargs)
            except Exception as exc:
                emitter._listener_failed(listener, exc)


class EventEmitter(pyee.EventEmitter):
    """``pyee.EventEmitter`` with non-blocking, order-preserving ``emit``.

    Args:
        maxsize: capacity of each listener's channel; None for unbounded.
        overflow: what emit does when a listener's channel is full (see
            :class:`greenbus.Overflow`); ``"block"`` by default, which waits
            and loses nothing.
    """

    def __init__(
        self, *, maxsize: int | None = 65536, overflow: Overflow | str = Overflow.BLOCK
    ) -> None:
        super().__init__()
        Channel(maxsize, overflow)  # validate the options up front
        self._maxsize = maxsize
        self._overflow = overflow
        self._feeds: dict[Callable[..., Any], _Feed] = {}
        self._closed = False
        if is_module_patched("threading"):
            portal: ThreadPortal = job_portal()
            self._home = get_ident()
            self._submit = portal.submit
        else:
            hub_thread = HubThread.shared()
            self._home = hub_thread.ident
            self._submit = hub_thread.submit

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("greenbus.compat.EventEmitter cannot be pickled")

    # -- the one hook pyee lets variants override --------------------------

    def _emit_run(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if get_ident() == self._home:
            self._deliver(f, args, kwargs)
        else:
            self._submit(lambda: self._deliver(f, args, kwargs))

    def _deliver(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        # On the home thread.
        if self._closed:
            logger.warning("emit after shutdown(): call of %r dropped", f)
            return
        feed = self._feeds.get(f)
        if feed is None or feed.channel.closed:
            feed = self._feeds[f] = _Feed(self, f)
        try:
            feed.channel.put((args, kwargs))
        except ChannelClosed:
            logger.warning("listener %r was removed while emit waited; call dropped", f)

    def _listener_failed(self, listener: Callable[..., Any], exc: Exception) -> None:
        try:
            self.emit("error", exc)
        except Exception:
            logger.error(
                "listener %r raised and no 'error' listener took it", listener, exc_info=exc
            )

    # -- removal closes the listener's greenlet once its queue is drained ---

    def _remove_listener(self, event: str, f: Callable[..., Any]) -> None:
        wrapped = self._events.get(event, {}).get(f)
        super()._remove_listener(event, f)
        if wrapped is not None:
            self._retire([wrapped])

    def remove_all_listeners(self, event: str | None = None) -> None:
        with self._lock:
            if event is None:
                wrapped = [v for handlers in self._events.values() for v in handlers.values()]
            else:
                wrapped = list(self._events.get(event, {}).values())
        super().remove_all_listeners(event)
        self._retire(wrapped)

    def _retire(self, wrapped: list[Callable[..., Any]]) -> None:
        def retire() -> None:
            live = {v for handlers in self._events.values() for v in handlers.values()}
            for fn in wrapped:
                if fn not in live:
                    feed = self._feeds.pop(fn, None)
                    if feed is not None:
                        feed.channel.close()  # drains what was emitted before removal

        if get_ident() == self._home:
            retire()
        else:
            self._submit(retire)

    # -- lifecycle ----------------------------------------------------------

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking calls; deliver what is queued; stop the greenlets.

        Args:
            wait: block until every queued call has run.
        """

        def stop() -> None:
            # Listeners may still emit while the queues drain (an ``error``
            # event, a chained event): those are delivered too, round after
            # round, until nothing is left.  Only then is the emitter closed.
            current = gevent.getcurrent()
            while self._feeds:
                feeds = list(self._feeds.values())
                self._feeds.clear()
                for feed in feeds:
                    feed.channel.close()
                if not wait:
                    break
                gevent.joinall([f.greenlet for f in feeds if f.greenlet is not current])
            self._closed = True

        if get_ident() == self._home:
            stop()
            return
        done = get_original("threading", "Event")()

        def stop_and_signal() -> None:
            try:
                stop()
            finally:
                done.set()

        self._submit(stop_and_signal)
        if wait:
            done.wait()

    def __enter__(self) -> EventEmitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
