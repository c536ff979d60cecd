"""Hypothesis strategies for JSON values, shared by the protocol and fuzz tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["json_scalars", "json_values"]


def json_scalars(*, max_text: int) -> st.SearchStrategy[Any]:
    """null, booleans, integers, finite floats and strings of up to ``max_text`` characters."""
    return (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=max_text)
    )


def json_values(
    scalars: st.SearchStrategy[Any], *, max_key: int, max_leaves: int
) -> st.SearchStrategy[Any]:
    """``scalars``, and lists and objects (keys of up to ``max_key`` characters) of them,
    up to four items each and ``max_leaves`` scalars in all."""
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=max_key), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )
