"""``greenbus serve``: its options, the rules between them, and running the hub.

Everything that can fail before the hub starts is checked first, in order:
the options (by the parser: ``add_arguments`` and ``check_options``), then the
ACL file and the TLS files (``serve_command``), then the bind (``_listen``).
Each failure is one line; the hub never half-starts.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import ssl
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import AclError, InvalidOption
from ..history import DEFAULT_HISTORY, DEFAULT_HISTORY_TTL, DEFAULT_MAX_TOPICS
from . import argtypes

if TYPE_CHECKING:
    from ..acl import Acl

__all__ = ["MIN_MESSAGE_SIZE", "add_arguments", "check_options", "serve_command"]

#: The smallest ``--max-message-size`` the hub accepts (``HubConfig.__post_init__``).
MIN_MESSAGE_SIZE = 64

#: The addresses that only this machine can reach.
LOOPBACK = ("127.0.0.1", "localhost", "::1")

# The logger ``greenbus serve`` has always used (this module was greenbus/cli.py).
_log = logging.getLogger("greenbus.cli")


def add_arguments(serve: argparse.ArgumentParser) -> None:
    """Add ``greenbus serve``'s options to its parser ``serve``, each with its type."""
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=argtypes.port_number, default=8765, help="port (default 8765; 0 picks one)"
    )
    serve.add_argument("--token", help="require this token in hello (or set GREENBUS_TOKEN)")
    serve.add_argument(
        "--acl", metavar="FILE", help="users, tokens and topic permissions (TOML/JSON)"
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser Origin allowed to connect (repeatable; default: any)",
    )
    serve.add_argument(
        "--stats-interval",
        type=argtypes.interval,
        default=1.0,
        help="seconds between $greenbus.stats messages, the dashboard's feed (0: off)",
    )
    serve.add_argument("--certfile", help="TLS certificate (PEM): serve wss://")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument(
        "--max-message-size",
        type=argtypes.at_least(MIN_MESSAGE_SIZE, " bytes"),
        default=1 << 20,
        help=f"bytes (default 1 MiB, at least {MIN_MESSAGE_SIZE})",
    )
    serve.add_argument("--max-connections", type=argtypes.at_least(1), default=10_000)
    serve.add_argument(
        "--max-pending", type=argtypes.at_least(1), default=10_000, help="messages queued per peer"
    )
    serve.add_argument(
        "--max-pending-bytes",
        type=argtypes.at_least(1),
        default=8 << 20,
        help="bytes of messages queued per peer (default 8 MiB)",
    )
    serve.add_argument("--slow-policy", choices=("close", "drop_oldest"), default="close")
    serve.add_argument(
        "--max-subscriptions", type=argtypes.at_least(1), default=1000, help="per peer"
    )
    serve.add_argument(
        "--close-timeout",
        type=argtypes.seconds,
        default=5.0,
        help="seconds for a closing handshake; a close frame not written by then aborts "
        "the connection (a peer that stopped reading)",
    )
    serve.add_argument(
        "--history",
        type=argtypes.at_least(0),
        default=DEFAULT_HISTORY,
        metavar="N",
        help=f"messages kept per topic for clients that reconnect (default {DEFAULT_HISTORY}; "
        "0: off, no positions)",
    )
    serve.add_argument(
        "--history-ttl",
        type=argtypes.seconds_or_off,
        default=DEFAULT_HISTORY_TTL,
        metavar="SECONDS",
        help=f"how long each is kept, in seconds (default {DEFAULT_HISTORY_TTL:g}; 0: history off)",
    )
    serve.add_argument(
        "--history-topics",
        type=argtypes.at_least(1),
        default=DEFAULT_MAX_TOPICS,
        metavar="N",
        help=f"topics the history remembers at most (default {DEFAULT_MAX_TOPICS:,})",
    )
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.add_argument(
        "--redis",
        metavar="URL",
        type=argtypes.redis_url,
        help="federate with other hubs and buses through Redis (redis://host:port/db)",
    )
    serve.add_argument("--redis-prefix", default="greenbus", help="Redis channel namespace")
    serve.add_argument(
        "--workers",
        type=argtypes.at_least(1),
        default=1,
        metavar="N",
        help="hub processes sharing the port (SO_REUSEPORT), federated through --redis "
        "(default 1: this process alone)",
    )
    serve.add_argument(
        "--transport",
        choices=("websockets", "wsgi"),
        default="websockets",
        help="the hub's own listener (default), or gevent-websocket's WSGI handler",
    )


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The rules between ``greenbus serve``'s options; ``parser.error`` on a broken one."""
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together: give both or neither")
    if args.transport == "wsgi" and (args.certfile or args.allow_origin):
        parser.error(
            "--transport wsgi: --certfile and --allow-origin are the WSGI server's job "
            "(TLS and Origin checks in front of it); use the default transport to have "
            "the hub do them"
        )
    if args.workers > 1 and not args.redis:
        parser.error(
            f"--workers {args.workers} needs --redis URL: the workers are one bus through Redis"
        )
    if args.workers > 1 and args.transport == "wsgi":
        parser.error("--workers needs the default transport (--transport wsgi binds alone)")


def serve_command(args: argparse.Namespace) -> int:
    """Run a hub until SIGINT/SIGTERM; returns 0 once stopped.

    The options were checked by the parser; the ACL and the TLS files are
    loaded before anything binds.  Once listening, prints ``greenbus hub
    listening on URL`` on stdout (scripts read the port from it with ``--port 0``).

    Raises:
        SystemExit: one line, status 1: the ACL or the TLS files do not load,
            the port is in use or the address cannot be bound, redis-py is missing.
    """

    from ..bus import Bus
    from . import workers

    worker = workers.worker_identity()
    # A worker's lines say which worker wrote them (they share the supervisor's stderr).
    tag = f"[worker {worker.index}] " if worker is not None else ""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s",
    )
    token = args.token or os.environ.get("GREENBUS_TOKEN") or None
    acl = _load_acl(args.acl) if args.acl else None
    if args.certfile:
        _check_tls(args.certfile, args.keyfile)
    if args.workers > 1 and worker is None:
        return workers.supervise(args)
    bus = Bus("hub")
    federation = None
    if args.redis:
        from ..federation import federate

        history = args.history if args.history_ttl else 0
        try:
            federation = federate(
                bus,
                args.redis,
                prefix=args.redis_prefix,
                history=history,
                history_ttl=args.history_ttl or 120.0,
                history_topics=args.history_topics,
                node=worker.node if worker is not None else None,
            )
        except ImportError as exc:  # redis-py is an extra: greenbus[redis]
            raise SystemExit(f"greenbus serve: --redis: {exc}") from None
        except (_redis_error(), OSError) as exc:
            # A cluster's shape is read at start (one Redis is retried in the
            # background instead): no node answered.
            raise SystemExit(
                f"greenbus serve: cannot reach the Redis Cluster {args.redis}: {exc}"
            ) from None
    # With a history in Redis, the hub takes its positions from the federation.
    remote = federation if federation is not None and federation.history else None
    try:
        hub = _make_hub(args, bus, remote, token, acl, worker is not None)
    except InvalidOption as exc:  # a value the parser cannot check (a token's text)
        raise SystemExit(f"greenbus serve: {exc}") from None
    if args.transport == "wsgi":
        return _serve_wsgi(args, bus, hub.config, federation, remote)
    _listen(hub.start, args.host, args.port)
    siblings = _join_siblings(args, hub, worker) if worker is not None else None
    # Scripts (and the tests) read this line to learn the port when --port 0
    # (a worker's supervisor reads it, and prints its own once all listen).
    print(f"greenbus hub listening on {hub.url}", flush=True)
    _log_federation(args, federation)
    if args.host not in LOOPBACK:
        _log.warning(
            "listening on %s: reachable from other machines%s",
            args.host,
            "" if (token or acl) else " and no token is set: anyone can publish",
        )

    def stop() -> None:
        if siblings is not None:
            siblings.stop()
        hub.stop()
        if federation is not None:
            federation.stop()
        bus.close(timeout=5)

    _run_until_signalled(stop)
    return 0


def _join_siblings(args: argparse.Namespace, hub: Any, worker: Any) -> Any:
    """In a worker of ``--workers N``: share the hub's statistics with the other
    workers through Redis, and stop if the supervisor goes; the :class:`Siblings`."""
    import gevent

    from ..bridge.siblings import Siblings, workers_key
    from .workers import watch_supervisor

    interval = args.stats_interval if args.stats_interval > 0 else 1.0
    siblings = Siblings(
        args.redis, workers_key(args.redis_prefix, worker.group), worker.node, interval
    )
    hub.siblings = siblings.start(hub)
    gevent.spawn(watch_supervisor)
    return siblings


def _make_hub(
    args: argparse.Namespace, bus: Any, remote: Any, token: str | None, acl: Any, worker: bool
) -> Any:
    """The hub ``serve`` makes from the options (not started).

    Raises:
        InvalidOption: a value the parser could not check.
    """
    from ..bridge.server import serve

    return serve(
        bus,
        args.host,
        args.port,
        # Under --transport wsgi this hub only carries the config: hub_app
        # makes the one that serves.
        remote=remote if args.transport != "wsgi" else None,
        token=token,
        acl=acl,
        allow_origins=tuple(args.allow_origin) if args.allow_origin else None,
        certfile=args.certfile,
        keyfile=args.keyfile,
        max_message_size=args.max_message_size,
        max_connections=args.max_connections,
        max_pending=args.max_pending,
        max_pending_bytes=args.max_pending_bytes,
        slow_policy=args.slow_policy,
        max_subscriptions=args.max_subscriptions,
        close_timeout=args.close_timeout,
        history=args.history,
        history_ttl=args.history_ttl,
        history_topics=args.history_topics,
        stats_interval=None if args.stats_interval <= 0 else args.stats_interval,
        reuse_port=worker,
    )


def _redis_error() -> type[Exception]:
    """redis-py's base error (the ``[redis]`` extra; OSError without it)."""
    try:
        from redis.exceptions import RedisError
    except ImportError:
        return OSError
    return RedisError


def _one_line(text: str) -> str:
    """``text`` on one line: its non-empty lines joined with "; "."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _load_acl(path: str) -> Acl:
    """``Acl.load(path)``.

    Raises:
        SystemExit: the file is unreadable or malformed; one line, the
            AclError's text (it names the file and the problem).
    """
    from ..acl import Acl

    try:
        return Acl.load(path)
    except AclError as exc:
        raise SystemExit(f"greenbus serve: {_one_line(str(exc))}") from None


def _check_tls(certfile: str, keyfile: str) -> None:
    """Load the certificate and key as the hub will, before anything binds.

    Raises:
        SystemExit: a file is missing or unreadable, or the two are not a
            PEM certificate and its key; one line naming the file(s).
    """
    try:
        for path in (certfile, keyfile):
            with open(path, "rb"):  # ssl's own OSError does not name the file
                pass
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:  # before OSError: it is one
        files = certfile if certfile == keyfile else f"{certfile} and {keyfile}"
        reason = f"{files}: not a PEM certificate and its private key ({exc})"
    except OSError as exc:
        reason = str(exc)
    else:
        return
    raise SystemExit(f"greenbus serve: cannot load the TLS certificate/key: {reason}")


def _listen(start: Callable[[], object], host: str, port: int) -> None:
    """Call ``start``, which binds ``host:port``; a failure to bind becomes one line.

    Raises:
        SystemExit: the port is in use, or the address cannot be bound (not
            an address, not one of this machine's, not allowed); status 1.
    """
    try:
        start()
        return
    except OSError as exc:  # socket.gaierror too, for a host that does not resolve
        error = exc
    if error.errno == errno.EADDRINUSE:
        failure = f"greenbus serve: port {port} is already in use"
    else:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # gevent appends ": (host, port)" to the reason; the line has the address already.
        reason = re.sub(r": \([^()]*\)$", "", error.strerror or str(error))
        failure = f"greenbus serve: cannot listen on {address}: {reason}"
    # gevent leaves the socket of a failed bind unclosed (gevent.server._tcp_listener)
    # and the error's traceback holds the last reference to it: release it here,
    # without the ResourceWarning that -W error would print at exit.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del error
    raise SystemExit(failure)


def _log_federation(args: argparse.Namespace, federation: Any) -> None:
    """Once listening, log the federation the hub runs (if any)."""
    if federation is not None:
        _log.info(
            "federating through %s (prefix %r, node %s)",
            args.redis,
            args.redis_prefix,
            federation.node,
        )


def _run_until_signalled(stop: Callable[[], None]) -> None:
    """Wait for SIGTERM or SIGINT, run ``stop`` in a greenlet, return once it finished.

    Returning only then lets peers get their 1001 close frames before the exit.
    """
    import gevent
    import gevent.event

    done = gevent.event.Event()
    stopping: list[bool] = []

    def on_signal() -> None:
        # One stop, whatever comes next (Ctrl-C reaches a supervisor's
        # workers directly, and the supervisor sends SIGTERM too).
        if stopping:
            return
        stopping.append(True)
        try:
            stop()
        finally:
            done.set()

    gevent.signal_handler(signal.SIGTERM, on_signal)
    gevent.signal_handler(signal.SIGINT, on_signal)
    done.wait()


def _serve_wsgi(
    args: argparse.Namespace, bus: Any, config: Any, federation: Any, remote: Any
) -> int:
    """Serve through gevent-websocket's WSGI handler and greenbus.bridge.wsgi.

    Raises:
        SystemExit: gevent-websocket is not installed, or the bind fails; one line.
    """
    from gevent.pywsgi import WSGIServer

    try:
        from geventwebsocket.handler import WebSocketHandler
    except ImportError:
        raise SystemExit(
            "greenbus serve --transport wsgi needs gevent-websocket: pip install 'greenbus[wsgi]'"
        ) from None
    from ..bridge.wsgi import hub_app

    # --certfile and --allow-origin were refused by check_options.
    app = hub_app(bus, config, remote=remote)
    hub = app.hub  # type: ignore[attr-defined]
    server = WSGIServer((args.host, args.port), app, handler_class=WebSocketHandler, log=None)
    _listen(server.start, args.host, args.port)
    logging.getLogger("greenbus.bridge.wsgi").info(
        "greenbus hub %s listening on ws://%s:%d/ through gevent-websocket (%s; %s)",
        hub.config.name,
        args.host,
        server.server_port,
        "loopback only"
        if args.host in LOOPBACK
        else f"reachable from other machines on {args.host}",
        f"ACL with {len(hub.acl.users)} user(s)"
        if hub.acl is not None
        else "no token: anonymous peers allowed",
    )
    print(f"greenbus hub listening on ws://{args.host}:{server.server_port}/", flush=True)
    _log_federation(args, federation)

    def stop() -> None:
        server.close()
        app.hub.stop_peers()  # type: ignore[attr-defined]
        server.stop(timeout=5)
        if federation is not None:
            federation.stop()
        bus.close(timeout=5)

    _run_until_signalled(stop)
    return 0
