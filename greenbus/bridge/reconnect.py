"""A client's connection to a hub, kept open: dial, reconnect, give up on a refusal.

:class:`Reconnecting` is the base of :class:`~greenbus.bridge.client.RemoteBus`.
It owns the connection's life (:class:`ClientState`): one runner greenlet
dials (:func:`~greenbus.bridge.dial.dial`), hands each new connection to the
subclass to send its first frames (``hello``, its subscriptions, what it
must send again), waits for the connection's end, and reconnects with capped
exponential backoff; the backoff starts again only after a connection that
proved itself (welcomed, then up for :data:`PROVEN_AFTER` seconds or given a
frame), so a hub that closes every connection at once (1013 at its
``max_connections``) sees attempts 50 ms, 100 ms, ... 5 s apart.  What
retrying cannot fix ends the client for good: a refused token, a close for
a policy violation (1008) or for a frame the hub could not read (1002,
1003, 1007), a TLS certificate that does not verify, an HTTP refusal of the
upgrade (4xx), a hub that does not speak the client's protocol, a hub whose
``max_message_size`` is below the client's ``hello``.  The cause is logged
and goes to ``on_error``, and :attr:`Reconnecting.error` keeps it.

The subclass says what a connection carries: :meth:`~Reconnecting._connected`
(a new connection, before the runner waits on it), :meth:`~Reconnecting._on_text`
(each frame), :meth:`~Reconnecting._disconnected` (its end) and
:meth:`~Reconnecting._end` (the client's end).
"""

from __future__ import annotations

import abc
import enum
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import gevent
import gevent.event
from gevent import Timeout
from gevent import ssl as gssl

from .._attrs import readonly
from .._options import check_int, check_seconds, check_timeout, check_type
from ..exceptions import ClientClosed, HubClosed, InvalidOption, MessageTooBig
from ..protocol import MSG_SLACK
from ..subscription import HandlerMixin
from .connection import Connection
from .dial import HandshakeFailed, Refused, check_url, dial

__all__ = ["FIRST_BACKOFF", "PROVEN_AFTER", "ClientState", "Reconnecting"]

logger = logging.getLogger("greenbus.bridge.client")

#: Reconnect backoff: first delay (seconds).
FIRST_BACKOFF = 0.05
#: A welcomed connection that stayed up this long (seconds), or got a frame
#: after its welcome, proved itself: the backoff starts again after it.
PROVEN_AFTER = 1.0

# websockets' reason for a 1009 (docs/protocol.md, close codes).
_TOO_BIG = re.compile(r"frame with (\d+) bytes exceeds limit of (\d+) bytes")


class ClientState(enum.IntEnum):
    """A client's life.  Transitions live in :class:`Reconnecting` only.

    CONNECTING -> OPEN -> RECONNECTING -> CONNECTING ...; any -> CLOSED (final).
    """

    #: A connection is being opened, or waits for the hub's welcome.
    CONNECTING = 0
    #: Welcomed: subscriptions are in place, emits go out at once.
    OPEN = 1
    #: The connection ended; the next attempt is scheduled.
    RECONNECTING = 2
    #: Final: close() was called, or the hub refused the client for good.
    CLOSED = 3


class Reconnecting(HandlerMixin, abc.ABC):
    """One connection to a hub at a time, reopened until the client ends.

    Args:
        url: ``ws://host:port/`` or ``wss://host:port/``; or several, tried
            in turn: after a failed attempt the next one is tried (a
            federation's hubs, for one to take over when another fails).
        name: the client's name (default: random).
        connect_timeout: seconds for one connection attempt (TCP, TLS, upgrade).
        max_backoff: the longest wait between attempts, in seconds.
        max_message_size: the largest frame this client sends; frames from
            the hub may be :data:`~greenbus.protocol.MSG_SLACK` bigger.
        cafile: PEM file of the CA that signed a ``wss://`` hub's certificate.

    A subclass speaks the protocol over each connection: it implements the
    four hooks ``_connected``, ``_on_text``, ``_disconnected`` and ``_end``
    (:class:`~greenbus.bridge.client.RemoteBus` does).

    Raises:
        InvalidOption: a bad argument.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        name: str | None,
        connect_timeout: float,
        max_backoff: float,
        max_message_size: int,
        cafile: str | None,
    ) -> None:
        if isinstance(url, (list, tuple)) and url:
            urls = tuple(url)
        else:
            urls = (url,)  # check_url says what is wrong with anything else
        self._uris = [check_url(u) for u in urls]
        self._next_uri = 0
        check_type("name", name, (str, type(None)), "a string or None")
        check_seconds("connect_timeout", connect_timeout)
        check_seconds("max_backoff", max_backoff)
        check_int("max_message_size", max_message_size, 64)
        check_type("cafile", cafile, (str, type(None)), "a path or None")
        #: Every URL this client may use, and the one it uses (or tries) now.
        self.urls: tuple[str, ...] = urls
        self.url = urls[0]
        self.name = name or f"client-{uuid.uuid4().hex[:8]}"
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._max_message_size = max_message_size
        self._ssl: Any = None
        if any(uri.secure for uri in self._uris):
            # gevent's own SSLContext class (create_default_context would
            # return the stdlib's, whose sockets block the whole process).
            ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
            try:
                if cafile is not None:
                    ctx.load_verify_locations(cafile)
                else:
                    ctx.load_default_certs()
            except OSError as exc:
                raise InvalidOption("cafile", cafile, f"a readable PEM file ({exc})") from None
            self._ssl = ctx
        self._conn: Connection | None = None
        self._state = ClientState.CONNECTING
        self._open_event = gevent.event.Event()
        self._closed_event = gevent.event.Event()
        #: Why the client ended by itself (raised by every later call).
        self._fatal: ClientClosed | None = None
        #: A refusal seen on the current connection: give up when it ends.
        self._refusal: BaseException | None = None
        self._reconnects = 0
        # When the current connection was welcomed, and its frame count then.
        self._welcome_at: float | None = None
        self._welcome_frames = 0
        self._runner: gevent.Greenlet | None = None

    state = readonly[ClientState]("_state")

    @property
    def connected(self) -> bool:
        """True while the hub has welcomed this client (state OPEN)."""
        return self._state is ClientState.OPEN

    error = readonly[ClientClosed | None](
        "_fatal", "Why the client ended by itself (the hub refused it), or None."
    )

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the hub welcomed this client, or it closed; True if welcomed."""
        check_timeout(timeout)
        gevent.wait([self._open_event, self._closed_event], timeout=timeout, count=1)
        return self._state is ClientState.OPEN

    # -- for the subclass -----------------------------------------------------------

    def _start(self) -> None:
        """Start the runner (once the subclass is ready for its first connection)."""
        self._runner = gevent.spawn(self._run)

    def _welcomed(self, peer: str) -> None:
        """The hub's ``welcome`` arrived: the client is OPEN."""
        if self._state is ClientState.CONNECTING:
            self._welcome_at = time.monotonic()
            conn = self._conn
            self._welcome_frames = conn.received if conn is not None else 1
            self._state = ClientState.OPEN
            self._open_event.set()
            logger.info("%s: connected to %s as %s", self.name, self.url, peer)

    def _refused_for_good(self, refusal: BaseException) -> None:
        """The hub refused the client (a token, its protocol): end this
        connection, then the client, when the runner sees it end."""
        self._refusal = refusal
        if self._conn is not None:
            self._conn.close(1000, "refused")

    def _refused_as_too_big(self, limit: int) -> bool:
        """The hub closed with 1009, its ``max_message_size`` being ``limit``:
        report what it refused; False if nothing sent explains it."""
        return False

    @abc.abstractmethod
    def _connected(self, conn: Connection) -> None:
        """A new connection: queue what it must send first."""
        raise NotImplementedError

    @abc.abstractmethod
    def _on_text(self, text: str) -> None:
        """One frame from the hub (the connection's reader greenlet)."""
        raise NotImplementedError

    @abc.abstractmethod
    def _disconnected(self, conn: Connection) -> None:
        """The connection ended (the client may reconnect next)."""
        raise NotImplementedError

    @abc.abstractmethod
    def _end(self, error: ClientClosed) -> None:
        """The client ends: state CLOSED, and everything waiting learns why."""
        raise NotImplementedError

    # -- the runner -------------------------------------------------------------------

    def _run(self) -> None:
        backoff = FIRST_BACKOFF
        while self._state is not ClientState.CLOSED:
            try:
                conn = self._open()
            except Refused as exc:
                self._give_up(exc.cause)
                return
            except (OSError, HandshakeFailed, Timeout) as exc:
                self._state = ClientState.RECONNECTING
                self._next_uri = (self._next_uri + 1) % len(self._uris)  # the next hub, if any
                logger.info(
                    "%s: cannot reach %s (%s); retrying in %.2f s",
                    self.name,
                    self.url,
                    exc,
                    backoff,
                )
                gevent.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                self._state = ClientState.CONNECTING
                continue
            self._welcome_at = None
            self._connected(conn)
            self._conn = conn
            conn.wait()
            self._conn = None
            self._open_event.clear()
            self._disconnected(conn)
            self._report_close(conn)
            if self.state is ClientState.CLOSED:  # close() may have run meanwhile
                return
            if self._refusal is not None:
                self._give_up(self._refusal)
                return
            self._state = ClientState.RECONNECTING
            self._reconnects += 1
            if self._proven(conn):
                backoff = FIRST_BACKOFF  # a connection that worked: reconnect at once
                logger.info("%s: disconnected (code %s); reconnecting", self.name, conn.close_code)
            else:
                # Closed before it proved itself (refused at the hub's
                # max_connections, say): back off, or it is a tight loop.
                logger.info(
                    "%s: disconnected (code %s); reconnecting in %.2f s",
                    self.name,
                    conn.close_code,
                    backoff,
                )
                gevent.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
            self._state = ClientState.CONNECTING

    def _proven(self, conn: Connection) -> bool:
        # Welcomed, then up for a while or given a frame; never one the hub
        # closed for a frame too big (resending would only repeat it).
        welcome_at = self._welcome_at
        if welcome_at is None or (conn.closed_by_peer and conn.close_code == 1009):
            return False
        return conn.received > self._welcome_frames or (
            time.monotonic() - welcome_at >= PROVEN_AFTER
        )

    def _open(self) -> Connection:
        uri = self._uris[self._next_uri]
        self.url = self.urls[self._next_uri]
        return dial(
            uri,
            tls=self._ssl,
            timeout=self._connect_timeout,
            max_size=self._max_message_size + MSG_SLACK,  # a msg may exceed it by its envelope
            on_text=self._on_text,
            name=f"{self.name}->{self.url}",
        )

    def _report_close(self, conn: Connection) -> None:
        # A close that says what was refused is reported, never silent.
        code = conn.close_code
        if code is None or self._state is ClientState.CLOSED:
            return
        closed: BaseException | None = None
        if conn.closed_by_peer and code in (1002, 1003, 1007, 1008, 1009):
            reason = conn.protocol.close_rcvd.reason if conn.protocol.close_rcvd else ""
            sizes = _TOO_BIG.fullmatch(reason) if code == 1009 else None
            if sizes is not None and self._refused_as_too_big(int(sizes[2])):
                return  # reported as what the hub refused
            closed = HubClosed(code, reason)
            if closed.fatal and self._refusal is None:
                self._refusal = closed
        elif not conn.closed_by_peer and code == 1009:
            # Our protocol refused a frame from the hub: over max_message_size.
            limit = self._max_message_size + MSG_SLACK
            closed = MessageTooBig(
                getattr(conn.protocol.parser_exc, "size", None) or limit + 1, limit
            )
            logger.error(
                "%s: the hub sent a frame over %d bytes (max_message_size and the msg "
                "envelope's slack): closed with 1009, reconnecting; it is lost",
                self.name,
                limit,
            )
        if closed is not None:
            if isinstance(closed, HubClosed):
                logger.error("%s: %s", self.name, closed)
            self._call_hook(closed, None, None)

    def _give_up(self, cause: BaseException) -> None:
        # Retrying cannot help: end for good, and say why, once, everywhere.
        fatal = ClientClosed(self.name, cause)
        fatal.__cause__ = cause
        self._fatal = fatal
        logger.error("%s: giving up on %s: %s", self.name, self.url, cause)
        self._end(fatal)
        self._call_hook(fatal, None, None)
