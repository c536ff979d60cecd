"""The wire protocol (versions 1 and 2), sans-I/O: text in, events out; events in, text out.

No sockets, no gevent: this module turns the text of one WebSocket message
into a typed event (or a protocol error) and turns events into text; the
per-connection state of the hub side is :class:`greenbus.session.HubSession`.  The
transports in :mod:`greenbus.bridge` drive it; the tests feed it strings.
The format is specified in ``docs/protocol.md`` and
``docs/protocol.schema.json``.

Every message is one JSON object with a string field ``op``.

client -> hub: ``hello``, ``sub``, ``unsub``, ``pub``, ``ping``
hub -> client: ``welcome``, ``msg``, ``ack``, ``error``, ``pong``

Errors are split by who broke it (as in h11): :class:`RemoteProtocolError`
is raised for what the *peer* sent, :class:`LocalProtocolError` for an
event *we* tried to send that the protocol does not allow.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .exceptions import InvalidTopic, LocalProtocolError, RemoteProtocolError
from .topics import validate_cached

_codec: ModuleType | None
try:  # the hot frames decoded in C; the pure parser below stays the reference
    from . import _codec
except ImportError:  # pragma: no cover (msgspec is a dependency)
    _codec = None

__all__ = [
    "MSG_SLACK",
    "POSITION",
    "PROTOCOL_VERSION",
    "Ack",
    "ClientEvent",
    "CloseCode",
    "Error",
    "ErrorCode",
    "Hello",
    "LocalProtocolError",
    "Msg",
    "Ping",
    "Pong",
    "Pub",
    "RemoteProtocolError",
    "ServerEvent",
    "Sub",
    "Unsub",
    "Welcome",
    "encode",
    "encode_msg",
    "encode_msg_body",
    "encode_msg_body_utf8",
    "is_position",
    "msg_prefix",
    "msg_with_pos",
    "parse_client",
    "parse_server",
]

#: The newest protocol this module speaks, and every one it still speaks.  A
#: client says which in ``hello``; without a hello, a connection speaks 1.
PROTOCOL_VERSION = 2
PROTOCOL_VERSIONS = (1, 2)

#: A client-chosen request id (echoed in ack/error) or subscription id.
Id = str | int | float


class ErrorCode(str, enum.Enum):
    """The ``code`` of an ``error`` frame."""

    BAD_JSON = "bad_json"  #: not JSON, or not UTF-8, or nested too deeply
    BAD_FRAME = "bad_frame"  #: valid JSON of the wrong shape or types
    UNKNOWN_OP = "unknown_op"
    BAD_TOPIC = "bad_topic"
    UNAUTHORIZED = "unauthorized"  #: no or wrong token
    FORBIDDEN = "forbidden"  #: the token may not do this
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    DUPLICATE_SID = "duplicate_sid"
    UNKNOWN_SID = "unknown_sid"
    LIMIT = "limit"  #: too many subscriptions (or another per-peer limit)
    SLOW_CONSUMER = "slow_consumer"  #: sent before closing with 1013
    INTERNAL = "internal"  #: sent before closing with 1011
    #: the hub cannot do it now (its history in Redis is unreachable, its
    #: queue to Redis is full): try again later
    UNAVAILABLE = "unavailable"

    def __str__(self) -> str:
        return self.value


class CloseCode(enum.IntEnum):
    """WebSocket close codes the hub uses (RFC 6455, section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002  #: a broken WebSocket frame sequence (e.g. a stray continuation)
    UNSUPPORTED_DATA = 1003  #: a binary message
    INVALID_DATA = 1007  #: invalid UTF-8 in a text message
    POLICY = 1008  #: auth failure, or too many protocol errors
    TOO_BIG = 1009  #: a message over the size limit
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  #: the hub lost its feed from Redis: reconnect and resume
    TRY_AGAIN_LATER = 1013  #: slow consumer; history unavailable


# -- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    protocol: int = PROTOCOL_VERSION
    token: str | None = None
    name: str | None = None
    id: Id | None = None
    #: v2: the client's publisher session, stable across its reconnects:
    #: its pubs with integer ids are applied once (see docs/recovery.md).
    session: str | None = None


@dataclass(frozen=True, slots=True)
class Sub:
    sid: Id
    topic: str
    id: Id | None = None
    #: v2: a ``pos`` received earlier on this pattern: replay what came after it.
    since: str | None = None


@dataclass(frozen=True, slots=True)
class Unsub:
    sid: Id
    id: Id | None = None


@dataclass(frozen=True, slots=True)
class Pub:
    topic: str
    data: Any = None
    headers: Mapping[str, Any] | None = None
    reply_to: str | None = None
    id: Id | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: Id | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    protocol: int
    server: str
    peer: str
    id: Id | None = None


@dataclass(frozen=True, slots=True)
class Msg:
    sid: Id
    topic: str
    data: Any = None
    headers: Mapping[str, Any] | None = None
    reply_to: str | None = None
    #: v2, with history on: where this message stands (opaque).
    pos: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    id: Id
    #: v2, the ack of a ``sub`` with history on: where the subscription starts.
    pos: str | None = None
    #: v2, the ack of a ``sub`` with ``since``: whether the gap was replayed.
    recovered: bool | None = None


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    reason: str
    id: Id | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    id: Id | None = None


ClientEvent = Hello | Sub | Unsub | Pub | Ping
ServerEvent = Welcome | Msg | Ack | Error | Pong

# -- decoding -----------------------------------------------------------------

#: How much bigger than ``max_message_size`` a ``msg`` frame may be.  A
#: ``pub`` the hub accepted at the limit comes back in a ``msg`` whose
#: envelope differs (its ``sid`` for the ``pub``'s ``id``); the hub sends
#: no ``msg`` over ``max_message_size + MSG_SLACK``, and clients accept up
#: to that much, so whatever the hub accepted can be delivered.
MSG_SLACK = 64 * 1024

#: A position (v2's ``pos`` and ``since``): ``<epoch>:<sequence>:<ms>``, as
#: a hub's history writes it (:class:`greenbus.history.Position`).
POSITION = re.compile(r"([0-9a-f]{1,32}):(0|[1-9][0-9]{0,18}):(0|[1-9][0-9]{0,15})")


def is_position(text: str) -> bool:
    """Whether ``text`` is the text of a position."""
    return POSITION.fullmatch(text) is not None


#: Default maximum nesting depth of a frame's JSON (objects and arrays).
DEFAULT_MAX_DEPTH = 32


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode

#: A JSON escape of a UTF-16 surrogate: the only way a lone surrogate (which
#: cannot be encoded as UTF-8, so could never be forwarded) gets in.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _load_object(text: str, max_depth: int) -> dict[str, Any]:
    if not isinstance(text, str):
        raise RemoteProtocolError(ErrorCode.BAD_JSON, "a frame must be a text message")
    try:
        obj = _decode(text)
    except RecursionError:
        raise RemoteProtocolError(ErrorCode.BAD_JSON, "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, int too long, NaN/Infinity
        raise RemoteProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None:
        try:
            _dumps(obj).encode("utf-8")
        except UnicodeEncodeError:
            raise RemoteProtocolError(
                ErrorCode.BAD_JSON, "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
            ) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"a frame must be a JSON object, not {_json_type(obj)}"
        )
    # Nesting can't exceed the number of brackets: count them in C first,
    # and walk the object only when there are enough of them to matter.
    if text.count("{") + text.count("[") > max_depth and _depth(obj, max_depth) > max_depth:
        raise RemoteProtocolError(
            ErrorCode.BAD_JSON, f"JSON nested deeper than {max_depth} levels", _peek_id(obj)
        )
    return obj


def _depth(value: Any, limit: int) -> int:
    # Iterative, and stops as soon as the limit is passed.
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item if isinstance(v, (dict, list)))
    return deepest


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return True
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _peek_id(obj: dict[str, Any]) -> Id | None:
    value = obj.get("id")
    return value if _is_id(value) else None


class _Fields:
    # Typed access to a frame's fields; every failure names the field.
    __slots__ = ("obj", "op", "id")

    def __init__(self, obj: dict[str, Any], op: str, allowed: frozenset[str]) -> None:
        self.obj = obj
        self.op = op
        self.id = None
        if "id" in obj:
            self.id = _peek_id(obj)
            if self.id is None:
                raise RemoteProtocolError(
                    ErrorCode.BAD_FRAME, f"{op}: 'id' must be a string or a number"
                )
        if not obj.keys() <= allowed:
            unknown = sorted(obj.keys() - allowed)
            raise RemoteProtocolError(
                ErrorCode.BAD_FRAME, f"{op}: unknown field(s) {', '.join(unknown)}", self.id
            )

    def fail(self, reason: str, code: ErrorCode = ErrorCode.BAD_FRAME) -> RemoteProtocolError:
        return RemoteProtocolError(code, f"{self.op}: {reason}", self.id)

    def required(self, name: str) -> Any:
        if name not in self.obj:
            raise self.fail(f"missing field {name!r}")
        return self.obj[name]

    def string(self, name: str, *, optional: bool = False) -> str | None:
        value = self.obj.get(name) if optional else self.required(name)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{name!r} must be a string, not {_json_type(value)}")
        return value

    def position(self, name: str) -> str | None:
        # An optional pos (v2): the text of a history position.
        value = self.string(name, optional=True)
        if value is not None and not is_position(value):
            raise self.fail(f"{name!r} must be a pos this hub sent (a msg's or a sub ack's)")
        return value

    def ident(self, name: str) -> Id:
        value = self.required(name)
        if not _is_id(value):
            raise self.fail(f"{name!r} must be a string or a number, not {_json_type(value)}")
        return value  # type: ignore[no-any-return]

    def topic(self, name: str, *, pattern: bool = False, optional: bool = False) -> str | None:
        value = self.string(name, optional=optional)
        if value is None:
            return None
        try:
            return validate_cached(value, pattern=pattern)
        except InvalidTopic as exc:
            raise self.fail(f"{name!r} {exc.problem}", ErrorCode.BAD_TOPIC) from None

    def mapping(self, name: str) -> dict[str, Any] | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(f"{name!r} must be an object, not {_json_type(value)}")
        return value


_V1_FIELDS = {
    "hello": ("protocol", "token", "name"),
    "sub": ("sid", "topic"),
    "unsub": ("sid",),
    "pub": ("topic", "data", "headers", "reply_to"),
    "ping": (),
}
#: The fields each op may have, by protocol version: v2 adds hello's
#: ``session`` and sub's ``since``.  A v1 connection refuses them as unknown.
_CLIENT_FIELDS = {
    1: {op: frozenset(names) | {"op", "id"} for op, names in _V1_FIELDS.items()},
    2: {
        op: frozenset(names)
        | {"op", "id"}
        | {"hello": {"session"}, "sub": {"since"}}.get(op, set())
        for op, names in _V1_FIELDS.items()
    },
}


def _op_of(obj: dict[str, Any], known: Mapping[str, frozenset[str]]) -> str:
    op = obj.get("op")
    if not isinstance(op, str):
        if "op" not in obj:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "missing field 'op'", _peek_id(obj))
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"'op' must be a string, not {_json_type(op)}", _peek_id(obj)
        )
    if op not in known:
        shown = op if len(op) <= 40 else op[:40] + "..."
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_OP,
            f"unknown op {shown!r}; expected one of {', '.join(known)}",
            _peek_id(obj),
        )
    return op


def parse_client(text: str, *, max_depth: int = DEFAULT_MAX_DEPTH, version: int = 1) -> ClientEvent:
    """Decode one client -> hub message of a connection speaking ``version``.

    A ``hello`` is read with v2's fields whatever ``version`` (it is what
    says which version a connection speaks).

    A ``pub`` is decoded in C when it can be (:mod:`greenbus._codec`): the
    same event, and every refusal is this pure parser's.

    Raises:
        RemoteProtocolError: with the error code to answer with.
    """
    if _fast_pub is not None:
        event = _fast_pub(text, max_depth)
        if event is not None:
            return event
    obj = _load_object(text, max_depth)
    if obj.get("op") == "pub" and obj.keys() <= _PUB_FIELDS:
        # The hot path: a well-formed pub, checked inline.  Anything odd
        # falls through to the general path, which names the problem.
        topic = obj.get("topic")
        headers = obj.get("headers")
        reply_to = obj.get("reply_to")
        id_ = obj.get("id")
        if (
            type(topic) is str
            and (headers is None or type(headers) is dict)
            and (reply_to is None or type(reply_to) is str)
            and ((id_ is None and "id" not in obj) or _is_id(id_))
        ):
            try:
                validate_cached(topic)
                if reply_to is not None:
                    validate_cached(reply_to)
            except InvalidTopic:
                pass
            else:
                return Pub(topic, obj.get("data"), headers, reply_to, id_)
    fields = _CLIENT_FIELDS[version]
    op = _op_of(obj, fields)
    f = _Fields(obj, op, _CLIENT_FIELDS[PROTOCOL_VERSION][op] if op == "hello" else fields[op])
    if op == "pub":
        return Pub(
            topic=f.topic("topic"),  # type: ignore[arg-type]
            data=obj.get("data"),
            headers=f.mapping("headers"),
            reply_to=f.topic("reply_to", optional=True),
            id=f.id,
        )
    if op == "sub":
        return Sub(
            sid=f.ident("sid"),
            topic=f.topic("topic", pattern=True),  # type: ignore[arg-type]
            id=f.id,
            since=f.position("since"),
        )
    if op == "unsub":
        return Unsub(sid=f.ident("sid"), id=f.id)
    if op == "ping":
        return Ping(id=f.id)
    version = f.required("protocol")
    if isinstance(version, bool) or not isinstance(version, int):
        raise f.fail(f"'protocol' must be an integer, not {_json_type(version)}")
    if version not in PROTOCOL_VERSIONS:
        spoken = " and ".join(map(str, PROTOCOL_VERSIONS))
        raise f.fail(
            f"protocol {version} is not supported; this hub speaks {spoken}",
            ErrorCode.UNSUPPORTED_PROTOCOL,
        )
    session = f.string("session", optional=True)
    if session is not None and (version < 2 or not 1 <= len(session) <= 128):
        raise f.fail("'session' needs protocol 2 and 1 to 128 characters")
    return Hello(
        protocol=version,
        token=f.string("token", optional=True),
        name=f.string("name", optional=True),
        id=f.id,
        session=session,
    )


_PUB_FIELDS = _CLIENT_FIELDS[1]["pub"]

_SERVER_FIELDS = {
    op: frozenset(names) | {"op", "id"}
    for op, names in {
        "welcome": ("protocol", "server", "peer"),
        "msg": ("sid", "topic", "data", "headers", "reply_to", "pos"),
        "ack": ("pos", "recovered"),
        "error": ("code", "reason"),
        "pong": (),
    }.items()
}


def parse_server(text: str, *, max_depth: int = DEFAULT_MAX_DEPTH) -> ServerEvent:
    """Decode one hub -> client message (for clients).

    Unknown error codes are kept as plain strings would be lost, so ``code``
    is an :class:`ErrorCode` when known and the raw string otherwise.

    A ``msg`` is decoded in C when it can be, as a ``pub`` in :func:`parse_client`.

    Raises:
        RemoteProtocolError: the hub sent something the protocol does not allow.
    """
    if _fast_msg is not None:
        msg = _fast_msg(text, max_depth)
        if msg is not None:
            return msg
    obj = _load_object(text, max_depth)
    op = _op_of(obj, _SERVER_FIELDS)
    f = _Fields(obj, op, _SERVER_FIELDS[op])
    if op == "msg":
        return Msg(
            sid=f.ident("sid"),
            topic=f.string("topic"),  # type: ignore[arg-type]
            data=obj.get("data"),
            headers=f.mapping("headers"),
            reply_to=f.string("reply_to", optional=True),
            pos=f.string("pos", optional=True),
        )
    if op == "ack":
        recovered = obj.get("recovered")
        if recovered is not None and not isinstance(recovered, bool):
            raise f.fail(f"'recovered' must be a boolean, not {_json_type(recovered)}")
        return Ack(id=f.ident("id"), pos=f.string("pos", optional=True), recovered=recovered)
    if op == "pong":
        return Pong(id=f.id)
    if op == "error":
        code = f.string("code")
        try:
            known: ErrorCode | str = ErrorCode(code)
        except ValueError:
            known = code  # type: ignore[assignment]
        return Error(code=known, reason=f.string("reason") or "", id=f.id)  # type: ignore[arg-type]
    version = f.required("protocol")
    if isinstance(version, bool) or not isinstance(version, int):
        raise f.fail(f"'protocol' must be an integer, not {_json_type(version)}")
    return Welcome(
        protocol=version, server=f.string("server") or "", peer=f.string("peer") or "", id=f.id
    )


#: The hot frames' decoders in C, or None for the pure parser alone
#: (``GREENBUS_PURE_PYTHON=1``, or no msgspec).  Tests swap them.
_fast_pub: Callable[[str, int], Pub | None] | None = None
_fast_msg: Callable[[str, int], Msg | None] | None = None
#: The ``msg`` body written in C, or None for json.dumps alone.
_fast_body: Callable[[str, Any, Mapping[str, Any] | None, str | None], bytes | None] | None = None
if _codec is not None and not _codec.PURE_PYTHON:
    _fast_pub = _codec.pub_decoder(Pub)
    _fast_msg = _codec.msg_decoder(Msg)
    _fast_body = _codec.msg_body

# -- encoding -----------------------------------------------------------------

_OPS: dict[type, str] = {
    Hello: "hello",
    Sub: "sub",
    Unsub: "unsub",
    Pub: "pub",
    Ping: "ping",
    Welcome: "welcome",
    Msg: "msg",
    Ack: "ack",
    Error: "error",
    Pong: "pong",
}

_dumps = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=True
).encode


def encode(event: ClientEvent | ServerEvent) -> str:
    """The text of one message carrying ``event``; optional fields left out when None.

    Raises:
        LocalProtocolError: ``data`` or ``headers`` are not JSON-serialisable
            (or contain NaN/Infinity), or ``event`` is not a protocol event.
    """
    op = _OPS.get(type(event))
    if op is None:
        raise LocalProtocolError(f"not a protocol event: {event!r}")
    out: dict[str, Any] = {"op": op}
    for name in event.__dataclass_fields__:
        value = getattr(event, name)
        if value is None and name != "data":
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        out[name] = value
    try:
        return _dumps(out)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode {op}: {exc}") from None


def msg_prefix(sid: Id) -> str:
    """The start of every ``msg`` frame for ``sid``: ``{"op":"msg","sid":<sid>``.

    Computed once per subscription; :func:`encode_msg_body` is the rest.
    """
    return '{"op":"msg","sid":' + _dumps(sid)


def encode_msg_body(
    topic: str, data: Any, headers: Mapping[str, Any] | None, reply_to: str | None
) -> str:
    """The part of a ``msg`` frame after its sid: ``,"topic":...}``.

    The same for every subscriber of one message, so a fan-out encodes the
    message once and each subscriber's frame is ``msg_prefix(sid) + body``.

    Plain JSON data is written in C (:mod:`greenbus._codec`); json.dumps
    writes the rest, and refuses what is not JSON.

    Raises:
        LocalProtocolError: ``data`` or ``headers`` are not JSON-serialisable.
    """
    if _fast_body is not None:
        body = _fast_body(topic, data, headers, reply_to)
        if body is not None:
            return body.decode()
    return _msg_body_text(topic, data, headers, reply_to)


def encode_msg_body_utf8(
    topic: str, data: Any, headers: Mapping[str, Any] | None, reply_to: str | None
) -> bytes:
    """The UTF-8 of :func:`encode_msg_body` (the hub's, written once, as bytes).

    Raises:
        LocalProtocolError: not JSON-serialisable, or a lone surrogate (no UTF-8).
    """
    if _fast_body is not None:
        body = _fast_body(topic, data, headers, reply_to)
        if body is not None:
            return body
    try:
        return _msg_body_text(topic, data, headers, reply_to).encode()
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"cannot encode msg on {topic!r}: {exc}") from None


def _msg_body_text(topic: str, data: Any, headers: Any, reply_to: str | None) -> str:
    out: dict[str, Any] = {"topic": topic, "data": data}
    if headers:
        out["headers"] = headers
    if reply_to is not None:
        out["reply_to"] = reply_to
    try:
        return "," + _dumps(out)[1:]
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode msg on {topic!r}: {exc}") from None


def encode_msg(
    sid: Id, topic: str, data: Any, headers: Mapping[str, Any] | None, reply_to: str | None
) -> str:
    """``encode(Msg(sid, topic, data, headers, reply_to))``, built as the hub builds it.

    The hub never calls it: it encodes :func:`encode_msg_body` once per
    message and prepends each subscription's :func:`msg_prefix`.  This joins
    the two, for tests and for anyone who wants one frame.
    """
    return msg_prefix(sid) + encode_msg_body(topic, data, headers, reply_to)


def msg_with_pos(body: bytes, pos: str) -> bytes:
    """``body`` (from :func:`encode_msg_body`, UTF-8) with ``"pos"`` added (v2).

    ``pos`` is the text of a :class:`~greenbus.history.Position`: hex
    digits, digits and colons, nothing JSON would escape.
    """
    return b'%s,"pos":"%s"}' % (body[:-1], pos.encode())
