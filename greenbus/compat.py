"""A drop-in ``pyee.EventEmitter`` whose ``emit`` never blocks.

Change one import::

    from greenbus.compat import EventEmitter   # was: from pyee import EventEmitter

It subclasses :class:`pyee.EventEmitter`, keeping pyee's listener table
(``_events``), but overrides ``emit`` itself: instead of calling each
listener, ``emit`` appends the call to that listener's own greenlet channel;
a greenlet per listener makes the calls one at a time, in emit order.  On
the listeners' thread (every greenlet, once monkey-patched) each event's
channels are looked up once and kept until its listeners change, so an
emit is one dict lookup and one append per listener, and it never switches
greenlets (unless a full ``"block"`` channel makes it wait).  So:

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
emitting thread.  Without patching, a listener that blocks the OS thread
for real (``time.sleep``) holds the shared hub thread, and so every other
listener, until it returns; it never holds the emitter.

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
from gevent.event import Event as GeventEvent
from gevent.monkey import get_original, is_module_patched

from ._portal import HubThread, ThreadPortal, get_ident, job_portal
from .channel import Channel, Overflow, check_options
from .exceptions import BusClosed, ChannelClosed, ChannelFull, EndOfChannel

__all__ = ["EventEmitter"]

logger = logging.getLogger("greenbus.compat")


class _Feed:
    # One listener's channel and greenlet.  Items are (event, args, kwargs),
    # or _Marker objects used by shutdown() to detect quiescence.
    __slots__ = ("channel", "greenlet", "listener")

    def __init__(
        self,
        listener: Callable[..., Any],
        maxsize: int | None,
        overflow: Overflow | str,
        on_failure: Callable[[str | None, Callable[..., Any], Exception], None],
    ) -> None:
        self.listener = listener
        self.channel: Channel[Any] = Channel(maxsize, overflow)
        self.greenlet = gevent.spawn(self._run, on_failure)
        self.channel.owner = self.greenlet

    def _run(self, on_failure: Callable[[str | None, Callable[..., Any], Exception], None]) -> None:
        get = self.channel.get
        listener = self.listener
        while True:
            try:
                item = get()
            except EndOfChannel:
                return
            if type(item) is _Marker:
                item.event.set()
                continue
            event, args, kwargs = item
            try:
                listener(*args, **kwargs)
            except Exception as exc:
                on_failure(event, listener, exc)


#: One listener call, as queued: (event, args, kwargs).
_Call = tuple[str | None, tuple[Any, ...], dict[str, Any]]


class _Marker:
    # Queued behind every call by shutdown(): when it is taken, everything
    # emitted before it has been handled.
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = GeventEvent()


class _Once:
    # The wrapper once() registers: a callable pyee stores like any listener,
    # told apart from plain listeners by its type.
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _put_failed(exc: ChannelFull | ChannelClosed, full: list[ChannelFull]) -> None:
    # One listener's put failed: keep a ChannelFull to raise; a closed
    # channel is a listener removed while the emit waited for room.
    if isinstance(exc, ChannelFull):
        full.append(exc)
    else:
        logger.warning("a listener was removed while emit waited; call dropped")


class EventEmitter(pyee.EventEmitter):
    """``pyee.EventEmitter`` with non-blocking, order-preserving ``emit``.

    Args:
        maxsize: capacity of each listener's channel; None for unbounded.
        overflow: what emit does when a listener's channel is full (see
            :class:`greenbus.Overflow`); ``"block"`` by default, which waits
            and loses nothing.

    Raises:
        InvalidOption: for a bad ``maxsize`` or ``overflow``.
    """

    def __init__(
        self, *, maxsize: int | None = 65536, overflow: Overflow | str = Overflow.BLOCK
    ) -> None:
        super().__init__()
        check_options(maxsize, overflow)  # validate up front, making no channel here
        self._maxsize = maxsize
        self._overflow = overflow
        #: Each listener's feed, by the callable pyee stores (home thread only).
        self._feeds: dict[Callable[..., Any], _Feed] = {}
        #: Per event, the ``put`` of each listener's channel, in pyee's order:
        #: what emit() appends to.  Built on the home thread from ``_events``
        #: under ``_lock``; an event is dropped from it whenever its
        #: listeners change (under ``_lock``, or right after the change).
        #: An event with a once listener is never kept here: its emits take
        #: the slow path, which removes the once listener.
        self._routes: dict[str, tuple[Callable[[Any], bool], ...]] = {}
        self._shutting_down = False
        self._closed = False
        self._submit: Callable[[Callable[[], object]], object]
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

    # -- emitting -----------------------------------------------------------

    def emit(self, event: str, *args: Any, **kwargs: Any) -> bool:
        """As in pyee, but queue the call to each listener instead of making it.

        Returns:
            True if ``event`` has listeners, else False.

        Raises:
            Exception: ``event`` is ``"error"``, it has no listener, and
                ``args[0]`` is an exception (that one; else ``PyeeError``).
            BusClosed: after :meth:`shutdown` (a ``RuntimeError``).
            ChannelFull: a listener's channel is full and its policy is
                ``"error"``, or ``"block"`` and the caller cannot wait (a
                listener emitting to itself); every other listener still
                got the call.
        """
        # The fast path: on the home thread, an event whose route is known
        # is one dict lookup and one append per listener.
        if get_ident() == self._home:
            route = self._routes.get(event)
            if route is not None:
                call = (event, args, kwargs)
                try:
                    for put in route:
                        put(call)
                except (ChannelFull, ChannelClosed) as exc:
                    self._put_rest(route, put, call, exc)
                return True
        return self._emit_slow(event, args, kwargs)

    def _emit_slow(self, event: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        # pyee's emit, for what the fast path leaves: another thread, an
        # event without listeners ('error'), once listeners, the first emit
        # of an event, or a shut-down emitter.
        if self._closed or (self._shutting_down and get_ident() != self._home):
            # While shutdown() drains, listeners (on the home thread) may
            # still emit; nobody else may.
            raise BusClosed("greenbus.compat.EventEmitter (shut down)")
        handled = self._call_handlers(event, args, kwargs)
        if not handled:
            self._emit_handle_potential_error(event, args[0] if args else None)
        return handled

    def once(self, event: str, f: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """As in pyee: ``f`` gets the next ``event`` only.

        The listener is removed when that event is *emitted* (not when the
        call runs later in its greenlet), so exactly one event reaches it,
        and the next emit returns False if it was the last listener.
        """

        def wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._add_event_handler(event, fn, _Once(fn))
            return fn

        return wrapper if f is None else wrapper(f)

    def _call_handlers(self, event: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        # pyee's loop over the listeners, with emit-time removal of once
        # listeners under the same lock.  The event name travels with each
        # call, so an 'error' listener's own failure is not fed back to it.
        call = (event, args, kwargs)
        if get_ident() == self._home:
            with self._lock:
                handlers = self._events.get(event)
                if not handlers:
                    return False
                route, fired = self._resolve(event, handlers)
            self._put_all(route, call)
            if fired:
                self._retire(fired)
            return True
        with self._lock:
            handlers = self._events.get(event)
            if not handlers:
                return False
            calls = list(handlers.items())
            fired = [v for k, v in calls if type(v) is _Once]
            for k, v in calls:
                if type(v) is _Once:
                    pyee.EventEmitter._remove_listener(self, event, k)
        funcs = [v for _, v in calls]
        self._submit(lambda: self._deliver_all(funcs, call, fired))
        return True

    def _resolve(
        self, event: str, handlers: dict[Callable[..., Any], Callable[..., Any]]
    ) -> tuple[tuple[Callable[[Any], bool], ...], list[Callable[..., Any]]]:
        # On the home thread, under _lock: each listener's put (its feed is
        # made on the first emit that reaches it), and the once listeners,
        # which are removed now.  The route is kept if it has none.
        feeds = self._feeds
        puts: list[Callable[[Any], bool]] = []
        fired: list[Callable[..., Any]] = []
        for k, v in list(handlers.items()):
            feed = feeds.get(v)
            if feed is None:
                feed = feeds[v] = _Feed(v, self._maxsize, self._overflow, self._listener_failed)
            puts.append(feed.channel.put)
            if type(v) is _Once:
                fired.append(v)
                pyee.EventEmitter._remove_listener(self, event, k)
        route = tuple(puts)
        if not fired and not self._closed:
            self._routes[event] = route
        return route, fired

    def _put_all(self, route: tuple[Callable[[Any], bool], ...], call: _Call) -> None:
        try:
            for put in route:
                put(call)
        except (ChannelFull, ChannelClosed) as exc:
            self._put_rest(route, put, call, exc)

    def _put_rest(
        self,
        route: tuple[Callable[[Any], bool], ...],
        failed: Callable[[Any], bool],
        call: _Call,
        exc: ChannelFull | ChannelClosed,
    ) -> None:
        # A put failed: offer the call to the listeners after it anyway (a
        # full listener does not starve the others), then raise the first
        # ChannelFull.  A closed channel is a listener removed while this
        # emit waited for room: that call is dropped, and logged.
        full: list[ChannelFull] = []
        _put_failed(exc, full)
        for put in route[route.index(failed) + 1 :]:
            try:
                put(call)
            except (ChannelFull, ChannelClosed) as err:
                _put_failed(err, full)
        if full:
            raise full[0]

    def _emit_run(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        # pyee's per-listener hook, kept for callers that use it directly.
        call: _Call = (None, args, kwargs)
        if get_ident() == self._home:
            self._deliver(f, call)
        else:
            self._submit(lambda: self._deliver(f, call))

    def _deliver_all(
        self, funcs: list[Callable[..., Any]], call: _Call, fired: list[Callable[..., Any]]
    ) -> None:
        # On the home thread: one emit from another thread.
        for f in funcs:
            self._deliver(f, call)
        if fired:
            self._retire(fired)

    def _deliver(self, f: Callable[..., Any], call: _Call) -> None:
        # On the home thread.
        if self._closed:
            logger.warning("event %r for listener %r arrived after shutdown(); dropped", call[0], f)
            return
        feed = self._feeds.get(f)
        fresh = feed is None
        if feed is None:
            feed = self._feeds[f] = _Feed(f, self._maxsize, self._overflow, self._listener_failed)
        try:
            feed.channel.put(call)
        except ChannelClosed:
            logger.warning("listener %r was removed while emit waited; call dropped", f)
        except ChannelFull:
            # Handed over from another thread: the emitter has returned, so
            # the overflow is reported here, and the other listeners still
            # get the call.
            logger.error("listener %r's channel is full; call dropped", f)
        if fresh and f not in self._live():
            # A once listener (removed at emit time) or one removed while
            # this call was handed over: run what is queued, then stop.
            self._close_feed(f)

    def _listener_failed(
        self, event: str | None, listener: Callable[..., Any], exc: Exception
    ) -> None:
        if event == "error":
            logger.error("'error' listener %r raised", listener, exc_info=exc)
            return
        try:
            self.emit("error", exc)
        except Exception:
            logger.error(
                "listener %r raised and no 'error' listener took it", listener, exc_info=exc
            )

    # -- changes: forget the routes; removal closes the listener's greenlet --

    def _add_event_handler(self, event: str, k: Callable[..., Any], v: Callable[..., Any]) -> None:
        super()._add_event_handler(event, k, v)
        # After the change, outside the lock: a route built before it is
        # dropped here, one built after it includes the new listener.
        self._routes.pop(event, None)

    def _remove_listener(self, event: str, f: Callable[..., Any]) -> None:
        listeners: dict[Callable[..., Any], Callable[..., Any]] = self._events.get(event, {})
        wrapped = listeners.get(f)
        super()._remove_listener(event, f)
        self._routes.pop(event, None)
        if wrapped is not None:
            self._retire([wrapped])

    def remove_all_listeners(self, event: str | None = None) -> None:
        """As in pyee; queued calls of the removed listeners still run."""
        with self._lock:
            if event is None:
                wrapped = [v for handlers in self._events.values() for v in handlers.values()]
            else:
                wrapped = list(self._events.get(event, {}).values())
        super().remove_all_listeners(event)
        if event is None:
            self._routes.clear()
        else:
            self._routes.pop(event, None)
        self._retire(wrapped)

    def _live(self) -> set[Callable[..., Any]]:
        return {v for handlers in list(self._events.values()) for v in list(handlers.values())}

    def _close_feed(self, fn: Callable[..., Any]) -> None:
        feed = self._feeds.pop(fn, None)
        if feed is not None:
            feed.channel.close()  # drains what was emitted before, then ends

    def _retire(self, wrapped: list[Callable[..., Any]]) -> None:
        def retire() -> None:
            live = self._live()
            for fn in wrapped:
                if fn not in live:
                    self._close_feed(fn)

        if get_ident() == self._home:
            retire()
        else:
            self._submit(retire)

    # -- lifecycle ----------------------------------------------------------

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking events, deliver what is queued, stop the greenlets.

        Events that listeners emit while the queues drain (an ``error``
        event, a chained event) are delivered too, each listener still one
        call at a time and in order.  After it, ``emit`` raises
        :class:`greenbus.BusClosed` (a ``RuntimeError``, as
        ``ExecutorEventEmitter`` raises after its shutdown).

        Args:
            wait: block until every queued call has run.
        """
        self._shutting_down = True
        if get_ident() == self._home:
            if wait:
                self._stop()
            else:
                gevent.spawn(self._stop)
            return
        done = get_original("threading", "Event")()

        def stop_and_signal() -> None:
            try:
                self._stop()
            finally:
                done.set()

        self._submit(stop_and_signal)
        if wait:
            done.wait()

    def _stop(self) -> None:
        # On the home thread.  Put a marker behind every queue and wait for
        # all of them; repeat while listeners keep emitting (new calls or new
        # feeds appeared meanwhile).  Once a round finds nothing new, the
        # emitter is quiescent: close and join.
        if self._closed:
            return
        current = gevent.getcurrent()
        while True:
            before = {f: feed.channel.delivered for f, feed in self._feeds.items()}
            markers = []
            for feed in list(self._feeds.values()):
                if feed.greenlet is current:
                    continue
                marker = _Marker()
                try:
                    feed.channel.put(marker)
                except ChannelClosed:
                    continue
                markers.append(marker)
            for marker in markers:
                marker.event.wait()
            after = {f: feed.channel.delivered for f, feed in self._feeds.items()}
            # Each marker counts as one delivery; anything beyond is new work.
            settled = after.keys() == before.keys() and all(
                after[f] - before[f] <= 1 for f in after
            )
            if settled:
                break
        self._closed = True
        self._routes.clear()  # emit takes the slow path, which raises BusClosed
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            feed.channel.close()
        gevent.joinall([f.greenlet for f in feeds if f.greenlet is not current])

    def __enter__(self) -> EventEmitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
