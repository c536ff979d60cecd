"""Sessions and frames that the protocol and session tests share."""

from __future__ import annotations

import json
from typing import Any

from greenbus.acl import Acl
from greenbus.protocol import parse_server
from greenbus.session import HubSession, SessionLimits

__all__ = ["TOKEN", "anonymous", "nested", "sent", "with_token"]

#: The token of :func:`with_token`'s sessions.
TOKEN = "s3cret"


def nested(depth: int, id: Any = None) -> str:
    """A pub frame whose JSON is exactly ``depth`` levels deep (the frame is level 1)."""
    data = "[" * (depth - 1) + "]" * (depth - 1)
    tail = "" if id is None else f',"id":{json.dumps(id)}'
    return f'{{"op":"pub","topic":"a","data":{data}{tail}}}'


def anonymous(**limits: Any) -> HubSession:
    return HubSession(server="hub", peer="p1", limits=SessionLimits(**limits))


def with_token(**limits: Any) -> HubSession:
    return HubSession(
        server="hub",
        peer="p1",
        authenticate=Acl.single_token(TOKEN).authenticate,
        limits=SessionLimits(**limits),
    )


def sent(session: HubSession) -> list[dict[str, Any]]:
    """Take the session's outbox, each frame checked to be a valid server frame."""
    frames = session.take_outbox()
    for frame in frames:
        parse_server(frame)
    return [json.loads(frame) for frame in frames]
