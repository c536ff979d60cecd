"""greenbus._options: one rule for every argument check."""

from __future__ import annotations

import math

import pytest

from greenbus import InvalidOption
from greenbus._options import check_int, check_seconds, check_timeout, check_type


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "3", None])
def test_check_int_refuses_what_is_not_an_int_at_least_the_minimum(value: object) -> None:
    with pytest.raises(InvalidOption) as caught:
        check_int("max_things", value)
    assert caught.value.name == "max_things"
    assert "an int >= 1" in str(caught.value)


def test_check_int_takes_none_only_when_optional_and_honours_the_minimum() -> None:
    assert check_int("n", None, optional=True) is None
    assert check_int("n", 0, 0) == 0
    assert check_int("n", 64, 64) == 64


@pytest.mark.parametrize("value", [0, -0.5, math.nan, math.inf, True, "1", None])
def test_check_seconds_refuses_zero_negatives_nan_infinity_and_non_numbers(value: object) -> None:
    with pytest.raises(InvalidOption) as caught:
        check_seconds("close_timeout", value)
    assert caught.value.name == "close_timeout"


def test_check_seconds_takes_zero_with_zero_and_none_when_optional() -> None:
    assert check_seconds("t", 0, zero=True) == 0.0
    assert check_seconds("t", None, optional=True) is None
    assert check_seconds("t", 2) == 2.0


def test_check_timeout_is_seconds_at_least_zero_or_none() -> None:
    check_timeout(None)
    check_timeout(0)
    with pytest.raises(InvalidOption, match="invalid timeout='x'"):
        check_timeout("x")
    with pytest.raises(InvalidOption):
        check_timeout(None, optional=False)


def test_check_type_names_what_it_expected() -> None:
    assert check_type("token", "t", str, "a string") == "t"
    with pytest.raises(InvalidOption, match="expected a string"):
        check_type("token", 5, str, "a string")
