"""Argument checks shared by every public call: one rule, one exception.

Internal.  Each function returns the value if it is acceptable and raises
:class:`~greenbus.InvalidOption` naming the argument otherwise, so a bus, a
hub, a client and their limits all refuse the same mistakes with the same
words, before anything is started or changed.  ``bool`` is never taken for a
number.
"""

from __future__ import annotations

import math
from typing import Literal, TypeVar, overload

from .exceptions import InvalidOption

__all__ = ["check_int", "check_seconds", "check_type", "check_timeout"]

T = TypeVar("T")


@overload
def check_int(
    name: str, value: object, minimum: int = ..., *, optional: Literal[False] = ...
) -> int: ...


@overload
def check_int(name: str, value: object, minimum: int = ..., *, optional: bool) -> int | None: ...


def check_int(name: str, value: object, minimum: int = 1, *, optional: bool = False) -> int | None:
    """An int >= ``minimum`` (or None, if ``optional``).

    Raises:
        InvalidOption: anything else.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"an int >= {minimum}" + (", or None" if optional else "")
        raise InvalidOption(name, value, expected)
    return value


@overload
def check_seconds(
    name: str, value: object, *, zero: bool = ..., optional: Literal[False] = ...
) -> float: ...


@overload
def check_seconds(
    name: str, value: object, *, zero: bool = ..., optional: bool
) -> float | None: ...


def check_seconds(
    name: str, value: object, *, zero: bool = False, optional: bool = False
) -> float | None:
    """A finite number of seconds, > 0 (>= 0 with ``zero``), or None if ``optional``.

    Raises:
        InvalidOption: anything else (NaN and infinity included).
    """
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        expected = f"a number of seconds {'>=' if zero else '>'} 0"
        raise InvalidOption(name, value, expected + (", or None" if optional else ""))
    return float(value)


def check_timeout(timeout: object, *, optional: bool = True) -> None:
    """A ``timeout`` argument: seconds >= 0, or None (if ``optional``).

    Raises:
        InvalidOption: naming ``timeout``.
    """
    check_seconds("timeout", timeout, zero=True, optional=optional)


def check_type(name: str, value: T, kind: type | tuple[type, ...], expected: str) -> T:
    """``value`` if it is an instance of ``kind``.

    Raises:
        InvalidOption: with ``expected`` saying what it must be.
    """
    if not isinstance(value, kind):
        raise InvalidOption(name, value, expected)
    return value
