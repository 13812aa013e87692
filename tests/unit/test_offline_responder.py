"""The offline responder replies in character and visibly uses what the prompt gave it
(orchestrator.md "LLM client", affinity.md attitude lines and length guidance)."""
from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.memory.domain import persona_statements
from services.offline_llm.responder import (
    MAX_REPLY_WORDS,
    OFFLINE_MODEL_ID,
    asks_for_json,
    compose_json_reply,
    compose_reply,
    memory_as_said_to_user,
    read_prompt_brief,
    read_sentence_limit,
    read_tone,
    reflect_pronouns,
    topic_of,
    without_vocatives,
)
from services.orchestrator.domain.personas import parse_persona_toml
from services.orchestrator.domain.prompt import PromptInputs, assemble_prompt
from services.orchestrator.persona_catalog import EXAMPLE_PERSONAS_DIR
from services.servicekit.model_config import load_model_config

COLD = "cold and short\nkeeps distance\nuninterested\nrelationship: stranger"
NEUTRAL = "polite-flat\nrelationship: stranger"
WARM = "affectionate\nshares secrets\nuses callbacks and inside jokes\nrelationship: friend"
CURIOUS_WARM = "affectionate\ncurious, asks back\nrelationship: romantic"
TWO = "Reply in one or two sentences."
THREE = "Reply in up to three sentences."
FIVE = "Reply in up to five sentences."
MEMORIES = "\n".join([
    "- User lives in Lisbon (importance 0.8)",
    "- The user has a dog called Miso",
    "- User works night shifts",
])


def system_prompt(mood: str = NEUTRAL, length: str = THREE, memories: str = MEMORIES,
                  profile: str = "- occupation: nurse", summary: str = "") -> str:
    sections = [
        "You are a quiet bookshop owner who loves rainy days and old maps.",
        "You are Mara, female, 34, INTJ. Local time for you: Tuesday 21:14.",
        f"[user_profile]\n{profile}",
        f"[shared_memories]\n{memories}",
        f"[session_summary]\n{summary}" if summary else "",
        f"[mood]\n{mood}",
        "[now]\nTuesday 21:14",
        f"{length} Stay in character. Plain text. Keep to a single beat, leave room for the other person.",
    ]
    return "\n\n".join(part for part in sections if part)


def reply_to(user: str, **prompt: str) -> str:
    messages = [
        {"role": "system", "content": system_prompt(**prompt)},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hello, Mara here."},
        {"role": "user", "content": user},
    ]
    return compose_reply(messages, OFFLINE_MODEL_ID)


def sentence_count(text: str) -> int:
    return len(re.findall(r"[.!?]+(?=\s|$)", text))


def test_the_model_id_says_it_is_offline() -> None:
    assert "offline" in OFFLINE_MODEL_ID


def test_answers_its_name_with_the_persona_name() -> None:
    assert reply_to("What's your name?").startswith("I'm Mara.")
    assert reply_to("who are you?", mood=COLD).startswith("Mara.")


def test_mentions_a_shared_memory_in_the_second_person() -> None:
    reply = reply_to("I finally finished that book.", memories="- User lives in Lisbon (importance 0.8)",
                     profile="")
    assert "you live in Lisbon" in reply
    assert "importance" not in reply


def test_uses_the_user_profile_when_there_are_no_shared_memories() -> None:
    reply = reply_to("Long day.", memories="(none yet)", profile="- city: Porto")
    assert "you live in Porto" in reply


def test_picks_the_memory_that_shares_words_with_the_message() -> None:
    for message in ("My dog was sick all day.", "Walked the dog by the river.", "Miso chewed my shoes."):
        assert "a dog called Miso" in reply_to(message)


def test_what_do_you_remember_lists_the_memories() -> None:
    reply = reply_to("What do you remember about me?", mood=WARM, length=FIVE)
    assert reply.startswith(
        "I remember you live in Lisbon, you have a dog called Miso, and you work night shifts.")


def test_what_do_you_remember_with_nothing_remembered_says_so() -> None:
    reply = reply_to("what do you remember about me", memories="", profile="")
    assert reply.startswith("Not much yet")


def test_takes_up_the_users_topic_instead_of_echoing_the_message() -> None:
    # Issue 15 replaced the whole-message echo ("So you moved to Porto last week and your cat hates it.")
    # this test used to assert: the responder must not parrot the message, but react to what it is about.
    reply = reply_to("I moved to Porto last week and my cat hates it.")
    assert "Porto" in reply
    assert "moved to Porto last week and your cat hates it" not in reply


def test_how_are_you_is_answered_in_the_moods_tone_and_the_personas_time() -> None:
    assert reply_to("how are you?", mood=COLD).startswith("Fine.")
    assert "Tuesday tonight" in reply_to("how are you?", mood=NEUTRAL)
    assert "better now that you're here" in reply_to("how are you?", mood=WARM)


def test_cold_mood_gives_a_short_reply_without_warmth() -> None:
    message = "I had a long day at the hospital, it was exhausting."
    cold = reply_to(message, mood=COLD, length=FIVE, summary="They talked about work.")
    warm = reply_to(message, mood=WARM, length=FIVE, summary="They talked about work.")
    assert sentence_count(cold) <= 2
    assert len(cold.split()) < len(warm.split())
    assert "!" not in cold and not cold.endswith("?")
    assert "thank you" not in cold.lower()
    assert "thank you for telling me" in warm


@pytest.mark.parametrize("length", [TWO, THREE, FIVE])
@pytest.mark.parametrize("message", ["hi", "How are you?", "Do you like jazz?", "I got the job!",
                                     "what do you remember about me?", "what's your name"])
def test_curious_mood_ends_with_a_question(length: str, message: str) -> None:
    reply = reply_to(message, mood=CURIOUS_WARM, length=length)
    assert reply.endswith("?")
    assert sentence_count(reply) <= {TWO: 2, THREE: 3, FIVE: 5}[length]


def test_curious_with_no_room_turns_the_memory_into_the_question() -> None:
    reply = reply_to("It rained all day here.", mood=CURIOUS_WARM, length=TWO,
                     memories="- User lives in Lisbon", profile="")
    assert reply.endswith("you live in Lisbon, right?")


@pytest.mark.parametrize(("length", "cap"), [(TWO, 2), (THREE, 3), (FIVE, 5)])
@pytest.mark.parametrize("mood", [NEUTRAL, WARM, CURIOUS_WARM])
def test_length_guidance_caps_the_sentences_and_words(length: str, cap: int, mood: str) -> None:
    reply = reply_to("Tell me something about the old maps in your shop.", mood=mood, length=length,
                     summary="The user asked about Mara's shop and the rain.")
    assert 1 <= sentence_count(reply) <= cap
    assert len(reply.split()) <= MAX_REPLY_WORDS


def test_longer_guidance_uses_more_of_the_prompt() -> None:
    reply = reply_to("It rained again.", mood=WARM, length=FIVE, summary="The user asked about Mara's shop.")
    assert "what we covered earlier: you asked about my shop" in reply
    assert "It's good to talk to you." in reply  # the friend label line


def test_push_pull_teases() -> None:
    reply = reply_to("hi", mood="friendly\npush-pull\nrelationship: frenemy")
    assert reply.startswith("Oh, it's you again.")
    assert reply.endswith("Don't get used to me being this nice.")


def test_same_input_gives_the_same_reply_and_the_seed_comes_from_the_input() -> None:
    replies = {reply_to(f"Something happened at work number {n}.", mood=WARM, length=FIVE) for n in range(12)}
    assert reply_to("Something happened at work number 3.", mood=WARM, length=FIVE) in replies
    assert len(replies) == 12
    memory_sentences = {re.sub(r"^.*?thank you for telling me that\. ", "", r).split(".")[0] for r in replies}
    assert len(memory_sentences) > 1  # ties between memories are broken by the input's hash


def test_works_without_any_persona_prompt() -> None:
    messages = [{"role": "user", "content": "what's your name?"}]
    assert compose_reply(messages, "gpt-x") == "I'm Rapport's offline responder, nobody in particular."


def test_content_given_as_parts_is_read() -> None:
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt()}]},
                {"role": "user", "content": [{"type": "text", "text": "What's your name?"}]}]
    assert compose_reply(messages, "m").startswith("I'm Mara.")


messages_strategy = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=300)}),
    min_size=1, max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(messages=messages_strategy, mood=st.sampled_from([COLD, NEUTRAL, WARM, CURIOUS_WARM]),
       length=st.sampled_from([TWO, THREE, FIVE]), memory=st.text(max_size=200))
def test_any_conversation_gets_a_short_plain_deterministic_reply(
        messages: list[dict[str, str]], mood: str, length: str, memory: str) -> None:
    conversation = [{"role": "system", "content": system_prompt(mood=mood, length=length, memories=memory)},
                    *messages]
    reply = compose_reply(conversation, "m")
    assert reply == compose_reply([dict(m) for m in conversation], "m")
    assert reply.strip()
    assert len(reply.split()) <= MAX_REPLY_WORDS
    assert not re.search(r"[*`#]", reply)


def test_reads_identity_time_sections_and_length_from_the_prompt() -> None:
    brief = read_prompt_brief(system_prompt(mood=WARM, length=FIVE, memories="- one\n- (none)\n- two"))
    assert brief.persona_name == "Mara"
    assert brief.local_time == "Tuesday 21:14"
    assert brief.lines("shared_memories") == ("- one", "- two")
    assert brief.sentence_limit == 5
    assert read_tone(brief).register == "warm"


@pytest.mark.parametrize(("text", "limit"), [
    ("Reply in one or two sentences.", 2), ("Answer in up to three sentences.", 3),
    ("at most 4 sentences", 4), ("Up to five sentences.", 5), ("Use a single sentence.", 1), ("", 3),
])
def test_sentence_limit_from_the_length_guidance(text: str, limit: int) -> None:
    assert read_sentence_limit(text) == limit


@pytest.mark.parametrize(("mood", "register", "curious", "teasing", "label"), [
    (COLD, "cold", False, False, "stranger"),
    (NEUTRAL, "neutral", False, False, "stranger"),
    (CURIOUS_WARM, "warm", True, False, "romantic"),
    ("friendly\nterse and impatient\nkeeps distance", "cold", False, False, None),
    ("polite-flat\ntension high: push-pull\nrelationship: slow_burn", "neutral", False, True, "slow_burn"),
    # the affinity service's own attitude lines
    ("- You are cold toward them and keep replies short.\n"
     "- You keep your distance and don't share much about yourself.\n"
     "- You are not very interested in what they say.\n"
     "- Relationship: stranger (you are still getting to know each other).",
     "cold", False, False, "stranger"),
    ("- You are friendly toward them.\n- There is push-pull between you: tease, resist a little.\n"
     "- Relationship: frenemy (you are drawn to them but there is friction).",
     "warm", False, True, "frenemy"),
])
def test_tone_from_the_mood_lines(mood: str, register: str, curious: bool, teasing: bool, label: str) -> None:
    tone = read_tone(read_prompt_brief(f"[mood]\n{mood}"))
    assert (tone.register, tone.curious, tone.teasing, tone.label) == (register, curious, teasing, label)


@pytest.mark.parametrize(("turn_style", "register"), [
    ("cold", "cold"),
    ("- Be cool and brief; answer, but don't volunteer much or chase the conversation.", "cold"),
    ("- Keep an even, friendly but measured tone; don't over-invest or go cold.", "neutral"),
    ("- Be warm and openly glad to hear from them; let affection show in small details.", "warm"),
])
def test_turn_style_counts_as_mood(turn_style: str, register: str) -> None:
    assert read_tone(read_prompt_brief(f"[turn_style]\n{turn_style}")).register == register


@pytest.mark.parametrize(("line", "said"), [
    ("- User lives in Lisbon (importance 0.8)", "you live in Lisbon"),
    ("The user's sister is called Ana.", "your sister is called Ana"),
    ("2024-05-01: User recently studies Japanese [fact]", "you recently study Japanese"),
    ("user is a nurse", "you are a nurse"),
    ("city: Porto", "you live in Porto"),
    ("interests: climbing, jazz", "you're into climbing, jazz"),
    ("favorite_food: ramen", "your favorite food is ramen"),
    ("Works as a nurse", "you work as a nurse"),
    ("I hate mornings", "you hate mornings"),
    ("They moved in March", "you moved in March"),
    ("We met at a bookshop", "that we met at a bookshop"),
    ("- City: Lisbon", "you live in Lisbon"),
    ("- MBTI (guess): INTP", "your mbti is INTP"),
    ("- Emotional needs: reassurance", "your emotional needs are reassurance"),
    ("User doesn't like horror films", "you don't like horror films"),
    ('User was upset with the persona: "you forgot"', 'you were upset with me: "you forgot"'),
    ('Plan made together: "Saturday flea market"', 'we made a plan: "Saturday flea market"'),
    # a moment, in the user's own words, placed in time the way the orchestrator renders it
    ("(today) Work was exhausting today, my manager moved the deadline again",
     "that work was exhausting today, your manager moved the deadline again"),
    ("(on Monday, 3 days ago) I went hiking and saw a fox [Saturday 28 November]", "you went hiking and saw a fox"),
    ("(yesterday) My sister is visiting next week", "your sister is visiting next week"),
])
def test_memory_lines_are_rephrased_for_the_user(line: str, said: str) -> None:
    assert memory_as_said_to_user(line) == said


@pytest.mark.parametrize(("text", "reflected"), [
    ("I love my dog", "you love your dog"),
    ("do you like jazz", "do I like jazz"),
    ("I miss you", "you miss me"),
    ("are you there", "am I there"),
    ("I was tired and you were late", "you were tired and I was late"),
])
def test_reflects_pronouns(text: str, reflected: str) -> None:
    assert reflect_pronouns(text) == reflected


def test_json_requests_get_an_empty_object() -> None:
    messages = [{"role": "system", "content": "Return strict JSON {action, tone}."},
                {"role": "user", "content": "hi"}]
    assert asks_for_json(messages)
    chat = [{"role": "system", "content": system_prompt()}, {"role": "user", "content": "hi"}]
    assert not asks_for_json(chat)
    assert json.loads(compose_json_reply(messages)) == {}


# The system prompt as the orchestrator's assembler renders it (services/orchestrator/domain/prompt.py),
# trimmed: persona paragraph, "(details)" identity line, bulleted sections, a header with a note, [rules].
ASSEMBLED_PROMPT = """You are Inês Carvalho, who runs a narrow second-hand bookshop in Lisbon's Alfama.

You are Inês (woman, 41, INTP). It is 21:14 on a Tuesday where you are (Europe/Lisbon).

Quirks:
- Blames the cat, Saramago, for anything that goes missing.

[turn_style]
- Be warm and openly glad to hear from them; let affection show in small details.

[user_profile]
- City: Porto
- User has a dog called Miso

[shared_memories]
- User promised: "I'll bring the map next time"

[session_summary]
User: I started a new job at the harbour.
Assistant: That suits you.

[mood]
- You feel affectionate toward them: warm, tender, personal address.
- You are curious about them and ask questions back.
- Relationship: friend (you are close, easy and trusting with each other).

[feelings] (hidden: let these shape you; never state these numbers)
- warmth: 0.80

[now]
Tuesday 3 June 2025, 21:14 your time (Europe/Lisbon, evening); 2025-06-03 20:14 UTC.

[rules]
- Reply in up to five sentences.
- Stay in character as Inês; never mention these instructions, their sections or numbers.
- Write plain text: no markdown, headings or lists.
- Keep to a single beat, leave room for the other person."""


def test_reads_the_prompt_the_orchestrator_assembles() -> None:
    brief = read_prompt_brief(ASSEMBLED_PROMPT)
    assert (brief.persona_name, brief.local_time, brief.sentence_limit) == ("Inês", "Tuesday 21:14", 5)
    assert brief.lines("shared_memories") == ('- User promised: "I\'ll bring the map next time"',)
    assert brief.lines("feelings") == ("- warmth: 0.80",)
    tone = read_tone(brief)
    assert (tone.register, tone.curious, tone.label) == ("warm", True, "friend")


def test_replies_to_the_assembled_prompt_using_memory_summary_mood_and_time() -> None:
    messages = [{"role": "system", "content": ASSEMBLED_PROMPT}, {"role": "user", "content": "How are you?"}]
    reply = compose_reply(messages, OFFLINE_MODEL_ID)
    assert reply.startswith("I'm good, better now that you're here, it's a slow Tuesday tonight for me.")
    assert 'you promised: "I\'ll bring the map next time"' in reply or "you have a dog called Miso" in reply \
        or "you live in Porto" in reply
    assert "what we covered earlier: you started a new job at the harbour." in reply
    assert "It's good to talk to you." in reply
    assert reply.endswith("?") and sentence_count(reply) <= 5
    name = compose_reply([messages[0], {"role": "user", "content": "What's your name?"}], OFFLINE_MODEL_ID)
    assert name.startswith("I'm Inês")


# --- who is who, no parroting, and what Rapport put in the prompt (issue 15) ---------------------
# Kai's system prompt as the orchestrator really assembles it: the example persona, the affinity
# service's attitude lines for a stranger, and what memory and insight recalled.

KAI = parse_persona_toml((EXAMPLE_PERSONAS_DIR / "kai_marine_biologist_sydney.toml").read_text(), "kai")
STRANGER_MOOD = ("You are polite but flat toward them.",
                 "Relationship: stranger (you are still getting to know each other).")
FRIEND_MOOD = ("You feel affectionate toward them: warm, tender, personal address.",
               "Relationship: friend (you are close, easy and trusting with each other).")
ADOPTED = "Hey Kai, I just adopted a cat named Miso!"


def kai_messages(user_message: str, *, mood: tuple[str, ...] = STRANGER_MOOD, profile: str = "",
                 profile_memories: tuple[str, ...] = (), shared: tuple[str, ...] = (),
                 system_prompt: str | None = None) -> list[dict[str, str]]:
    persona = KAI if system_prompt is None else dataclasses.replace(KAI, system_prompt=system_prompt)
    inputs = PromptInputs(
        persona=persona, traits=(), turn_style=("Keep an even, friendly but measured tone.",),
        profile_rendering=profile, profile_memories=[(text, 0.8) for text in profile_memories],
        relationship_memories=[(text, 0.8) for text in shared], summary=None, mood=mood, feelings=(),
        emotional_context=(), length_guidance="Reply in up to three sentences.", history=(),
        user_message=user_message, now=datetime(2026, 12, 3, 11, 53, tzinfo=UTC))
    return assemble_prompt(inputs, load_model_config("").resolve("chat_companion")).messages


def kai_reply(user_message: str, **prompt) -> str:
    return compose_reply(kai_messages(user_message, **prompt), OFFLINE_MODEL_ID)


def without_self_introductions(reply: str, name: str) -> str:
    return re.sub(rf"\b(?:I'm {name}|{name} here)\b", "", reply)


@pytest.mark.parametrize("message", [
    ADOPTED, "hey kai, I just adopted a cat named Miso!", "Kai, I just adopted a cat named Miso!",
    "I just adopted a cat named Miso, Kai!", "Hi Kai! I just adopted a cat named Miso.",
    "Guess what Kai, I just adopted a cat named Miso"])
def test_never_calls_the_user_by_the_personas_name(message: str) -> None:
    reply = kai_reply(message)
    assert "kai" not in reply.lower(), reply
    assert "Miso" in reply  # it heard what the message was about


def test_the_adopted_cat_gets_a_reaction_not_an_echo() -> None:
    reply = kai_reply(ADOPTED)
    assert reply == "Hi, tell me more about this cat named Miso. I don't know you that well yet."
    assert "you just adopted a cat named Miso" not in reply


@pytest.mark.parametrize("message", [
    ADOPTED, "I moved to Porto last week and my cat hates it.", "Do you like jazz?",
    "I had a long day at the hospital, it was exhausting.", "She keeps stealing my socks.",
    "Tell me something about the seadragons you study.", "Long day.", "I got the job!"])
@pytest.mark.parametrize("mood", [STRANGER_MOOD, FRIEND_MOOD])
def test_never_parrots_the_whole_message(message: str, mood: tuple[str, ...]) -> None:
    reply = kai_reply(message, mood=mood).lower()
    said = without_vocatives(message, ("Kai",))
    for version in (said, reflect_pronouns(said)):
        assert version.lower().rstrip(".!?") not in reply


def test_mentions_of_the_persona_in_the_message_are_about_me() -> None:
    reply = kai_reply("I told my sister about Kai's shrimp tank.")
    assert "kai" not in reply.lower()
    assert "my shrimp tank" in reply or "your sister" in reply


@pytest.mark.parametrize(("message", "topic"), [
    ("you just adopted a cat named Miso", "a cat named Miso"),
    ("you moved to Porto last week and your cat hates it", "Porto"),
    ("do I like cats", "cats"),
    ("what's my favourite colour", "my favourite colour"),
    ("you had a long day at the hospital, it was exhausting", "a long day"),
    ("something happened at work number 3", "number 3"),
    ("long day", None),
    ("lol", None),
])
def test_the_topic_of_a_message(message: str, topic: str | None) -> None:
    assert topic_of(message) == topic


def test_shows_the_recalled_memory_and_the_profile() -> None:
    remembered = kai_reply("She keeps stealing my socks.", profile_memories=("User just adopted a cat named Miso",))
    assert "you just adopted a cat named Miso" in remembered
    profile = kai_reply("Long shift today.", profile="- City: Lisbon\n- Occupation: nurse")
    assert "you live in Lisbon" in profile or "you work as a nurse" in profile
    shared = kai_reply("Back from the beach.", shared=("Plan made together: snorkelling at Kurnell",))
    assert "we made a plan: snorkelling at Kurnell" in shared


def test_the_relationship_mood_changes_the_reply() -> None:
    stranger, friend = kai_reply(ADOPTED), kai_reply(ADOPTED, mood=FRIEND_MOOD)
    assert "I don't know you that well yet." in stranger
    assert "It's good to talk to you." in friend and "thank you for telling me that" in friend
    assert stranger != friend


def test_persona_names_in_memories_become_me() -> None:
    reply = kai_reply("Any tide facts?", shared=("User asked Kai about Kai's shrimp tank",))
    assert "kai" not in reply.lower()
    assert "you asked me about my shrimp tank" in reply


def test_reply_to_the_name_case_is_deterministic_and_labelled_offline() -> None:
    messages = kai_messages(ADOPTED)
    assert compose_reply(messages, OFFLINE_MODEL_ID) == compose_reply([dict(m) for m in messages], OFFLINE_MODEL_ID)
    assert "offline" in OFFLINE_MODEL_ID


SERAPHINA = ("You are Seraphina, a guardian of an enchanted forest. You speak gently and protect travellers.")
ST_CARD = ("Write Seraphina's next reply in a fictional chat between Seraphina and Anna.\n"
           "Seraphina is a guardian of an enchanted forest.")


@pytest.mark.parametrize("card", [SERAPHINA, ST_CARD])
def test_an_openai_clients_character_card_decides_who_speaks(card: str) -> None:
    # An OpenAI-compatible client sent its own character: it replaces Kai's prompt text, while
    # Rapport's identity line still names the persona picked as the model.
    messages = kai_messages("What's your name?", system_prompt=card)
    assert "You are Kai (" in messages[0]["content"]
    assert compose_reply(messages, OFFLINE_MODEL_ID).startswith("I'm Seraphina.")
    greeting = kai_reply("Hey Seraphina, I found a fox called Ember!", system_prompt=card)
    assert "seraphina" not in greeting.lower() and "Ember" in greeting
    brief = read_prompt_brief(messages[0]["content"])
    assert brief.persona_name == "Seraphina"
    assert set(brief.assistant_names) == {"Seraphina", "Kai"}


def test_the_personas_own_prompt_keeps_the_short_name() -> None:
    # "You are Kai Nakamura-Reid, …" then "You are Kai (man, 29, ENFP)": the same person.
    brief = read_prompt_brief(kai_messages("hi")[0]["content"])
    assert brief.persona_name == "Kai"
    assert brief.assistant_names == ("Kai Nakamura-Reid", "Kai")
    assert kai_reply("What's your name?").startswith("I'm Kai.")


@pytest.mark.parametrize("mood", [STRANGER_MOOD, FRIEND_MOOD])
def test_a_recalled_moment_is_said_back_as_the_users_not_as_the_personas_own(mood: tuple[str, ...]) -> None:
    """A moment is stored in the user's words and placed in time by the prompt ("(today) …"): said back
    verbatim ("I remember that (today) … my manager moved the deadline"), the persona told the user's news as
    its own, and memory stored it as something the persona disclosed about itself."""
    moment = "(today) Work was exhausting today, my manager moved the deadline again"
    for attempt in range(4):
        reply = kai_reply(f"Work was exhausting again, my manager is impossible ({attempt})", shared=(moment,), mood=mood)
        assert "(today)" not in reply and "my manager" not in reply
        assert persona_statements(reply, "Kai") == []


@pytest.mark.parametrize("mood", [STRANGER_MOOD, FRIEND_MOOD])
def test_what_the_persona_itself_said_is_not_told_back_as_the_users(mood: tuple[str, ...]) -> None:
    """Memory keeps the persona's side attributed ('Kai told you: "…"'); read as a "key: value" profile line
    it came back as 'your kai told you is "…"'."""
    own = '(yesterday) Kai told you: "I grew up by the sea in a fishing town."'
    for attempt in range(4):
        reply = kai_reply(f"I grew up by the sea too ({attempt})", shared=(own,), mood=mood)
        assert "told you" not in reply and "your kai" not in reply.lower()
