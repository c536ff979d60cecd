"""``greenbus pub`` and ``greenbus sub``: one-shot clients of a hub.

Both connect with :func:`greenbus.connect`, wait at most ``--timeout`` seconds
to be welcomed, and turn every refusal from the hub (a wrong token, a topic
the ACL forbids, a message over the size limit) into one line and exit
status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from ..exceptions import ClientClosed, MessageTooBig, ReceiveTimeout, RemoteError
from . import argtypes

__all__ = ["DEFAULT_URL", "add_pub_arguments", "add_sub_arguments", "pub_command", "sub_command"]

#: The hub ``greenbus serve`` runs with its defaults.
DEFAULT_URL = "ws://127.0.0.1:8765/"


def add_pub_arguments(pub: argparse.ArgumentParser) -> None:
    """Add ``greenbus pub``'s arguments to its parser ``pub``: TOPIC DATA, then the hub's."""
    pub.add_argument("topic", type=argtypes.topic)
    pub.add_argument(
        "data",
        metavar="DATA",
        type=argtypes.json_data,
        help="the data, as JSON (e.g. '\"hi\"' or '{\"t\": 21}')",
    )
    _add_hub_arguments(pub)


def add_sub_arguments(sub: argparse.ArgumentParser) -> None:
    """Add ``greenbus sub``'s arguments to its parser ``sub``: PATTERN, --count, the hub's."""
    sub.add_argument("pattern", type=argtypes.pattern, help="a topic or a pattern with * and >")
    sub.add_argument(
        "--count", type=argtypes.at_least(0), default=0, help="exit after this many messages"
    )
    _add_hub_arguments(sub)


def _add_hub_arguments(cmd: argparse.ArgumentParser) -> None:
    """The options ``pub`` and ``sub`` share: which hub, the token, the timeout, the log."""
    cmd.add_argument(
        "--url", type=argtypes.hub_url, default=DEFAULT_URL, help=f"hub URL (default {DEFAULT_URL})"
    )
    cmd.add_argument("--token", help="token for the hub (or set GREENBUS_TOKEN)")
    cmd.add_argument(
        "--timeout",
        type=argtypes.seconds,
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


def _client(args: argparse.Namespace) -> Any:
    """A client the hub at ``args.url`` welcomed within ``args.timeout`` seconds.

    Raises:
        SystemExit: not welcomed in time, or refused (a wrong token, a
            certificate that does not verify); one line, status 1.
    """
    from ..bridge.client import connect

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

    Returns:
        0: the hub took the message.

    Raises:
        SystemExit: one line, status 1: no hub, a refusal (a wrong token, a
            topic the ACL forbids, a message over the size limit), or no
            answer within ``--timeout``.
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
    """Print one JSON line per message until interrupted (or ``--count`` messages).

    Each line is ``{"topic", "data"}``, with ``"headers"`` and ``"reply_to"``
    when the message has them.

    Returns:
        0: interrupted, or ``--count`` messages printed.

    Raises:
        SystemExit: one line, status 1: no hub, a refused subscription (a
            pattern the ACL forbids), or a client the hub refuses later.
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
