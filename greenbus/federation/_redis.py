"""The federation's glue to Redis: gevent sockets, RESP in and out, channel names.

The federation drives its two Redis connections itself (:class:`Link`):
redis-py opens each one (connect, AUTH, SELECT, CLIENT SETNAME, as the
URL says), then the federation writes packed commands to its socket and
parses what comes back with ``hiredis.Reader`` (or :class:`RespReader`, the
same API in Python, without hiredis).  No redis-py machinery runs per
message: a pipeline object per batch and ``PubSub.listen()`` per message
cost more than the rest of a message's trip.
"""

from __future__ import annotations

import os
from contextlib import suppress
from typing import Any

from gevent import socket as gsocket

try:
    import redis
    from redis.exceptions import ConnectionError as RedisConnectionError
except ImportError:  # pragma: no cover - exercised only without the extra
    redis = None  # type: ignore[assignment]
    RedisConnectionError = OSError  # type: ignore[assignment,misc]

try:
    import hiredis
except ImportError:  # pragma: no cover - exercised only without hiredis
    hiredis = None  # type: ignore[assignment]

__all__ = [
    "GeventConnection",
    "Link",
    "ReplyError",
    "RespProtocolError",
    "RespReader",
    "new_reader",
    "pack_command",
    "pack_publish",
    "redis_glob",
    "text",
]

_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def redis_glob(prefix: str, pattern: str) -> tuple[str, bool]:
    """The Redis channel (or glob pattern) for a greenbus topic or pattern.

    Returns:
        ``(name, is_pattern)``: exact topics map to a channel
        ``prefix:topic``; patterns to a glob where ``*`` and ``>`` become
        ``*`` and glob characters in literal tokens are escaped.  Redis's
        ``*`` also matches dots, so the glob may match more than the
        pattern; the local bus routes by the real pattern, so the extra
        messages reach nobody.
    """
    tokens = pattern.split(".")
    if "*" not in tokens and ">" not in tokens:
        return f"{prefix}:{pattern}", False
    parts = ["*" if t in ("*", ">") else t.translate(_GLOB_SPECIAL) for t in tokens]
    return f"{prefix.translate(_GLOB_SPECIAL)}:{'.'.join(parts)}", True


# -- RESP (sans I/O) ---------------------------------------------------------------------


class ReplyError(Exception):
    """An error reply from Redis (``-ERR ...``), returned as a reply, never raised."""


class RespProtocolError(ValueError):
    """Bytes from Redis that are not RESP: the connection is unusable."""


def pack_command(*args: str | bytes | int) -> bytes:
    """One Redis command in RESP (an array of bulk strings), ready to send."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def pack_publish(channel: str, message: bytes) -> bytes:
    """``PUBLISH channel message``, packed (:func:`pack_command`, for the hot path)."""
    name = channel.encode()
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(name),
        name,
        len(message),
        message,
    )


class RespReader:
    """A RESP2/RESP3 reply parser with ``hiredis.Reader``'s API, in Python.

    :meth:`feed` bytes as they come, then call :meth:`gets` until it returns
    False (no complete reply buffered).  Bulk strings come as bytes, error
    replies as :class:`ReplyError` instances, arrays (and RESP3 pushes and
    sets) as lists, maps as dicts.

    Raises:
        RespProtocolError: from :meth:`gets`, on bytes that are not RESP.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview, offset: int = 0, length: int = -1) -> None:
        """Buffer ``data[offset:offset + length]`` (all of it from ``offset`` if -1)."""
        end = len(data) if length < 0 else offset + length
        self._buf += data[offset:end]

    def gets(self) -> Any:
        """The next complete reply, or False if none is buffered."""
        try:
            reply, pos = self._parse(self._pos)
        except _Incomplete:
            return False
        self._pos = pos
        if pos > 65536 and pos * 2 > len(self._buf):
            del self._buf[:pos]
            self._pos = 0
        return reply

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[Any, int]:
        if pos >= len(self._buf):
            raise _Incomplete
        kind = bytes(self._buf[pos : pos + 1])
        line, pos = self._line(pos + 1)
        try:
            if kind in (b"+", b"("):
                return (line if kind == b"+" else int(line)), pos
            if kind == b"-":
                return ReplyError(line.decode("utf-8", "replace")), pos
            if kind == b":":
                return int(line), pos
            if kind == b",":
                return float(line), pos
            if kind == b"#":
                return line == b"t", pos
            if kind == b"_":
                return None, pos
            if kind in (b"$", b"=", b"!"):
                size = int(line)
                if size < 0:
                    return None, pos
                if len(self._buf) < pos + size + 2:
                    raise _Incomplete
                data = bytes(self._buf[pos : pos + size])
                if kind == b"!":
                    return ReplyError(data.decode("utf-8", "replace")), pos + size + 2
                return data, pos + size + 2
            if kind in (b"*", b">", b"~", b"%"):
                count = int(line)
                if count < 0:
                    return None, pos
                items = []
                for _ in range(count * 2 if kind == b"%" else count):
                    item, pos = self._parse(pos)
                    items.append(item)
                if kind == b"%":
                    return dict(zip(items[::2], items[1::2], strict=True)), pos
                return items, pos
        except ValueError as exc:
            raise RespProtocolError(f"bad RESP line {kind + line!r}") from exc
        raise RespProtocolError(f"unknown RESP type {kind!r}")


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def new_reader() -> Any:
    """A RESP parser: ``hiredis.Reader`` when installed, else :class:`RespReader`.

    Both return error replies as :class:`ReplyError` and raise
    :class:`RespProtocolError` on bytes that are not RESP.
    """
    if hiredis is not None:
        return hiredis.Reader(protocolError=RespProtocolError, replyError=ReplyError)
    return RespReader()  # pragma: no cover - hiredis is installed in the tests


# -- connections ------------------------------------------------------------------------

if redis is not None:

    class GeventConnection(redis.Connection):
        """A redis-py connection on a gevent socket: waits yield to other greenlets.

        ``gevent_socket`` is the socket of the last connect, for :class:`Link`.
        """

        gevent_socket: gsocket.socket | None = None

        def _connect(self) -> Any:
            sock = gsocket.create_connection(
                (self.host, self.port), timeout=self.socket_connect_timeout
            )
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            sock.settimeout(self.socket_timeout)
            self.gevent_socket = sock
            return sock

else:  # pragma: no cover - without the [redis] extra, Federation says what to install
    GeventConnection = None  # type: ignore[misc]


class Link:
    """One Redis connection the federation drives itself: bytes out, replies in.

    redis-py connects it (:meth:`open`: the handshake the options ask for);
    from then on only this object touches its socket.  One greenlet reads
    (:meth:`replies`, :meth:`read`); any greenlet may :meth:`send`.

    Args:
        pool: a redis-py ``ConnectionPool`` (made from the URL, with
            :class:`GeventConnection`): the connection's class and options.
        subscriber: reads wait as long as it takes (a subscribed connection
            is quiet between messages); otherwise they time out after the
            options' ``socket_timeout`` (redis-py's default: 5 s).
    """

    __slots__ = ("_buf", "_conn", "_reader", "_sock", "_subscriber")

    def __init__(self, pool: Any, *, subscriber: bool) -> None:
        # RESP2 whatever the URL says: on RESP3 a server may push out-of-band
        # messages (maintenance notices) between a publisher's replies.
        options = {**pool.connection_kwargs, "protocol": 2}
        self._conn: Any = pool.connection_class(**options)
        self._subscriber = subscriber
        self._sock: gsocket.socket | None = None
        self._reader = new_reader()
        self._buf = bytearray(1 << 16)

    def open(self) -> None:
        """Connect, and run the handshake.

        Raises:
            redis.exceptions.ConnectionError, OSError: Redis cannot be reached.
        """
        self._conn.connect()
        sock = self._sock = self._conn.gevent_socket
        if self._subscriber and sock is not None:
            sock.settimeout(None)

    def send(self, data: bytes) -> None:
        """Write packed commands (waits, cooperatively, while the socket is full)."""
        sock = self._sock
        if sock is None:
            raise RedisConnectionError("not connected")
        # One send() is what a command usually takes, and costs a third of
        # gevent's sendall(); sendall() only for what did not fit.
        sent = sock.send(data)
        if sent < len(data):
            sock.sendall(memoryview(data)[sent:])

    def send_nowait(self, data: bytes) -> int:
        """Write what the socket takes of ``data`` now, never waiting; how much.

        0 if it took nothing or the connection is broken (the rest is the
        caller's to :meth:`send`, which then raises if it is broken).
        """
        sock = self._sock
        if sock is None:
            return 0
        try:
            # The fd of a gevent socket is non-blocking: os.write never waits.
            return os.write(sock.fileno(), data)
        except OSError:  # BlockingIOError (full), or broken: send() will tell
            return 0

    def replies(self) -> list[Any]:
        """Every complete reply buffered, waiting for at least one if none is.

        Raises:
            redis.exceptions.ConnectionError: Redis closed the connection,
                or sent bytes that are not RESP.
            OSError: the socket failed.
        """
        reader = self._reader
        out: list[Any] = []
        while True:
            try:
                reply = reader.gets()
            except RespProtocolError as exc:
                raise RedisConnectionError(f"bad reply from Redis: {exc}") from None
            if reply is not False:
                out.append(reply)
                continue
            if out:
                return out
            self._fill()

    def read(self, count: int) -> list[Any]:
        """Exactly the next ``count`` replies, waiting for them.  Raises as :meth:`replies`."""
        out: list[Any] = []
        while len(out) < count:
            out += self.replies()
        if len(out) > count:  # pragma: no cover - Redis answers each command once
            raise RedisConnectionError(f"Redis sent {len(out)} replies to {count} commands")
        return out

    def _fill(self) -> None:
        sock = self._sock
        if sock is None:
            raise RedisConnectionError("not connected")
        received = sock.recv_into(self._buf)
        if not received:
            raise RedisConnectionError("Redis closed the connection")
        self._reader.feed(self._buf, 0, received)

    def close(self) -> None:
        """Close the connection (idempotent; never raises)."""
        with suppress(Exception):  # a broken connection: nothing left to close
            self._conn.disconnect()


def text(value: Any) -> str:
    """A Redis reply's bytes (or anything) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
