"""Every error greenbus raises, under one root.

The hierarchy::

    GreenbusError
    ├── InvalidTopic                (also ValueError)   a malformed topic or pattern
    ├── InvalidOption               (also ValueError)   a bad maxsize/overflow/handler/timeout
    ├── AclError                    (also ValueError)   a malformed ACL file
    ├── NoReplyTo                   (also ValueError)   reply() to a message that is no request
    ├── WrongThread                 (also RuntimeError) a call that must run on the bus's own thread
    ├── ChannelError
    │   ├── ChannelFull                                 a bounded channel could not take an item
    │   ├── ChannelEmpty                                get_nowait() found nothing
    │   ├── ChannelClosed                               put() after *you* closed the channel
    │   └── EndOfChannel                                closed and drained: a clean end
    ├── MessageTooBig               (also ValueError)   a frame over the size limit: not sent
    ├── BusClosed                   (also RuntimeError) emit/subscribe/request on a closed bus
    │   └── ClientClosed                                ... on a client closed, or refused for good
    ├── NoResponders                                    request() matched no subscription
    ├── ReceiveTimeout              (also TimeoutError) get(timeout=...) expired
    │   └── RequestTimeout                              request(timeout=...) expired
    ├── ProtocolError               (also ValueError)   the wire protocol violated; who broke it:
    │   ├── RemoteProtocolError                         ... the peer sent it (with an error code)
    │   └── LocalProtocolError                          ... we tried to send it (e.g. data not JSON)
    ├── RemoteError                                     the hub answered with an error frame
    ├── HubClosed                                       the hub closed over what we sent
    ├── RecoveryFailed                                  reported: a resumed subscription has a gap
    └── SlowConsumer                                    reported (not raised) to Bus.on_error
                                                        on the first drop of an overflow episode

Exceptions carry structured attributes and build their message from them, so a
caller can branch on ``exc.maxsize`` rather than parse text.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AclError",
    "BusClosed",
    "ChannelClosed",
    "ChannelEmpty",
    "ChannelError",
    "ChannelFull",
    "ClientClosed",
    "EndOfChannel",
    "GreenbusError",
    "HubClosed",
    "InvalidOption",
    "InvalidTopic",
    "LocalProtocolError",
    "MessageTooBig",
    "NoReplyTo",
    "NoResponders",
    "ProtocolError",
    "ReceiveTimeout",
    "RecoveryFailed",
    "RemoteError",
    "RemoteProtocolError",
    "RequestTimeout",
    "SlowConsumer",
    "WrongThread",
]


class GreenbusError(Exception):
    """Root of every exception greenbus raises."""


class InvalidTopic(GreenbusError, ValueError):
    """A topic or pattern breaks the grammar in ``docs/ordering.md``.

    Attributes:
        topic: the offending value.
        problem: what is wrong with it, in words.
    """

    def __init__(self, topic: object, problem: str) -> None:
        self.topic = topic
        self.problem = problem
        super().__init__(f"invalid topic {topic!r}: {problem}")


class InvalidOption(GreenbusError, ValueError):
    """An argument such as ``maxsize``, ``overflow`` or ``handler`` is invalid.

    Attributes:
        name: the argument's name.
        value: the rejected value (a ``secret`` one is kept, never shown).
        expected: what it must be.
    """

    def __init__(self, name: str, value: object, expected: str, *, secret: bool = False) -> None:
        self.name = name
        self.value = value
        self.expected = expected
        # A secret (a token) is never shown: the message may reach a log.
        shown = f"{name} (value not shown)" if secret else f"{name}={value!r}"
        super().__init__(f"invalid {shown}: expected {expected}")


class AclError(GreenbusError, ValueError):
    """The ACL file is malformed; the message names the file, the user and the problem."""


class NoReplyTo(GreenbusError, ValueError):
    """``Message.reply()`` was called on a message that carries no ``reply_to``."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"message on {topic!r} has no reply_to: it is not a request")


class WrongThread(GreenbusError, RuntimeError):
    """A call that must run on the owner's OS thread was made from another one.

    Attributes:
        what: the call made, as ``"request()"``.
        owner: what owns the thread: ``"bus"`` (a Bus) or ``"client"`` (a RemoteBus).
        allowed: the calls that may be made from other threads (``"emit() and
            request()"`` for a Bus, ``"statistics()"`` for a RemoteBus).
    """

    def __init__(
        self, what: str, owner: str = "bus", allowed: str = "emit() and request()"
    ) -> None:
        self.what = what
        self.owner = owner
        self.allowed = allowed
        super().__init__(
            f"{what} must be called from the OS thread that owns the {owner} "
            f"(only {allowed} may be called from other threads)"
        )


class ChannelError(GreenbusError):
    """Base of the channel errors."""


class ChannelFull(ChannelError):
    """A bounded channel could not take an item.

    Raised by ``put`` under ``overflow="error"``, and under ``overflow="block"``
    where waiting is impossible (on the gevent hub, or by the channel's own
    consumer, which would wait for itself).  ``Bus.emit`` raises it after it has
    offered the message to every other matching subscription.

    Attributes:
        maxsize: the capacity of the (first) full channel.
        reason: why it could not wait or take the item.
        delivered: for ``Bus.emit``, how many subscriptions did receive the message.
        full: for ``Bus.emit``, the patterns of the subscriptions that were full.
    """

    def __init__(
        self,
        maxsize: int | None,
        reason: str = "channel is full",
        *,
        delivered: int | None = None,
        full: tuple[str, ...] = (),
    ) -> None:
        self.maxsize = maxsize
        self.reason = reason
        self.delivered = delivered
        self.full = full
        text = f"{reason} (maxsize={maxsize})"
        if full:
            text += f"; full subscriptions: {', '.join(map(repr, full))}"
        if delivered is not None:
            text += f"; delivered to {delivered} other subscription(s)"
        super().__init__(text)


class ChannelEmpty(ChannelError):
    """``get_nowait()`` found no item."""

    def __init__(self) -> None:
        super().__init__("channel is empty")


class ChannelClosed(ChannelError):
    """``put`` on a channel that was closed (by its owner, i.e. you)."""

    def __init__(self, what: str = "channel") -> None:
        super().__init__(f"{what} is closed")


class EndOfChannel(ChannelError):
    """The channel was closed and every item has been received: a clean end."""

    def __init__(self) -> None:
        super().__init__("end of channel: it is closed and drained")


class BusClosed(GreenbusError, RuntimeError):
    """The bus is closing or closed; it takes no new messages or subscriptions."""

    def __init__(self, name: str = "bus") -> None:
        self.name = name
        super().__init__(f"{name} is closed")


class ClientClosed(BusClosed):
    """The remote client is closed: by :meth:`close`, or for good after the hub refused it.

    Every call of a closed client raises it, and a subscription of a client
    that was refused ends with it.

    Attributes:
        name: the client's name.
        cause: why it closed by itself (a :class:`RemoteError` with code
            ``unauthorized``, a :class:`HubClosed`, a :class:`MessageTooBig`
            when the hub's ``max_message_size`` is below the hello, or a
            failed TLS verification), or None after :meth:`close`.
    """

    def __init__(self, name: str, cause: BaseException | None = None) -> None:
        super().__init__(name)
        self.cause = cause
        if cause is not None:
            self.args = (f"{name} is closed: {cause}",)


class MessageTooBig(GreenbusError, ValueError):
    """A frame is bigger than the size limit, so it was not sent.

    Attributes:
        size: the frame's size in bytes (UTF-8).
        limit: the limit (``max_message_size``).
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


class NoResponders(GreenbusError):
    """``request()`` found no subscription matching its topic at send time."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"no subscription matches {topic!r}: nobody can reply")


class ReceiveTimeout(GreenbusError, TimeoutError):
    """Waiting for a message took longer than the given timeout.

    Attributes:
        timeout: the timeout in seconds.
    """

    def __init__(self, timeout: float, what: str = "no message received") -> None:
        self.timeout = timeout
        super().__init__(f"{what} within {timeout:g} s")


class RequestTimeout(ReceiveTimeout):
    """``request()`` got no reply within its timeout.

    Attributes:
        topic: the request's topic.
        timeout: the timeout in seconds.
    """

    def __init__(self, topic: str, timeout: float) -> None:
        self.topic = topic
        super().__init__(timeout, f"no reply to request on {topic!r}")


class ProtocolError(GreenbusError, ValueError):
    """Base of the wire protocol errors (see ``docs/protocol.md``)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the wire protocol does not allow.

    Attributes:
        code: the ``ErrorCode`` to answer with (a ``str`` enum).
        reason: human-readable detail.
        id: the offending frame's ``id``, if it could be read.
    """

    def __init__(self, code: Any, reason: str, id: Any = None) -> None:
        self.code = code
        self.reason = reason
        self.id = id
        super().__init__(f"{getattr(code, 'value', code)}: {reason}")


class LocalProtocolError(ProtocolError):
    """We tried to encode something the wire protocol does not allow."""


class RemoteError(GreenbusError):
    """The hub answered with an ``error`` frame.

    The client passes every one to ``on_error``; one that refuses a
    :meth:`RemoteBus.publish` is raised there, and one that refuses a
    ``sub`` ends that subscription (its ``get`` raises it).

    Attributes:
        code: the error code (an ``ErrorCode`` when known, else the raw string).
        reason: the hub's explanation.
        id: the id of the refused frame, if it carried one.
    """

    def __init__(self, code: Any, reason: str, id: Any = None) -> None:
        self.code = code
        self.reason = reason
        self.id = id
        super().__init__(f"hub error {getattr(code, 'value', code)}: {reason}")

    @property
    def fatal(self) -> bool:
        """True if retrying cannot help: ``unauthorized`` (the hub refused the
        token and closes with 1008) or ``unsupported_protocol`` (the hub does
        not speak this client's protocol)."""
        code: object = getattr(self.code, "value", self.code)
        return code in ("unauthorized", "unsupported_protocol")


class HubClosed(GreenbusError):
    """The hub closed the connection with a code that says what it refused.

    Reported to the client's ``on_error`` hook (never raised by a call);
    ``fatal`` ones (1008, policy: a refused token or too many protocol
    errors) also close the client for good (see :class:`ClientClosed`).

    Attributes:
        code: the WebSocket close code (RFC 6455, section 7.4.1).
        reason: the close reason the hub sent.
    """

    #: Close codes after which reconnecting cannot help.
    FATAL = frozenset({1002, 1003, 1007, 1008})

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"the hub closed the connection with {code}: {reason or 'no reason'}")

    @property
    def fatal(self) -> bool:
        """True if reconnecting cannot help: the client stops."""
        return self.code in self.FATAL


class RecoveryFailed(GreenbusError):
    """A client resumed a subscription after a cut, and messages may be missing.

    Never raised: the client passes it to its ``on_error`` hook (with the
    subscription), logs it, and counts it in ``statistics().recoveries_failed``;
    the subscription goes on with the live messages.  See docs/recovery.md.

    Attributes:
        pattern: the subscription's pattern.
        since: the position it asked to resume from (None if it had none).
        reason: why the gap could not be replayed.
    """

    def __init__(self, pattern: str, since: str | None, reason: str) -> None:
        self.pattern = pattern
        self.since = since
        self.reason = reason
        super().__init__(
            f"subscription {pattern!r} resumed with a gap: messages published while it was "
            f"disconnected may be lost ({reason})"
        )


class SlowConsumer(GreenbusError):
    """A subscription dropped messages because its channel was full.

    Never raised: it is passed to ``Bus.on_error`` and logged once at the
    start of an overflow episode.  The episode ends when the subscriber has
    caught up to half its capacity; the next drop after that starts a new one.

    Attributes:
        pattern: the subscription's pattern.
        maxsize: its capacity.
        overflow: its overflow policy.
        dropped: how many messages it had dropped in total when reported.
    """

    def __init__(self, pattern: str, maxsize: int | None, overflow: str, dropped: int) -> None:
        self.pattern = pattern
        self.maxsize = maxsize
        self.overflow = overflow
        self.dropped = dropped
        super().__init__(
            f"slow consumer on {pattern!r}: channel full (maxsize={maxsize}), "
            f"dropping under overflow={overflow!r}; {dropped} dropped so far"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.pattern, self.maxsize, self.overflow, self.dropped))
