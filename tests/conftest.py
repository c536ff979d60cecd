"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import greenbus

# -- buses (tests/test_bus.py, tests/test_ordering.py) ------------------------


@pytest.fixture
def bus(request: pytest.FixtureRequest) -> Iterator[greenbus.Bus]:
    """A fresh bus named after the test, closed afterwards."""
    b = greenbus.Bus(request.node.name)
    yield b
    # A timeout, so a test that leaves a handler stuck cannot hang the run.
    b.close(timeout=5)


@pytest.fixture
def default_bus() -> Iterator[greenbus.Bus]:
    """The module-level default bus; whichever is current is closed afterwards."""
    yield greenbus.default_bus()
    greenbus.default_bus().close(timeout=5)
