"""The hub side of one connection's protocol state, sans-I/O.

:class:`HubSession` takes the text of each message a peer sends and returns
the event the hub must carry out (``sub``, ``unsub``, ``pub``), answering the
rest itself (``hello``, ``ping``, and every refusal); the frames it answers
with pile up in :attr:`HubSession.outbox`.  All its state transitions live
here (:class:`SessionState`).  No sockets, no gevent: the hub's
:mod:`greenbus.bridge.peer` drives it, and the tests feed it strings.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._options import check_int
from .acl import ALLOW_ALL, InboxOwners, Permissions, is_inbox
from .history import Publishers
from .protocol import (
    DEFAULT_MAX_DEPTH,
    Ack,
    ClientEvent,
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Id,
    Ping,
    Pong,
    Pub,
    RemoteProtocolError,
    Sub,
    Unsub,
    Welcome,
    encode,
    parse_client,
)

__all__ = ["HubSession", "SessionLimits", "SessionState"]


class SessionState(enum.IntEnum):
    """One peer's session, hub side.  Transitions live in HubSession only."""

    #: A token is required: only ``hello`` is accepted.
    AWAITING_HELLO = 0
    OPEN = 1
    #: The hub decided to close; the close code is in ``HubSession.close_code``.
    CLOSING = 2


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-peer protocol limits (see docs/limits.md)."""

    #: Subscriptions one peer may hold.
    max_subscriptions: int = 1000
    #: Protocol errors before the peer is closed with 1008.
    max_errors: int = 20
    #: JSON nesting depth of a frame.
    max_depth: int = DEFAULT_MAX_DEPTH

    def __post_init__(self) -> None:
        check_int("max_subscriptions", self.max_subscriptions)
        check_int("max_errors", self.max_errors, 0)
        check_int("max_depth", self.max_depth)


@dataclass
class HubSession:
    """Protocol state of one peer on the hub, sans-I/O.

    Feed each text message to :meth:`receive`; it returns the event the hub
    must apply (``Sub``, ``Unsub``, ``Pub``; ``Hello`` and ``Ping`` are
    answered here) or None.  Frames to send accumulate in :attr:`outbox`;
    when the session decides the peer must go, :attr:`close_code` and
    :attr:`close_reason` are set and the state is CLOSING.

    Args:
        server: the hub's name, sent in ``welcome``.
        peer: this peer's id, sent in ``welcome``.
        authenticate: called with the ``hello`` token; returns the peer's
            :class:`~greenbus.acl.Permissions`, or None to refuse it.  Leave
            it None when no token is configured (anonymous peers may act at
            once, ``hello`` is optional).
        limits: the per-peer limits.
        inboxes: the hub's :class:`~greenbus.acl.InboxOwners`: an exact
            ``_INBOX.`` subscription is refused (``forbidden``) unless this
            peer owns the inbox.  None: no ownership check.
        on_error: called with ``(code, reason)`` for every ``error`` frame
            queued (the hub logs each refusal).
        publishers: the hub's :class:`~greenbus.history.Publishers`: in a v2
            session named in ``hello``, a ``pub`` with an integer ``id`` at
            or below the last one applied for that session is a resend: it
            is acknowledged and dropped.  None: no resend is recognised.
    """

    server: str
    peer: str
    authenticate: Any = None
    limits: SessionLimits = field(default_factory=SessionLimits)
    inboxes: InboxOwners | None = None
    on_error: Callable[[ErrorCode, str], object] | None = None
    publishers: Publishers | None = None
    state: SessionState = SessionState.OPEN
    #: The protocol version this connection speaks: 1 until a hello says 2.
    version: int = 1
    #: The client's publisher session (v2 ``hello``), if it named one.
    client_session: str | None = None
    name: str | None = None
    sids: dict[Id, str] = field(default_factory=dict)
    errors: int = 0
    #: Error frames sent, by code; pass the hub's dict to count for all peers.
    error_counts: dict[str, int] = field(default_factory=dict)
    outbox: list[str] = field(default_factory=list)
    close_code: CloseCode | None = None
    close_reason: str = ""
    #: What this peer may do: everything until an ACL user authenticates.
    permissions: Permissions = ALLOW_ALL

    def __post_init__(self) -> None:
        if self.authenticate is not None:
            self.state = SessionState.AWAITING_HELLO

    def receive(self, text: str) -> Sub | Unsub | Pub | None:
        """Apply one client message; return the event the hub must carry out."""
        if self.state is SessionState.CLOSING:
            return None
        try:
            event = parse_client(text, max_depth=self.limits.max_depth, version=self.version)
        except RemoteProtocolError as exc:
            if self.state is SessionState.AWAITING_HELLO:
                self._unauthorized(
                    f"the first message must be hello with a token ({exc.reason})", exc.id
                )
            else:
                self.reject(exc.code, exc.reason, exc.id)
            return None
        if type(event) is Pub and self.state is SessionState.OPEN:
            # The hot path: with no ACL, nothing to check or record.
            perms = self.permissions
            if perms is ALLOW_ALL or perms.can_publish(event.topic):
                if self.client_session is not None and type(event.id) is int:
                    return self._unless_resent(event)
                return event
            self.reject(
                ErrorCode.FORBIDDEN,
                f"user {perms.user!r} may not publish to {event.topic!r}",
                event.id,
            )
            return None
        if self.state is SessionState.AWAITING_HELLO and not isinstance(event, Hello):
            self._unauthorized("a token is required: the first message must be hello", event.id)
            return None
        if isinstance(event, Hello):
            self._hello(event)
            return None
        if isinstance(event, Ping):
            self.outbox.append(encode(Pong(event.id)))
            return None
        if isinstance(event, Sub):
            if not self.permissions.can_subscribe(event.topic):
                self.reject(
                    ErrorCode.FORBIDDEN,
                    f"user {self.permissions.user!r} may not subscribe to {event.topic!r}",
                    event.id,
                )
                return None
            if event.sid in self.sids:
                self.reject(ErrorCode.DUPLICATE_SID, f"sid {event.sid!r} is in use", event.id)
                return None
            if len(self.sids) >= self.limits.max_subscriptions:
                self.reject(
                    ErrorCode.LIMIT,
                    f"at most {self.limits.max_subscriptions} subscriptions per connection",
                    event.id,
                )
                return None
            inboxes = self.inboxes
            if inboxes is not None and is_inbox(event.topic):
                if not inboxes.claim(event.topic, self.peer):
                    self.reject(
                        ErrorCode.FORBIDDEN,
                        f"inbox {event.topic!r} belongs to another requester",
                        event.id,
                    )
                    return None
            self.sids[event.sid] = event.topic
            return event
        if isinstance(event, Unsub):
            topic = self.sids.pop(event.sid, None)
            if topic is None:
                self.reject(
                    ErrorCode.UNKNOWN_SID, f"no subscription with sid {event.sid!r}", event.id
                )
                return None
            if self.inboxes is not None and is_inbox(topic):
                self.inboxes.release(topic, self.peer)
            return event
        return event  # Pub

    def _hello(self, event: Hello) -> None:
        if self.authenticate is not None:
            perms = self.authenticate(event.token)
            if perms is None:
                self._unauthorized("missing or wrong token", event.id)
                return None
            self.permissions = perms
        self.state = SessionState.OPEN
        self.name = event.name
        self.version = event.protocol
        self.client_session = event.session
        self.outbox.append(encode(Welcome(event.protocol, self.server, self.peer, event.id)))
        return None

    def _unless_resent(self, event: Pub) -> Pub | None:
        # A v2 pub numbered by its session: apply it, unless it was already.
        publishers = self.publishers
        assert self.client_session is not None and type(event.id) is int
        if publishers is not None and publishers.seen(self.client_session, event.id):
            self.ack(event)  # the client did not get the first ack: say it again
            return None
        return event

    def _unauthorized(self, reason: str, id: Id | None = None) -> None:
        self.error(ErrorCode.UNAUTHORIZED, reason, id)
        self.close(CloseCode.POLICY, "unauthorized")

    def error(self, code: ErrorCode, reason: str, id: Id | None = None) -> None:
        """Queue an ``error`` frame and count it in :attr:`error_counts`."""
        self.outbox.append(encode(Error(code, reason, id)))
        counts = self.error_counts
        counts[code.value] = counts.get(code.value, 0) + 1
        if self.on_error is not None:
            self.on_error(code, reason)

    def ack(
        self, event: ClientEvent, pos: str | None = None, recovered: bool | None = None
    ) -> None:
        """Queue the ``ack`` for an applied event that carried an ``id``.

        Args:
            pos: for a ``sub`` in a v2 session, with history on: where the
                subscription starts.
            recovered: for a ``sub`` with ``since``: whether the gap was
                replayed (the replay follows the ack).
        """
        id_ = event.id
        if type(id_) is int and pos is None and recovered is None:
            # A pub's ack (one per pub of a v2 client), as encode() writes it.
            self.outbox.append(f'{{"op":"ack","id":{id_}}}')
        elif id_ is not None:
            if self.version < 2:
                pos = recovered = None
            self.outbox.append(encode(Ack(id_, pos, recovered)))

    def reject(self, code: ErrorCode, reason: str, id: Id | None = None) -> None:
        """Queue an ``error``; close with 1008 once the peer exceeds max_errors."""
        self.error(code, reason, id)
        self.errors += 1
        if self.errors > self.limits.max_errors:
            self.close(CloseCode.POLICY, f"too many protocol errors ({self.errors})")

    def close(self, code: CloseCode, reason: str) -> None:
        """Decide to close the connection (the first decision wins)."""
        if self.state is not SessionState.CLOSING:
            self.state = SessionState.CLOSING
            self.close_code = code
            self.close_reason = reason

    def end(self) -> None:
        """The connection is over: give up what this peer holds (its inboxes).  Idempotent.

        Also drops the ``on_error`` callback, which usually refers back to
        the session's owner: a finished session holds nothing alive.
        """
        self.on_error = None
        sids, self.sids = self.sids, {}
        if self.inboxes is not None:
            for topic in sids.values():
                if is_inbox(topic):
                    self.inboxes.release(topic, self.peer)

    def take_outbox(self) -> list[str]:
        """Return and clear the frames queued to send."""
        out, self.outbox = self.outbox, []
        return out
