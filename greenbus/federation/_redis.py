"""The federation's glue to redis-py: gevent sockets, channel names, quiet closes."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from gevent import socket as gsocket

try:
    import redis
except ImportError:  # pragma: no cover - exercised only without the extra
    redis = None  # type: ignore[assignment]

__all__ = ["GeventConnection", "close_quietly", "redis_glob", "text"]

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


if redis is not None:

    class GeventConnection(redis.Connection):
        """A redis-py connection on a gevent socket: waits yield to other greenlets."""

        def _connect(self) -> Any:
            sock = gsocket.create_connection(
                (self.host, self.port), timeout=self.socket_connect_timeout
            )
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            sock.settimeout(self.socket_timeout)
            return sock

else:  # pragma: no cover - without the [redis] extra, Federation says what to install
    GeventConnection = None  # type: ignore[misc]


def text(value: Any) -> str:
    """A Redis reply's bytes (or anything) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def close_quietly(pubsub: Any) -> None:
    """Close a pubsub connection that may be broken already."""
    with suppress(Exception):  # a broken connection: nothing left to close
        pubsub.close()
