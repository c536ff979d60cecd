"""The WebSocket hub: attaches remote peers to a bus over one TCP port.

``gevent.server.StreamServer`` accepts connections; each gets one greenlet
for the opening handshake (``websockets``' sans-I/O ``ServerProtocol``),
which then reads for its :class:`~greenbus.bridge.connection.Connection`
(a writer exists only while there is something to write), and a
:class:`~greenbus.bridge.peer.Peer` binding it to the bus.  Plain HTTP on
the same port serves ``GET /health`` (JSON) and ``GET /metrics``
(Prometheus text format).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent.event
from gevent import Timeout
from gevent import ssl as gssl
from gevent.server import StreamServer
from websockets.http11 import Request, Response
from websockets.protocol import SERVER, Protocol, State
from websockets.server import ServerProtocol
from websockets.typing import Origin

from .._logging import LogLimiter
from .._options import check_int, check_seconds, check_type
from .._version import __version__
from ..acl import INBOX_PREFIX, Acl, InboxOwners, Permissions
from ..bus import Bus
from ..exceptions import BusClosed, InvalidOption
from ..history import (
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_TTL,
    DEFAULT_MAX_TOPICS,
    History,
    Publishers,
)
from ..protocol import CloseCode
from ..session import SessionLimits
from .connection import Connection, wire_logger
from .feed import Feed, RemoteLog
from .http import NOT_FOUND, http_answer, receive_request
from .metrics import Family, HubCounters, metric_families, render_families
from .peer import Peer, PeerLimits
from .siblings import Siblings

__all__ = ["HubConfig", "HubServer", "serve"]

logger = logging.getLogger("greenbus.bridge.server")

LOOPBACK = ("127.0.0.1", "localhost", "::1")

#: The topic the hub publishes its live statistics on (ACLs apply to it).
STATS_TOPIC = "$greenbus.stats"
#: Topics whose rates the stats carry, at most; the rest are summed as "(other)".
MAX_STATS_TOPICS = 100
OTHER_TOPICS = "(other)"
#: Peers listed in the stats, at most (``peers_total`` says how many there are).
MAX_STATS_PEERS = 200

#: Default maximum message size (bytes), as in ``websockets``.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20


@dataclass(frozen=True)
class HubConfig:
    """Everything that configures a hub (see docs/limits.md)."""

    host: str = "127.0.0.1"
    port: int = 8765
    name: str = "greenbus"
    #: Shared secret; None (and no acl) lets anonymous peers in (hello optional).
    token: str | None = None
    #: Users, tokens and per-topic permissions (docs/security.md).
    acl: Acl | None = None
    #: Browser origins allowed to connect (the Origin header); None allows
    #: any.  Clients that send no Origin (not browsers) are always allowed.
    allow_origins: tuple[str, ...] | None = None
    #: TLS: serve wss:// with this certificate and key (PEM files).
    certfile: str | None = None
    keyfile: str | None = None
    #: Seconds between ``$greenbus.stats`` messages (the dashboard's feed); None: off.
    stats_interval: float | None = 1.0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_connections: int = 10_000
    handshake_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    #: Seconds to wait for the peer's part of the closing handshake, and for
    #: the hub's close frame to be written (then the TCP connection is aborted).
    close_timeout: float = 5.0
    #: Messages kept per topic for recovery (0: history off, no positions);
    #: how long each is kept (0: off too), and how many topics are
    #: remembered at most (see docs/recovery.md).
    history: int = DEFAULT_HISTORY
    history_ttl: float = DEFAULT_HISTORY_TTL
    history_topics: int = DEFAULT_MAX_TOPICS
    #: Bind with SO_REUSEPORT: several processes listen on one port and the
    #: kernel spreads the connections (``greenbus serve --workers``).
    reuse_port: bool = False
    peer: PeerLimits = field(default_factory=PeerLimits)

    def __post_init__(self) -> None:
        """Check every value.

        Raises:
            InvalidOption: naming the field and what it must be.
        """
        check_int("port", self.port, 0)
        if self.port > 65535:
            raise InvalidOption("port", self.port, "a port number 0..65535")
        check_type("host", self.host, str, "an address")
        check_type("name", self.name, str, "a string")
        check_int("max_message_size", self.max_message_size, 64)
        check_int("max_connections", self.max_connections)
        check_seconds("handshake_timeout", self.handshake_timeout)
        check_seconds("close_timeout", self.close_timeout)
        check_int("history", self.history, 0)
        check_seconds("history_ttl", self.history_ttl, zero=True)
        check_int("history_topics", self.history_topics)
        for name in ("stats_interval", "ping_interval", "ping_timeout"):
            check_seconds(name, getattr(self, name), optional=True)
        _check_token(self.token)
        check_type("acl", self.acl, (Acl, type(None)), "an Acl, or None")
        for name in ("certfile", "keyfile"):
            check_type(name, getattr(self, name), (str, os.PathLike, type(None)), "a path, or None")
        if (self.certfile is None) != (self.keyfile is None):
            raise InvalidOption("certfile", self.certfile, "given with keyfile, or neither")
        if self.allow_origins is not None and (
            not isinstance(self.allow_origins, (tuple, list))
            or not all(isinstance(o, str) for o in self.allow_origins)
        ):
            raise InvalidOption("allow_origins", self.allow_origins, "a tuple of origins, or None")
        check_type("reuse_port", self.reuse_port, bool, "True or False")
        check_type("peer", self.peer, PeerLimits, "a PeerLimits")


def _check_token(token: object) -> None:
    # Checked here, so that a bad one fails before anything binds (the ACL
    # would fail later, naming no option); never shown, as it may be real.
    if token is None:
        return
    if not isinstance(token, str):
        raise InvalidOption("token", token, "a string, or None")
    try:
        text = bool(token.encode())  # False: empty
    except UnicodeEncodeError:  # a lone surrogate: no client could send it
        text = False
    if not text:
        raise InvalidOption("token", token, "a non-empty string of text, or None", secret=True)


class HubServer:
    """A hub serving ``bus`` to WebSocket peers.

    Args:
        bus: the bus remote peers publish to and subscribe on.
        config: a :class:`HubConfig`; keyword arguments override its fields.
        remote: a history shared with other hubs: a
            :class:`~greenbus.federation.Federation` made with ``history``.
            The hub then keeps none of its own (``config.history`` is
            ignored); its peers' messages and positions come through Redis.
    """

    def __init__(
        self,
        bus: Bus,
        config: HubConfig | None = None,
        *,
        remote: RemoteLog | None = None,
        **overrides: Any,
    ) -> None:
        check_type("bus", bus, Bus, "a greenbus.Bus")
        base = check_type("config", config, (HubConfig, type(None)), "a HubConfig, or None")
        base = base or HubConfig()
        if overrides:
            base = HubConfig(**{**base.__dict__, **overrides})
        self.config = base
        self.bus = bus
        self.peers: dict[str, Peer] = {}
        #: Every limit, drop and disconnect, counted (shown by /metrics).
        self.counters = HubCounters()
        #: Who owns which request inbox; the bus's own are reserved.
        self.inboxes = InboxOwners([bus.inbox_prefix])
        #: Messages kept for recovery (None: history is off, or remote).
        self.history: History[bytes | tuple[Any, ...]] | None = None
        if remote is None and base.history and base.history_ttl:
            self.history = History(base.history, base.history_ttl, max_topics=base.history_topics)
        #: The last pub applied per client session: resends are dropped
        #: (with a remote history, its publish script drops them).
        self.publishers = (
            Publishers(base.history_ttl) if remote is None and base.history_ttl else None
        )
        # One rate-limited log for every peer's refusals and failures, and
        # one for connections refused before they are peers.
        self._peer_log = LogLimiter(logging.getLogger("greenbus.bridge.peer"))
        self._refusals = LogLimiter(logger)
        #: Every message to the peers, encoded, positioned and routed once.
        self.feed = Feed(
            bus, history=self.history, remote=remote, counters=self.counters, log=self._peer_log
        )
        if remote is not None:
            remote.add_lost_listener(self._feed_lost)
        #: The other workers of ``greenbus serve --workers N``: set, the
        #: stats, ``/metrics`` and ``/health`` show them all (None: alone).
        self.siblings: Siblings | None = None
        self._server: StreamServer | None = None
        self._stats_greenlet: gevent.Greenlet | None = None
        self._topic_counts: dict[str, int] = {}
        self._topic_rates: dict[str, float] = {}
        self._stopped = gevent.event.Event()
        self._started_at = time.monotonic()
        # Tokens are compared in constant time and never logged (acl.py).
        acl = base.acl
        if base.token is not None:
            extra = Acl.single_token(base.token)
            acl = extra if acl is None else Acl([*acl.entries(), *extra.entries()])
        self._authenticate: Callable[[str | None], Permissions | None] | None = (
            acl.authenticate if acl is not None else None
        )
        self.acl = acl

    def __repr__(self) -> str:
        return f"<HubServer {self.url} peers={len(self.peers)}>"

    # -- lifecycle -------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 picks a free one)."""
        if self._server is None:
            return (self.config.host, self.config.port)
        return self._server.address[:2]  # type: ignore[no-any-return]

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "wss" if self.config.certfile is not None else "ws"
        return f"{scheme}://{host}:{port}/"

    def start(self) -> HubServer:
        """Bind and start accepting in the background; returns self."""
        if self._server is not None:
            return self
        self._stopped.clear()
        tls: dict[str, Any] = {}
        if self.config.certfile is not None:
            # One server context, built once; the TLS handshake happens in
            # _handle under handshake_timeout (a client that never sends a
            # ClientHello must not hold a greenlet and a socket forever).
            ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.config.certfile, self.config.keyfile)
            tls = {"ssl_context": ctx, "do_handshake_on_connect": False}
        listener: Any = (self.config.host, self.config.port)
        if self.config.reuse_port:
            listener = reuse_port_listener(self.config.host, self.config.port)
        self._server = StreamServer(listener, self._handle, **tls)
        self._server.start()
        self._started_at = time.monotonic()
        self.start_feeds()
        host = self.config.host
        logger.info(
            "greenbus hub %s listening on %s (%s; %s)",
            self.config.name,
            self.url,
            "loopback only" if host in LOOPBACK else f"reachable from other machines on {host}",
            f"ACL with {len(self.acl.users)} user(s)"
            if self.acl is not None
            else "no token: anonymous peers allowed",
        )
        return self

    def start_feeds(self) -> None:
        """Start what serves peers whatever the listener: the feed, and the stats.

        :meth:`start` calls it; so does the WSGI adapter, whose server
        listens instead of the hub's own.  Idempotent.
        """
        self.feed.start()
        self.start_stats()

    # -- live statistics on $greenbus.stats (the dashboard's feed) --------------

    def start_stats(self) -> None:
        """Publish :meth:`stats_document` on ``$greenbus.stats`` every ``stats_interval`` s.

        Counts messages per topic with a forward on ``>`` (it does not count
        as interest, so it never makes a federation subscribe to everything).
        Idempotent; a no-op when ``stats_interval`` is None.
        """
        if self.config.stats_interval is None or self._stats_greenlet is not None:
            return
        self._topic_counts = {}
        self._topic_rates = {}
        self._stats_forward = self.bus.forward(">", self._count_topic, interest=False, raw=True)
        self._stats_greenlet = gevent.spawn(self._stats_loop)

    def _count_topic(self, msg: Any) -> bool:
        counts = self._topic_counts
        topic = msg[0]
        if topic.startswith(INBOX_PREFIX):
            return False  # inbox names are private: never in the stats
        if topic in counts:
            counts[topic] += 1
        elif len(counts) < MAX_STATS_TOPICS:
            counts[topic] = 1
        else:
            counts[OTHER_TOPICS] = counts.get(OTHER_TOPICS, 0) + 1
        return False  # counting is not a delivery

    def _stats_loop(self) -> None:
        interval = self.config.stats_interval
        assert interval is not None
        last = time.monotonic()
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            counts, self._topic_counts = self._topic_counts, {}
            counts.pop(STATS_TOPIC, None)
            elapsed = max(now - last, 1e-9)
            last = now
            self._topic_rates = {t: round(n / elapsed, 1) for t, n in counts.items()}
            try:
                document = self.stats_document()
                if self.siblings is not None:
                    document = self.siblings.merge_stats(
                        document, MAX_STATS_PEERS, MAX_STATS_TOPICS
                    )
                self.bus.emit(STATS_TOPIC, document)
            except BusClosed:
                return
            except Exception:
                logger.exception("publishing %s failed", STATS_TOPIC)

    def stats_document(self) -> dict[str, Any]:
        """What ``$greenbus.stats`` carries: totals, peers, and topic rates (msgs/s)."""
        c = self.counters
        return {
            "server": self.config.name,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "totals": {
                "connections": len(self.peers),
                "connections_total": c.connections_total,
                "messages_in": c.messages_in,
                "messages_out": c.messages_out,
                "dropped": c.dropped,
                "slow_consumers": c.slow_consumers,
                "local_subscriptions": len(self.bus.subscriptions()),
            },
            "peers_total": len(self.peers),
            # At most MAX_STATS_PEERS, so a hub with 10,000 connections does
            # not send every dashboard a huge frame every second.
            "peers": [
                {
                    "id": s.id,
                    "name": s.name,
                    "address": s.address,
                    "subscriptions": [p for p in s.subscriptions if not p.startswith(INBOX_PREFIX)],
                    "pending": s.pending,
                    "pending_bytes": s.pending_bytes,
                    "received": s.received,
                    "sent": s.sent,
                    "dropped": s.dropped,
                }
                for s in (p.statistics() for p in list(self.peers.values())[:MAX_STATS_PEERS])
            ],
            "topics": dict(
                sorted(self._topic_rates.items(), key=lambda kv: -kv[1])[:MAX_STATS_TOPICS]
            ),
        }

    def serve_forever(self) -> None:
        """Start (if needed) and serve until :meth:`stop` has finished."""
        self.start()
        self._stopped.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every peer with 1001 (going away), wait for them."""
        server = self._server
        if server is None:
            return
        server.close()
        deadline = time.monotonic() + timeout
        self.stop_peers(timeout)
        server.stop(timeout=max(0.0, deadline - time.monotonic()))
        self._server = None
        self.feed.stop()
        if self._stats_greenlet is not None:
            self._stats_greenlet.kill(block=True)
            self._stats_greenlet = None
            try:
                self._stats_forward.close()
            except BusClosed:
                pass
        logger.info("greenbus hub %s stopped", self.config.name)
        self._stopped.set()

    def _feed_lost(self) -> None:
        # The federation was cut off from Redis: what was published
        # meanwhile reached no peer.  Each client resumes from its own
        # position when it reconnects, which replays exactly its gap.
        peers = [p for p in self.peers.values() if p.connection is not None]
        if peers:
            logger.warning(
                "lost the feed from Redis for a while: closing %d peer(s) with 1012 so "
                "that they resume",
                len(peers),
            )
        for peer in peers:
            assert peer.connection is not None
            self.counters.feed_lost += 1
            peer.connection.close(int(CloseCode.SERVICE_RESTART), "resume: the hub lost its feed")

    def stop_peers(self, timeout: float = 5.0) -> None:
        """Close every peer with 1001 (going away) and wait for them to leave."""
        peers = list(self.peers.values())
        for peer in peers:
            if peer.connection is not None:
                peer.connection.close(1001, "hub shutting down")
        deadline = time.monotonic() + timeout
        for peer in peers:
            if peer.connection is not None:
                if not peer.connection.wait(max(0.0, deadline - time.monotonic())):
                    peer.connection.abort()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- per connection ---------------------------------------------------------

    def _handle(self, sock: socket.socket, address: tuple[Any, ...]) -> None:
        # The handler greenlet: the handshake, then it reads for the peer.
        where = f"{address[0]}:{address[1]}"
        protocol = self._upgrade(sock, where)
        if protocol is not None:
            self.run_peer(sock, protocol, where)

    def _upgrade(self, sock: socket.socket, where: str) -> Protocol | None:
        # The TLS and HTTP handshakes: a protocol in state OPEN, or None
        # (answered, refused or failed; the socket is closed).  Its own
        # frame, so the request and the response are not kept for the
        # connection's life by the greenlet that goes on reading.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        cfg = self.config
        if cfg.certfile is not None:
            try:
                with Timeout(cfg.handshake_timeout):
                    sock.do_handshake()  # type: ignore[attr-defined]
            except (Timeout, OSError) as exc:
                if isinstance(exc, Timeout):
                    self.counters.timed_out("handshake")
                self._refusals.log(
                    logging.INFO, "%s: TLS handshake failed or timed out: %s", where, exc
                )
                sock.close()
                return None
        origins: list[Origin | None] | None = None
        if cfg.allow_origins is not None:
            # The hub's own pages (the dashboard) always may; so may clients
            # that send no Origin (programs, not browsers).
            host, port = self.address
            own = [
                Origin(f"{scheme}://{name}:{port}")
                for scheme in ("http", "https")
                for name in (host, "localhost")
            ]
            origins = [*map(Origin, cfg.allow_origins), *own, None]
        protocol = ServerProtocol(
            max_size=cfg.max_message_size, origins=origins, logger=_WIRE_LOGGER
        )
        read = receive_request(
            sock, protocol, where, cfg.handshake_timeout, self.counters, self._refusals
        )
        if read is None:
            return None
        request, extra = read
        if request.headers.get("Upgrade", "").lower() != "websocket":
            self._send(sock, protocol, self._http(request))
            sock.close()
            return None
        if self.refuse_if_full(where):
            self._send(sock, protocol, protocol.reject(503, "too many connections\n"))
            sock.close()
            return None
        response = protocol.accept(request)
        self._send(sock, protocol, response)
        if response.status_code != 101:
            sock.close()
            return None
        if extra or protocol.state is not State.OPEN:
            return protocol  # bytes came after the request: the protocol has them
        # A fresh protocol: the ServerProtocol's parser keeps the request
        # (headers and all, over 2 KiB) for as long as it parses frames.
        return Protocol(
            SERVER, state=State.OPEN, max_size=cfg.max_message_size, logger=_WIRE_LOGGER
        )

    def run_peer(
        self,
        sock: socket.socket,
        protocol: Protocol,
        where: str,
        recv: Callable[[int], bytes] | None = None,
    ) -> None:
        """Serve one WebSocket peer whose opening handshake is done; return when it leaves.

        Transports call this: the hub's own listener after its handshake,
        and the WSGI adapter after gevent-websocket's.

        Args:
            sock: the connected socket (the writer writes to it).
            protocol: a ``websockets`` protocol object in state OPEN.
            where: the peer's address, for logs.
            recv: reads bytes (default ``sock.recv``); the WSGI adapter
                passes its buffered reader so no byte read ahead is lost.
        """
        cfg = self.config
        self.counters.connections_total += 1
        peer = Peer(
            self.bus,
            server_name=cfg.name,
            address=where,
            limits=cfg.peer,
            authenticate=self._authenticate,
            on_gone=self._forget,
            counters=self.counters,
            feed=self.feed,
            publishers=self.publishers,
            inboxes=self.inboxes,
            max_message_size=cfg.max_message_size,
            log=self._peer_log,
        )
        connection = Connection(
            sock,
            protocol,
            on_text=peer.on_text,
            on_close=peer.on_close,
            outbox=peer.outbox,
            name=f"{peer.id}@{where}",
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            close_timeout=cfg.close_timeout,
            recv=recv,
        )
        self.peers[peer.id] = peer
        peer.attach(connection)
        logger.info("%s connected from %s", peer.id, where)
        connection.run()

    def refuse_if_full(self, where: str) -> bool:
        """Refuse a connection from ``where`` if ``max_connections`` peers are connected.

        Returns:
            True if it is refused: counted in ``connections_refused`` and
            logged; the caller answers it (HTTP 503, or close 1013).
        """
        if len(self.peers) < self.config.max_connections:
            return False
        self.counters.connections_refused += 1
        logger.warning("%s refused: %d connections (max_connections)", where, len(self.peers))
        return True

    def _forget(self, peer: Peer) -> None:
        self.peers.pop(peer.id, None)

    def _send(self, sock: socket.socket, protocol: ServerProtocol, response: Response) -> None:
        protocol.send_response(response)
        data = b"".join(protocol.data_to_send())
        try:
            sock.sendall(data)
        except OSError:
            pass

    # -- plain HTTP ---------------------------------------------------------------

    def _http(self, request: Request) -> Response:
        # The hub owns its port: the dashboard is at /.
        answer = http_answer(self, request.path.split("?", 1)[0], dashboard="/")
        if answer is None:
            self.counters.http_requests += 1
            answer = NOT_FOUND
        return answer.response()

    def health(self) -> dict[str, Any]:
        """The ``/health`` document (with siblings, their connections too)."""
        document = {
            "status": "ok",
            "server": self.config.name,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "connections": len(self.peers),
            "bus": self.bus.name,
        }
        return document if self.siblings is None else self.siblings.merge_health(document)

    def metrics(self) -> str:
        """The ``/metrics`` text, Prometheus exposition format 0.0.4.

        With :attr:`siblings`, every worker's sum and each worker's own series.
        """
        families = self.metric_families()
        if self.siblings is not None:
            families = self.siblings.merge_metrics(families)
        return render_families(families)

    def metric_families(self) -> list[Family]:
        """This hub's own metric families (see :func:`~greenbus.bridge.metrics.metric_families`)."""
        return metric_families(
            self.counters,
            [p.statistics() for p in self.peers.values()],
            local_subscriptions=len(self.bus.subscriptions()),
            history=self.history.statistics() if self.history is not None else None,
            duplicate_pubs=self.publishers.duplicates if self.publishers is not None else 0,
        )


_WIRE_LOGGER = wire_logger("websockets.server")


def reuse_port_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening gevent socket on ``host:port`` with SO_REUSEADDR and SO_REUSEPORT.

    Every process that binds the port so shares it; the kernel spreads new
    connections over those listening.

    Raises:
        OSError: the address cannot be bound (in use without SO_REUSEPORT,
            not this machine's, a host that does not resolve).
    """
    from gevent import socket as gsocket

    family, kind, proto, _, address = gsocket.getaddrinfo(
        host, port, 0, gsocket.SOCK_STREAM, 0, gsocket.AI_PASSIVE
    )[0]
    sock: socket.socket = gsocket.socket(family, kind, proto)
    try:
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def serve(
    bus: Bus,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    remote: RemoteLog | None = None,
    **options: Any,
) -> HubServer:
    """Make a hub for ``bus`` (not started: call ``start()`` or use ``with``).

    ``options`` are the fields of :class:`HubConfig` (``token``,
    ``max_message_size``, ``history``, ...) and, for the per-peer limits,
    ``max_pending``, ``max_pending_bytes``, ``slow_policy``,
    ``hello_timeout``, ``max_subscriptions``, ``max_errors``, ``max_depth``.
    ``remote`` is a federation with history, shared with other hubs (see
    :class:`HubServer`).
    """
    peer_fields: dict[str, Any] = {
        k: options.pop(k)
        for k in ("max_pending", "max_pending_bytes", "slow_policy", "hello_timeout")
        if k in options
    }
    session_fields = {
        k: options.pop(k) for k in ("max_subscriptions", "max_errors", "max_depth") if k in options
    }
    if session_fields:
        peer_fields["session"] = SessionLimits(**session_fields)
    config = HubConfig(host=host, port=port, peer=PeerLimits(**peer_fields), **options)
    return HubServer(bus, config, remote=remote)
