"""Pure memory domain (spec: memory.md): extraction, importance, RRF, selection, scopes, summaries,
distillation."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.memory.domain import (
    CATEGORIES,
    MEMORY_SCOPES,
    CandidateMemory,
    ExtractionFormatError,
    MemoryScope,
    MemoryScopeError,
    ScoredMemory,
    blend_scores,
    distill_transcript,
    extract_self_statements,
    extractive_summary,
    group_by_layer_and_category,
    importance_score,
    moment_from_user_message,
    normalize_for_dedup,
    parse_extraction,
    parse_memory_scope,
    prune_cross_layer_duplicates,
    reciprocal_rank_fusion,
    select_profile,
    select_relationship,
    split_sentences,
    summary_window,
)

# --------------------------------------------------------------------------- candidates and text


def test_candidate_memory_validates_its_fields() -> None:
    assert CandidateMemory("User lives in Lisbon", "fact", 0.7, "profile").layer == "profile"
    for bad in (
        ("  ", "fact", 0.5, "profile"),
        ("x", "gossip", 0.5, "profile"),
        ("x", "fact", 1.5, "profile"),
        ("x", "fact", 0.5, "global"),
    ):
        with pytest.raises(ValueError):
            CandidateMemory(*bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("I live in Lisbon. My sister is Ana!", ["I live in Lisbon.", "My sister is Ana!"]),
        ("Dr. Smith said hi. It cost 3.5 euros?! Yes", ["Dr. Smith said hi.", "It cost 3.5 euros?!", "Yes"]),
        ("I read J. K. Rowling, e.g. Harry Potter. Fun", ["I read J. K. Rowling, e.g. Harry Potter.", "Fun"]),
        ("first line\nsecond line… third", ["first line", "second line…", "third"]),
        ('She said "stop." Then left.', ['She said "stop."', "Then left."]),
        ("I said no. Then I left.", ["I said no.", "Then I left."]),
        ("   ", []),
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_normalize_for_dedup_casefolds_strips_punctuation_and_collapses_whitespace() -> None:
    assert normalize_for_dedup("  User's  sister is   called ANA!! ") == "user s sister is called ana"
    assert normalize_for_dedup("User lives in Lisbon.") == normalize_for_dedup("user lives in lisbon")


# --------------------------------------------------------------------------- self-statement extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I live in Lisbon.", [("User lives in Lisbon", "fact")]),
        ("I work as a nurse, which is exhausting.", [("User works as a nurse", "fact")]),
        ("I'm a software engineer at Google", [("User is a software engineer at Google", "fact")]),
        ("My sister is called Ana!", [("User's sister is called Ana", "relation")]),
        ("my sister's name is Ana", [("User's sister is called Ana", "relation")]),
        ("my dog is called Rex", [("User's dog is called Rex", "relation")]),
        ("I have a cat named Miso", [("User has a cat named Miso", "relation")]),
        ("I love hiking", [("User loves hiking", "preference")]),
        ("I really love walking my dog.", [("User really loves walking their dog", "preference")]),
        ("I hate waking up early because it's dark", [("User hates waking up early", "preference")]),
        ("I don't like horror movies", [("User doesn't like horror movies", "preference")]),
        ("My favourite food is sushi", [("User's favourite food is sushi", "preference")]),
        ("I'm allergic to peanuts.", [("User is allergic to peanuts", "fact")]),
        ("I cannot eat gluten", [("User can't eat gluten", "fact")]),
        ("I'm vegan", [("User is vegan", "fact")]),
        ("I am 34 years old", [("User is 34 years old", "fact")]),
        ("My birthday is on 3 May.", [("User's birthday is on 3 May", "event")]),
        ("My name is Joana", [("User's name is Joana", "fact")]),
        ("I just got a new job!", [("User just got a new job", "event")]),
        ("I'm scared of spiders", [("User is scared of spiders", "emotion")]),
        ("I feel lonely lately", [("User feels lonely lately", "emotion")]),
        (
            "Well, I live in Porto and I work as a teacher; my brother is called Rui.",
            [
                ("User lives in Porto", "fact"),
                ("User works as a teacher", "fact"),
                ("User's brother is called Rui", "relation"),
            ],
        ),
        ("I live in Lisbon, what about you?", [("User lives in Lisbon", "fact")]),
        ("I live in Lisbon. I live in Lisbon!", [("User lives in Lisbon", "fact")]),
    ],
)
def test_extract_self_statements_finds_profile_facts(text: str, expected: list[tuple[str, str]]) -> None:
    found = extract_self_statements(text)
    assert [(c.content, c.category) for c in found] == expected
    assert all(c.layer == "profile" and 0 < c.importance <= 1 for c in found)


@pytest.mark.parametrize(
    "text",
    [
        "You live in Lisbon.",  # about the persona
        "I love you",
        "I hate it when you forget things",
        "Do you know where I live?",  # questions
        "Where do I work, do you remember?",
        "I live in Lisbon?",
        "I don't live in Lisbon anymore",  # negation
        "I'm not a nurse",
        "I'm a bit tired today",  # a state, not an identity
        "I like it",  # bare pronoun object
        "Dr. Smith says I should rest",  # reported, not a self-statement
        "The weather is nice",
        "",
    ],
)
def test_extract_self_statements_ignores_persona_statements_questions_and_negations(text: str) -> None:
    assert extract_self_statements(text) == []


def test_extracted_importance_ranks_constraints_above_preferences() -> None:
    allergy, preference = extract_self_statements("I'm allergic to shellfish. I like jazz.")
    assert allergy.importance == 0.9 and preference.importance == 0.6


# --------------------------------------------------------------------------- importance


def test_importance_score_concrete_values() -> None:
    assert importance_score("") == 0.0
    assert importance_score("ok") == pytest.approx(0.1 + 0.15 / 40, abs=1e-4)
    # emotion: 1 word + 1 intensifier + 1 "!" = 0.75; 9 words; self-disclosure
    assert importance_score("I'm so scared, my cat is at the vet!") == pytest.approx(
        0.1 + 0.35 * 0.75 + 0.15 * 9 / 40 + 0.15, abs=1e-4
    )
    explicit = importance_score("Please remember this, it's important")
    assert explicit == pytest.approx(0.1 + 0.15 * 5 / 40 + 0.25, abs=1e-4)


def test_importance_score_orders_small_talk_below_disclosure_below_explicit_emotional_disclosure() -> None:
    small_talk = importance_score("nice weather")
    disclosure = importance_score("I moved to Lisbon last year")
    heavy = importance_score("Please remember: my dad died last week and I'm so sad!")
    assert small_talk < disclosure < heavy
    assert heavy >= 0.8


@given(st.text(max_size=400))
def test_importance_score_is_always_in_unit_interval(text: str) -> None:
    assert 0.0 <= importance_score(text) <= 1.0


def test_moment_from_user_message_keeps_the_user_text_in_the_relationship_layer() -> None:
    moment = moment_from_user_message("  I finally   finished my thesis!\n")
    assert moment == CandidateMemory(
        "I finally finished my thesis!", "moment", importance_score("I finally finished my thesis!"), "relationship"
    )
    with pytest.raises(ValueError):
        moment_from_user_message("   ")


# --------------------------------------------------------------------------- RRF and blending


def test_reciprocal_rank_fusion_known_example() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)
    assert list(fused) == ["a", "c", "b"]
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)


def test_reciprocal_rank_fusion_weights_and_repeats() -> None:
    fused = reciprocal_rank_fusion([["a", "b"], ["b", "a", "b"]], k=0, weights=[2.0, 1.0])
    assert fused == {"a": pytest.approx(2 / 1 + 1 / 2), "b": pytest.approx(2 / 2 + 1 / 1)}
    assert list(fused) == ["a", "b"]
    assert reciprocal_rank_fusion([]) == {}
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 1.0])
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], k=-1)


rankings_strategy = st.lists(
    st.lists(st.sampled_from("abcdefgh"), unique=True, min_size=2, max_size=8), min_size=1, max_size=4
)


@given(rankings=rankings_strategy, which=st.integers(0, 3), position=st.integers(1, 7), k=st.integers(0, 100))
def test_reciprocal_rank_fusion_is_monotone_in_rank(
    rankings: list[list[str]], which: int, position: int, k: int
) -> None:
    """Moving an item up one place in any ranking never lowers its score nor raises the one it passed."""
    ranking = rankings[which % len(rankings)]
    position = 1 + (position - 1) % (len(ranking) - 1)
    promoted, demoted = ranking[position], ranking[position - 1]
    before = reciprocal_rank_fusion(rankings, k=k)
    ranking[position - 1], ranking[position] = promoted, demoted
    after = reciprocal_rank_fusion(rankings, k=k)
    assert after[promoted] > before[promoted]
    assert after[demoted] < before[demoted]


@given(st.lists(st.integers(), unique=True, min_size=1, max_size=30), st.integers(0, 100))
def test_reciprocal_rank_fusion_of_one_ranking_keeps_its_order(ranking: list[int], k: int) -> None:
    fused = reciprocal_rank_fusion([ranking], k=k)
    assert list(fused) == ranking
    scores = list(fused.values())
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False))


def test_blend_scores() -> None:
    assert blend_scores(0.03, recency_days=400, importance=0.9) == 0.03  # weights default to 0
    assert blend_scores(0.02, recency_days=30, importance=0.5, recency_weight=1.0, importance_weight=0.4) == (
        pytest.approx(0.02 * (1 + 0.5 + 0.2))
    )
    assert blend_scores(0.02, recency_days=-5, importance=2.0, recency_weight=1.0, importance_weight=1.0) == (
        pytest.approx(0.02 * 3)  # future dates count as now; importance clamps to 1
    )
    fresh = blend_scores(0.02, recency_days=1, importance=0.5, recency_weight=0.5)
    stale = blend_scores(0.02, recency_days=90, importance=0.5, recency_weight=0.5)
    assert fresh > stale
    with pytest.raises(ValueError):
        blend_scores(0.02, 1, 0.5, recency_weight=-1)


# --------------------------------------------------------------------------- selection


def scored(id: str, category: str, score: float, content: str | None = None, layer: str = "profile") -> ScoredMemory:
    return ScoredMemory(
        id=id, layer=layer, category=category, content=content or f"memory {id}",  # type: ignore[arg-type]
        score=score, vector_score=None, text_rank=None, importance=0.5,
        occurred_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def test_select_profile_takes_top_four_plus_two_per_category() -> None:
    candidates = [
        scored("f1", "fact", 0.99), scored("f2", "fact", 0.98), scored("f3", "fact", 0.97),
        scored("f4", "fact", 0.96), scored("f5", "fact", 0.95),
        scored("p1", "preference", 0.50), scored("p2", "preference", 0.40), scored("p3", "preference", 0.30),
        scored("r1", "relation", 0.10),
    ]
    assert [m.id for m in select_profile(candidates)] == ["f1", "f2", "f3", "f4", "p1", "p2", "r1"]
    assert [m.id for m in select_profile(candidates, top=1, per_category=1)] == ["f1", "p1", "r1"]


def test_select_profile_drops_duplicate_ids_and_contents() -> None:
    candidates = [
        scored("a", "fact", 0.9, "User lives in Lisbon"),
        scored("a", "fact", 0.9, "User lives in Lisbon"),
        scored("b", "fact", 0.8, "user lives in Lisbon."),
        scored("c", "preference", 0.7),
    ]
    assert [m.id for m in select_profile(candidates)] == ["a", "c"]


def test_select_relationship_takes_the_top_three() -> None:
    candidates = [scored(str(i), "moment", i / 10, layer="relationship") for i in range(6)]
    assert [m.id for m in select_relationship(candidates)] == ["5", "4", "3"]
    assert select_relationship([]) == []


def test_prune_cross_layer_duplicates_keeps_the_profile_copy() -> None:
    profile = [scored("p", "fact", 0.5, "User loves hiking")]
    relationship = [
        scored("r1", "moment", 0.9, "user loves hiking!", layer="relationship"),
        scored("r2", "moment", 0.8, "We planned a hike", layer="relationship"),
    ]
    kept_profile, kept_relationship = prune_cross_layer_duplicates(profile, relationship)
    assert [m.id for m in kept_profile] == ["p"]
    assert [m.id for m in kept_relationship] == ["r2"]


def test_group_by_layer_and_category_orders_best_first() -> None:
    items = [
        scored("p1", "fact", 0.2), scored("p2", "fact", 0.9), scored("p3", "preference", 0.5),
        scored("r1", "moment", 0.3, layer="relationship"),
    ]
    grouped = group_by_layer_and_category(items)
    assert {layer: {c: [m.id for m in ms] for c, ms in cats.items()} for layer, cats in grouped.items()} == {
        "profile": {"fact": ["p2", "p1"], "preference": ["p3"]},
        "relationship": {"moment": ["r1"]},
    }


# --------------------------------------------------------------------------- memory scope


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("full", MemoryScope("full", True, True, True, "full")),
        ("neutral_and_relationship", MemoryScope("neutral_and_relationship", True, True, True, "neutral")),
        ("relationship_only", MemoryScope("relationship_only", False, True, False, None)),
        # neutral_only: neutral insights and no memories at all (this copy had profile memories on; issue 9 fixed it)
        ("neutral_only", MemoryScope("neutral_only", False, False, True, "neutral")),
        ("insights_only", MemoryScope("insights_only", False, False, True, "full")),
        ("none", MemoryScope("none", False, False, False, None)),
        (None, MemoryScope("neutral_and_relationship", True, True, True, "neutral")),
        ("", MemoryScope("neutral_and_relationship", True, True, True, "neutral")),
        ("  FULL ", MemoryScope("full", True, True, True, "full")),
    ],
)
def test_parse_memory_scope(value: str | None, expected: MemoryScope) -> None:
    assert parse_memory_scope(value) == expected


def test_parse_memory_scope_rejects_unknown_values_listing_the_allowed_ones() -> None:
    with pytest.raises(MemoryScopeError) as raised:
        parse_memory_scope("everything")
    assert isinstance(raised.value, ValueError)
    assert "'everything'" in str(raised.value)
    assert all(name in str(raised.value) for name in MEMORY_SCOPES)


# --------------------------------------------------------------------------- extractive summary

TRANSCRIPT = [
    ("user", "hey there"),
    ("assistant", "Hi! How is your day going so far?"),
    ("user", "Pretty good honestly. I live in Porto and my brother Rui visits me on Sundays."),
    ("assistant", "That sounds lovely. Sundays with family are special."),
    ("system", "The system prompt says many things that must never be summarized here."),
    ("user", "I just got a new job at Siemens in Lisbon! It starts on 3 March."),
    ("assistant", "Congratulations, that is big news. What will you be doing there?"),
    ("user", "Something with robots I think. Should I move to Lisbon or commute every day?"),
]
SOURCE_SENTENCES = {s for role, content in TRANSCRIPT if role != "system" for s in split_sentences(content)}


def summary_sentences(summary: str) -> list[str]:
    sentences = []
    for line in summary.splitlines():
        role, _, text = line.partition(": ")
        assert role in ("User", "Assistant")
        sentences.extend(split_sentences(text))
    return sentences


def test_extractive_summary_prefers_self_disclosure_entities_and_open_questions() -> None:
    assert extractive_summary(TRANSCRIPT, max_chars=300).splitlines() == [
        "User: I live in Porto and my brother Rui visits me on Sundays.",
        "User: I just got a new job at Siemens in Lisbon! It starts on 3 March.",
        "User: Something with robots I think. Should I move to Lisbon or commute every day?",
    ]  # small talk ("Pretty good honestly.", "That sounds lovely.") is left out
    assert extractive_summary(TRANSCRIPT, max_chars=170).splitlines() == [
        "User: I live in Porto and my brother Rui visits me on Sundays.",
        "User: I just got a new job at Siemens in Lisbon!",
        "User: Should I move to Lisbon or commute every day?",
    ]


def test_extractive_summary_keeps_chronological_order_and_skips_other_roles() -> None:
    summary = extractive_summary(TRANSCRIPT, max_chars=5000)
    sentences = summary_sentences(summary)
    order = [s for role, content in TRANSCRIPT if role != "system" for s in split_sentences(content)]
    assert sentences == [s for s in order if s in sentences]
    assert "system prompt" not in summary
    assert "hey there" not in summary  # under three words


@given(st.integers(1, 1500))
def test_extractive_summary_respects_max_chars_and_never_cuts_a_sentence(max_chars: int) -> None:
    summary = extractive_summary(TRANSCRIPT, max_chars=max_chars)
    assert len(summary) <= max_chars
    assert all(sentence in SOURCE_SENTENCES for sentence in summary_sentences(summary))


def test_extractive_summary_is_deterministic_and_rejects_a_non_positive_budget() -> None:
    assert extractive_summary(TRANSCRIPT, 400) == extractive_summary(TRANSCRIPT, 400)
    assert extractive_summary([], 400) == ""
    with pytest.raises(ValueError):
        extractive_summary(TRANSCRIPT, 0)


# --------------------------------------------------------------------------- summary window


@pytest.mark.parametrize(
    ("total", "history", "summarized_until", "expected"),
    [
        (25, 10, 0, None),  # only 15 messages are older than the window: not a full block yet
        (30, 10, 0, range(0, 20)),
        (45, 10, 0, range(0, 20)),
        (45, 10, 20, None),  # already covered
        (50, 10, 20, range(0, 40)),
        (5, 10, 0, None),
    ],
)
def test_summary_window(total: int, history: int, summarized_until: int, expected: range | None) -> None:
    assert summary_window(total, history_window=history, summarized_until=summarized_until) == expected


def test_summary_window_custom_block_size_and_validation() -> None:
    assert summary_window(17, summarize_after=5, history_window=6) == range(0, 10)
    with pytest.raises(ValueError):
        summary_window(10, summarize_after=0, history_window=4)


# --------------------------------------------------------------------------- distillation

DREAM = [
    ("m1", "user", "Hi! I live in Porto and my brother is called Rui."),
    ("m2", "assistant", "Nice to meet you. Porto is lovely."),
    ("m3", "user", "Let's watch Dune together on Friday. Can you recommend a good book about sailing?"),
    ("m4", "assistant", "I'm not sure, let me think about it."),
    ("m5", "user", "I'm upset with you, you forgot my name."),
    ("m6", "assistant", "I'm so sorry. I promise I'll remember it."),
    ("m7", "user", "A penguin walks into a bar"),
    ("m8", "assistant", "And orders an ice breaker?"),
    ("m9", "user", "hahaha"),
    ("m10", "user", "I'll tell you more about my trip later. What is the best time to visit Japan?"),
    ("m11", "assistant", "Spring, for the cherry blossoms."),
    ("m12", "user", "How are you today?"),
]


def test_distill_transcript_finds_profile_facts_and_shared_moments() -> None:
    distilled = [(m.layer, m.category, m.content, ids) for m, ids in distill_transcript(DREAM)]
    assert distilled == [
        ("profile", "fact", "User lives in Porto", ("m1",)),
        ("profile", "relation", "User's brother is called Rui", ("m1",)),
        ("relationship", "moment", 'Plan made together: "Let\'s watch Dune together on Friday."', ("m3",)),
        ("relationship", "thread", 'Open question from User: "Can you recommend a good book about sailing?"', ("m3",)),
        (
            "relationship", "emotion",
            'User was upset with the persona: "I\'m upset with you, you forgot my name."', ("m5",),
        ),
        (
            "relationship", "emotion",
            'Conflict repaired: after "I\'m upset with you, you forgot my name." the persona apologized', ("m5", "m6"),
        ),
        ("relationship", "thread", 'Persona promised: "I promise I\'ll remember it."', ("m6",)),
        ("relationship", "moment", 'Shared a laugh: "A penguin walks into a bar"', ("m7", "m8", "m9")),
        ("relationship", "thread", 'User wants to come back to: "I\'ll tell you more about my trip later."', ("m10",)),
    ]


def test_distill_transcript_answered_questions_and_small_talk_are_not_threads() -> None:
    contents = [m.content for m, _ in distill_transcript(DREAM)]
    assert not any("Japan" in c for c in contents)  # answered without deferral
    assert not any("How are you" in c for c in contents)


def test_distill_transcript_user_apology_repairs_and_duplicates_merge_sources() -> None:
    distilled = distill_transcript([
        ("a", "user", "That was rude."),
        ("b", "assistant", "I hear you."),
        ("c", "user", "Sorry, I was tired. I love hiking."),
        ("d", "user", "I love hiking!"),
        ("e", "user", "Sorry to hear about your day."),
    ])
    assert [(m.category, m.content, ids) for m, ids in distilled] == [
        ("emotion", 'User was upset with the persona: "That was rude."', ("a",)),
        ("preference", "User loves hiking", ("c", "d")),
        ("emotion", 'Conflict repaired: after "That was rude." User apologized', ("a", "c")),
    ]
    assert all(m.category in CATEGORIES and 0 <= m.importance <= 1 for m, _ in distilled)


def test_distill_transcript_of_nothing_is_nothing() -> None:
    assert distill_transcript([]) == []
    assert distill_transcript([("s", "system", "Let's be friends. I live in Rome.")]) == []


def test_importance_is_finite_for_every_distilled_memory() -> None:
    assert all(math.isfinite(m.importance) for m, _ in distill_transcript(DREAM))


# --------------------------------------------------------------------------- LLM extraction output


def test_parse_extraction_accepts_the_strict_contract_and_drops_duplicates() -> None:
    answer = json.dumps({"memories": [
        {"content": "User lives in  Lisbon", "category": "fact", "importance": 0.7, "layer": "profile"},
        {"content": "user lives in lisbon.", "category": "fact", "importance": 0.2, "layer": "profile"},
        {"content": "User and the persona joked about pigeons", "category": "moment", "importance": 1,
         "layer": "relationship"},
    ]})
    assert parse_extraction(answer) == [
        CandidateMemory("User lives in Lisbon", "fact", 0.7, "profile"),
        CandidateMemory("User and the persona joked about pigeons", "moment", 1.0, "relationship"),
    ]
    assert parse_extraction('{"memories": []}') == []


@pytest.mark.parametrize("answer, problem", [
    ("Sure! Here you go", "not JSON"),
    ("[]", "exactly"),
    ('{"memories": [], "extra": 1}', "exactly"),
    ('{"memories": {}}', "exactly"),
    ('{"memories": [{"content": "x", "category": "fact", "importance": 0.5}]}', "must have exactly"),
    ('{"memories": [{"content": " ", "category": "fact", "importance": 0.5, "layer": "profile"}]}', "content"),
    ('{"memories": [{"content": "x", "category": "gossip", "importance": 0.5, "layer": "profile"}]}', "category"),
    ('{"memories": [{"content": "x", "category": "fact", "importance": "high", "layer": "profile"}]}', "importance"),
    ('{"memories": [{"content": "x", "category": "fact", "importance": true, "layer": "profile"}]}', "importance"),
    ('{"memories": [{"content": "x", "category": "fact", "importance": 1.5, "layer": "profile"}]}', "importance"),
    ('{"memories": [{"content": "x", "category": "fact", "importance": 0.5, "layer": "world"}]}', "layer"),
    ('{"memories": [{"content": "x", "category": "fact", "importance": 0.5, "layer": 3}]}', "strings"),
])
def test_parse_extraction_rejects_anything_else_naming_the_problem(answer: str, problem: str) -> None:
    with pytest.raises(ExtractionFormatError, match=problem):
        parse_extraction(answer)


def test_parse_extraction_limits_the_number_and_length_of_memories() -> None:
    item = {"content": "User likes tea", "category": "preference", "importance": 0.5, "layer": "profile"}
    with pytest.raises(ExtractionFormatError, match="at most 12"):
        parse_extraction(json.dumps({"memories": [item] * 13}))
    with pytest.raises(ExtractionFormatError, match="500"):
        parse_extraction(json.dumps({"memories": [{**item, "content": "x" * 501}]}))
