"""greenbus._attrs: read-only attributes in one line."""

from __future__ import annotations

import pytest

from greenbus._attrs import readonly


class Inner:
    def __init__(self) -> None:
        self.count = 3


class Thing:
    __slots__ = ("_state", "inner")

    state = readonly[str]("_state", "What it is doing.")
    count = readonly[int]("inner.count")

    def __init__(self) -> None:
        self._state = "idle"
        self.inner = Inner()


def test_it_reads_the_attribute_or_the_dotted_path_of_each_instance() -> None:
    thing = Thing()
    assert (thing.state, thing.count) == ("idle", 3)
    thing._state = "busy"
    thing.inner.count = 4
    assert (thing.state, thing.count) == ("busy", 4)


def test_it_refuses_to_be_set_as_a_property_without_a_setter_does() -> None:
    with pytest.raises(AttributeError, match="state is read-only"):
        Thing().state = "x"  # type: ignore[misc]


def test_on_the_class_it_is_the_descriptor_with_its_doc() -> None:
    assert isinstance(Thing.state, readonly)
    assert Thing.state.doc == "What it is doing."
