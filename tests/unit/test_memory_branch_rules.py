"""The branch rules of memory (issue 10): when a memory is hidden, what erasing messages does to it."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.memory.domain import all_sources_hidden, erase_effect

ids = st.lists(st.sampled_from(["m1", "m2", "m3", "m4"]), max_size=4)


def test_a_memory_is_hidden_only_when_it_has_sources_and_all_are_hidden() -> None:
    assert all_sources_hidden(["m1", "m2"], {"m1", "m2", "m9"})
    assert not all_sources_hidden(["m1", "m2"], {"m1"})
    assert not all_sources_hidden([], {"m1"})  # an imported memory without sources is never hidden


def test_erasing_deletes_a_memory_whose_every_source_is_erased_and_strips_the_others() -> None:
    assert erase_effect(["m1"], {"m1"}) == "delete"
    assert erase_effect(["m1", "m1"], {"m1", "m2"}) == "delete"
    assert erase_effect(["m1", "m2"], {"m1"}) == "strip"
    assert erase_effect(["m2"], {"m1"}) == "keep"
    assert erase_effect([], {"m1"}) == "keep"


@given(ids, st.sets(st.sampled_from(["m1", "m2", "m3", "m4"])))
def test_a_stripped_memory_keeps_a_source_and_a_deleted_one_keeps_none(sources: list[str], erased: set[str]) -> None:
    remaining = [s for s in sources if s not in erased]
    effect = erase_effect(sources, erased)
    assert (effect == "delete") == (bool(sources) and not remaining)
    assert (effect == "keep") == (remaining == sources)
