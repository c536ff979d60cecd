"""greenbus.federation.interest: each node's view of who wants what (pure, no Redis).

The scripts that keep the registry in Redis are tested against a real
redis-server in test_registry.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from greenbus.federation.interest import MAX_PENDING, InterestView


def note(v: int, node: str, **fields: Any) -> bytes:
    """A notification as REGISTER_SCRIPT publishes it."""
    return json.dumps({"v": v, "n": node, "a": [], "d": [], "x": [], **fields}).encode()


def live(node: str = "me", reply: list[Any] | None = None, **options: Any) -> InterestView:
    view = InterestView(node, **options)
    view.load(reply if reply is not None else [0])
    view.live = True
    return view


def test_a_view_that_is_not_live_wants_everything() -> None:
    view = InterestView("me")
    assert view.wants("any.topic")
    view.load([3, b"other", 1, b"a.b"])
    assert view.wants("c.d")  # loaded, but the reader is not there: cannot tell
    view.live = True
    assert not view.wants("c.d") and view.wants("a.b")


def test_a_load_holds_every_other_nodes_patterns_and_leaves_its_own_out() -> None:
    view = live(reply=[9, b"n2", 2, b"s.*", b"t.x", b"me", 1, b"mine.x", b"n3", 0])
    assert view.version == 9
    assert view.nodes() == {"n2": ["s.*", "t.x"]}
    assert view.wants("s.q") and view.wants("t.x")
    assert not view.wants("mine.x") and not view.wants("s.q.r")


def test_notifications_add_remove_reset_and_drop_dead_nodes_in_version_order() -> None:
    view = live(reply=[1, b"n2", 1, b"a.>"])
    assert view.apply(note(2, "n3", a=["b.*"]))
    assert view.apply(note(3, "n2", a=["c.x"], d=["a.>"]))
    assert view.nodes() == {"n2": ["c.x"], "n3": ["b.*"]}
    assert not view.wants("a.q") and view.wants("b.q") and view.wants("c.x")
    assert view.apply(note(4, "n3", r=True, a=["d.x"]))  # registered again: replaces
    assert view.nodes() == {"n2": ["c.x"], "n3": ["d.x"]}
    assert view.apply(note(5, "n4", x=["n2"]))  # n4's heartbeat found n2 dead
    assert view.nodes() == {"n3": ["d.x"]}
    assert not view.wants("c.x")
    assert view.apply(note(6, "n3", r=True))  # n3 left
    assert view.nodes() == {} and view.version == 6


def test_a_notification_the_view_already_has_is_ignored() -> None:
    view = live(reply=[5, b"n2", 1, b"a.x"])
    assert view.apply(note(5, "n2", d=["a.x"]))
    assert view.wants("a.x") and view.version == 5


def test_a_missed_version_asks_for_a_new_load_but_is_applied_meanwhile() -> None:
    view = live(reply=[5])
    assert not view.apply(note(7, "n2", a=["a.x"]))
    assert view.wants("a.x") and view.version == 7


def test_notifications_heard_during_a_load_are_applied_after_it_if_newer() -> None:
    view = InterestView("me")
    assert view.apply(note(4, "n2", a=["old.x"]))  # the load covers it
    assert view.apply(note(6, "n2", a=["new.x"]))
    view.load([5, b"n2", 1, b"old.x"])
    view.live = True
    assert view.nodes() == {"n2": ["new.x", "old.x"]}
    assert view.version == 6


def test_pending_notifications_are_bounded() -> None:
    view = InterestView("me")
    for v in range(MAX_PENDING + 10):
        view.apply(note(v + 1, "n2", a=[f"t.{v}"]))
    view.load([0])
    view.live = True
    assert len(view.nodes()["n2"]) == MAX_PENDING


def test_with_count_own_this_nodes_patterns_count_as_interest() -> None:
    own = live(count_own=True)
    plain = live()
    for view in (own, plain):
        view.hold("mine.*")
    assert own.wants("mine.x") and not plain.wants("mine.x")
    own.release("mine.*")
    assert not own.wants("mine.x")


def test_a_change_is_seen_by_the_next_wants_though_the_answer_was_cached() -> None:
    view = live(reply=[1])
    assert not view.wants("late.x")
    view.apply(note(2, "n2", a=["late.*"]))
    assert view.wants("late.x")
    view.apply(note(3, "n2", d=["late.*"]))
    assert not view.wants("late.x")


@pytest.mark.parametrize("raw", [b"not json", b'{"n": "x"}', b'{"v": "many"}', b"[1]"])
def test_an_unreadable_notification_asks_for_a_new_load(raw: bytes) -> None:
    view = live(reply=[1, b"n2", 1, b"a.x"])
    assert not view.apply(raw)
    assert view.wants("a.x") and view.version == 1


def test_a_pattern_that_is_not_a_greenbus_pattern_is_skipped() -> None:
    view = live(reply=[1, b"n2", 2, b"bad..pattern", b"ok.x"])
    assert view.nodes() == {"n2": ["ok.x"]}


def test_the_listener_hears_first_and_last_holders_and_liveness() -> None:
    heard: list[tuple[str | None, bool]] = []
    view = InterestView("me")
    view.listener = lambda pattern, present: heard.append((pattern, present))
    view.load([1, b"n2", 1, b"a.*", b"n3", 1, b"a.*"])
    view.live = True
    view.apply(note(2, "n2", d=["a.*"]))  # n3 still wants it
    view.apply(note(3, "n3", r=True))  # n3 left: nobody wants a.*
    view.live = False
    assert heard == [("a.*", True), (None, False), ("a.*", False), (None, True)]
