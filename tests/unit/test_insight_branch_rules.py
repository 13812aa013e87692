"""The branch rules of the profile (issue 10): which fields a branch sees, what erasing messages does."""
from __future__ import annotations

from services.insight.domain import (
    FieldUpdate,
    erase_sources,
    hidden_fields,
    profile_sources,
    visible_profile,
    without_erased_sources,
)

PROFILE = {
    "city": {"value": "Lisbon", "sources": ["m1"], "confidence": 0.6, "updated_at": "2025-05-04T10:30:00+00:00"},
    "interests": {"value": ["jazz", "chess"], "sources": ["m1", "m2"], "confidence": 0.6,
                  "updated_at": "2025-05-04T10:30:00+00:00"},
    "occupation": {"value": "nurse", "sources": [], "confidence": 0.6, "updated_at": "2025-05-04T10:30:00+00:00"},
}


def test_a_field_is_hidden_when_all_its_sources_are_and_a_field_without_sources_never_is() -> None:
    assert profile_sources(PROFILE) == {"m1", "m2"}
    assert hidden_fields(PROFILE, {"m1"}) == ["city"]
    assert hidden_fields(PROFILE, {"m1", "m2"}) == ["city", "interests"]
    assert set(visible_profile(PROFILE, {"m1", "m2"})) == {"occupation"}
    assert visible_profile(PROFILE, set()) == PROFILE


def test_erasing_removes_fields_sourced_only_by_erased_messages_and_strips_the_others() -> None:
    erasure = erase_sources(PROFILE, {"m1"})
    assert erasure.removed == ["city"] and erasure.updated == ["interests"]
    assert erasure.profile["interests"]["sources"] == ["m2"]
    assert erasure.profile["interests"]["value"] == ["jazz", "chess"]
    assert erasure.profile["occupation"] == PROFILE["occupation"]
    assert PROFILE["interests"]["sources"] == ["m1", "m2"]  # the input is not changed
    untouched = erase_sources(PROFILE, {"m9"})
    assert untouched.removed == untouched.updated == [] and untouched.profile == PROFILE


def test_updates_citing_only_erased_messages_are_dropped() -> None:
    updates = [FieldUpdate("city", "Porto", 0.6, ("m1",)), FieldUpdate("interests", ["jazz"], 0.6, ("m1", "m2")),
               FieldUpdate("occupation", "nurse", 0.6, ())]
    kept = without_erased_sources(updates, {"m1"})
    assert [(u.field, u.source_message_ids) for u in kept] == [("interests", ("m2",)), ("occupation", ())]
