"""Tests for greenbus.acl: who may publish and subscribe to what (docs/security.md).

The first half is pure: ``pattern_covers`` against a brute-force reference,
``Acl.load`` of TOML and JSON files and every way a file can be malformed,
``authenticate`` and what ``repr`` shows.  The second half runs ``greenbus
serve --acl FILE`` processes and talks to them as restricted users would:
forbidden and allowed ``pub``/``sub``, replies between restricted users, and
the privacy of request inboxes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from conftest import ROOT, HubProcess, drain, run_child
from hubclient import RawClient, ask, client, in_step, metric_eventually, recv, send, until_closed
from hypothesis import given, settings
from hypothesis import strategies as st
from waiting import wait_until
from websockets.sync.client import ClientConnection

import greenbus
from greenbus import RemoteBus
from greenbus.acl import ALLOW_ALL, Acl, InboxOwners, Permissions, is_inbox, pattern_covers
from greenbus.exceptions import AclError, GreenbusError
from greenbus.topics import pattern_matches, validate_pattern

# -- pattern_covers --------------------------------------------------------------------

COVERS = [
    # (allowed, requested, covers)
    ("a", "a", True),
    ("a", "b", False),
    ("a.b", "a.b", True),
    ("a.b", "a", False),
    ("a", "a.b", False),
    ("*", "a", True),
    ("*", "*", True),
    ("a", "*", False),
    ("*", ">", False),
    ("*", "a.b", False),
    (">", "a", True),
    (">", "a.b.c", True),
    (">", "*", True),
    (">", "*.>", True),
    (">", ">", True),
    ("a.>", ">", False),
    ("*.>", ">", False),
    ("sensors.>", "sensors.*.temp", True),
    ("sensors.>", "sensors.room1.temp", True),
    ("sensors.>", "sensors.>", True),
    ("sensors.>", "sensors.*", True),
    ("sensors.>", "sensors", False),
    ("sensors.>", "*.room1", False),
    ("sensors.*", "sensors.>", False),
    ("sensors.*", "sensors.room1", True),
    ("sensors.*", "sensors.*", True),
    ("sensors.*", "sensors.room1.temp", False),
    ("sensors.*.temp", "sensors.*.temp", True),
    ("sensors.*.temp", "sensors.room1.temp", True),
    ("sensors.*.temp", "sensors.room1.*", False),
    ("sensors.room1.temp", "sensors.*.temp", False),
    ("*.*", "a.*", True),
    ("*.*", "*.>", False),
    ("a.*.>", "a.>", False),
    ("a.*.>", "a.*.*", True),
    ("a.*.>", "a.b.>", True),
    ("a.b.>", "a.*.>", False),
    ("$greenbus.stats", "$greenbus.stats", True),
]


@pytest.mark.parametrize(
    ("allowed", "requested", "expected"),
    COVERS,
    ids=[f"{a} covers {r}" if e else f"{a} not {r}" for a, r, e in COVERS],
)
def test_pattern_covers_follows_the_table(allowed: str, requested: str, expected: bool) -> None:
    assert pattern_covers(allowed, requested) is expected


#: Few tokens, so that patterns and topics collide often; "z" is in no pattern.
TOKENS = ("a", "b", "c")
pattern_tokens = st.sampled_from([*TOKENS, "*"])


@st.composite
def patterns(draw: Any, max_tokens: int = 4) -> str:
    tokens = draw(st.lists(pattern_tokens, min_size=0, max_size=max_tokens))
    if not tokens or draw(st.booleans()):
        tokens.append(">")
    return ".".join(tokens)


@st.composite
def topics_matched_by(draw: Any, pattern: str) -> str:
    """A topic the pattern matches: each wildcard replaced by random tokens."""
    out = []
    for token in pattern.split("."):
        if token == "*":
            out.append(draw(st.sampled_from([*TOKENS, "z"])))
        elif token == ">":
            out.extend(draw(st.lists(st.sampled_from([*TOKENS, "z"]), min_size=1, max_size=4)))
        else:
            out.append(token)
    return ".".join(out)


@settings(max_examples=400)
@given(allowed=patterns(), requested=patterns(), data=st.data())
def test_a_covered_pattern_matches_no_topic_that_the_covering_pattern_does_not(
    allowed: str, requested: str, data: st.DataObject
) -> None:
    validate_pattern(allowed)
    validate_pattern(requested)
    if not pattern_covers(allowed, requested):
        return
    for _ in range(10):
        topic = data.draw(topics_matched_by(requested))
        assert pattern_matches(requested, topic)
        assert pattern_matches(allowed, topic), (allowed, requested, topic)


def covers_by_enumeration(allowed: str, requested: str) -> bool:
    """The reference: every topic (of a universe that tells them apart) ``requested``
    matches, ``allowed`` matches too.

    Tokens: those of both patterns and one fresh token; lengths up to one
    more than the longer pattern (past its length a pattern either matches
    every longer topic, with ``>``, or none).
    """
    alphabet = sorted({*TOKENS, "z"})
    longest = max(len(allowed.split(".")), len(requested.split("."))) + 1
    for length in range(1, longest + 1):
        for tokens in itertools.product(alphabet, repeat=length):
            topic = ".".join(tokens)
            if pattern_matches(requested, topic) and not pattern_matches(allowed, topic):
                return False
    return True


@settings(max_examples=300)
@given(allowed=patterns(max_tokens=3), requested=patterns(max_tokens=3))
def test_pattern_covers_says_yes_exactly_when_every_topic_agrees(
    allowed: str, requested: str
) -> None:
    # Sound (never allows more) and complete (never refuses a covered pattern).
    assert pattern_covers(allowed, requested) is covers_by_enumeration(allowed, requested)


# -- Permissions -------------------------------------------------------------------------


def test_permissions_allow_publishing_to_matching_topics_and_to_any_inbox() -> None:
    perms = Permissions("gw", publish=("sensors.>",), subscribe=())
    assert perms.can_publish("sensors.room1.temp")
    assert not perms.can_publish("sensors")
    assert not perms.can_publish("commands.reboot")
    assert perms.can_publish("_INBOX.4f2a.1")  # replies always work


def test_permissions_allow_an_exact_inbox_subscription_but_no_inbox_wildcard() -> None:
    perms = Permissions("gw", publish=(), subscribe=())
    assert perms.can_subscribe("_INBOX.4f2a.1")
    assert not perms.can_subscribe("_INBOX.>")
    assert not perms.can_subscribe("_INBOX.*.1")
    assert not perms.can_subscribe("_INBOX")  # not under the prefix
    assert not perms.can_subscribe("anything")


def test_allow_all_may_publish_and_subscribe_to_everything() -> None:
    assert ALLOW_ALL.can_publish("a.b.c")
    assert ALLOW_ALL.can_subscribe(">")
    assert ALLOW_ALL.can_subscribe("*.x.>")


# -- Acl.load ------------------------------------------------------------------------------


def documented_acl() -> str:
    """The ACL file docs/security.md shows (and greenbus.acl's docstring, word for word)."""
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block, "docs/security.md lost its ACL example"
    return block.group(1)


DOC_TOML = documented_acl()


def test_the_acl_modules_docstring_shows_the_documented_acl() -> None:
    import greenbus.acl

    assert greenbus.acl.__doc__ is not None
    shown = [line.strip() for line in greenbus.acl.__doc__.splitlines()]
    for line in DOC_TOML.splitlines():
        assert line.strip() in shown, line  # the same words, and the same spacing


DOC_JSON = {
    "users": {
        "sensor-gateway": {"token": "s3cret-1", "publish": ["sensors.>"], "subscribe": []},
        "dashboard": {
            "token_env": "DASHBOARD_TOKEN",
            "publish": ["commands.*"],
            "subscribe": ["sensors.>", "$greenbus.stats"],
        },
    }
}

DOC_USERS = {
    "s3cret-1": Permissions("sensor-gateway", ("sensors.>",), ()),
    "dash-token": Permissions("dashboard", ("commands.*",), ("sensors.>", "$greenbus.stats")),
}


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_the_documented_acl_loads_from_toml_and_from_json_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    monkeypatch.setenv("DASHBOARD_TOKEN", "dash-token")
    path = tmp_path / f"acl{suffix}"
    path.write_text(DOC_TOML if suffix == ".toml" else json.dumps(DOC_JSON), encoding="utf-8")
    acl = Acl.load(path)
    assert acl.users == ["sensor-gateway", "dashboard"]
    assert dict(acl.entries()) == DOC_USERS
    for token, perms in DOC_USERS.items():
        assert acl.authenticate(token) == perms


def test_acl_load_accepts_a_str_path_and_leaves_out_publish_and_subscribe_as_empty(
    tmp_path: Path,
) -> None:
    path = tmp_path / "acl.toml"
    path.write_text('[users.reader]\ntoken = "r"\n', encoding="utf-8")
    assert Acl.load(str(path)).authenticate("r") == Permissions("reader", (), ())


def test_token_env_is_read_when_the_file_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "acl.toml"
    path.write_text('[users.svc]\ntoken_env = "SVC_TOKEN"\npublish = ["a"]\n', encoding="utf-8")
    monkeypatch.setenv("SVC_TOKEN", "first")
    acl = Acl.load(path)
    monkeypatch.setenv("SVC_TOKEN", "second")
    assert acl.authenticate("first") == Permissions("svc", ("a",), ())
    assert acl.authenticate("second") is None
    assert Acl.load(path).authenticate("second") == Permissions("svc", ("a",), ())


def test_from_mapping_reads_token_env_from_the_given_environment() -> None:
    data = {"users": {"svc": {"token_env": "T"}}}
    acl = Acl.from_mapping(data, "inline", env={"T": "from-env"})
    assert acl.users == ["svc"]
    assert acl.authenticate("from-env") is not None


#: A file that is wrong in one way: (contents, the user named or None, the problem).
MALFORMED: dict[str, tuple[str, str | None, str]] = {
    "not-toml": ('[users.a\ntoken = "tok-1"\n', None, "line 1"),
    "not-json": ('{"users": {"a": {"token": "tok-1"}', None, "line 1"),
    "json-not-an-object": ('[{"users": {"a": {"token": "tok-1"}}}]', None, "[users.NAME]"),
    "json-a-string": ('"tok-1"', None, "[users.NAME]"),
    "no-users": ('[people.a]\ntoken = "tok-1"\n', None, "needs a [users.NAME] table"),
    "users-empty": ("[users]\n", None, "needs a [users.NAME] table"),
    "users-an-array": ('[[users]]\ntoken = "tok-1"\n', None, "needs a [users.NAME] table"),
    "user-not-a-table": ('users.alice = "tok-1"\n', "alice", "must be a table"),
    "unknown-key": ('[users.alice]\ntoken = "tok-1"\npublsh = ["a"]\n', "alice", "publsh"),
    "token-and-token-env": (
        '[users.alice]\ntoken = "tok-1"\ntoken_env = "X"\n',
        "alice",
        "not both",
    ),
    "no-token": ('[users.alice]\npublish = ["a"]\n', "alice", "needs a non-empty token"),
    "empty-token": ('[users.alice]\ntoken = ""\n', "alice", "needs a non-empty token"),
    "token-not-a-string": ("[users.alice]\ntoken = 12345\n", "alice", "needs a non-empty token"),
    "token-env-unset": (
        '[users.alice]\ntoken_env = "GREENBUS_TEST_UNSET_TOKEN"\n',
        "alice",
        "GREENBUS_TEST_UNSET_TOKEN",
    ),
    "publish-not-a-list": (
        '[users.alice]\ntoken = "tok-1"\npublish = "a.>"\n',
        "alice",
        "publish: must be a list",
    ),
    "subscribe-not-strings": (
        '[users.alice]\ntoken = "tok-1"\nsubscribe = ["a", 1]\n',
        "alice",
        "subscribe: must be a list",
    ),
    "publish-bad-pattern": (
        '[users.alice]\ntoken = "tok-1"\npublish = ["a..b"]\n',
        "alice",
        "empty token",
    ),
    "subscribe-gt-not-last": (
        '[users.alice]\ntoken = "tok-1"\nsubscribe = ["a.>.b"]\n',
        "alice",
        "'>' must be the last token",
    ),
    "subscribe-wildcard-in-token": (
        '[users.alice]\ntoken = "tok-1"\nsubscribe = ["room*"]\n',
        "alice",
        "wildcard inside token",
    ),
    "token-shared": (
        '[users.alice]\ntoken = "tok-1"\n[users.bob]\ntoken = "tok-1"\n',
        "bob",
        "token shared with another user",
    ),
}


def suffix_of(case: str) -> str:
    return ".json" if case.startswith(("json", "not-json")) else ".toml"


@pytest.mark.parametrize(("contents", "user", "problem"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_acl_file_raises_acl_error_naming_the_file_the_user_and_the_problem(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    contents: str,
    user: str | None,
    problem: str,
) -> None:
    monkeypatch.delenv("GREENBUS_TEST_UNSET_TOKEN", raising=False)
    case = request.node.callspec.id
    path = tmp_path / f"users-{case}{suffix_of(case)}"
    path.write_text(contents, encoding="utf-8")
    with pytest.raises(AclError) as info:
        Acl.load(path)
    message = str(info.value)
    assert str(path) in message
    if user is not None:
        assert repr(user) in message
    assert problem in message
    assert "tok-1" not in message  # never the token itself


@pytest.mark.parametrize(
    ("name", "contents"),
    [("missing.toml", None), ("latin1.toml", b'[users.a]\ntoken = "caf\xe9"\n')],
    ids=["missing-file", "not-utf-8"],
)
def test_an_unreadable_acl_file_raises_acl_error_naming_the_file(
    tmp_path: Path, name: str, contents: bytes | None
) -> None:
    path = tmp_path / name
    if contents is not None:
        path.write_bytes(contents)
    with pytest.raises(AclError, match=str(path)):
        Acl.load(path)


def test_acl_error_is_a_greenbus_error_and_a_value_error() -> None:
    assert issubclass(AclError, GreenbusError)
    assert issubclass(AclError, ValueError)


def test_an_acl_refuses_an_empty_token_and_a_token_shared_by_two_users() -> None:
    with pytest.raises(AclError, match="user 'a': empty token"):
        Acl([("", Permissions("a", (), ()))])
    with pytest.raises(AclError, match="user 'b': token shared with another user"):
        Acl([("t", Permissions("a", (), ())), ("t", Permissions("b", (), ()))])


# -- authenticate -----------------------------------------------------------------------------

USERS = [(f"token-of-user-{n}", Permissions(f"user{n}", (f"u{n}.>",), ())) for n in range(5)]


@pytest.fixture
def acl() -> Acl:
    return Acl(USERS)


def test_authenticate_returns_the_permissions_of_the_user_whose_token_it_is(acl: Acl) -> None:
    for token, perms in USERS:
        assert acl.authenticate(token) is perms


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "token-of-user-",
        "token-of-user-00",
        "token-of-user-0 ",
        " token-of-user-0",
        "TOKEN-OF-USER-0",
        "token-of-user-0\x00",
        "token-of-user-5",
        "tökén",
    ],
)
def test_authenticate_returns_none_for_a_wrong_or_empty_token(acl: Acl, token: str | None) -> None:
    assert acl.authenticate(token) is None


@given(st.text())
def test_authenticate_returns_a_user_only_for_exactly_that_users_token(token: str) -> None:
    acl = Acl(USERS)
    expected = dict(USERS).get(token)
    assert acl.authenticate(token) is expected


def test_authenticate_returns_none_for_a_token_that_has_no_utf8_encoding(acl: Acl) -> None:
    # A lone surrogate is a str that cannot be encoded: still just a wrong token.
    assert acl.authenticate("token-of-user-0\ud800") is None


@pytest.mark.parametrize(
    "token", ["token-of-user-0", "token-of-user-4", "nobody's", ""], ids=["first", "last", "no", ""]
)
def test_authenticate_compares_against_every_users_token_with_compare_digest(
    acl: Acl, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    # Constant time: as many comparisons, all with hmac.compare_digest, whoever
    # the token belongs to (if anyone), so timing tells neither.
    import greenbus.acl as acl_module

    compared: list[bytes] = []
    real = acl_module.hmac.compare_digest

    def counting(presented: bytes, expected: bytes) -> bool:
        compared.append(expected)
        return real(presented, expected)

    monkeypatch.setattr(acl_module.hmac, "compare_digest", counting)
    acl.authenticate(token)
    assert compared == [t.encode() for t, _ in USERS]


def test_single_token_is_one_default_user_allowed_everything() -> None:
    acl = Acl.single_token("only")
    assert acl.users == ["default"]
    assert acl.authenticate("only") is ALLOW_ALL
    assert acl.authenticate("other") is None


# -- what is shown -------------------------------------------------------------------------------


def test_the_repr_of_an_acl_names_its_users_and_never_shows_a_token(acl: Acl) -> None:
    shown = [repr(acl), str(acl), repr(acl.users), *(repr(p) for _, p in USERS)]
    assert "user0" in shown[0]
    for token, _ in USERS:
        assert all(token not in text for text in shown), token


def test_the_repr_of_a_hub_with_an_acl_never_shows_a_token() -> None:
    bus = greenbus.Bus("repr")
    try:
        hub = greenbus.HubServer(bus, acl=Acl(USERS), token="shared-secret")
        shown = repr(hub) + repr(hub.acl)
    finally:
        bus.close(timeout=1)
    assert "user0" in shown
    for token in ["shared-secret", *(t for t, _ in USERS)]:
        assert token not in shown, token


# -- InboxOwners: whose inbox is whose ---------------------------------------------------------


def test_is_inbox_is_true_for_exact_inbox_topics_only() -> None:
    assert is_inbox("_INBOX.9f2c.1")
    assert is_inbox("_INBOX.9f2c")
    assert not is_inbox("_INBOX.>")
    assert not is_inbox("_INBOX.*.1")
    assert not is_inbox("svc.echo")
    assert not is_inbox("_INBOX")


def test_the_first_subscriber_of_an_inbox_owns_it_and_nobody_else_may_subscribe() -> None:
    owners = InboxOwners()
    assert owners.claim("_INBOX.a", "p1")
    assert not owners.claim("_INBOX.a", "p2")
    assert owners.claim("_INBOX.a", "p1")  # its own second subscription
    assert owners.owner("_INBOX.a") == "p1"


def test_an_inbox_is_free_again_once_its_owners_last_subscription_ends() -> None:
    owners = InboxOwners()
    owners.claim("_INBOX.a", "p1")
    owners.claim("_INBOX.a", "p1")
    owners.release("_INBOX.a", "p2")  # not the owner's: no effect
    owners.release("_INBOX.a", "p1")
    assert not owners.claim("_INBOX.a", "p2")
    owners.release("_INBOX.a", "p1")
    assert owners.owner("_INBOX.a") is None
    assert len(owners) == 0
    assert owners.claim("_INBOX.a", "p2")


def test_inboxes_under_a_reserved_prefix_are_never_given_to_a_peer() -> None:
    owners = InboxOwners(["_INBOX.hubbus"])
    assert not owners.claim("_INBOX.hubbus.5e1f", "p1")
    assert owners.claim("_INBOX.hubbusx.1", "p1")  # another prefix that merely starts alike
    owners.reserve("_INBOX.other")
    assert not owners.claim("_INBOX.other.1", "p2")


# -- end to end: greenbus serve --acl ------------------------------------------------------------

E2E_ACL = """\
[users.gateway]
token = "tok-gateway"
publish = ["sensors.>"]
subscribe = []

[users.dashboard]
token_env = "GREENBUS_TEST_DASHBOARD_TOKEN"
publish = ["commands.*", "svc.*"]
subscribe = ["sensors.>", "$greenbus.stats"]

[users.service]
token = "tok-service"
publish = []
subscribe = ["svc.*"]

[users.admin]
token = "tok-admin"
publish = [">"]
subscribe = [">"]
"""

DASHBOARD_TOKEN = "tok-dashboard"

#: Turns off the hub's $greenbus.stats feed (a publisher every ``>`` watcher sees).
NO_STATS = ("--stats-interval", "0")


@pytest.fixture
def acl_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_factory: Callable[..., HubProcess]
) -> HubProcess:
    """A hub process serving the four users of E2E_ACL.

    Its $greenbus.stats feed is off: watchers of ``>`` see only what the
    test sends (the feed has tests of its own, below).
    """
    path = tmp_path / "users.toml"
    path.write_text(E2E_ACL, encoding="utf-8")
    monkeypatch.setenv("GREENBUS_TEST_DASHBOARD_TOKEN", DASHBOARD_TOKEN)
    return hub_factory("--acl", str(path), *NO_STATS)


@contextlib.contextmanager
def login(url: str, token: str, name: str) -> Iterator[ClientConnection]:
    """A sync client that said hello with ``token`` and was welcomed."""
    with client(url) as ws:
        welcome = ask(ws, op="hello", protocol=1, token=token, name=name, id="hello")
        assert welcome["op"] == "welcome", welcome
        yield ws


def test_every_acl_user_is_welcomed_with_its_own_token_and_a_wrong_one_is_closed_1008(
    acl_hub: HubProcess,
) -> None:
    for token in ("tok-gateway", DASHBOARD_TOKEN, "tok-service", "tok-admin"):
        with login(acl_hub.url, token, "ok"):
            pass
    with client(acl_hub.url) as ws:
        send(ws, op="hello", protocol=1, token="tok-nobody", id=1)
        frames, closed = until_closed(ws)
    assert [(f["code"], f["id"]) for f in frames] == [("unauthorized", 1)]
    assert closed == (1008, "unauthorized")


def test_a_forbidden_pub_is_answered_forbidden_and_reaches_no_subscriber(
    acl_hub: HubProcess,
) -> None:
    with (
        login(acl_hub.url, "tok-admin", "watcher") as watcher,
        login(acl_hub.url, "tok-gateway", "gateway") as gateway,
    ):
        assert ask(watcher, op="sub", sid="all", topic=">", id=1) == {"op": "ack", "id": 1}
        error = ask(gateway, op="pub", topic="commands.reboot", data="x", id=2)
        assert error == {
            "op": "error",
            "code": "forbidden",
            "reason": "user 'gateway' may not publish to 'commands.reboot'",
            "id": 2,
        }
        # The connection stays open, and its allowed messages go through.
        assert ask(gateway, op="pub", topic="sensors.room1.temp", data=21, id=3)["op"] == "ack"
        # One routing order: had the forbidden pub been delivered, it would come first.
        assert recv(watcher) == {
            "op": "msg",
            "sid": "all",
            "topic": "sensors.room1.temp",
            "data": 21,
        }
        assert ask(watcher, op="ping", id="end") == {"op": "pong", "id": "end"}
    samples = acl_hub.metrics()
    assert samples["greenbus_messages_in_total"] == 1
    assert samples["greenbus_messages_out_total"] == 1


#: Subscriptions that no allowed pattern of the user covers: (token, pattern).
UNCOVERED = [
    ("tok-gateway", "sensors.>"),  # subscribe = []
    (DASHBOARD_TOKEN, ">"),
    (DASHBOARD_TOKEN, "sensors"),
    (DASHBOARD_TOKEN, "*.room1.temp"),
    (DASHBOARD_TOKEN, "commands.reboot"),  # may publish there, not subscribe
    (DASHBOARD_TOKEN, "$greenbus.>"),
    ("tok-service", "svc.>"),  # svc.* does not cover svc.>
    ("tok-service", "_INBOX.>"),
    ("tok-service", "_INBOX.*.1"),
]


def test_a_sub_that_no_allowed_pattern_covers_is_answered_forbidden_and_not_held(
    acl_hub: HubProcess,
) -> None:
    for token, pattern in UNCOVERED:
        with login(acl_hub.url, token, "restricted") as ws:
            error = ask(ws, op="sub", sid="s", topic=pattern, id=1)
            assert (error["op"], error["code"], error["id"]) == ("error", "forbidden", 1), pattern
            assert repr(pattern) in error["reason"]
            # Refused, so the sid is still free and no subscription is held.
            assert ask(ws, op="unsub", sid="s", id=2)["code"] == "unknown_sid"
            assert acl_hub.metrics()["greenbus_remote_subscriptions"] == 0


#: Subscriptions of the dashboard user its patterns cover: (pattern, a topic it matches).
COVERED = [
    ("sensors.>", "sensors.room1.temp"),
    ("sensors.*", "sensors.room1"),
    ("sensors.*.temp", "sensors.room1.temp"),
    ("sensors.room1.temp", "sensors.room1.temp"),
    ("$greenbus.stats", "$greenbus.stats"),
]


def test_a_sub_covered_by_an_allowed_pattern_is_acknowledged_and_receives(
    acl_hub: HubProcess,
) -> None:
    with (
        login(acl_hub.url, DASHBOARD_TOKEN, "dashboard") as dashboard,
        login(acl_hub.url, "tok-admin", "publisher") as publisher,
    ):
        for sid, (pattern, topic) in enumerate(COVERED):
            assert ask(dashboard, op="sub", sid=sid, topic=pattern, id=sid) == {
                "op": "ack",
                "id": sid,
            }
            assert ask(publisher, op="pub", topic=topic, data=sid, id=0)["op"] == "ack"
            assert recv(dashboard) == {"op": "msg", "sid": sid, "topic": topic, "data": sid}
            assert ask(dashboard, op="unsub", sid=sid, id=sid)["op"] == "ack"


def test_any_user_may_publish_to_an_inbox_and_subscribe_to_an_exact_inbox(
    acl_hub: HubProcess,
) -> None:
    # gateway may subscribe to nothing, service may publish nothing: replies still work.
    with (
        login(acl_hub.url, "tok-gateway", "requester") as requester,
        login(acl_hub.url, "tok-service", "responder") as responder,
    ):
        inbox = "_INBOX.9b1d6f2e4c3a.1"
        assert ask(requester, op="sub", sid="r", topic=inbox, id=1) == {"op": "ack", "id": 1}
        assert ask(responder, op="pub", topic=inbox, data="reply", id=2) == {"op": "ack", "id": 2}
        assert recv(requester) == {"op": "msg", "sid": "r", "topic": inbox, "data": "reply"}


def test_two_restricted_users_complete_a_request_and_reply_through_the_acl_hub(
    acl_hub: HubProcess, remote_bus: Callable[..., RemoteBus]
) -> None:
    # The requester may publish svc.* but subscribe to no inbox pattern; the
    # responder may subscribe to svc.* and publish nothing but replies.
    responder = remote_bus(acl_hub.url, token="tok-service", name="responder")
    responder.on("svc.upper", lambda msg: msg.reply(msg.data.upper()))
    in_step_as(responder)
    requester = remote_bus(acl_hub.url, token=DASHBOARD_TOKEN, name="requester")
    assert requester.request("svc.upper", "quiet", timeout=5).data == "QUIET"
    jobs = [gevent.spawn(requester.request, "svc.upper", f"r{n}", timeout=5) for n in range(10)]
    assert [job.get(timeout=10).data for job in jobs] == [f"R{n}" for n in range(10)]
    assert requester.statistics().hub_errors == 0
    assert responder.statistics().hub_errors == 0


def in_step_as(remote: RemoteBus) -> None:
    """:func:`hubclient.in_step` for a restricted user: the probe is an exact inbox."""
    probe = f"_INBOX.probe{id(remote):x}"
    with remote.subscribe(probe, maxsize=None) as sub:
        remote.emit(probe)
        sub.get(timeout=5)


def test_a_peer_subscribed_to_everything_never_receives_another_peers_replies(
    acl_hub: HubProcess, remote_bus: Callable[..., RemoteBus]
) -> None:
    responder = remote_bus(acl_hub.url, token="tok-service", name="responder")
    responder.on("svc.echo", lambda msg: msg.reply({"echo": msg.data}))
    in_step_as(responder)
    requester = remote_bus(acl_hub.url, token=DASHBOARD_TOKEN, name="requester")
    with RawClient(acl_hub.url) as snoop:
        snoop.send_json(op="hello", protocol=1, token="tok-admin", name="snoop", id=0)
        assert snoop.recv_json()["op"] == "welcome"
        for sid, pattern in enumerate([">", "_INBOX.>", "_INBOX.*", "*.>"]):
            snoop.send_json(op="sub", sid=sid, topic=pattern, id=sid + 1)
            assert snoop.recv_json() == {"op": "ack", "id": sid + 1}
        reply = requester.request("svc.echo", "private", timeout=5)
        assert reply.data == {"echo": "private"}
        # The reply was routed before this marker: the snoop, which shares the
        # hub's one routing order, would have it before the marker.
        snoop.send_json(op="pub", topic="marker.end", data="end")
        seen = []
        while (frame := snoop.recv_json())["topic"] != "marker.end":
            seen.append(frame)
    assert {f["topic"] for f in seen} == {"svc.echo"}, seen
    assert all(f["reply_to"].startswith("_INBOX.") for f in seen)  # it saw the request
    assert not any(f["topic"].startswith("_INBOX.") for f in seen)


@pytest.mark.parametrize("hub_process", [NO_STATS], indirect=True, ids=["no-stats"])
def test_inboxes_stay_private_on_an_anonymous_hub_too(
    hub_process: HubProcess, remote_bus: Callable[..., RemoteBus]
) -> None:
    responder = remote_bus(hub_process.url, name="responder")
    responder.on("svc.echo", lambda msg: msg.reply(msg.data))
    in_step(responder)
    requester = remote_bus(hub_process.url, name="requester")
    with RawClient(hub_process.url) as snoop:
        snoop.send_json(op="sub", sid="all", topic=">", id=1)
        assert snoop.recv_json() == {"op": "ack", "id": 1}
        assert requester.request("svc.echo", 7, timeout=5).data == 7
        snoop.send_json(op="pub", topic="marker", data="end")
        topics = []
        while (frame := snoop.recv_json())["topic"] != "marker":
            topics.append(frame["topic"])
    assert topics == ["svc.echo"]


def test_a_responder_cannot_read_the_replies_to_the_requesters_later_requests(
    acl_hub: HubProcess, remote_bus: Callable[..., RemoteBus]
) -> None:
    # The service user answers svc.*: each request shows it one inbox of the
    # requester.  Exact inbox subscriptions are allowed to everyone, so the
    # names of the requester's later inboxes must not follow from that one.
    seen: list[str] = []

    def answer(msg: Any) -> None:
        seen.append(msg.reply_to)
        msg.reply("ok")

    service = remote_bus(acl_hub.url, token="tok-service", name="curious-service")
    service.on("svc.echo", answer)
    in_step_as(service)
    admin = remote_bus(acl_hub.url, token="tok-admin", name="admin")
    admin.on("commands.status", lambda msg: msg.reply("the secret status"))
    in_step(admin)
    dashboard = remote_bus(acl_hub.url, token=DASHBOARD_TOKEN, name="dashboard")
    assert dashboard.request("svc.echo", 1, timeout=5).data == "ok"
    # The obvious guesses from what the responder saw: a counter after it,
    # or the same name again.
    prefix, last = seen[0].rsplit(".", 1)
    following = [f"{prefix}.{int(last) + k}" for k in (1, 2, 3)] if last.isdigit() else []
    guesses = [service.subscribe(name, maxsize=None) for name in [seen[0], *following]]
    in_step_as(service)  # the guesses are in place
    assert dashboard.request("commands.status", timeout=5).data == "the secret status"
    in_step_as(service)  # anything routed to the service before now has arrived
    # A guess the hub refused (the inbox was still the requester's) ends
    # with forbidden; the others hold nothing.
    refused = [sub for sub in guesses if sub.error is not None]
    assert all(sub.error.code == "forbidden" for sub in refused)  # type: ignore[union-attr]
    overheard = [data for sub in guesses if sub.error is None for data in drain(sub)]
    assert overheard == [], f"inbox {seen[0]!r} let another user read a later reply"


STATS_ACL = """\
[users.requester]
token = "tok-requester"
publish = ["svc.*"]

[users.responder]
token = "tok-responder"
subscribe = ["svc.*"]

[users.watcher]
token = "tok-watcher"
subscribe = ["$greenbus.stats"]
"""


def test_the_stats_feed_never_names_a_request_inbox(
    tmp_path: Path, hub_factory: Callable[..., HubProcess], remote_bus: Callable[..., RemoteBus]
) -> None:
    # Any user allowed $greenbus.stats (a dashboard) would otherwise learn
    # inbox names, and may subscribe to any exact inbox.
    path = tmp_path / "users.toml"
    path.write_text(STATS_ACL, encoding="utf-8")
    hub = hub_factory("--acl", str(path), "--stats-interval", "0.05")
    documents: list[str] = []
    watcher = remote_bus(hub.url, token="tok-watcher", name="watcher")
    watcher.subscribe("$greenbus.stats", lambda msg: documents.append(json.dumps(msg.data)))
    wait_until(lambda: documents, 5, "a first stats document")

    def answer(msg: Any) -> None:
        # Published while the request is pending: its inbox is subscribed now.
        published = len(documents)
        wait_until(lambda: len(documents) >= published + 2, 5, "stats during the request")
        msg.reply("ok")

    responder = remote_bus(hub.url, token="tok-responder", name="responder")
    responder.on("svc.slow", answer)
    requester = remote_bus(hub.url, token="tok-requester", name="requester")
    wait_until(lambda: '"requester"' in documents[-1], 5, "the requester in the stats")
    assert requester.request("svc.slow", timeout=10).data == "ok"
    answered = len(documents)
    wait_until(lambda: len(documents) >= answered + 2, 5, "stats after the reply")
    leaked = [d for d in documents if "_INBOX." in d]
    assert not leaked, (
        f"{len(leaked)} of {len(documents)} stats documents name an inbox: "
        + re.search(r".{60}_INBOX\.[^\"]*", leaked[0]).group()  # type: ignore[union-attr]
    )


def test_a_forbidden_sub_counts_as_a_protocol_error_towards_max_errors(
    acl_hub: HubProcess,
) -> None:
    with login(acl_hub.url, "tok-gateway", "gateway") as ws:
        for n in range(20):
            assert ask(ws, op="sub", sid=n, topic="x", id=n)["code"] == "forbidden"
        send(ws, op="pub", topic="commands.x", id="last")
        frames, closed = until_closed(ws)
    assert [(f["code"], f["id"]) for f in frames] == [("forbidden", "last")]
    assert closed == (1008, "too many protocol errors (21)")
    metric_eventually(acl_hub, "greenbus_connections", lambda v: v == 0)


def test_a_shared_token_given_with_an_acl_is_a_user_allowed_everything(
    tmp_path: Path, hub_factory: Callable[..., HubProcess]
) -> None:
    path = tmp_path / "users.toml"
    path.write_text('[users.reader]\ntoken = "tok-reader"\nsubscribe = ["news.>"]\n')
    hub = hub_factory("--acl", str(path), "--token", "tok-shared")
    with login(hub.url, "tok-shared", "operator") as operator:
        assert ask(operator, op="sub", sid=1, topic=">", id=1) == {"op": "ack", "id": 1}
        assert ask(operator, op="pub", topic="anything.at.all", id=2)["op"] == "msg"
    with login(hub.url, "tok-reader", "reader") as reader:
        assert ask(reader, op="sub", sid=1, topic=">", id=1)["code"] == "forbidden"


@pytest.mark.parametrize(
    "case", ["unknown-key", "token-env-unset", "subscribe-gt-not-last", "token-shared"]
)
def test_greenbus_serve_with_a_malformed_acl_stops_at_start_naming_file_user_and_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.delenv("GREENBUS_TEST_UNSET_TOKEN", raising=False)
    contents, user, problem = MALFORMED[case]
    path = tmp_path / f"users-{case}.toml"
    path.write_text(contents, encoding="utf-8")
    proc = run_child([sys.executable, "-m", "greenbus", "serve", "--port", "0", "--acl", str(path)])
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert b"listening" not in proc.stdout
    last = err.strip().splitlines()[-1]
    assert last.startswith("greenbus serve: "), err  # one line, no traceback
    assert str(path) in last
    assert repr(user) in last
    assert problem in last
    assert "tok-1" not in err


def spy_on_a_request(url: str, requester_token: str | None, responder_token: str | None) -> None:
    """A requester asks ``svc.echo``; the responder, which sees its reply_to,
    subscribes to that inbox exactly.  It must be refused and see no reply."""

    def hello(raw: RawClient, token: str | None, name: str) -> None:
        if token is not None:
            raw.send_json(op="hello", protocol=1, token=token, name=name, id="hi")
            assert raw.recv_json()["op"] == "welcome"

    with RawClient(url) as requester, RawClient(url) as responder:
        hello(requester, requester_token, "requester")
        hello(responder, responder_token, "responder")
        responder.send_json(op="sub", sid="svc", topic="svc.*", id=1)
        assert responder.recv_json() == {"op": "ack", "id": 1}
        inbox = "_INBOX.5d0c9a6f3e2b41c7a8f0e6d2b9c4a1f3"
        requester.send_json(op="sub", sid="inbox", topic=inbox, id=1)
        assert requester.recv_json() == {"op": "ack", "id": 1}
        requester.send_json(op="pub", topic="svc.echo", data="secret", reply_to=inbox, id=2)
        assert requester.recv_json() == {"op": "ack", "id": 2}
        request = responder.recv_json()
        assert request["reply_to"] == inbox
        # The spy: an exact subscription to the requester's inbox.
        responder.send_json(op="sub", sid="spy", topic=inbox, id="spy")
        refusal = responder.recv_json()
        assert refusal["op"] == "error"
        assert (refusal["code"], refusal["id"]) == ("forbidden", "spy")
        assert "belongs to another requester" in refusal["reason"]
        # Its reply still reaches the requester, and only the requester: the
        # pong comes after anything routed to the responder before it.
        responder.send_json(op="pub", topic=inbox, data="answer", id=3)
        responder.send_json(op="ping", id="end")
        assert responder.recv_json() == {"op": "ack", "id": 3}
        assert responder.recv_json() == {"op": "pong", "id": "end"}
        assert requester.recv_json() == {
            "op": "msg",
            "sid": "inbox",
            "topic": inbox,
            "data": "answer",
        }


def test_a_user_that_learns_another_users_inbox_is_forbidden_to_subscribe_to_it(
    acl_hub: HubProcess,
) -> None:
    spy_on_a_request(acl_hub.url, DASHBOARD_TOKEN, "tok-service")


def test_on_an_admin_every_pattern_is_allowed_but_another_users_inbox_is_not(
    acl_hub: HubProcess,
) -> None:
    spy_on_a_request(acl_hub.url, DASHBOARD_TOKEN, "tok-admin")


@pytest.mark.parametrize("hub_process", [NO_STATS], indirect=True, ids=["no-stats"])
def test_on_an_anonymous_hub_a_peer_may_not_subscribe_to_another_peers_inbox(
    hub_process: HubProcess,
) -> None:
    spy_on_a_request(hub_process.url, None, None)


def test_an_inbox_of_the_hubs_own_bus_is_never_given_to_a_peer(
    local_hub: Callable[..., greenbus.HubServer],
) -> None:
    hub = local_hub()
    with RawClient(hub.url) as responder:
        responder.send_json(op="sub", sid="svc", topic="svc.*", id=1)
        assert responder.recv_json() == {"op": "ack", "id": 1}
        asking = gevent.spawn(hub.bus.request, "svc.time", timeout=5)
        request = responder.recv_json()
        inbox = request["reply_to"]
        assert inbox.startswith(hub.bus.inbox_prefix + ".")
        responder.send_json(op="sub", sid="spy", topic=inbox, id="spy")
        refusal = responder.recv_json()
        assert (refusal["op"], refusal["code"], refusal["id"]) == ("error", "forbidden", "spy")
        responder.send_json(op="pub", topic=inbox, data="noon")
        responder.send_json(op="ping", id="end")
        assert responder.recv_json() == {"op": "pong", "id": "end"}  # no copy of the reply
        assert asking.get(timeout=5).data == "noon"


def test_a_requesters_inbox_is_free_again_after_it_disconnects(
    local_hub: Callable[..., greenbus.HubServer],
) -> None:
    hub = local_hub()
    inbox = "_INBOX.0f4e2d7c9b1a46e38d5c2b7a9e0f1d63"
    with RawClient(hub.url) as first:
        first.send_json(op="sub", sid=1, topic=inbox, id=1)
        assert first.recv_json() == {"op": "ack", "id": 1}
        assert hub.inboxes.owner(inbox) is not None
    wait_until(lambda: not hub.peers, 5, "the first peer to leave")
    assert hub.inboxes.owner(inbox) is None
    with RawClient(hub.url) as second:
        second.send_json(op="sub", sid=1, topic=inbox, id=1)
        assert second.recv_json() == {"op": "ack", "id": 1}
