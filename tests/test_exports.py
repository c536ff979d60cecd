"""Tests for greenbus's public surface: ``__all__``, the error tree, ``py.typed``."""

from __future__ import annotations

import importlib.resources
import inspect
import types
from pathlib import Path

import pytest

import greenbus
import greenbus.compat
import greenbus.exceptions
from greenbus import GreenbusError, InvalidTopic, RequestTimeout


def public_attributes(module: types.ModuleType) -> set[str]:
    """Names in ``dir(module)`` that are neither private nor submodules."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
    }


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class that greenbus or greenbus.exceptions exposes or defines."""
    found: dict[str, type[BaseException]] = {}
    for module in (greenbus, greenbus.exceptions):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                if obj.__module__.startswith("greenbus"):
                    found[name] = obj
    return found


def test_every_name_in_all_exists() -> None:
    missing = [name for name in greenbus.__all__ if not hasattr(greenbus, name)]

    assert missing == []


def test_all_lists_each_name_once() -> None:
    assert len(greenbus.__all__) == len(set(greenbus.__all__))


def test_every_public_attribute_is_listed_in_all() -> None:
    unlisted = sorted(public_attributes(greenbus) - set(greenbus.__all__))

    assert unlisted == [], f"public in greenbus but missing from __all__: {unlisted}"


def test_compat_exports_only_the_event_emitter() -> None:
    assert greenbus.compat.__all__ == ["EventEmitter"]
    assert inspect.isclass(greenbus.compat.EventEmitter)


def test_every_exception_module_name_is_exported_from_the_package() -> None:
    assert set(greenbus.exceptions.__all__) <= set(greenbus.__all__)
    assert set(exception_classes()) == set(greenbus.exceptions.__all__)


@pytest.mark.parametrize("name", sorted(greenbus.exceptions.__all__))
def test_every_exception_is_a_greenbus_error(name: str) -> None:
    assert issubclass(getattr(greenbus, name), GreenbusError)


def test_invalid_topic_is_a_value_error() -> None:
    assert issubclass(InvalidTopic, ValueError)
    with pytest.raises(ValueError):
        greenbus.validate_topic("a..b")


def test_request_timeout_is_a_timeout_error() -> None:
    assert issubclass(RequestTimeout, TimeoutError)
    assert isinstance(RequestTimeout("math.double", 0.5), TimeoutError)


def test_py_typed_ships_in_the_package_directory() -> None:
    package_dir = Path(greenbus.__file__).parent

    assert (package_dir / "py.typed").is_file()
    assert importlib.resources.files("greenbus").joinpath("py.typed").is_file()
