"""greenbus: a message bus for greenlets that never reorders messages.

Every subscriber owns a FIFO channel; an emit is an append and never waits for
a receiver.  The module-level functions use a default bus, made on first use
by the calling OS thread::

    import greenbus

    @greenbus.on("sensors.*.temp")
    def show(msg):
        print(msg.topic, msg.data)

    greenbus.emit("sensors.room1.temp", 21.5)
"""

from collections.abc import Callable as _Callable
from collections.abc import Mapping as _Mapping
from typing import Any as _Any
from typing import TypeVar as _TypeVar
from typing import overload as _overload

from ._version import __version__
from .bridge import HubConfig, HubServer, RemoteBus, connect, serve
from .bus import (
    Bus,
    BusState,
    BusStatistics,
    Forward,
    Message,
    Subscription,
    SubscriptionStatistics,
)
from .channel import DEFAULT_MAXSIZE, Channel, ChannelStatistics, Overflow
from .exceptions import (
    AclError,
    BusClosed,
    ChannelClosed,
    ChannelEmpty,
    ChannelError,
    ChannelFull,
    EndOfChannel,
    GreenbusError,
    InvalidOption,
    InvalidTopic,
    LocalProtocolError,
    NoReplyTo,
    NoResponders,
    ProtocolError,
    ReceiveTimeout,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    SlowConsumer,
    WrongThread,
)
from .federation import Federation, federate
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
    "EndOfChannel",
    "Federation",
    "GreenbusError",
    "InvalidOption",
    "InvalidTopic",
    "LocalProtocolError",
    "Message",
    "NoReplyTo",
    "NoResponders",
    "ProtocolError",
    "Overflow",
    "ReceiveTimeout",
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


def default_bus() -> Bus:
    """The bus the module-level functions use.

    Made on first call, owned by the calling OS thread.  If it has been
    closed, a new one replaces it.
    """
    global _default
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
    """:meth:`Bus.emit` on the default bus."""
    return default_bus().emit(topic, data, headers=headers, reply_to=reply_to)


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
