"""The ``type=`` functions of the ``greenbus`` command's arguments.

Each takes the argument's text and returns its value, or raises
``argparse.ArgumentTypeError`` whose message argparse prints after the
argument's name, on one line: ``greenbus serve: error: argument --port: must
be a port number 0..65535, not 99999``.  So every value is checked before
anything connects or binds.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import urlsplit

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from ..exceptions import InvalidTopic
from ..topics import validate_pattern, validate_topic

__all__ = [
    "REDIS_SCHEMES",
    "at_least",
    "hub_url",
    "interval",
    "json_data",
    "pattern",
    "port_number",
    "redis_url",
    "seconds",
    "topic",
]

#: The URL schemes redis-py connects to (``redis.connection.parse_url``).
REDIS_SCHEMES = ("redis", "rediss", "unix")
#: A Redis Cluster's (``greenbus.federation.cluster``).
CLUSTER_SCHEMES = ("redis+cluster",)


def port_number(text: str) -> int:
    """A TCP port to listen on, 0..65535 (0: the system picks one).

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


def at_least(minimum: int, unit: str = "") -> Callable[[str], int]:
    """The type of an integer >= ``minimum`` (``unit`` says what it counts).

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


def seconds(text: str) -> float:
    """A finite number of seconds > 0.

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


def seconds_or_off(text: str) -> float:
    """A finite number of seconds >= 0, where 0 means off.

    Raises:
        argparse.ArgumentTypeError: not a number, not finite, or < 0.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0 (0: off), not {text!r}")
    return value


def interval(text: str) -> float:
    """A finite number of seconds; 0 or less means off.

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


def _grammar(validate: Callable[[str], str], what: str) -> Callable[[str], str]:
    """An argument type that checks its text with ``validate`` (a topic grammar check)."""

    def check(text: str) -> str:
        try:
            return validate(text)
        except InvalidTopic as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    check.__name__ = what  # argparse names the type in its messages
    check.__doc__ = f"""A {what} (``greenbus.{validate.__name__}``).

    Raises:
        argparse.ArgumentTypeError: the ``InvalidTopic`` message.
    """
    return check


#: A concrete topic, and a subscription pattern.
topic = _grammar(validate_topic, "topic")
pattern = _grammar(validate_pattern, "pattern")


def _refuse_constant(name: str) -> NoReturn:
    # json.loads calls this for NaN, Infinity and -Infinity, which Python
    # accepts and JSON does not (RFC 8259, section 6); the protocol would
    # refuse to encode them later.
    raise ValueError(f"{name} is not JSON (JSON has no NaN or Infinity)")


def json_data(text: str) -> Any:
    """A message's data, as strict JSON; returns it decoded.

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


def hub_url(text: str) -> str:
    """A hub's URL, ``ws://HOST:PORT/`` or ``wss://HOST:PORT/``.

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


def redis_url(text: str) -> str:
    """A Redis URL, ``redis://``, ``rediss://`` or ``unix://``, or a Redis
    Cluster's ``redis+cluster://host:port,host:port,...``.

    Checked by redis-py's own parser too, when it is installed (without it,
    ``federate`` says redis-py is missing).

    Raises:
        argparse.ArgumentTypeError: another scheme, or what redis-py refuses
            (a port out of range, a bad query value).
    """
    scheme, sep, _ = text.partition("://")
    if sep and scheme.lower() in CLUSTER_SCHEMES:
        from ..federation.cluster import parse_cluster_url

        try:
            parse_cluster_url(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text}: {exc}") from None
        return text
    if not sep or scheme.lower() not in REDIS_SCHEMES:
        raise argparse.ArgumentTypeError(
            f"must be a redis://, rediss://, unix:// or redis+cluster:// URL, not {text!r}"
        )
    try:
        from redis.connection import parse_url
    except ImportError:
        return text
    check: Callable[[str], object] = parse_url  # redis-py leaves it unannotated
    try:
        check(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None
    return text
