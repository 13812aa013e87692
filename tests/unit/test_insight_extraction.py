"""Unit tests for services.insight.extraction, the offline rule-based extractor (spec: insight.md)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services.insight.domain import FieldUpdate, merge_profile, training_level
from services.insight.extraction import CORRECTION_CONFIDENCE, RULE_CONFIDENCE, extract_profile_updates


def extracted(text: str) -> dict[str, object]:
    """{field: value} with a "!" suffix on the field name for corrections."""
    return {u.field + ("!" if u.correction else ""): u.value for u in extract_profile_updates(text, "m1")}


POSITIVE = [
    ("I'm a nurse in Lisbon", {"occupation": "nurse", "city": "Lisbon"}),
    ("I work as a graphic designer.", {"occupation": "graphic designer"}),
    ("I'm a software engineer", {"occupation": "software engineer"}),
    ("I work as a nurse at a hospital in Lisbon", {"occupation": "nurse", "city": "Lisbon"}),
    ("i'm a teacher in porto", {"occupation": "teacher", "city": "Porto"}),
    ("I'm a developer in fintech", {"occupation": "developer"}),
    ("I live in lisbon now", {"city": "Lisbon"}),
    ("I'm based in new york city", {"city": "New York City"}),
    ("I live in Lisbon, Portugal", {"city": "Lisbon", "location": "Lisbon, Portugal"}),
    ("I live in Portugal", {"location": "Portugal"}),
    ("I moved to Berlin last year", {"city!": "Berlin"}),
    ("Actually, I moved to lisbon!", {"city!": "Lisbon"}),
    ("I don't live in Lisbon anymore, I live in Porto", {"city!": "Porto"}),
    ("Actually I'm a teacher now", {"occupation!": "teacher"}),
    ("I'm from Porto", {"hometown": "Porto"}),
    ("I grew up in rio de janeiro", {"hometown": "Rio de Janeiro"}),
    ("I'm Portuguese and I live in Lisbon", {"nationality": "Portuguese", "city": "Lisbon"}),
    ("I love hiking, jazz and cooking", {"interests": ("hiking", "jazz", "cooking")}),
    ("I really like reading and playing guitar a lot", {"interests": ("reading", "playing guitar")}),
    ("I'm really into photography", {"interests": ("photography",)}),
    ("I'm a big fan of Taylor Swift", {"interests": ("Taylor Swift",)}),
    ("I'm an INFJ", {"mbti_guess": "INFJ"}),
    ("my mbti is enfp-t", {"mbti_guess": "ENFP"}),
    ("I'm a night owl", {"life_rhythm": "night owl"}),
    ("I'm definitely a morning person", {"life_rhythm": "early bird"}),
    ("I'm shy and a bit introverted", {"personality_traits": ("shy", "introverted")}),
    ("honestly i'm an introvert", {"personality_traits": ("introverted",)}),
    ("I want someone who makes me laugh", {"love_values": "someone who makes me laugh"}),
    ("I value honesty and loyalty", {"love_values": "honesty, loyalty"}),
    ("I need someone who listens", {"emotional_needs": "someone who listens"}),
    ("I need a lot of reassurance", {"emotional_needs": "a lot of reassurance"}),
    ("my deal breaker is smoking", {"matching_preferences": {"deal_breakers": ["smoking"]}}),
    ("Lying is a total dealbreaker for me", {"matching_preferences": {"deal_breakers": ["Lying"]}}),
    (
        "I'm looking for a woman between 25 and 35",
        {"matching_preferences": {"preferred_gender": "female", "age_range": [25, 35]}},
    ),
    ("I'm into guys", {"matching_preferences": {"preferred_gender": "male"}}),
    ("I live in Lisbon, what about you?", {"city": "Lisbon"}),
    ("Where do you live? I live in Lisbon.", {"city": "Lisbon"}),
    (
        "Hi! I'm a teacher, I live in Berlin and I'm into chess and climbing. My deal breakers are smoking and lying",
        {
            "occupation": "teacher",
            "city": "Berlin",
            "interests": ("chess", "climbing"),
            "matching_preferences": {"deal_breakers": ["smoking", "lying"]},
        },
    ),
]

NEGATIVE = [
    "you live in Paris",
    "are you a nurse?",
    "Are you an INFJ?",
    "You're such a night owl",
    "my sister lives in Rome",
    "he works as a chef",
    "My girlfriend is a nurse in Lisbon",
    "Do you live in Lisbon?",
    "do you love jazz",
    "What do you like?",
    "I love you",
    "I love talking to you",
    "I like it when you call me",
    "I love my sister",
    "If I lived in Paris I'd be happy",
    "I wish I was a doctor",
    "When I'm a doctor I will buy a boat",
    "I used to live in Berlin",
    "I don't live in Lisbon",
    "I'm not shy",
    "I'm not a morning person",
    "I'm a bit tired today",
    "I'm learning Japanese",
    "I live in the city",
    "I want to live in Paris",
    "Is smoking a deal breaker for you?",
    "",
]


@pytest.mark.parametrize(("text", "expected"), POSITIVE)
def test_self_statements_are_extracted(text: str, expected: dict[str, object]) -> None:
    assert extracted(text) == expected


@pytest.mark.parametrize("text", NEGATIVE)
def test_persona_third_person_questions_and_negations_produce_nothing(text: str) -> None:
    assert extract_profile_updates(text, "m1") == []


def test_confidence_sources_and_evidence() -> None:
    updates = extract_profile_updates("Actually I moved to Porto. I'm an ENTP. I love chess.", "msg-42")
    by_field = {u.field: u for u in updates}
    assert by_field["city"] == FieldUpdate("city", "Porto", CORRECTION_CONFIDENCE, ("msg-42",), True)
    assert by_field["mbti_guess"].confidence == RULE_CONFIDENCE == 0.6
    assert by_field["mbti_guess"].evidence and "ENTP" in by_field["mbti_guess"].evidence
    assert CORRECTION_CONFIDENCE == 0.9
    assert by_field["interests"] == FieldUpdate("interests", ("chess",), 0.6, ("msg-42",))


def test_one_update_per_field_and_no_list_corrections() -> None:
    updates = extract_profile_updates("Actually I love jazz. I also enjoy chess and Jazz.", "m1")
    assert updates == [FieldUpdate("interests", ("chess", "jazz"), 0.6, ("m1",))]  # most recent mention last


def test_extraction_feeds_merge_and_a_correction_wins() -> None:
    now = datetime(2025, 3, 1, tzinfo=timezone.utc)
    profile = merge_profile({}, extract_profile_updates("I'm a nurse in Porto and I love surfing", "m1"), now)
    profile = merge_profile(profile, extract_profile_updates("I live in Faro", "m2"), now)  # same confidence: replaces
    assert profile["city"]["value"] == "Faro"
    profile = merge_profile(profile, [FieldUpdate("city", "Braga", 0.95, ("llm",))], now)
    profile = merge_profile(profile, extract_profile_updates("I live in Faro", "m3"), now)  # 0.6 < 0.95: kept
    assert profile["city"]["value"] == "Braga"
    profile = merge_profile(profile, extract_profile_updates("actually I moved to Lisbon", "m4"), now)
    assert profile["city"]["value"] == "Lisbon" and profile["city"]["sources"] == ["m4"]
    assert profile["interests"]["value"] == ["surfing"]
    assert training_level(profile) == 0.05 + 0.05 + 0.10
