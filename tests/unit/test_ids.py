"""Deterministic ids: output events and deliveries keep the ids of their first attempt across releases."""

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.ids import NAMESPACE, deterministic_id


def test_ids_are_the_ones_earlier_releases_gave() -> None:
    assert deterministic_id("/crm", "e-1", "mail", "t", "a@b.c") == "8d0f564e-2bdd-590e-8c43-0ea9b5661e8b"
    assert deterministic_id("é", "") == "3a328360-9da4-5ee8-bdf3-feecb9ba886c"


@given(st.lists(st.text(), max_size=6))
def test_an_id_is_the_uuid5_of_its_parts_joined_unambiguously(parts: list[str]) -> None:
    name = "\x1f".join(f"{len(p)}:{p}" for p in parts)
    try:
        expected = str(uuid.uuid5(NAMESPACE, name))
    except UnicodeEncodeError:  # a lone surrogate: no id for what UTF-8 cannot carry, either way
        with pytest.raises(UnicodeEncodeError):
            deterministic_id(*parts)
        return
    assert deterministic_id(*parts) == expected
