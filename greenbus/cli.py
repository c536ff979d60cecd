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

Bad input never ends in a traceback.  Every argument is checked before
anything connects or binds: a bad value is a usage error, one line on stderr
in argparse's style (``greenbus serve: error: argument --port: ...``) and
exit status 2.  A failure at run time (a busy port, a certificate that does
not load, a malformed ACL, no hub to connect to) is one line naming the
problem (``greenbus serve: port 8765 is already in use``) and exit status 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from .exceptions import (
    AclError,
    ClientClosed,
    InvalidTopic,
    MessageTooBig,
    ReceiveTimeout,
    RemoteError,
)
from .topics import validate_pattern, validate_topic

if TYPE_CHECKING:
    from .acl import Acl

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


#: The name perf's own parser gives itself (perf/__main__.py builds it with
#: ``prog="python -m perf"``, and has no way to be told another).
PERF_PROG = "python -m perf"


def bench(extra: Sequence[str]) -> int:
    """Run ``python -m perf`` from the source checkout with the options ``extra``.

    ``-h``/``--help`` prints perf's help under ``greenbus bench``'s name.

    Returns:
        perf's exit status.

    Raises:
        SystemExit: not a source checkout (no ``perf/``).
    """
    root = _project_root()
    if not (root / "perf" / "__main__.py").is_file():
        raise SystemExit(f"greenbus bench: perf/ not found under {root}; use a source checkout")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "perf"]
    if "-h" in extra or "--help" in extra:
        return _bench_help(command, root, env)
    return subprocess.call([*command, *extra], cwd=root, env=env)


def _bench_help(command: list[str], root: Path, env: dict[str, str]) -> int:
    """Print ``python -m perf --help`` with the usage under ``greenbus bench``'s name."""
    proc = subprocess.run(
        [*command, "--help"], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    sys.stderr.write(proc.stderr)
    # Both names are 14 characters: argparse's wrapped usage lines stay aligned.
    sys.stdout.write(proc.stdout.replace(f"usage: {PERF_PROG}", "usage: greenbus bench", 1))
    return proc.returncode


DEFAULT_URL = "ws://127.0.0.1:8765/"

# -- argument types: each refuses a bad value with one line (argparse's style) ----------

#: The smallest ``--max-message-size`` the hub accepts (``HubConfig.__post_init__``).
MIN_MESSAGE_SIZE = 64
#: The URL schemes redis-py connects to (``redis.connection.parse_url``).
REDIS_SCHEMES = ("redis", "rediss", "unix")


def _port(text: str) -> int:
    """argparse type: a TCP port to listen on, 0..65535 (0: the system picks one).

    Raises:
        argparse.ArgumentTypeError: not an integer, or out of range.
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, not {port}")
    return port


def _at_least(minimum: int, unit: str = "") -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (``unit`` says what it counts).

    The returned function raises ``argparse.ArgumentTypeError`` for anything else.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {minimum}{unit}, not {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{unit}, not {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0.

    Raises:
        argparse.ArgumentTypeError: not a number, not finite, or <= 0.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


def _interval(text: str) -> float:
    """argparse type: a finite number of seconds; 0 or less means off.

    Raises:
        argparse.ArgumentTypeError: not a number, or not finite.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds (0: off), not {text!r}")
    return value


def _topic(text: str) -> str:
    """argparse type: a concrete topic (``greenbus.validate_topic``).

    Raises:
        argparse.ArgumentTypeError: the ``InvalidTopic`` message.
    """
    try:
        return validate_topic(text)
    except InvalidTopic as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pattern(text: str) -> str:
    """argparse type: a subscription pattern (``greenbus.validate_pattern``).

    Raises:
        argparse.ArgumentTypeError: the ``InvalidTopic`` message.
    """
    try:
        return validate_pattern(text)
    except InvalidTopic as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _refuse_constant(name: str) -> NoReturn:
    # json.loads calls this for NaN, Infinity and -Infinity, which Python
    # accepts and JSON does not (RFC 8259, section 6); the protocol would
    # refuse to encode them later.
    raise ValueError(f"{name} is not JSON (JSON has no NaN or Infinity)")


def _json_data(text: str) -> Any:
    """argparse type: a message's data, as strict JSON; returns it decoded.

    Raises:
        argparse.ArgumentTypeError: not JSON, NaN or Infinity, nested too deeply
            for the decoder, or a string UTF-8 cannot encode.
    """
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"must be JSON ({exc}); quote strings: '\"hi\"'") from None
    except ValueError as exc:  # NaN or Infinity; an integer too long to convert
        raise argparse.ArgumentTypeError(str(exc)) from None
    except RecursionError:
        raise argparse.ArgumentTypeError("is nested too deeply to decode") from None
    try:
        # A lone surrogate ("\ud800") is valid JSON text but not Unicode text:
        # the frame that carries it could not be sent (RFC 8259, section 8.2).
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise argparse.ArgumentTypeError(
            f"holds {bad!r}, a lone surrogate: not text UTF-8 can encode"
        ) from None
    return data


def _hub_url(text: str) -> str:
    """argparse type: a hub's URL, ``ws://HOST:PORT/`` or ``wss://HOST:PORT/``.

    Checked by ``websockets``' own parser, which the client uses.

    Raises:
        argparse.ArgumentTypeError: another scheme, no host, or a bad port.
    """
    try:
        parse_uri(text)
        port = urlsplit(text).port
    except InvalidURI as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}; expected ws://HOST:PORT/ or wss://HOST:PORT/"
        ) from None
    except ValueError as exc:  # urllib: a port that is not a number, or out of range
        raise argparse.ArgumentTypeError(f"{text} isn't a valid URI: {exc}") from None
    if port == 0:
        raise argparse.ArgumentTypeError(f"{text} isn't a valid URI: port 0 cannot be connected to")
    return text


def _redis_url(text: str) -> str:
    """argparse type: a Redis URL, ``redis://``, ``rediss://`` or ``unix://``.

    Checked by redis-py's own parser too, when it is installed (without it,
    ``federate`` says redis-py is missing).

    Raises:
        argparse.ArgumentTypeError: another scheme, or what redis-py refuses
            (a port out of range, a bad query value).
    """
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() not in REDIS_SCHEMES:
        raise argparse.ArgumentTypeError(
            f"must be a redis://, rediss:// or unix:// URL, not {text!r}"
        )
    try:
        from redis.connection import parse_url
    except ImportError:
        return text
    try:
        parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None
    return text


class _CommandParser(argparse.ArgumentParser):
    """The parser of one command (``greenbus serve``, ...): a usage error is one line.

    argparse prints a command's whole usage before the error, a dozen lines
    for ``serve``, burying the one that names the mistake; ``--help`` still
    shows it.  Arguments left over are an error of the command, not of
    ``greenbus``.  ``check(parser, args)`` runs after parsing, for the rules
    between options that ``type=`` cannot see; it calls ``parser.error``.
    """

    def __init__(
        self,
        *args: Any,
        check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.check = check

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` on stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse, refuse leftover arguments, then run ``check``; extras are always []."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        if self.check is not None:
            self.check(self, parsed)
        return parsed, extras


def _check_serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The rules between ``greenbus serve``'s options; ``parser.error`` on a broken one."""
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together: give both or neither")
    if args.transport == "wsgi" and (args.certfile or args.allow_origin):
        parser.error(
            "--transport wsgi: --certfile and --allow-origin are the WSGI server's job "
            "(TLS and Origin checks in front of it); use the default transport to have "
            "the hub do them"
        )


# -- greenbus serve -----------------------------------------------------------------------


def _one_line(text: str) -> str:
    """``text`` on one line: its non-empty lines joined with "; "."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _load_acl(path: str) -> Acl:
    """``Acl.load(path)``.

    Raises:
        SystemExit: the file is unreadable or malformed; one line, the
            AclError's text (it names the file and the problem).
    """
    from .acl import Acl

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


def serve_command(args: argparse.Namespace) -> int:
    """Run a hub until SIGINT/SIGTERM; returns 0 once stopped.

    The options were checked by the parser; the ACL and the TLS files are
    loaded before anything binds.

    Raises:
        SystemExit: one line, status 1: the ACL or the TLS files do not load,
            the port is in use or the address cannot be bound, redis-py is missing.
    """

    from .bridge.server import serve
    from .bus import Bus

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    token = args.token or os.environ.get("GREENBUS_TOKEN") or None
    acl = _load_acl(args.acl) if args.acl else None
    if args.certfile:
        _check_tls(args.certfile, args.keyfile)
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

        try:
            federation = federate(bus, args.redis, prefix=args.redis_prefix)
        except ImportError as exc:  # redis-py is an extra: greenbus[redis]
            raise SystemExit(f"greenbus serve: --redis: {exc}") from None
    if args.transport == "wsgi":
        return _serve_wsgi(args, bus, hub, federation)
    _listen(hub.start, args.host, args.port)
    # Scripts (and the tests) read this line to learn the port when --port 0.
    print(f"greenbus hub listening on {hub.url}", flush=True)
    _log_federation(args, federation)
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


def _log_federation(args: argparse.Namespace, federation: Any) -> None:
    """Once listening, log the federation the hub runs (if any)."""
    if federation is not None:
        logging.getLogger("greenbus.cli").info(
            "federating through %s (prefix %r, node %s)",
            args.redis,
            args.redis_prefix,
            federation.node,
        )


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

    # --certfile and --allow-origin were refused by _check_serve.
    app = hub_app(bus, hub.config)
    server = WSGIServer((args.host, args.port), app, handler_class=WebSocketHandler, log=None)
    _listen(server.start, args.host, args.port)
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
    _log_federation(args, federation)

    def stop() -> None:
        server.close()
        app.hub.stop_peers()
        server.stop(timeout=5)
        if federation is not None:
            federation.stop()
        bus.close(timeout=5)

    _run_until_signalled(stop)
    return 0


# -- greenbus pub, greenbus sub -----------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    """A client the hub at ``args.url`` welcomed within ``args.timeout`` seconds.

    Raises:
        SystemExit: not welcomed in time, or refused (a wrong token, a
            certificate that does not verify); one line, status 1.
    """
    from .bridge.client import connect

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    token = args.token or os.environ.get("GREENBUS_TOKEN") or None
    # timeout=None, and wait here: connect(timeout=...) would log a warning of
    # its own before the one line below.
    client = connect(args.url, token=token, name=f"greenbus-{args.command}", timeout=None)
    if not client.wait_connected(args.timeout):
        refused = client.error
        client.close(timeout=0)
        if refused is not None:
            raise SystemExit(f"greenbus {args.command}: {_why(refused)}")
        raise SystemExit(f"greenbus {args.command}: cannot connect to {args.url}")
    return client


def _why(error: BaseException) -> str:
    """One line on what the hub refused (the cause of a ClientClosed, if any)."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, RemoteError):
        return f"the hub refused it: {getattr(cause.code, 'value', cause.code)}: {cause.reason}"
    return f"the hub refused the connection: {cause}"


def pub_command(args: argparse.Namespace) -> int:
    """Publish one message (its data decoded by the parser); exit once the hub took it.

    A refusal (a wrong token, a topic the ACL forbids, a message over the
    size limit) is one line and status 1.
    """
    client = _client(args)
    try:
        client.publish(args.topic, args.data, timeout=args.timeout)
    except (RemoteError, ClientClosed) as exc:
        raise SystemExit(f"greenbus pub: {_why(exc)}") from None
    except MessageTooBig as exc:
        raise SystemExit(f"greenbus pub: {exc}") from None
    except ReceiveTimeout:
        raise SystemExit(
            f"greenbus pub: the hub did not answer within {args.timeout:g} s"
        ) from None
    finally:
        client.close(timeout=args.timeout)
    return 0


def sub_command(args: argparse.Namespace) -> int:
    """Print one JSON line per message until interrupted (or --count).

    A refused subscription (a pattern the ACL forbids), or a client the hub
    refuses later, is one line and status 1.
    """
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
    except (RemoteError, ClientClosed) as exc:
        raise SystemExit(f"greenbus sub: {_why(exc)}") from None
    finally:
        client.close(timeout=1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``greenbus`` parser; each command's parser is a :class:`_CommandParser`.

    Parsing checks every value (``type=`` functions and ``_check_serve``): a
    bad one exits with status 2 and one line, before any command runs.
    """
    parser = argparse.ArgumentParser(
        prog="greenbus", description="greenbus: a message bus for greenlets."
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )

    serve = commands.add_parser("serve", help="run a WebSocket hub", check=_check_serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 picks one)")
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
        type=_interval,
        default=1.0,
        help="seconds between $greenbus.stats messages, the dashboard's feed (0: off)",
    )
    serve.add_argument("--certfile", help="TLS certificate (PEM): serve wss://")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument(
        "--max-message-size",
        type=_at_least(MIN_MESSAGE_SIZE, " bytes"),
        default=1 << 20,
        help=f"bytes (default 1 MiB, at least {MIN_MESSAGE_SIZE})",
    )
    serve.add_argument("--max-connections", type=_at_least(1), default=10_000)
    serve.add_argument(
        "--max-pending", type=_at_least(1), default=10_000, help="messages queued per peer"
    )
    serve.add_argument(
        "--max-pending-bytes",
        type=_at_least(1),
        default=8 << 20,
        help="bytes of messages queued per peer (default 8 MiB)",
    )
    serve.add_argument("--slow-policy", choices=("close", "drop_oldest"), default="close")
    serve.add_argument("--max-subscriptions", type=_at_least(1), default=1000, help="per peer")
    serve.add_argument(
        "--close-timeout",
        type=_seconds,
        default=5.0,
        help="seconds for a closing handshake; a close frame not written by then aborts "
        "the connection (a peer that stopped reading)",
    )
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.add_argument(
        "--redis",
        metavar="URL",
        type=_redis_url,
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
            cmd.add_argument("topic", type=_topic)
            cmd.add_argument(
                "data",
                metavar="DATA",
                type=_json_data,
                help="the data, as JSON (e.g. '\"hi\"' or '{\"t\": 21}')",
            )
        else:
            cmd.add_argument("pattern", type=_pattern, help="a topic or a pattern with * and >")
            cmd.add_argument(
                "--count", type=_at_least(0), default=0, help="exit after this many messages"
            )
        cmd.add_argument(
            "--url", type=_hub_url, default=DEFAULT_URL, help=f"hub URL (default {DEFAULT_URL})"
        )
        cmd.add_argument("--token", help="token for the hub (or set GREENBUS_TOKEN)")
        cmd.add_argument(
            "--timeout",
            type=_seconds,
            default=5.0,
            help="seconds to connect (and, for pub, for the hub's answer)",
        )
        cmd.add_argument(
            "--log-level",
            default="critical",
            choices=("debug", "info", "warning", "error", "critical"),
            help="the client library's log on stderr (default: none, only this command's "
            "one-line answer)",
        )

    commands.add_parser("demo", help="run the two-thread pyee/greenbus comparison side by side")
    commands.add_parser("bench", help="run the benchmark suite (options as python -m perf)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``greenbus`` command ``argv`` (default ``sys.argv[1:]``); its exit status.

    Raises:
        SystemExit: status 2 and one line on stderr for a usage error (bare
            ``greenbus`` and an unknown command keep argparse's usage too);
            status 1 and one line for a failure at run time.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        # perf parses its own options (they are listed by `greenbus bench --help`).
        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    commands = {"serve": serve_command, "pub": pub_command, "sub": sub_command, "demo": demo}
    return commands[args.command](args)
