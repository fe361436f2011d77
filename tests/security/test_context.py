"""SessionContext: validation, canonical injective encoding, pair ordering."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.context import SessionContext
from security.errors import InvalidMessage

ids = st.text(min_size=1, max_size=6)


@settings(max_examples=50, deadline=None)
@given(a=st.tuples(ids, st.integers(0, 3), ids, ids), b=st.tuples(ids, st.integers(0, 3), ids, ids))
def test_encoding_is_injective(a: tuple[str, int, str, str], b: tuple[str, int, str, str]) -> None:
    # Prepare / Execute
    ea, eb = SessionContext(*a).to_bytes(), SessionContext(*b).to_bytes()
    # Assert
    assert (ea == eb) == (a == b)


def test_concatenation_ambiguity_is_impossible() -> None:
    # Prepare / Execute / Assert: ("ab", "c") and ("a", "bc") must not collide
    assert SessionContext("f", 1, "ab", "c").to_bytes() != SessionContext("f", 1, "a", "bc").to_bytes()


def test_pair_is_order_independent() -> None:
    # Prepare / Execute
    one, two = SessionContext.pair("f", 3, "site-b", "site-a"), SessionContext.pair("f", 3, "site-a", "site-b")
    # Assert
    assert one == two and (one.sender, one.recipient) == ("site-a", "site-b")
    with pytest.raises(InvalidMessage):
        SessionContext.pair("f", 3, "x", "x")


@pytest.mark.parametrize("args", [("", 1, "a", "b"), ("f", -1, "a", "b"), ("f", True, "a", "b"),
                                  ("f", 2**64, "a", "b"), ("f", 1, "", "b"), ("f", 1, "a", "x" * 256)])
def test_invalid_fields_raise(args: tuple) -> None:  # type: ignore[type-arg]
    # Execute / Assert
    with pytest.raises(InvalidMessage):
        SessionContext(*args)


def test_context_is_frozen() -> None:
    # Prepare
    ctx = SessionContext("f", 1, "a", "b")
    # Execute / Assert
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.round = 2  # type: ignore[misc]
