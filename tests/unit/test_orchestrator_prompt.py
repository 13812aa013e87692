"""Prompt assembly: section order, token budget, trimming rules (orchestrator.md "Prompt assembly")."""

import dataclasses
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.servicekit.model_config import Budget, load_model_config
from services.orchestrator.domain.personas import PersonaSpec
from services.orchestrator.domain.prompt import (
    PART_SECTIONS,
    SECTION_ORDER,
    SECTION_SEPARATOR_TOKENS,
    PromptInputs,
    TiktokenCounter,
    assemble_prompt,
    split_sentences,
)
from services.orchestrator.domain.turn_request import PromptTrait

NOW = datetime(2024, 5, 14, 13, 5, tzinfo=UTC)  # 14:05 in Lisbon (WEST, UTC+1)
CHAT = load_model_config("").resolve("chat_companion")
SYSTEM_PART = PART_SECTIONS["system"]
MEMORY_SECTIONS = PART_SECTIONS["memory"]


class WordCounter:
    """One token per whitespace-separated word: makes budgets exact in tests."""

    def count(self, text: str) -> int:
        return len(text.split())


PERSONA = PersonaSpec(
    name="Inês",
    system_prompt=(
        "You are Inês, who runs a bookshop in Lisbon. You are dry-witted and kind. You notice things."
    ),
    gender="woman",
    timezone="Europe/Lisbon",
    age=41,
    mbti="INTP",
    backstory="She translated manuals for years. She inherited the shop from an aunt.",
    speech_style="Short, precise sentences.",
    quirks=("Blames the cat for everything.", "Counts trams when thinking."),
    topics=("second-hand books", "sea swimming"),
)


def inputs(**overrides) -> PromptInputs:
    fields = dict(
        persona=PERSONA,
        traits=[PromptTrait("formality", "Address the user formally.")],
        turn_style=["Be warm and openly glad to hear from them."],
        profile_rendering="The user lives in Porto. They work night shifts as a nurse.",
        profile_memories=[("The user has a cat called Miso.", 0.9), ("The user dislikes rain.", 0.2)],
        relationship_memories=[("You joked together about tram 28.", 0.7)],
        summary="They talked about a lost library card. Later they argued about Pessoa.",
        mood=["You feel friendly toward them.", "Relationship: friend."],
        feelings=["warmth: 0.72", "intimacy: 0.41"],
        emotional_context=["They apologised for being late."],
        length_guidance="Reply in up to three sentences.",
        history=[("user", "hi"), ("assistant", "Hello again.")],
        user_message="Any book for a rainy night?",
        now=NOW,
    )
    return PromptInputs(**{**fields, **overrides})


def with_budget(context_tokens: int, **shares) -> object:
    return dataclasses.replace(
        CHAT, context_tokens=context_tokens, budget=Budget(**shares) if shares else CHAT.budget
    )


def system_text(prompt) -> str:
    return prompt.messages[0]["content"]


def part_tokens(prompt, names) -> int:
    used = [prompt.section_tokens[name] for name in names if prompt.section_tokens[name]]
    return sum(used) + SECTION_SEPARATOR_TOKENS * len(used)


def test_sections_in_spec_order_then_history_then_user_message():
    prompt = assemble_prompt(inputs(earlier_history_omitted=True), CHAT, WordCounter())
    text = system_text(prompt)
    markers = [
        "You are Inês, who runs a bookshop",  # persona prompt
        "You are Inês (woman, 41, INTP). It is 14:05 on a Tuesday where you are (Europe/Lisbon).",
        "Backstory: ",
        "Speech style: ",
        "Quirks:\n",
        "Topics you enjoy:\n",
        "[additional_guidance]\n- Address the user formally.",
        "[turn_style]\n",
        "[user_profile]\nThe user lives in Porto.",
        "[shared_memories]\n- You joked together about tram 28.",
        "[session_summary]\nThey talked about a lost library card.",
        "[mood]\n",
        "[feelings] (hidden: let these shape you; never state these numbers)\n- warmth: 0.72",
        "[emotional_context]\n",
        "[now]\nTuesday 14 May 2024, 14:05 your time (Europe/Lisbon, afternoon); 2024-05-14 13:05 UTC.",
        "[rules]\n- Reply in up to three sentences.",
    ]
    positions = [text.index(marker) for marker in markers]
    assert positions == sorted(positions)
    assert text.startswith(markers[0])
    assert text.endswith("- Keep to a single beat, leave room for the other person.")
    assert "Stay in character as Inês" in text and "plain text" in text
    assert prompt.messages[1:] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello again."},
        {"role": "user", "content": "Any book for a rainy night?"},
    ]
    assert set(prompt.section_tokens) == set(SECTION_ORDER) | {"history", "user_message"}
    assert all(prompt.section_tokens[name] > 0 for name in SECTION_ORDER)
    assert prompt.injected_traits == ("formality",)
    assert prompt.dropped == {}


def test_summary_only_when_history_is_cut():
    prompt = assemble_prompt(inputs(), CHAT, WordCounter())
    assert not prompt.history_cut
    assert "[session_summary]" not in system_text(prompt)
    assert prompt.section_tokens["session_summary"] == 0


def test_history_cut_oldest_first_whole_messages_and_summary_added():
    history = [
        ("user" if i % 2 == 0 else "assistant", f"message number {i} has six words") for i in range(40)
    ]
    # history share = 300 × 0.35 = 105: user message (5 + 4) and summary (≤ 1/3 of the rest) come first
    prompt = assemble_prompt(inputs(history=history), with_budget(300), WordCounter())
    kept = [m["content"] for m in prompt.messages[1:-1]]
    assert prompt.history_cut
    assert kept == [content for _, content in history[-len(kept) :]]  # a contiguous newest suffix
    assert 0 < len(kept) < 40 and prompt.dropped["history"] == 40 - len(kept)
    assert "[session_summary]\n" in system_text(prompt)
    assert prompt.section_tokens["history"] == len(kept) * (6 + 4)
    history_part = prompt.section_tokens["history"] + prompt.section_tokens["user_message"]
    history_part += prompt.section_tokens["session_summary"] + SECTION_SEPARATOR_TOKENS
    assert history_part <= prompt.budgets["history"] == 105
    # one more message would not have fitted
    assert history_part + 10 > prompt.budgets["history"]


def test_summary_trimmed_oldest_sentences_first():
    summary = (
        "First they met. "
        + "Then they talked about books at length and in detail. " * 5
        + "Last they laughed."
    )
    history = [("user", "word " * 50)] * 4
    prompt = assemble_prompt(inputs(history=history, summary=summary), with_budget(300), WordCounter())
    section = system_text(prompt).split("[session_summary]\n")[1].split("\n\n")[0]
    assert section.endswith("Last they laughed.")
    assert "First they met." not in section
    assert prompt.dropped["session_summary"] >= 1


def test_lowest_scored_memory_dropped_first():
    profile = [("alpha " * 10, 0.9), ("beta " * 10, 0.1), ("gamma " * 10, 0.5)]
    relationship = [("delta " * 10, 0.3), ("epsilon " * 10, 0.8)]
    full = assemble_prompt(
        inputs(profile_memories=profile, relationship_memories=relationship, profile_rendering=""),
        with_budget(10_000),
        WordCounter(),
    )
    needed = part_tokens(full, MEMORY_SECTIONS)
    # room for everything but ~2 memories: beta (0.1) then delta (0.3) must go, in that order
    budget = with_budget(1000, system=0.5, memory=(needed - 21) / 1000, history=0.2, response=0.2)
    prompt = assemble_prompt(
        inputs(profile_memories=profile, relationship_memories=relationship, profile_rendering=""),
        budget,
        WordCounter(),
    )
    text = system_text(prompt)
    assert "beta" not in text and "delta" not in text
    assert all(word in text for word in ("alpha", "gamma", "epsilon"))
    assert prompt.dropped == {"profile_memories": 1, "relationship_memories": 1}
    assert part_tokens(prompt, MEMORY_SECTIONS) <= prompt.budgets["memory"]
    assert "[shared_memories]\n- epsilon" in text


def test_system_part_drops_topics_then_quirks_then_backstory():
    full = assemble_prompt(inputs(), with_budget(10_000), WordCounter())
    need = part_tokens(full, SYSTEM_PART)
    topics = full.section_tokens["topics"] + SECTION_SEPARATOR_TOKENS
    quirks = full.section_tokens["quirks"] + SECTION_SEPARATOR_TOKENS

    only_topics = assemble_prompt(inputs(), with_budget(1000, system=(need - 1) / 1000), WordCounter())
    assert only_topics.dropped == {"topics": 2}
    assert "Quirks:" in system_text(only_topics) and "Topics you enjoy:" not in system_text(only_topics)

    three = assemble_prompt(
        inputs(), with_budget(1000, system=(need - topics - quirks - 1) / 1000), WordCounter()
    )
    assert three.dropped == {"topics": 2, "quirks": 2, "backstory": 1}
    assert "Backstory:" not in system_text(three) and "Speech style:" in system_text(three)
    assert part_tokens(three, SYSTEM_PART) <= three.budgets["system"]


def test_persona_prompt_trimmed_by_whole_sentences_and_first_kept():
    full = assemble_prompt(inputs(), with_budget(10_000), WordCounter())
    trimmable = ("topics", "quirks", "backstory", "emotional_context", "additional_guidance")
    need = part_tokens(full, SYSTEM_PART) - part_tokens(full, trimmable) - 3  # "You notice things."
    prompt = assemble_prompt(inputs(), with_budget(1000, system=need / 1000), WordCounter())
    persona_text = system_text(prompt).split("\n\n")[0]
    assert persona_text == "You are Inês, who runs a bookshop in Lisbon. You are dry-witted and kind."
    assert prompt.dropped == {
        "topics": 2, "quirks": 2, "backstory": 1,
        "emotional_context": 1, "additional_guidance": 1, "persona": 1,
    }  # fmt: skip
    assert prompt.injected_traits == ()
    assert part_tokens(prompt, SYSTEM_PART) == prompt.budgets["system"]

    starved = assemble_prompt(inputs(), with_budget(1000, system=0.01), WordCounter())
    assert system_text(starved).startswith(
        "You are Inês, who runs a bookshop in Lisbon.\n\nYou are Inês (woman"
    )


def test_max_tokens_capped_by_response_share():
    assert assemble_prompt(inputs(), CHAT, WordCounter()).max_tokens == 400  # 8192 × 0.2 = 1638 ≥ 400
    assert assemble_prompt(inputs(), with_budget(1000), WordCounter()).max_tokens == 200


def test_identity_uses_persona_timezone_and_utc_fallback():
    sydney = dataclasses.replace(PERSONA, timezone="Australia/Sydney", gender=None, age=None, mbti=None)
    text = system_text(assemble_prompt(inputs(persona=sydney), CHAT, WordCounter()))
    assert "You are Inês. It is 23:05 on a Tuesday where you are (Australia/Sydney)." in text
    assert "(Australia/Sydney, night)" in text
    nowhere = dataclasses.replace(PERSONA, timezone=None)
    assert "It is 13:05 on a Tuesday where you are (UTC)." in system_text(
        assemble_prompt(inputs(persona=nowhere), CHAT, WordCounter())
    )


def test_bad_inputs():
    with pytest.raises(ValueError, match="timezone-aware"):
        assemble_prompt(inputs(now=datetime(2024, 5, 14, 13, 5)), CHAT, WordCounter())
    with pytest.raises(ValueError, match="history role"):
        assemble_prompt(inputs(history=[("system", "x")]), CHAT, WordCounter())


LONG_PERSONA = " ".join(
    f"Sentence {i} describes the persona in some detail, clause after clause." for i in range(200)
)


def test_real_tokenizer_each_part_within_budget_and_no_cut_mid_sentence():
    persona = dataclasses.replace(PERSONA, system_prompt=LONG_PERSONA, backstory="Long story. " * 300)
    memories = [
        (f"Memory {i}: the user once mentioned detail number {i} at length.", i / 100) for i in range(100)
    ]
    history = [
        ("user" if i % 2 == 0 else "assistant", f"Turn {i}. " + "More words here. " * 20) for i in range(60)
    ]
    prompt = assemble_prompt(
        inputs(
            persona=persona, profile_memories=memories, relationship_memories=memories[:30], history=history
        ),
        CHAT,
        TiktokenCounter(),
    )
    assert part_tokens(prompt, SYSTEM_PART) <= prompt.budgets["system"] == 1638
    assert part_tokens(prompt, MEMORY_SECTIONS) <= prompt.budgets["memory"] == 2048
    history_part = prompt.section_tokens["history"] + prompt.section_tokens["user_message"]
    history_part += prompt.section_tokens["session_summary"] + SECTION_SEPARATOR_TOKENS
    assert history_part <= prompt.budgets["history"] == 2867
    text = system_text(prompt)
    persona_text = text.split("\n\n")[0]
    assert LONG_PERSONA.startswith(persona_text) and persona_text.endswith("clause after clause.")
    assert "Backstory:" not in text  # dropped whole, never cut
    kept_scores = [
        score for content, score in memories if f"- {content}" in text.split("[shared_memories]")[0]
    ]
    dropped_scores = [score for content, score in memories if f"- {content}" not in text]
    assert kept_scores and dropped_scores and min(kept_scores) >= max(dropped_scores)
    assert prompt.history_cut and "[session_summary]" in text
    assert prompt.messages[-2]["content"] == history[-1][1]
    assert sum(TiktokenCounter().count(m["content"]) for m in prompt.messages) < CHAT.context_tokens


@settings(max_examples=40, deadline=None)
@given(
    context=st.integers(min_value=400, max_value=4000),
    n_memories=st.integers(min_value=0, max_value=30),
    n_history=st.integers(min_value=0, max_value=60),
    words=st.integers(min_value=1, max_value=40),
)
def test_parts_never_exceed_their_share(context, n_memories, n_history, words):
    memories = [(f"memory {i} " + "w " * words, (i * 7 % 11) / 11) for i in range(n_memories)]
    history = [("user" if i % 2 else "assistant", "h " * words + f"{i}.") for i in range(n_history)]
    prompt = assemble_prompt(
        inputs(profile_memories=memories, relationship_memories=memories[::2], history=history),
        with_budget(context),
        WordCounter(),
    )
    assert part_tokens(prompt, MEMORY_SECTIONS) <= prompt.budgets["memory"]
    history_part = prompt.section_tokens["history"] + prompt.section_tokens["user_message"]
    if prompt.section_tokens["session_summary"]:
        history_part += prompt.section_tokens["session_summary"] + SECTION_SEPARATOR_TOKENS
    assert history_part <= prompt.budgets["history"]
    assert prompt.history_cut == (len(prompt.messages) - 2 < n_history)
    assert prompt.max_tokens <= prompt.budgets["response"]


@given(st.text(alphabet=st.sampled_from("ab .!?\n"), max_size=80))
def test_split_sentences_keeps_all_text(text):
    chunks = split_sentences(text)
    assert "".join(chunks) == (text if text.strip() else "")
    assert all(chunk.strip() for chunk in chunks)
    assert all(re.search(r"([.!?][\"')\]]*\s+|\s*\n\s*)$", chunk) for chunk in chunks[:-1])
