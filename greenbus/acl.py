"""Who may publish and subscribe to what on the hub.  Pure: no gevent, no I/O
beyond reading the ACL file.

An ACL file (TOML, or JSON with the same structure) names users, each with a
token and the topic patterns it may publish to and subscribe to, in the bus's
own wildcard grammar::

    [users.sensor-gateway]
    token = "s3cret-1"               # or: token_env = "GATEWAY_TOKEN"
    publish = ["sensors.>"]
    subscribe = []

    [users.dashboard]
    token_env = "DASHBOARD_TOKEN"
    publish = ["commands.*"]
    subscribe = ["sensors.>", "$greenbus.stats"]

A peer authenticates with ``hello {token}``; tokens are compared in constant
time and never logged.  A ``sub`` is allowed when its pattern is *covered*
by an allowed pattern (every topic it can match, the allowed one matches
too): ``sensors.>`` covers ``sensors.*.temp`` but ``sensors.*`` does not
cover ``sensors.>``.  Replies are always allowed: publishing to an
``_INBOX.`` topic and subscribing to an exact ``_INBOX.`` topic (a request's
own inbox).  See ``docs/security.md``.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import AclError, InvalidTopic
from .topics import is_wildcard, pattern_matches, validate_pattern

__all__ = ["ALLOW_ALL", "Acl", "InboxOwners", "Permissions", "is_inbox", "pattern_covers"]

#: Topics under this prefix are request inboxes (see Bus.request).
INBOX_PREFIX = "_INBOX."


def is_inbox(pattern: str) -> bool:
    """True for an exact inbox topic (``_INBOX.`` and no wildcard): a request's reply address."""
    return pattern.startswith(INBOX_PREFIX) and not is_wildcard(pattern)


if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


def pattern_covers(allowed: str, requested: str) -> bool:
    """True if every topic ``requested`` can match is matched by ``allowed``.

    Both are valid patterns (an exact topic is a pattern without wildcards).
    """
    a = allowed.split(".")
    r = requested.split(".")
    for i, token in enumerate(a):
        if token == ">":
            return len(r) > i  # '>' covers one or more remaining tokens, any kind
        if i >= len(r):
            return False
        if r[i] == ">":
            return False  # only '>' covers '>'
        if token != "*" and token != r[i]:
            return False  # a literal covers only the same literal (not '*')
    return len(a) == len(r)


@dataclass(frozen=True, slots=True)
class Permissions:
    """What one authenticated peer may do."""

    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def can_publish(self, topic: str) -> bool:
        if topic.startswith(INBOX_PREFIX):
            return True  # replies
        return any(pattern_matches(p, topic) for p in self.publish)

    def can_subscribe(self, pattern: str) -> bool:
        if is_inbox(pattern):
            return True  # a request's own inbox (InboxOwners decides whose it is)
        return any(pattern_covers(p, pattern) for p in self.subscribe)


#: Everything allowed: anonymous peers of a hub without a token, and the
#: ``--token`` user.
ALLOW_ALL = Permissions("default", (">",), (">",))


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise AclError(f"{where}: must be a list of topic patterns")
    for p in value:
        try:
            validate_pattern(p)
        except InvalidTopic as exc:
            raise AclError(f"{where}: {exc}") from None
    return tuple(value)


class Acl:
    """Users, their tokens and permissions; authenticates tokens.

    Args:
        users: ``(token, Permissions)`` pairs.
    """

    def __init__(self, users: Iterable[tuple[str, Permissions]], source: str = "ACL") -> None:
        self._users: list[tuple[bytes, Permissions]] = []
        seen: set[str] = set()
        for token, perms in users:
            if not token:
                raise AclError(f"{source}: user {perms.user!r}: empty token")
            if token in seen:
                raise AclError(f"{source}: user {perms.user!r}: token shared with another user")
            seen.add(token)
            self._users.append((token.encode(), perms))

    def __repr__(self) -> str:
        # Never show tokens.
        return f"<Acl users={[p.user for _, p in self._users]}>"

    def entries(self) -> list[tuple[str, Permissions]]:
        """``(token, permissions)`` pairs, to combine ACLs."""
        return [(token.decode(), perms) for token, perms in self._users]

    @property
    def users(self) -> list[str]:
        return [p.user for _, p in self._users]

    def authenticate(self, token: str | None) -> Permissions | None:
        """The permissions of the user with this token, or None.

        Compares against every user's token in constant time, so timing
        reveals neither the token nor which user it belongs to.
        """
        try:
            given = (token or "").encode()
        except UnicodeEncodeError:  # a lone surrogate: no user's token
            return None
        found: Permissions | None = None
        for expected, perms in self._users:
            if hmac.compare_digest(given, expected) and token:
                found = perms
        return found

    @classmethod
    def single_token(cls, token: str) -> Acl:
        """One user, ``default``, allowed everything (``greenbus serve --token``)."""
        return cls([(token, ALLOW_ALL)])

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], source: str = "ACL", env: Mapping[str, str] | None = None
    ) -> Acl:
        env = os.environ if env is None else env
        if not isinstance(data, Mapping):
            raise AclError(
                f"{source}: needs a [users.NAME] table per user (the top level is not a table)"
            )
        users = data.get("users")
        if not isinstance(users, dict) or not users:
            raise AclError(f"{source}: needs a [users.NAME] table per user")
        out = []
        for name, spec in users.items():
            where = f"{source}: user {name!r}"
            if not isinstance(spec, dict):
                raise AclError(f"{where}: must be a table")
            unknown = set(spec) - {"token", "token_env", "publish", "subscribe"}
            if unknown:
                raise AclError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            if "token" in spec and "token_env" in spec:
                raise AclError(f"{where}: give token or token_env, not both")
            if "token_env" in spec:
                token = env.get(str(spec["token_env"]))
                if not token:
                    variable = spec["token_env"]
                    raise AclError(f"{where}: environment variable {variable!r} is not set")
            else:
                token = spec.get("token")
                if not isinstance(token, str) or not token:
                    raise AclError(f"{where}: needs a non-empty token (or token_env)")
            perms = Permissions(
                str(name),
                _patterns(spec.get("publish", []), f"{where}: publish"),
                _patterns(spec.get("subscribe", []), f"{where}: subscribe"),
            )
            out.append((token, perms))
        return cls(out, source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Acl:
        """Read a TOML (``.toml``) or JSON ACL file.

        Raises:
            AclError: unreadable or malformed, naming the file and the problem.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:
            raise AclError(f"{p}: {exc}") from None
        return cls.from_mapping(data, str(p))


class InboxOwners:
    """Who owns which request inbox on one hub: replies reach their requester only.

    An inbox is an exact ``_INBOX.`` topic.  The first peer to subscribe to
    it owns it until its last subscription to it ends (unsub or
    disconnect); meanwhile any other peer's subscription to it is refused.
    The requester subscribes before it publishes the request, and the name
    is unguessable, so nobody else can learn it before it is owned.  Inboxes
    under a reserved prefix (the hub's own bus's :attr:`Bus.inbox_prefix`)
    belong to in-process requesters and are never given to a peer.

    Pure bookkeeping for the hub's thread; see docs/security.md.
    """

    __slots__ = ("_claims", "_reserved")

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._claims: dict[str, tuple[str, int]] = {}
        self._reserved = tuple(prefix + "." for prefix in reserved)

    def __len__(self) -> int:
        return len(self._claims)

    def reserve(self, prefix: str) -> None:
        """Keep every inbox ``prefix + ".<token>"`` from peers (an in-process bus's)."""
        self._reserved = (*self._reserved, prefix + ".")

    def owner(self, inbox: str) -> str | None:
        """The owner of ``inbox`` now, or None."""
        claim = self._claims.get(inbox)
        return claim[0] if claim is not None else None

    def claim(self, inbox: str, owner: str) -> bool:
        """Record one more subscription of ``owner`` to ``inbox``; False if it is not theirs."""
        if self._reserved and inbox.startswith(self._reserved):
            return False
        held = self._claims.get(inbox)
        if held is None:
            self._claims[inbox] = (owner, 1)
            return True
        if held[0] != owner:
            return False
        self._claims[inbox] = (owner, held[1] + 1)
        return True

    def release(self, inbox: str, owner: str) -> None:
        """One subscription of ``owner`` to ``inbox`` ended; the last one frees it."""
        held = self._claims.get(inbox)
        if held is None or held[0] != owner:
            return
        if held[1] > 1:
            self._claims[inbox] = (owner, held[1] - 1)
        else:
            del self._claims[inbox]
