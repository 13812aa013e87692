"""Character mode and the client's structure (issue 12): what of an OpenAI client's request the prompt keeps
as sent (domain/transcript.py) and how the prompt is assembled around it within the budget
(domain/prompt.py)."""
from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from services.orchestrator.domain.personas import PersonaSpec
from services.orchestrator.domain.prompt import PromptInputs, assemble_prompt
from services.orchestrator.domain.transcript import (
    ClientMessage,
    TranscriptError,
    character_name,
    split_transcript,
    utility_reason,
    validate_completion_request,
)
from services.servicekit.model_config import Budget, load_model_config

CHAT = load_model_config("").resolve("chat_companion")
NOW = datetime(2024, 5, 14, 13, 5, tzinfo=UTC)
PERSONA = PersonaSpec(
    name="Elena", system_prompt="You are Elena, an astronomer.", gender="woman", timezone="America/Santiago",
    age=36, mbti="INFJ", backstory="She grew up in Calama.", speech_style="Gentle sentences.",
    quirks=("Mentions the seeing.",), topics=("telescopes",))
CALLS = json.dumps([{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])


class WordCounter:
    def count(self, text: str) -> int:
        return len(text.split())


def m(role: str, content: str, **fields: str) -> ClientMessage:
    return ClientMessage(role, content, **fields)


SILLYTAVERN = [
    m("system", "Write Seraphina's next reply in a fictional chat between Seraphina and Alex."),
    m("system", "Seraphina guards a glade. She heals travellers."),
    m("system", "[Example Chat]"),
    m("system", "Where am I?", name="example_user"),
    m("system", "My glade.", name="example_assistant"),
    m("system", "[Start a new Chat]"),
    m("assistant", "Welcome, traveller."),
    m("user", "Hello."),
    m("assistant", "Hi."),
    m("system", "[Author's note: rain]"),
    m("user", "Who are you?"),
    m("system", "Stay in character."),
]


def inputs(client_messages: list[ClientMessage], **overrides: object) -> PromptInputs:
    transcript = split_transcript(client_messages)
    chat = [(c.role, c.content) for c in transcript.chat[:-1]]
    fields: dict[str, object] = dict(
        persona=PERSONA, traits=[], turn_style=["Be warm."], profile_rendering="The user lives in Porto.",
        profile_memories=[("The user has a cat called Miso.", 0.9)],
        relationship_memories=[("You laughed about the rain.", 0.5)], summary="They met in spring.",
        mood=["You feel friendly toward them.", "Relationship: friend."], feelings=["warmth: 0.72"],
        emotional_context=["They apologised."], length_guidance="Reply in up to three sentences.",
        history=chat, user_message=transcript.chat[-1].content, now=NOW, client=transcript.prompt)
    fields.update(overrides)
    return PromptInputs(**fields)  # type: ignore[arg-type]


def with_context(tokens: int) -> object:
    return dataclasses.replace(CHAT, context_tokens=tokens, budget=Budget())


# ---- the request split ---------------------------------------------------------------------------------

def test_the_chat_is_user_and_assistant_text_and_the_rest_is_kept_in_place() -> None:
    transcript = split_transcript(SILLYTAVERN)
    assert [c.content for c in transcript.chat] == ["Welcome, traveller.", "Hello.", "Hi.", "Who are you?"]
    prompt = transcript.prompt
    assert [x.content for x in prompt.leading] == [x.content for x in SILLYTAVERN[:6]]
    assert prompt.character_end == 2 and prompt.character_mode and prompt.character_name == "Seraphina"
    assert [(depth, x.content) for depth, x in prompt.inserts] == [(1, "[Author's note: rain]"),
                                                                  (0, "Stay in character.")]
    assert transcript.post_history == "Stay in character." and not transcript.ends_with_assistant


def test_tool_messages_are_not_chat_and_must_answer_a_call() -> None:
    messages = [m("user", "Weather?"), m("assistant", "", tool_calls_json=CALLS),
                m("tool", "Sunny", tool_call_id="call_1")]
    validate_completion_request("Elena", messages, "", "")
    transcript = split_transcript(messages)
    assert [c.content for c in transcript.chat] == ["Weather?"] and not transcript.ends_with_assistant
    assert [(d, x.role) for d, x in transcript.prompt.inserts] == [(0, "assistant"), (0, "tool")]
    assert utility_reason(transcript, marked=False, named=False) is None  # the user message is answered
    with pytest.raises(TranscriptError) as raised:
        validate_completion_request("Elena", [*messages[:2], m("tool", "x", tool_call_id="call_9")], "", "")
    assert raised.value.field == "messages[2].role"
    with pytest.raises(TranscriptError) as raised:
        validate_completion_request("Elena", [m("assistant", "", tool_calls_json='{"id": 1}')], "", "")
    assert raised.value.field == "messages[0].tool_calls"


@pytest.mark.parametrize(("messages", "max_tokens", "named", "probe"), [
    ([m("user", "Hi")], None, False, True),  # SillyTavern's test message
    ([m("user", "hello there")], None, False, False),  # a plain app's first message is a turn
    ([m("user", "I moved to Porto.")], None, False, False),
    ([m("user", "Hi")], None, True, False),
    ([m("system", "You are Kai."), m("user", "Hi")], None, False, False),
    ([m("user", "ping")], 1, False, True),  # a one-token probe, whatever it says
    ([m("system", "You are Kai."), m("user", "Tell me a story")], 1, True, True),
    ([m("user", "Tell me a story")], 3, False, False),
])
def test_connection_tests_only_by_their_known_shapes(messages: list[ClientMessage], max_tokens: int | None,
                                                     named: bool, probe: bool) -> None:
    reason = utility_reason(split_transcript(messages), marked=False, named=named, max_tokens=max_tokens)
    assert (reason == "probe") is probe


@pytest.mark.parametrize(("text", "name"), [
    ("Write Seraphina's next reply in a fictional chat.", "Seraphina"),
    ("You are Elena Quispe, a telescope operator.", "Elena Quispe"),
    ("Name: Kai\nA marine biologist.", "Kai"),
    ("Mira's persona: a weather fairy.", "Mira"),
    ("You are a helpful assistant.", ""),
])
def test_the_character_is_named_from_its_text(text: str, name: str) -> None:
    assert character_name([m("system", text), m("user", "hi")]) == name


def test_the_character_name_of_the_replies_wins() -> None:
    assert character_name([m("system", "You are Elena."), m("assistant", "Hey.", name="Nyx"), m("user", "x")]) == \
        "Nyx"


# ---- character mode ------------------------------------------------------------------------------------

def test_the_character_speaks_and_the_persona_gives_only_the_relationship() -> None:
    prompt = assemble_prompt(inputs(SILLYTAVERN), CHAT, WordCounter())
    text = "\n".join(str(x["content"]) for x in prompt.messages)
    for persona_only in ("You are Elena", "Calama", "Gentle sentences", "seeing", "telescopes", "America/Santiago",
                         "Stay in character as Elena", "plain text"):
        assert persona_only not in text
    assert prompt.character_mode and prompt.trimmed == {}
    roles = [(x["role"], x.get("name")) for x in prompt.messages]
    assert roles == [("system", None)] * 3 + [("system", "example_user"), ("system", "example_assistant"),
                                             ("system", None), ("assistant", None), ("user", None),
                                             ("assistant", None), ("system", None), ("user", None),
                                             ("system", None)]
    assert prompt.messages[0]["content"] == SILLYTAVERN[0].content
    rapport = prompt.messages[1]["content"]
    assert rapport.startswith("Seraphina guards a glade. She heals travellers.\n\n[relationship]\nWhat Seraphina")
    order = ["[relationship]", "[turn_style]", "[user_profile]", "[shared_memories]", "[mood]", "[feelings]",
             "[emotional_context]", "[now]\nTuesday 14 May 2024, 13:05 UTC.", "[rules]"]
    assert [rapport.index(marker) for marker in order] == sorted(rapport.index(marker) for marker in order)
    assert [x["content"] for x in prompt.messages[3:5]] == ["User: Where am I?", "Seraphina: My glade."]
    assert [x["content"] for x in prompt.messages[6:]] == [
        "Welcome, traveller.", "Hello.", "Hi.", "[Author's note: rain]", "Who are you?", "Stay in character."]


def test_rapport_shrinks_first_then_the_oldest_history_and_the_clients_text_stays() -> None:
    history = [m(("user", "assistant")[i % 2], f"message {i} " + "word " * 20) for i in range(10)]
    messages = [SILLYTAVERN[0], SILLYTAVERN[1], *history, m("user", "Now what?"), m("system", "Stay in character.")]
    full = assemble_prompt(inputs(messages), with_context(100_000), WordCounter())
    assert full.trimmed == {}
    need = sum(len(str(x["content"]).split()) + 4 for x in full.messages)
    rapport_tokens = len(full.messages[1]["content"].split()) - len(SILLYTAVERN[1].content.split())

    # Room for everything but Rapport's sections: they shrink, the history is whole.
    tight = assemble_prompt(inputs(messages), with_context(int((need - rapport_tokens // 2) / 0.8)), WordCounter())
    assert "history" not in tight.trimmed and tight.trimmed
    assert set(tight.trimmed) <= {"relationship", "turn_style", "user_profile", "shared_memories", "mood",
                                  "feelings", "emotional_context", "now", "rules", "additional_guidance"}
    assert [x["content"] for x in tight.messages[2:]] == [x.content for x in messages[2:]]

    # Less room still: Rapport's sections shrink to what the history leaves, the oldest messages go; the card,
    # the new message and the post-history instruction stay whole.
    starved = assemble_prompt(inputs(messages), with_context(int(80 / 0.8)), WordCounter())
    assert starved.trimmed["history"] > 0 and set(starved.trimmed) - {"history"}
    assert starved.messages[1]["content"].startswith(SILLYTAVERN[1].content)
    assert len(starved.messages[1]["content"]) < len(tight.messages[1]["content"])
    assert [x["content"] for x in starved.messages[-2:]] == ["Now what?", "Stay in character."]
    kept = [x["content"] for x in starved.messages[2:-2]]
    assert kept == [x.content for x in history][len(history) - len(kept):]
    assert starved.messages[0]["content"] == SILLYTAVERN[0].content


def test_a_card_too_long_for_the_context_loses_its_examples_first_then_trailing_sentences() -> None:
    card = " ".join(f"Sentence {i} of the card." for i in range(40))
    messages = [m("system", card), m("system", "Hi there", name="example_user"),
                m("system", "Hello you", name="example_assistant"), m("user", "Go."), m("system", "Stay.")]
    prompt = assemble_prompt(inputs(messages), with_context(int(120 / 0.8)), WordCounter())
    assert set(prompt.trimmed) >= {"examples", "character"}
    first = prompt.messages[0]["content"]
    assert first.startswith("Sentence 0 of the card.") and "Sentence 39" not in first
    assert [x["content"] for x in prompt.messages[-2:]] == ["Go.", "Stay."]
    assert all(x.get("name") is None for x in prompt.messages)


def test_without_a_character_the_persona_speaks_and_client_messages_keep_their_places() -> None:
    messages = [m("user", "Hello."), m("assistant", "Hi."), m("user", "News?"), m("system", "Be brief.")]
    prompt = assemble_prompt(inputs(messages), CHAT, WordCounter())
    assert not prompt.character_mode and prompt.messages[0]["content"].startswith("You are Elena, an astronomer.")
    assert [x["content"] for x in prompt.messages[1:]] == ["Hello.", "Hi.", "News?", "Be brief."]
    assert prompt.messages[-1]["role"] == "system"


def test_a_tool_exchange_follows_the_user_message_as_sent() -> None:
    messages = [m("system", "You are Mira."), m("user", "Weather?"), m("assistant", "", tool_calls_json=CALLS),
                m("tool", "Sunny", tool_call_id="call_1")]
    prompt = assemble_prompt(inputs(messages), CHAT, WordCounter())
    assert prompt.messages[-3] == {"role": "user", "content": "Weather?"}
    assert prompt.messages[-2] == {"role": "assistant", "content": None, "tool_calls": json.loads(CALLS)}
    assert prompt.messages[-1] == {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"}
