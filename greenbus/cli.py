"""The ``greenbus`` command.

Subcommands:

* ``greenbus serve``: run a WebSocket hub (``--host``, ``--port``, ``--token``...).
* ``greenbus pub TOPIC JSON``: publish one message to a hub.
* ``greenbus sub PATTERN``: print one JSON line per message from a hub.
* ``greenbus demo``: run the classic two-thread pyee scenario, its one-import
  port to ``greenbus.compat``, and its greenbus rewrite, and print them side
  by side (the scripts live in ``examples/``).
* ``greenbus bench``: run the benchmark suite in ``perf/`` (same options as
  ``python -m perf``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

#: The demo's scenarios: (script in examples/, column heading).
DEMO_SCRIPTS = (
    ("threads_pyee.py", "pyee, OS threads"),
    ("pyee_dropin.py", "greenbus.compat drop-in"),
    ("threads_greenbus.py", "greenbus, greenlets"),
)


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _find_examples() -> Path:
    examples = _project_root() / "examples"
    if not (examples / DEMO_SCRIPTS[0][0]).is_file():
        raise SystemExit(
            f"greenbus demo: examples not found at {examples}; "
            "run it from a source checkout (pip install -e .)"
        )
    return examples


def _run_scenario(script: Path) -> dict[str, object]:
    env = dict(os.environ)
    root = str(_project_root())
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(script), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"greenbus demo: {script.name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def demo(args: argparse.Namespace) -> int:
    """Run the three two-thread scenarios and print them side by side."""
    examples = _find_examples()
    results = []
    for script, heading in DEMO_SCRIPTS:
        print(f"running examples/{script} ...", file=sys.stderr)
        results.append((heading, _run_scenario(examples / script)))
    out = sys.stdout
    width = 27
    out.write("\nThe two-thread scenario: thread1 emits 'data' every 10 ms, thread2 replies.\n")
    out.write("Per message: how long emit held thread1 / the round trip, in µs.\n\n")
    out.write(f"{'msg':>4}" + "".join(f" | {h:^{width}}" for h, _ in results) + "\n")
    out.write(f"{'':>4}" + "".join(f" | {'held':>12} {'round trip':>14}" for _ in results) + "\n")
    count = max(len(r["block_us"]) for _, r in results)  # type: ignore[arg-type]
    for i in range(count):
        row = f"{i:>4}"
        for _, r in results:
            held = r["block_us"][i]  # type: ignore[index]
            rtt = r["rtt_us"].get(str(i))  # type: ignore[attr-defined]
            rtt_text = f"{rtt:14.1f}" if rtt is not None else f"{'lost':>14}"
            row += f" | {held:12.1f} {rtt_text}"
        out.write(row + "\n")
    row = f"{'med':>4}"
    for _, r in results:
        rtts = list(r["rtt_us"].values())  # type: ignore[attr-defined]
        held = statistics.median(r["block_us"])  # type: ignore[arg-type]
        rtt_text = f"{statistics.median(rtts):14.1f}" if rtts else f"{'-':>14}"
        row += f" | {held:12.1f} {rtt_text}"
    out.write(row + "\n\n")
    out.write(
        "pyee runs handlers inline in the emitting thread and thread2 polls a queue every\n"
        "10 ms; the drop-in stops holding the emitter but keeps the polling loop; greenbus\n"
        "pushes each message to thread2's channel, so the round trip loses the 10 ms sleep.\n"
        "Figures after a 10 ms sleep include the machine's wake-up cost; for hot-path\n"
        "numbers run `greenbus bench`.\n"
    )
    return 0


def bench(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run ``python -m perf`` from the source checkout with the given options."""
    root = _project_root()
    if not (root / "perf" / "__main__.py").is_file():
        raise SystemExit(f"greenbus bench: perf/ not found under {root}; use a source checkout")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.call([sys.executable, "-m", "perf", *extra], cwd=root, env=env)


DEFAULT_URL = "ws://127.0.0.1:8765/"


def serve_command(args: argparse.Namespace) -> int:
    """Run a hub until SIGINT/SIGTERM."""

    from .bridge.server import serve
    from .bus import Bus

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    token = args.token or os.environ.get("GREENBUS_TOKEN") or None
    acl = None
    if args.acl:
        from .acl import Acl

        acl = Acl.load(args.acl)  # AclError names the file and the problem
    if bool(args.certfile) != bool(args.keyfile):
        raise SystemExit("greenbus serve: --certfile and --keyfile go together")
    bus = Bus("hub")
    hub = serve(
        bus,
        args.host,
        args.port,
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
        stats_interval=None if args.stats_interval <= 0 else args.stats_interval,
    )
    federation = None
    if args.redis:
        from .federation import federate

        federation = federate(bus, args.redis, prefix=args.redis_prefix)
        logging.getLogger("greenbus.cli").info(
            "federating through %s (prefix %r, node %s)",
            args.redis,
            args.redis_prefix,
            federation.node,
        )
    if args.transport == "wsgi":
        return _serve_wsgi(args, bus, hub, federation)
    hub.start()
    # Scripts (and the tests) read this line to learn the port when --port 0.
    print(f"greenbus hub listening on {hub.url}", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("greenbus.cli").warning(
            "listening on %s: reachable from other machines%s",
            args.host,
            "" if (token or acl) else " and no token is set: anyone can publish",
        )

    def stop() -> None:
        hub.stop()
        if federation is not None:
            federation.stop()
        bus.close(timeout=5)

    _run_until_signalled(stop)
    return 0


def _run_until_signalled(stop: Any) -> None:
    # SIGTERM/SIGINT run ``stop`` in a greenlet; return only once it has
    # finished, so peers get their 1001 close frames before the exit.
    import gevent
    import gevent.event

    done = gevent.event.Event()

    def on_signal() -> None:
        if done.is_set():
            return
        try:
            stop()
        finally:
            done.set()

    gevent.signal_handler(signal.SIGTERM, on_signal)
    gevent.signal_handler(signal.SIGINT, on_signal)
    done.wait()


def _serve_wsgi(args: argparse.Namespace, bus: Any, hub: Any, federation: Any) -> int:
    """Serve through gevent-websocket's WSGI handler and greenbus.bridge.wsgi."""
    from gevent.pywsgi import WSGIServer

    try:
        from geventwebsocket.handler import WebSocketHandler
    except ImportError:
        raise SystemExit(
            "greenbus serve --transport wsgi needs gevent-websocket: pip install 'greenbus[wsgi]'"
        ) from None
    from .bridge.wsgi import hub_app

    if args.certfile or args.allow_origin:
        raise SystemExit(
            "greenbus serve --transport wsgi: --certfile and --allow-origin are the WSGI "
            "server's job (TLS and Origin checks in front of it); use the default transport "
            "to have the hub do them"
        )
    app = hub_app(bus, hub.config)
    server = WSGIServer((args.host, args.port), app, handler_class=WebSocketHandler, log=None)
    server.start()
    logging.getLogger("greenbus.bridge.wsgi").info(
        "greenbus hub %s listening on ws://%s:%d/ through gevent-websocket (%s; %s)",
        hub.config.name,
        args.host,
        server.server_port,
        "loopback only"
        if args.host in ("127.0.0.1", "localhost", "::1")
        else f"reachable from other machines on {args.host}",
        f"ACL with {len(hub.acl.users)} user(s)"
        if hub.acl is not None
        else "no token: anonymous peers allowed",
    )
    print(f"greenbus hub listening on ws://{args.host}:{server.server_port}/", flush=True)

    def stop() -> None:
        server.close()
        app.hub.stop_peers()
        server.stop(timeout=5)
        if federation is not None:
            federation.stop()
        bus.close(timeout=5)

    _run_until_signalled(stop)
    return 0


def _client(args: argparse.Namespace) -> Any:
    from .bridge.client import connect

    token = args.token or os.environ.get("GREENBUS_TOKEN") or None
    client = connect(args.url, token=token, name=f"greenbus-{args.command}", timeout=args.timeout)
    if not client.connected:
        client.close(timeout=0)
        raise SystemExit(f"greenbus {args.command}: cannot connect to {args.url}")
    return client


def pub_command(args: argparse.Namespace) -> int:
    """Publish one message (JSON data) and exit once it is written."""
    try:
        data = json.loads(args.json)
    except ValueError as exc:
        raise SystemExit(
            f"greenbus pub: DATA must be JSON ({exc}); quote strings: '\"hi\"'"
        ) from None
    client = _client(args)
    try:
        client.emit(args.topic, data)
    finally:
        client.close(timeout=args.timeout)
    return 0


def sub_command(args: argparse.Namespace) -> int:
    """Print one JSON line per message until interrupted (or --count)."""
    client = _client(args)
    sub = client.subscribe(args.pattern)
    seen = 0
    try:
        for msg in sub:
            line = {"topic": msg.topic, "data": msg.data}
            if msg.headers:
                line["headers"] = dict(msg.headers)
            if msg.reply_to is not None:
                line["reply_to"] = msg.reply_to
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            seen += 1
            if args.count and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        client.close(timeout=1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenbus", description="greenbus: a message bus for greenlets."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run a WebSocket hub")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks one)")
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
        type=float,
        default=1.0,
        help="seconds between $greenbus.stats messages, the dashboard's feed (0: off)",
    )
    serve.add_argument("--certfile", help="TLS certificate (PEM): serve wss://")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument(
        "--max-message-size", type=int, default=1 << 20, help="bytes (default 1 MiB)"
    )
    serve.add_argument("--max-connections", type=int, default=10_000)
    serve.add_argument("--max-pending", type=int, default=10_000, help="messages queued per peer")
    serve.add_argument(
        "--max-pending-bytes",
        type=int,
        default=8 << 20,
        help="bytes of messages queued per peer (default 8 MiB)",
    )
    serve.add_argument("--slow-policy", choices=("close", "drop_oldest"), default="close")
    serve.add_argument("--max-subscriptions", type=int, default=1000, help="per peer")
    serve.add_argument(
        "--close-timeout",
        type=float,
        default=5.0,
        help="seconds for a closing handshake; a close frame not written by then aborts "
        "the connection (a peer that stopped reading)",
    )
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="federate with other hubs and buses through Redis (redis://host:port/db)",
    )
    serve.add_argument("--redis-prefix", default="greenbus", help="Redis channel namespace")
    serve.add_argument(
        "--transport",
        choices=("websockets", "wsgi"),
        default="websockets",
        help="the hub's own listener (default), or gevent-websocket's WSGI handler",
    )

    for name, helptext in (
        ("pub", "publish one message to a hub"),
        ("sub", "print messages from a hub"),
    ):
        cmd = commands.add_parser(name, help=helptext)
        if name == "pub":
            cmd.add_argument("topic")
            cmd.add_argument(
                "json", metavar="DATA", help="the data, as JSON (e.g. '\"hi\"' or '{\"t\": 21}')"
            )
        else:
            cmd.add_argument("pattern", help="a topic or a pattern with * and >")
            cmd.add_argument("--count", type=int, default=0, help="exit after this many messages")
        cmd.add_argument("--url", default=DEFAULT_URL, help=f"hub URL (default {DEFAULT_URL})")
        cmd.add_argument("--token", help="token for the hub (or set GREENBUS_TOKEN)")
        cmd.add_argument("--timeout", type=float, default=5.0, help="seconds to connect")

    commands.add_parser("demo", help="run the two-thread pyee/greenbus comparison side by side")
    commands.add_parser("bench", help="run the benchmark suite (options as python -m perf)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "bench":
        return bench(parser.parse_args(argv[:1]), argv[1:])
    args = parser.parse_args(argv)
    commands = {"serve": serve_command, "pub": pub_command, "sub": sub_command, "demo": demo}
    return commands[args.command](args)
