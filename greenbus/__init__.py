"""greenbus: a message bus for greenlets that never reorders messages.

Every subscriber owns a FIFO channel; an emit is an append and never waits for
a receiver.  The module-level functions use a default bus::

    import greenbus

    @greenbus.on("sensors.*.temp")
    def show(msg):
        print(msg.topic, msg.data)

    greenbus.emit("sensors.room1.temp", 21.5)

The default bus and threads: it is made by the first call of
:func:`default_bus`, :func:`subscribe`, :func:`on`, :func:`once` or
:func:`request` (everything but :func:`emit`), under a lock, so racing OS
threads all get the same one.  It belongs to the OS thread that made it: its
handlers run in greenlets of that thread, and only that thread may subscribe
to it or close it.  :func:`emit` never makes it: while no open default bus
exists nobody can be subscribed, so ``emit`` returns 0 (delivered to nobody)
from any thread.  Once it exists, ``emit`` from any thread goes through it
(another thread's emits are handed to its owner, see :meth:`Bus.emit`).  If it
has been closed, the next call other than ``emit`` makes a new one, owned by
the caller's thread.  So a worker thread that emits before the main thread
subscribes neither makes nor owns the default bus.
"""

from _thread import LockType as _LockType
from collections.abc import Callable as _Callable
from collections.abc import Mapping as _Mapping
from typing import Any as _Any
from typing import TypeVar as _TypeVar
from typing import overload as _overload

from gevent.monkey import get_original as _get_original

from ._version import __version__
from .bridge import HubConfig, HubServer, RemoteBus, connect, serve
from .bus import Bus, BusState, BusStatistics
from .bus import check_extras as _check_extras
from .channel import DEFAULT_MAXSIZE, Channel, ChannelStatistics, Overflow
from .exceptions import (
    AclError,
    BusClosed,
    ChannelClosed,
    ChannelEmpty,
    ChannelError,
    ChannelFull,
    ClientClosed,
    EndOfChannel,
    GreenbusError,
    HubClosed,
    InvalidOption,
    InvalidTopic,
    LocalProtocolError,
    MessageTooBig,
    NoReplyTo,
    NoResponders,
    ProtocolError,
    ReceiveTimeout,
    RecoveryFailed,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    SlowConsumer,
    WrongThread,
)
from .federation import Federation, federate
from .message import Message
from .subscription import Forward, Subscription, SubscriptionStatistics
from .topics import pattern_matches, validate_pattern, validate_topic

__all__ = [
    "DEFAULT_MAXSIZE",
    "AclError",
    "Bus",
    "BusClosed",
    "BusState",
    "BusStatistics",
    "Channel",
    "Forward",
    "HubConfig",
    "HubServer",
    "RemoteBus",
    "RemoteError",
    "RemoteProtocolError",
    "ChannelClosed",
    "ChannelEmpty",
    "ChannelError",
    "ChannelFull",
    "ChannelStatistics",
    "ClientClosed",
    "EndOfChannel",
    "Federation",
    "GreenbusError",
    "HubClosed",
    "InvalidOption",
    "InvalidTopic",
    "LocalProtocolError",
    "Message",
    "MessageTooBig",
    "NoReplyTo",
    "NoResponders",
    "ProtocolError",
    "Overflow",
    "ReceiveTimeout",
    "RecoveryFailed",
    "RequestTimeout",
    "SlowConsumer",
    "Subscription",
    "SubscriptionStatistics",
    "WrongThread",
    "__version__",
    "connect",
    "default_bus",
    "emit",
    "federate",
    "on",
    "once",
    "pattern_matches",
    "request",
    "serve",
    "subscribe",
    "validate_pattern",
    "validate_topic",
]

_H = _TypeVar("_H", bound=_Callable[[Message], object])

_default: Bus | None = None
#: Guards the making of the default bus.  A real OS-thread lock even when
#: ``threading`` is monkey-patched, where a patched lock would not exclude
#: other OS threads.  It is held only while a Bus is constructed, which
#: never switches greenlets, so no greenlet can wait on it forever.
_default_lock: _LockType = _get_original("_thread", "allocate_lock")()


def default_bus() -> Bus:
    """The bus the module-level functions use, made if there is no open one.

    The first call (or the first :func:`subscribe`, :func:`on`,
    :func:`once` or :func:`request`, which call it) makes it, under a lock:
    OS threads that race here all get the same bus.  It belongs to the OS
    thread that made it: its handlers run in greenlets of that thread, and
    calls other than ``emit`` from other threads raise :class:`WrongThread`.
    :func:`emit` never makes it.  Once it has been closed, the next call
    makes a new one, owned by the calling thread.

    Returns:
        the open default bus.
    """
    global _default
    bus = _default
    if bus is not None and not bus.closed:
        return bus  # the common case, without the lock
    with _default_lock:
        # Checked again under the lock: another thread may have made it
        # while this one waited.
        bus = _default
        if bus is None or bus.closed:
            bus = _default = Bus("default")
        return bus


def emit(
    topic: str,
    data: _Any = None,
    *,
    headers: _Mapping[str, _Any] | None = None,
    reply_to: str | None = None,
) -> int:
    """:meth:`Bus.emit` on the default bus, from any thread; never makes it.

    Returns:
        how many subscriptions the message was queued to; 0 while there is
        no open default bus (nobody can be subscribed to one that does not
        exist), without making one: the thread that makes the default bus
        owns it, and that should be the thread that subscribes.

    Raises:
        InvalidTopic, InvalidOption: malformed arguments, whether or not a
            default bus exists.
        ChannelFull: as :meth:`Bus.emit`.
        BusClosed: only if a forward's sink raises it; a closed default bus
            means 0, not BusClosed.
    """
    bus = _default
    if bus is not None:
        try:
            return bus.emit(topic, data, headers=headers, reply_to=reply_to)
        except BusClosed:
            if not bus.closed:
                raise  # a forward's sink raised it, on an open bus: not ours to hide
    # No open default bus (none yet, or it closed, maybe while this emit
    # was on its way): check the arguments as a bus without subscribers
    # would, and deliver to nobody, as it would.
    validate_topic(topic)
    _check_extras(headers, reply_to)
    return 0


def subscribe(
    pattern: str,
    handler: _Callable[[Message], object] | None = None,
    *,
    maxsize: int | None = DEFAULT_MAXSIZE,
    overflow: Overflow | str = Overflow.BLOCK,
) -> Subscription:
    """:meth:`Bus.subscribe` on the default bus."""
    return default_bus().subscribe(pattern, handler, maxsize=maxsize, overflow=overflow)


@_overload
def on(pattern: str, handler: None = None, **opts: _Any) -> _Callable[[_H], _H]: ...


@_overload
def on(pattern: str, handler: _H, **opts: _Any) -> _H: ...


def on(pattern: str, handler: _H | None = None, **opts: _Any) -> _H | _Callable[[_H], _H]:
    """:meth:`Bus.on` on the default bus (a decorator when ``handler`` is omitted)."""
    return default_bus().on(pattern, handler, **opts)


@_overload
def once(pattern: str, handler: None = None, **opts: _Any) -> _Callable[[_H], _H]: ...


@_overload
def once(pattern: str, handler: _H, **opts: _Any) -> _H: ...


def once(pattern: str, handler: _H | None = None, **opts: _Any) -> _H | _Callable[[_H], _H]:
    """:meth:`Bus.once` on the default bus."""
    return default_bus().once(pattern, handler, **opts)


def request(
    topic: str,
    data: _Any = None,
    *,
    timeout: float = 1.0,
    headers: _Mapping[str, _Any] | None = None,
) -> Message:
    """:meth:`Bus.request` on the default bus."""
    return default_bus().request(topic, data, timeout=timeout, headers=headers)
