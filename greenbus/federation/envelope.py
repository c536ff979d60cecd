"""The federation envelope: one published message, as JSON.  Pure, no I/O.

Fields (short names keep the per-message overhead small)::

    {"v": 1,            envelope version
     "o": "a1b2.../0",  origin: the publishing node's id / its sequence epoch
     "q": 42,           sequence number of this origin on this topic (from 1)
     "ts": 1764..,      publish time (Unix seconds, float) for the lag figure
     "t": "sensors.x",  topic
     "d": ...,          data (any JSON value)
     "h": {...},        headers (optional)
     "r": "_INBOX...",  reply_to (optional)
     "l": 1,            delivered on its origin node already (optional)
     "p": "e:12:1764..", with history: its position (added by Redis's script)
     "b": 11}           with history: the sequence number of the message
                        before it on the same topic (0: none)

A receiver keeps the last ``q`` per (origin, topic): a lower or equal one is
a duplicate (the same message through two subscriptions, or a batch
re-sent after a reconnect) and is dropped; a jump counts the missing ones as
a gap (pub/sub is at-most-once: lost during an outage).

With history (:mod:`greenbus.federation.history`), the script that keeps
the message in Redis gives it its position and adds ``p`` and ``b`` in front
of the other fields before it publishes it: receivers then drop duplicates
and count gaps by position, per topic.  ``l`` tells the origin node, which
receives its own messages back in history mode, whether its bus has
delivered the message already (a local emit) or not (a hub peer's pub, which
reaches the bus only through Redis).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..exceptions import InvalidTopic, LocalProtocolError, RemoteProtocolError
from ..protocol import is_position
from ..topics import validate_cached

__all__ = [
    "ENVELOPE_VERSION",
    "Envelope",
    "EnvelopeFields",
    "decode_envelope",
    "encode_envelope",
    "pack_envelope",
    "parse_envelope",
]

ENVELOPE_VERSION = 1

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# No parse_float hook: it would run in Python for every float of every
# message.  NaN/Infinity literals are refused here; the one float the
# envelope itself needs (ts) is checked below; a greenbus node never
# publishes a non-finite number (the hub refuses them at its door).
_decoder = json.JSONDecoder(parse_constant=_no_constant)
_loads = _decoder.decode
# The decoder's own scanner (an instance attribute typeshed does not know):
# ``_scan(text, 0)`` is ``(value, end)``, or StopIteration if no value starts there.
_scan: Callable[[str, int], tuple[Any, int]] = vars(_decoder)["scan_once"]
_isfinite = math.isfinite


@dataclass(frozen=True, slots=True)
class Envelope:
    origin: str
    seq: int
    ts: float
    topic: str
    data: Any = None
    headers: dict[str, Any] | None = None
    reply_to: str | None = None
    #: Delivered on its origin node already.
    local: bool = False
    #: With history: its position's text, and the sequence number of the
    #: previous message on its topic.
    pos: str | None = None
    prev: int = 0


def encode_envelope(env: Envelope) -> bytes:
    """The JSON bytes of ``env``.

    Raises:
        LocalProtocolError: data or headers are not JSON-serialisable.
    """
    return pack_envelope(
        env.origin, env.seq, env.ts, env.topic, env.data, env.headers, env.reply_to, env.local
    )


def pack_envelope(
    origin: str,
    seq: int,
    ts: float,
    topic: str,
    data: Any,
    headers: dict[str, Any] | None,
    reply_to: str | None,
    local: bool,
) -> bytes:
    """:func:`encode_envelope` from the fields, without making an :class:`Envelope`
    (the federation's writer, per message).  Raises as :func:`encode_envelope`."""
    out: dict[str, Any] = {"v": ENVELOPE_VERSION, "o": origin, "q": seq, "ts": ts, "t": topic}
    out["d"] = data
    if headers:
        out["h"] = headers
    if reply_to is not None:
        out["r"] = reply_to
    if local:
        out["l"] = 1
    try:
        return _dumps(out).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise LocalProtocolError(f"cannot federate a message on {topic!r}: {exc}") from None


#: :func:`parse_envelope`'s result: the fields of :class:`Envelope`, in order.
EnvelopeFields = tuple[
    str, int, float, str, Any, "dict[str, Any] | None", "str | None", bool, "str | None", int
]


def decode_envelope(raw: bytes | str) -> Envelope:
    """Parse an envelope.

    Raises:
        RemoteProtocolError: not an envelope of this version (code ``bad_frame``).
    """
    return Envelope(*parse_envelope(raw))


def parse_envelope(raw: bytes | str) -> EnvelopeFields:
    """:func:`decode_envelope`'s fields as a tuple, without making an
    :class:`Envelope` (the federation's reader, per message).  Raises as
    :func:`decode_envelope`; accepts and refuses exactly the same input."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        try:
            # What every node writes (compact, no surrounding whitespace):
            # one scan, without the decoder's two whitespace matches.
            obj, end = _scan(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            obj = _loads(text)  # the exact error, or surrounding whitespace
        if type(obj) is not dict or type(obj.get("v")) is not int or obj["v"] != ENVELOPE_VERSION:
            raise ValueError(f"not a version {ENVELOPE_VERSION} envelope")
        origin, seq, ts, topic = obj["o"], obj["q"], obj["ts"], obj["t"]
        if type(origin) is not str or type(seq) is not int:
            raise ValueError("bad origin or sequence number")
        if type(ts) is not float:
            if type(ts) is not int:
                raise ValueError("bad timestamp")
            ts = float(ts)  # OverflowError for an integer too big: caught below
        if not _isfinite(ts):
            raise ValueError("timestamp out of range")
        validate_cached(topic)
        headers = obj.get("h")
        reply_to = obj.get("r")
        if headers is not None and type(headers) is not dict:
            raise ValueError("headers must be an object")
        if reply_to is not None:
            validate_cached(reply_to)
        pos = obj.get("p")
        prev = obj.get("b", 0)
        if pos is not None and (type(pos) is not str or not is_position(pos)):
            raise ValueError("bad position")
        if type(prev) is not int:
            raise ValueError("bad previous position")
        return (
            origin,
            seq,
            ts,
            topic,
            obj.get("d"),
            headers,
            reply_to,
            obj.get("l") == 1,
            pos,
            prev,
        )
    except (ValueError, KeyError, UnicodeDecodeError, OverflowError, InvalidTopic) as exc:
        raise RemoteProtocolError("bad_frame", f"bad federation envelope: {exc}") from None
