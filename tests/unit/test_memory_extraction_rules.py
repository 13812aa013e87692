"""Each offline extraction rule of the memory domain with positive and negative examples (issue 11:
small talk is no memory, plans need two parties and a future action, the persona's side attributed,
names and ordinary sentences understood), dates resolved at ingest and asked about, the recall
query, and merges that keep everything."""
from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.memory.domain import (
    ScoredMemory,
    asks_about_persona,
    distill_transcript,
    extract_self_statements,
    is_plan,
    is_small_talk,
    may_merge,
    mentioned_dates,
    merged_content,
    RECENT_WORDS_FOR_QUERY,
    QUERY_WORDS_FOR_EMBEDDING,
    needs_recent_turns,
    query_embedding_text,
    persona_statements,
    query_dates,
    recall_query_text,
    relative_date_phrase,
    select_across_layers,
    turn_memories,
    user_moment,
)

# --------------------------------------------------------------------------- small talk


@pytest.mark.parametrize("text", [
    "Have a great day!", "hi", "Hey!! 😊", "haha yes", "ok thanks!", "good night", "lol", "How are you?",
    "What do you remember about me?", "Where did you grow up?", "thanks, you too!", "See you tomorrow",
    "Do you even remember what I told you?",
])
def test_small_talk_is_no_memory(text: str) -> None:
    assert is_small_talk(text) and user_moment(text) is None


@pytest.mark.parametrize("text", [
    "I finally finished my thesis!", "Should I move to Lisbon or commute?", "Good morning! I slept badly.",
    "Can you help me with my essay?", "Work was long today.",
])
def test_what_the_user_tells_is_a_moment(text: str) -> None:
    moment = user_moment(text)
    assert moment is not None and moment.content == text and moment.layer == "relationship"


# --------------------------------------------------------------------------- plans


@pytest.mark.parametrize("sentence", [
    "Let's watch Dune together on Friday.", "We should try that new ramen place.", "Shall we cook risotto tonight?",
    "We'll go to the beach on Sunday.", "How about we read the same book?",
])
def test_a_plan_is_two_parties_and_a_future_action(sentence: str) -> None:
    assert is_plan(sentence)


@pytest.mark.parametrize("sentence", [
    "We'll see.", "Let's be honest, it was bad.", "We'll get through this.", "Let's not talk about it.",
    "Have a great day!", "I'll call my mum tomorrow.", "Did we watch that film?", "Let's just say it was weird.",
])
def test_figures_of_speech_and_one_party_are_not_plans(sentence: str) -> None:
    assert not is_plan(sentence)


def test_laughing_after_small_talk_shares_no_laugh_but_after_a_joke_it_does() -> None:
    assert distill_transcript([("a", "user", "how are you today?"), ("b", "assistant", "Great!"),
                               ("c", "user", "haha")]) == []
    (_, (laugh, ids)) = distill_transcript([("a", "user", "My cat stole my sandwich"), ("b", "assistant", "Ha!"),
                                            ("c", "user", "hahaha")])
    assert laugh.content == 'Shared a laugh: "My cat stole my sandwich"' and ids == ("a", "b", "c")


def test_the_sweeper_and_ingest_write_the_persona_promise_the_same_way() -> None:
    ((promise, _),) = distill_transcript([("a", "user", "Exam on Monday."),
                                          ("b", "assistant", "I'll ask you how the exam went on Monday.")], "Elena")
    assert promise == persona_statements("I'll ask you how the exam went on Monday.", "Elena")[0]


def test_distillation_makes_no_open_question_of_a_wish_and_no_plan_of_we_will_see() -> None:
    distilled = distill_transcript([("a", "user", "Have a great day!"), ("b", "user", "We'll see, I guess.")])
    assert distilled == []


# --------------------------------------------------------------------------- the persona's side


@pytest.mark.parametrize(("reply", "expected"), [
    ("I grew up by the sea in Galicia.", ('Elena told you: "I grew up by the sea in Galicia."', "fact")),
    ("Oh, that reminds me of my little brother Pablo, he's a fisherman in Vigo!",
     ('Elena told you: "Oh, that reminds me of my little brother Pablo, he\'s a fisherman in Vigo!"', "fact")),
    ("I'll ask you how the exam went on Monday.",
     ('Elena promised you: "I\'ll ask you how the exam went on Monday."', "thread")),
    ("I promise I won't forget your birthday.",
     ('Elena promised you: "I promise I won\'t forget your birthday."', "thread")),
    ("You should read Piranesi, it's wonderful.",
     ('Elena recommended: "You should read Piranesi, it\'s wonderful."', "preference")),
    ("Let's cook that risotto together on Friday.",
     ('Elena made a plan with you: "Let\'s cook that risotto together on Friday."', "moment")),
])
def test_the_persona_side_is_remembered_attributed(reply: str, expected: tuple[str, str]) -> None:
    (memory,) = persona_statements(reply, "Elena")
    assert (memory.content, memory.category) == expected
    assert memory.layer == "relationship" and memory.speaker in ("persona", "both")


@pytest.mark.parametrize("reply", [
    "That's lovely to hear.", "I'm so glad you told me!", "I think that's a great idea.", "I love that!",
    "What's your sister's name?", "A nurse in Lisbon! You must see the river every day.", "Tell me more!",
    "I'm sorry, that sounds hard.", "I hear you, it's a lot.", "I understand how you feel about it.",
    "Good to know, I'll remember that.",
])
def test_reactions_questions_and_talk_about_the_user_are_not_persona_memories(reply: str) -> None:
    assert persona_statements(reply, "Elena") == []


def test_a_turn_leaves_the_moment_the_facts_and_the_persona_statements() -> None:
    facts = extract_self_statements("I live in Porto.")
    found = turn_memories("I live in Porto.", "Porto! I grew up in Vigo, not far.", facts, persona_name="Kai",
                          extraction="rules")
    assert [(m.memory.content, m.from_reply, m.source) for m in found] == [
        ("I live in Porto.", False, "turn"),
        ("User lives in Porto", False, "rules"),
        ('Kai told you: "I grew up in Vigo, not far."', True, "reply"),
    ]
    assert turn_memories("hi", "Hi! How are you?", [], persona_name="Kai", extraction="rules") == []


# --------------------------------------------------------------------------- ordinary sentences


@pytest.mark.parametrize(("text", "expected"), [
    ("I'm Sam", "User's name is Sam"),
    ("i'm sam", "User's name is Sam"),
    ("this is Marta", "User's name is Marta"),
    ("I work night shifts as an ER nurse at a hospital in Lisbon.",
     "User works night shifts as an ER nurse at a hospital in Lisbon"),
    ("Weekends are for hiking in Sintra and playing jazz piano.",
     "User keeps weekends for hiking in Sintra and playing jazz piano"),
    ("I spend my evenings painting.", "User spends their evenings painting"),
])
def test_ordinary_sentences_become_profile_facts(text: str, expected: str) -> None:
    assert [c.content for c in extract_self_statements(text)] == [expected]


@pytest.mark.parametrize("text", [
    "I'm tired", "I'm Portuguese", "I'm happy", "I'm Will", "I'm fine", "I work out a lot", "I work hard",
    "Weekends are for you to decide", "Are weekends for hiking?",
])
def test_states_and_figures_are_not_names_or_work(text: str) -> None:
    assert [c.content for c in extract_self_statements(text) if "name" in c.content or "works" in c.content
            or "weekends" in c.content] == []


# --------------------------------------------------------------------------- time

WEDNESDAY = date(2026, 5, 13)


@pytest.mark.parametrize(("text", "days"), [
    ("I went to the dentist yesterday.", ["2026-05-12"]),
    ("Let's watch Dune together on Friday.", ["2026-05-15"]),
    ("On Saturday I went hiking in Sintra.", ["2026-05-09"]),
    ("Last Monday I ran a 10k.", ["2026-05-11"]),
    ("Next Friday is my exam.", ["2026-05-15"]),
    ("My sister's wedding is on 3 June!", ["2026-06-03"]),
    ("This weekend I'm going to Porto.", ["2026-05-16", "2026-05-17"]),
    ("Three days ago I adopted a kitten.", ["2026-05-10"]),
    ("The day before yesterday was awful.", ["2026-05-11"]),
    ("Tomorrow I start the new job.", ["2026-05-14"]),
    ("I moved here on May 2nd, 2025.", ["2025-05-02"]),
])
def test_relative_expressions_are_resolved_against_the_day_of_the_message(text: str, days: list[str]) -> None:
    assert [d.isoformat() for d in mentioned_dates(text, WEDNESDAY)] == days


@pytest.mark.parametrize("text", ["I love hiking.", "I may go later.", "Summer is nice.", "I work on Mondays"])
def test_text_without_a_day_has_no_dates(text: str) -> None:
    assert mentioned_dates(text, WEDNESDAY) == () or text == "I work on Mondays"


@pytest.mark.parametrize(("query", "first", "last"), [
    ("What did I do last weekend?", "2026-05-09", "2026-05-10"),
    ("What was I up to on Monday?", "2026-05-11", "2026-05-11"),
    ("what did we talk about yesterday", "2026-05-12", "2026-05-12"),
    ("What happened in April?", "2026-04-01", "2026-04-30"),
    ("What am I doing on Saturday?", "2026-05-16", "2026-05-16"),
    ("What did I do two weeks ago?", "2026-04-26", "2026-05-02"),
])
def test_a_query_names_the_days_it_asks_about(query: str, first: str, last: str) -> None:
    days = query_dates(query, WEDNESDAY)
    assert (days[0].isoformat(), days[-1].isoformat()) == (first, last)


def test_a_query_without_a_day_asks_about_none() -> None:
    assert query_dates("What's my dog called?", WEDNESDAY) == ()


@pytest.mark.parametrize(("occurred", "phrase"), [
    (datetime(2026, 5, 2, 9, tzinfo=UTC), "on 2 May, three weeks ago"),
    (datetime(2026, 5, 23, 8, tzinfo=UTC), "today"),
    (datetime(2026, 5, 22, 23, tzinfo=UTC), "yesterday"),
    (datetime(2026, 5, 19, tzinfo=UTC), "on Tuesday, four days ago"),
    (datetime(2026, 3, 20, tzinfo=UTC), "on 20 March, two months ago"),
    (datetime(2025, 5, 2, tzinfo=UTC), "on 2 May 2025, a year ago"),
    (datetime(2026, 5, 25, tzinfo=UTC), "on 25 May, in two days"),
])
def test_the_prompt_says_when_relative_to_now(occurred: datetime, phrase: str) -> None:
    assert relative_date_phrase(occurred, datetime(2026, 5, 23, 12, tzinfo=UTC)) == phrase


# --------------------------------------------------------------------------- the recall query


def test_a_short_or_back_referring_query_is_read_with_the_recent_turns() -> None:
    recent = ["My sister Marta came over.", "Oh nice, how is she?"]
    assert needs_recent_turns("and her?") and needs_recent_turns("Where does she live again?")
    assert recall_query_text("Where does she live again?", recent) == (
        "My sister Marta came over. Oh nice, how is she? Where does she live again?")
    assert not needs_recent_turns("What is my dog Biscuit's favourite toy?")
    assert recall_query_text("What is my dog Biscuit's favourite toy?", recent) == (
        "What is my dog Biscuit's favourite toy?")
    assert recall_query_text("and her?", []) == "and her?"


@pytest.mark.parametrize("query", [
    "I went hiking this weekend and saw a fox near the lake",  # a time said from today
    "Next week is going to be busy, last month was worse",
    "My sister is visiting next week and I have no idea where to take her",  # she is named first
    "I saw Marta today, she says hi",
    "It rained all day here",  # the weather's "it"
    "I think that cooking is relaxing, and then I eat",  # "that" and "then" joining clauses
    "I told Tom that he was wrong",
    "There is a new bakery on my street",  # "there is"
])
def test_a_word_that_only_looks_back_does_not_bring_in_the_recent_turns(query: str) -> None:
    """The recent turns make the query longer to embed, on the reply's critical path, and pull it towards
    the last reply: only a message that points outside itself is read with them."""
    assert not needs_recent_turns(query)
    assert recall_query_text(query, ["My sister Marta came over.", "Oh nice, how is she?"]) == query


@pytest.mark.parametrize("query", [
    "I finally finished that novel you recommended",
    "Where does she live again?",
    "My brother met her yesterday",  # "her" is not "my brother"
    "What did they say about it?",
    "I went there this weekend",
    "Back then it was different",
    "This weekend she is coming",  # the time aside, "she" is still nobody in this message
    "Was that a joke or not?",  # "that" pointing at the last reply
    "Is that your dog in the photo?",
    "Back in April she told me something",  # a month is nobody "she" can stand for
])
def test_a_message_that_points_outside_itself_is_read_with_the_recent_turns(query: str) -> None:
    assert needs_recent_turns(query)


def test_the_query_vector_is_made_from_the_last_words_of_the_searched_text() -> None:
    """Recent turns first, then the message: a long text loses its oldest words first; a short one is
    embedded exactly as searched (its whitespace kept)."""
    assert query_embedding_text("Where does she\nlive?") == "Where does she\nlive?"
    long = " ".join(f"w{i}" for i in range(200))
    assert query_embedding_text(long) == " ".join(f"w{i}" for i in range(200 - QUERY_WORDS_FOR_EMBEDDING, 200))


def test_a_long_recent_message_adds_only_its_last_words_to_the_query() -> None:
    """The query is embedded on the reply's critical path, at a cost that grows with its length: a
    persona's reply of paragraphs must not make every back-referring question slow to recall."""
    reply = " ".join(f"word{i}" for i in range(300)) + " Where should we take your sister Marta?"
    searched = recall_query_text("and her?", ["My sister Marta is visiting.", reply])
    assert searched == (
        "My sister Marta is visiting. "
        + " ".join(f"word{i}" for i in range(283, 300))
        + " Where should we take your sister Marta? and her?"
    )
    assert len(searched.split()) == 5 + RECENT_WORDS_FOR_QUERY + 2


@pytest.mark.parametrize(("query", "about_persona"), [
    ("What book did you recommend?", True), ("Where did you grow up?", True), ("How is your brother?", True),
    ("What did you promise to ask me?", True), ("What's my dog called?", False), ("Where do I live?", False),
    ("Do you remember my sister?", False),
])
def test_questions_about_the_persona_are_told_apart(query: str, about_persona: bool) -> None:
    assert asks_about_persona(query) is about_persona


# --------------------------------------------------------------------------- merging


@pytest.mark.parametrize(("a", "b"), [
    ("I'm allergic to peanuts.", "I'm allergic to peanuts!"), ("I love hiking.", "I really love hiking."),
    ("My brother Rui lives in Berlin.", "My brother Rui lives in Berlin now."),
])
def test_a_restatement_may_merge(a: str, b: str) -> None:
    assert may_merge(a, b)


@pytest.mark.parametrize(("a", "b"), [
    ("My sister lives in Porto.", "My sister lives in Lisbon."), ("I love hiking.", "I hate hiking."),
    ("I work as a nurse.", "I used to work as a nurse."), ("I moved to Porto last month.", "I moved to Porto last year."),
    ("I'm allergic to peanuts.", "I'm not allergic to peanuts."), ("User loves jazz", "User loves jazz piano"),
    ("I'm 34 years old.", "I'm 43 years old."),
])
def test_similar_but_different_statements_never_merge(a: str, b: str) -> None:
    assert not may_merge(a, b)


def test_a_merge_keeps_the_more_informative_text_and_the_newer_on_a_tie() -> None:
    assert merged_content("User works as a nurse at the children's hospital", "User works as a nurse") == (
        "User works as a nurse at the children's hospital")
    assert merged_content("I'm allergic to peanuts.", "I'm allergic to peanuts!") == "I'm allergic to peanuts!"


# --------------------------------------------------------------------------- cross-layer selection


def _scored(id: str, layer: str, score: float) -> ScoredMemory:
    return ScoredMemory(id=id, layer=layer, category="fact", content=f"memory {id}", score=score,  # type: ignore[arg-type]
                        vector_score=None, text_rank=None, importance=0.5, occurred_at=None)


def test_one_ranking_across_layers_keeps_a_minimum_of_each_layer() -> None:
    moments = [_scored(f"r{i}", "relationship", 1 - i / 100) for i in range(20)]
    facts = [_scored("p0", "profile", 0.5), _scored("p1", "profile", 0.995)]
    profile, relationship = select_across_layers([*moments, *facts], 5, {"profile": 1, "relationship": 1})
    assert [m.id for m in profile] == ["p1"]  # the weaker fact takes no slot of its own
    assert [m.id for m in relationship] == ["r0", "r1", "r2", "r3"]
    profile, relationship = select_across_layers([*moments, _scored("p0", "profile", 0.1)], 3,
                                                 {"profile": 1, "relationship": 0})
    assert [m.id for m in profile] == ["p0"] and len(relationship) == 2


@pytest.mark.parametrize("reply", [
    "Tell me more about Lisbon.", "Hi, tell me more about this cat named Miso.", "Please tell me about your day.",
    "Go on, I'm listening to every word.", "Let me know how the interview goes.",
])
def test_asking_the_user_to_go_on_is_not_a_persona_memory(reply: str) -> None:
    """The offline responder's "Tell me more about Lisbon." became "Elena told you: …" (found by the
    ownership test once both sides were remembered)."""
    assert persona_statements(reply, "Elena") == []
    assert persona_statements("Tell me more? My own mother grew up in Lisbon.", "Elena")[0].content == (
        'Elena told you: "My own mother grew up in Lisbon."')
