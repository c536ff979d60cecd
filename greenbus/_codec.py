"""The hot frames decoded and written in C (msgspec); the pure codec stays the reference.

A client's ``pub`` (what the hub reads most) and a hub's ``msg`` and
``ack`` (what a client reads most) are decoded and validated in one C call, against
:class:`msgspec.Struct` types that mirror docs/protocol.schema.json.  This
path may only *accept*: it returns the very event the pure parser in
:mod:`greenbus.protocol` would, or None whenever it is not sure, and the
pure parser then decides (so every refusal, and its error, stays the pure
parser's, byte for byte).  It is not sure about, and leaves to the pure
parser:

- anything msgspec refuses: not JSON, trailing data, ``NaN``/``Infinity``
  (malformed to msgspec), a number that overflows a double or an integer
  over ``sys.get_int_max_str_digits()`` digits ("out of range"), a missing,
  unknown or repeated ``op``, an unknown field, a field of the wrong type
  (an ``id`` that is null, a boolean, an object...), a string that cannot
  be UTF-8 (msgspec reads the text as UTF-8);
- any ``\\uD800``-``\\uDFFF`` escape, even a valid pair (the pure parser
  refuses a lone one);
- more brackets than ``max_depth`` (strings' included) in a frame whose
  data or headers hold a container (so nesting can never be too deep here:
  a frame whose data and headers hold none is one level deep);
- a topic or ``reply_to`` that :func:`~greenbus.topics.validate_cached`
  refuses; a text that is not exactly a ``str``.

The other way, a ``msg`` body (the hub's, once per message) and a client's
``pub`` frame are written in C when their values are plain JSON, as the
very bytes json.dumps writes (:func:`msg_body`, :func:`pub_frame`), or not
at all.

``GREENBUS_PURE_PYTHON=1`` in the environment (read once, at import) turns
this path off: every frame then goes through the pure parser.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET, UnsetType

from .topics import validate_cached

if TYPE_CHECKING:
    from .protocol import Ack, Msg, Pub

__all__ = [
    "PURE_PYTHON",
    "MsgFrame",
    "client_decoder",
    "msg_body",
    "msg_decoder",
    "pub_decoder",
    "pub_frame",
]

#: Set from ``GREENBUS_PURE_PYTHON`` at import: True turns the C path off.
PURE_PYTHON = os.environ.get("GREENBUS_PURE_PYTHON", "") not in ("", "0")

#: The escape of a UTF-16 surrogate (as greenbus.protocol's).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _PubFrame(msgspec.Struct, tag="pub", tag_field="op", forbid_unknown_fields=True):
    topic: str
    data: Any = None
    headers: dict[str, Any] | None = None
    reply_to: str | None = None
    id: str | int | float | UnsetType = UNSET  # null is not an id


class _MsgFrame(msgspec.Struct, tag="msg", tag_field="op", forbid_unknown_fields=True):
    sid: str | int | float
    topic: str
    data: Any = None
    headers: dict[str, Any] | None = None
    reply_to: str | None = None
    pos: str | None = None
    id: str | int | float | UnsetType = UNSET  # allowed, not kept


class _AckFrame(msgspec.Struct, tag="ack", tag_field="op", forbid_unknown_fields=True):
    id: str | int | float
    pos: str | None = None
    recovered: bool | None = None


#: What :func:`client_decoder` returns for a ``msg``: its fields, as a
#: :class:`~greenbus.protocol.Msg` has them (``sid``, ``topic``, ``data``,
#: ``headers``, ``reply_to``, ``pos``).
MsgFrame = _MsgFrame


class _Other(msgspec.Struct, tag="\x00", tag_field="op"):
    # A second member makes the tag required: a single tagged Struct
    # accepts an object with no "op" at all.
    pass


def _setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    # The slots' own setters: a frozen dataclass's __init__ goes through
    # object.__setattr__ once per field, twice as slow.
    return tuple(getattr(cls, name).__set__ for name in names)


def pub_decoder(pub: type[Pub]) -> Callable[[str, int], Pub | None]:
    """A decoder of a client's ``pub`` text: the event, or None when unsure.

    The event equals what ``parse_client(text, max_depth=...)`` returns for
    a text it accepts; None for every other text (see the module doc).
    """
    decode = msgspec.json.Decoder(_PubFrame | _Other).decode
    new = object.__new__
    set_topic, set_data, set_headers, set_reply_to, set_id = _setters(
        pub, ("topic", "data", "headers", "reply_to", "id")
    )
    surrogate = _SURROGATE_ESCAPE.search

    def decode_pub(text: str, max_depth: int) -> Pub | None:
        if type(text) is not str or ("\\u" in text and surrogate(text) is not None):
            return None
        try:
            frame = decode(text)
            if type(frame) is not _PubFrame:
                return None
            data = frame.data
            if (
                frame.headers is not None
                or type(data) is dict
                or type(data) is list
                or max_depth < 1
            ) and text.count("{") + text.count("[") > max_depth:
                return None  # perhaps too deep (see the module doc)
            topic = validate_cached(frame.topic)
            reply_to = frame.reply_to
            if reply_to is not None:
                reply_to = validate_cached(reply_to)
        except Exception:  # unsure: the pure parser names the problem
            return None
        id_ = frame.id
        event = new(pub)
        set_topic(event, topic)
        set_data(event, frame.data)
        set_headers(event, frame.headers)
        set_reply_to(event, reply_to)
        set_id(event, None if id_ is UNSET else id_)
        return event

    return decode_pub


def msg_decoder(msg: type[Msg]) -> Callable[[str, int], Msg | None]:
    """A decoder of a hub's ``msg`` text: the event, or None when unsure.

    The event equals what ``parse_server(text, max_depth=...)`` returns for
    a text it accepts; None for every other text (see the module doc).
    """
    decode = msgspec.json.Decoder(_MsgFrame | _Other).decode
    new = object.__new__
    set_sid, set_topic, set_data, set_headers, set_reply_to, set_pos = _setters(
        msg, ("sid", "topic", "data", "headers", "reply_to", "pos")
    )
    surrogate = _SURROGATE_ESCAPE.search

    def decode_msg(text: str, max_depth: int) -> Msg | None:
        if type(text) is not str or ("\\u" in text and surrogate(text) is not None):
            return None
        try:
            frame = decode(text)
        except Exception:  # unsure: the pure parser names the problem
            return None
        if type(frame) is not _MsgFrame:
            return None
        data = frame.data
        if (
            frame.headers is not None or type(data) is dict or type(data) is list or max_depth < 1
        ) and text.count("{") + text.count("[") > max_depth:
            return None  # perhaps too deep (see the module doc)
        event = new(msg)
        set_sid(event, frame.sid)
        set_topic(event, frame.topic)
        set_data(event, frame.data)
        set_headers(event, frame.headers)
        set_reply_to(event, frame.reply_to)
        set_pos(event, frame.pos)
        return event

    return decode_msg


def client_decoder(ack: type[Ack]) -> Callable[[str, int], MsgFrame | Ack | None]:
    """A client's decoder of what a hub sends most: a ``msg`` or an ``ack``.

    A ``msg`` comes back as its :class:`MsgFrame` (the fields of the
    :class:`~greenbus.protocol.Msg` that ``parse_server(text, max_depth=...)``
    returns, unbuilt: a client only reads them), an ``ack`` as the very
    :class:`~greenbus.protocol.Ack` it returns; None for every other text
    and whenever unsure (see the module doc), to go to ``parse_server``.
    """
    decode = msgspec.json.Decoder(_MsgFrame | _AckFrame | _Other).decode
    new = object.__new__
    set_id, set_pos, set_recovered = _setters(ack, ("id", "pos", "recovered"))
    surrogate = _SURROGATE_ESCAPE.search

    def decode_server(text: str, max_depth: int) -> MsgFrame | Ack | None:
        if type(text) is not str or ("\\u" in text and surrogate(text) is not None):
            return None
        try:
            frame: _MsgFrame | _AckFrame | _Other = decode(text)
        except Exception:  # unsure: the pure parser names the problem
            return None
        if type(frame) is _MsgFrame:
            data = frame.data
            if (
                frame.headers is not None
                or type(data) is dict
                or type(data) is list
                or max_depth < 1
            ) and text.count("{") + text.count("[") > max_depth:
                return None  # perhaps too deep (see the module doc)
            return frame
        if type(frame) is not _AckFrame or max_depth < 1:
            return None
        event = new(ack)
        set_id(event, frame.id)
        set_pos(event, frame.pos)
        set_recovered(event, frame.recovered)
        return event

    return decode_server


# -- encoding -----------------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode
#: The types whose values msgspec writes as json.dumps does (exactly these: no subclass).
_SCALARS = frozenset({str, int, bool, type(None)})
#: Values looked at, at most, before msgspec writes them: past it, json.dumps does.
_PLAIN_BUDGET = 256


def _positional(value: float) -> bool:
    # Where msgspec and repr() both write a float positionally, alike
    # (NaN compares false: refused).
    return value == 0.0 or 1e-4 <= abs(value) < 1e16


def _plain(value: Any) -> bool:
    # Only JSON's own types, floats written alike, string keys: msgspec would also
    # write bytes, sets, dataclasses, datetimes, enums (and NaN as null)
    # where json.dumps refuses them.
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        return _positional(value)
    stack = [value]
    budget = _PLAIN_BUDGET
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            for key in item:
                if type(key) is not str:
                    return False
            values = item.values()
        elif kind is list or kind is tuple:
            values = item
        else:
            return False
        budget -= len(values) + 1
        if budget < 0:
            return False
        for element in values:
            kind = type(element)
            if kind in _SCALARS:
                continue
            if kind is float:
                if not _positional(element):
                    return False
            else:
                stack.append(element)
    return True


def msg_body(
    topic: str, data: Any, headers: Mapping[str, Any] | None, reply_to: str | None
) -> bytes | None:
    """The UTF-8 of ``encode_msg_body(topic, data, headers, reply_to)``, written in C.

    The same text as json.dumps writes.  None when unsure (then json.dumps
    decides, and refuses what it refuses): anything but JSON's own types, a
    float outside 1e-4 <= abs(x) < 1e16 (NaN and Infinity included; there
    msgspec writes ``1e16`` where json.dumps writes ``1e+16``), a lone
    surrogate, a structure of more than a few hundred values (looking at
    them all would cost more than json.dumps).
    """
    if (
        type(topic) is not str
        or not _plain(data)
        or (headers and (type(headers) is not dict or not _plain(headers)))
        or (reply_to is not None and type(reply_to) is not str)
    ):
        return None
    try:
        body = b',"topic":' + _encode(topic) + b',"data":' + _encode(data)
        if headers:
            body += b',"headers":' + _encode(headers)
        if reply_to is not None:
            body += b',"reply_to":' + _encode(reply_to)
    except Exception:  # unsure (a lone surrogate: no UTF-8): json.dumps decides
        return None
    return body + b"}"


def pub_frame(
    topic: str, data: Any, headers: Mapping[str, Any] | None, reply_to: str | None, id: int
) -> bytes | None:
    """The UTF-8 of ``encode(Pub(topic, data, headers, reply_to, id))``, written in C.

    The same text as json.dumps writes (``headers`` left out only when None,
    as :func:`~greenbus.protocol.encode` does).  None when unsure, as
    :func:`msg_body`; and for an ``id`` that is not exactly an ``int``.
    """
    if (
        type(topic) is not str
        or type(id) is not int
        or not _plain(data)
        or (headers is not None and (type(headers) is not dict or not _plain(headers)))
        or (reply_to is not None and type(reply_to) is not str)
    ):
        return None
    try:
        frame = b'{"op":"pub","topic":' + _encode(topic) + b',"data":' + _encode(data)
        if headers is not None:
            frame += b',"headers":' + _encode(headers)
        if reply_to is not None:
            frame += b',"reply_to":' + _encode(reply_to)
        return frame + b',"id":' + _encode(id) + b"}"
    except Exception:  # unsure (a lone surrogate: no UTF-8): json.dumps decides
        return None
