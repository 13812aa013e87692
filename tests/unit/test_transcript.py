"""The OpenAI-compatible chat's pure core: request split, utility detection, conversation keys,
idempotency keys and the reconciliation of the client's transcript with the stored one."""
from __future__ import annotations

import pytest

from services.orchestrator.domain.transcript import (
    ClientMessage,
    StoredMessage,
    TranscriptError,
    conversation_key,
    derived_client_msg_id,
    plan_reconciliation,
    split_transcript,
    utility_reason,
    validate_completion_request,
)
from services.orchestrator.domain.turn_request import validate_turn_request


def client(spec: str) -> list[ClientMessage]:
    """`"s:You are Elena|u:hi|a:hello"` → messages (s system, d developer, u user, a assistant)."""
    roles = {"s": "system", "d": "developer", "u": "user", "a": "assistant"}
    return [ClientMessage(roles[item[0]], item[2:]) for item in spec.split("|")] if spec else []


def stored(spec: str) -> list[StoredMessage]:
    """`"u:hi|a:hello|g"` → stored messages with ids m0, m1, …; `g` is a ghost."""
    messages = []
    for index, item in enumerate(spec.split("|") if spec else []):
        if item == "g":
            messages.append(StoredMessage(f"m{index}", "assistant", "", ghost=True))
        else:
            messages.append(StoredMessage(f"m{index}", {"u": "user", "a": "assistant"}[item[0]], item[2:]))
    return messages


def chat(spec: str) -> tuple[ClientMessage, ...]:
    return split_transcript(client(spec)).chat


# ---- reconciliation -------------------------------------------------------------------------------

# (case, stored branch, client chat, handling, position, user_message_id, diverges_at, left_behind, imports)
# Nothing stored is removed any more (issue 10): what diverges stays on the stored branch, the client's
# version becomes a new branch; the alignment itself is unchanged.
RECONCILE_CASES = [
    ("first message of a new conversation", "", "u:hi", "new_turn", 0, None, None, 0, ""),
    ("the client's greeting is taken over", "", "a:Welcome!|u:hi", "new_turn", 1, None, None, 0, "a:Welcome!"),
    ("(a) stored == transcript minus the last user message", "u:hi|a:hello", "u:hi|a:hello|u:how are you",
     "new_turn", 2, None, None, 0, ""),
    ("(b) swipe: the last user message is answered", "u:hi|a:hello", "u:hi", "regenerate", 0, "m0", None, 1, ""),
    ("(b) swipe after several turns", "u:hi|a:hello|u:news?|a:none", "u:hi|a:hello|u:news?", "regenerate", 2,
     "m2", None, 1, ""),
    ("(b) regenerate a ghosted message", "u:hi|a:hello|u:ping|g", "u:hi|a:hello|u:ping", "regenerate", 2, "m2",
     None, 0, ""),
    ("(b) later messages deleted, then regenerate (rewind)", "u:hi|a:hello|u:news?|a:none", "u:hi", "regenerate",
     0, "m0", None, 3, ""),
    ("resume: stored but not answered (generating or failed)", "u:hi|a:hello|u:news?", "u:hi|a:hello|u:news?",
     "resume", 2, "m2", None, 0, ""),
    ("a ghost is not part of the comparison", "u:hi|g", "u:hi|u:hello?", "new_turn", 1, None, None, 0, ""),
    ("(c) the last user message edited", "u:hi|a:hello", "u:hey", "new_turn", 0, None, "m0", 2, ""),
    ("(c) an earlier reply edited", "u:hi|a:hello|u:news?|a:none", "u:hi|a:HELLO|u:news?|a:none|u:ok",
     "new_turn", 4, None, "m1", 3, "a:HELLO|u:news?|a:none"),
    ("(c) the first user message edited", "u:hi|a:hello|u:news?|a:none", "u:hey|a:hello|u:news?|a:none|u:ok",
     "new_turn", 4, None, "m0", 4, "u:hey|a:hello|u:news?|a:none"),
    ("(c) a middle exchange deleted", "u:a|a:b|u:c|a:d|u:e|a:f", "u:a|a:b|u:e|a:f|u:g", "new_turn", 4, None, "m2",
     4, "u:e|a:f"),
    ("(c) a message inserted by the client", "u:a|a:b", "u:a|a:b|a:extra|u:c", "new_turn", 3, None, None, 0,
     "a:extra"),
    ("(c) nothing in common", "u:a|a:b", "u:x|a:y|u:z", "new_turn", 2, None, "m0", 2, "u:x|a:y"),
    ("the client trimmed its oldest messages", "a:Welcome!|u:hi|a:hello|u:news?|a:none",
     "u:hi|a:hello|u:news?|a:none|u:ok", "new_turn", 5, None, None, 0, ""),
    ("trimmed, then a swipe", "a:Welcome!|u:hi|a:hello|u:news?|a:none", "a:hello|u:news?", "regenerate", 3, "m3",
     None, 1, ""),
    ("repeated messages: the cheapest (latest) alignment", "u:hi|a:hey|u:hi|a:hey", "u:hi|a:hey|u:new",
     "new_turn", 4, None, None, 0, ""),
    ("whitespace the client re-formatted still matches", "u:hi|a:Hello  there.\n", "u:hi|a:Hello there.|u:ok",
     "new_turn", 2, None, None, 0, ""),
]


@pytest.mark.parametrize(("case", "stored_spec", "chat_spec", "handling", "position", "user_message_id",
                          "diverges_at", "left_behind", "imports"), RECONCILE_CASES, ids=[c[0] for c in RECONCILE_CASES])
def test_reconciliation(case: str, stored_spec: str, chat_spec: str, handling: str, position: int,
                        user_message_id: str | None, diverges_at: str | None, left_behind: int, imports: str) -> None:
    plan = plan_reconciliation(stored(stored_spec), chat(chat_spec))
    assert (plan.handling, plan.position, plan.user_message_id, plan.diverges_at, plan.left_behind) == (
        handling, position, user_message_id, diverges_at, left_behind)
    assert plan.imports == tuple(client(imports))
    assert plan.user_message == chat(chat_spec)[-1].content


def test_after_a_plan_is_applied_the_store_matches_the_client() -> None:
    """Applying new_turn (the branch up to diverges_at, the imports, the user message) yields the client's chat."""
    for _, stored_spec, chat_spec, handling, *_ in RECONCILE_CASES:
        if handling != "new_turn":
            continue
        before = stored(stored_spec)
        plan = plan_reconciliation(before, chat(chat_spec))
        visible = [m for m in before if not m.ghost]
        kept = visible if plan.diverges_at is None else visible[:[m.id for m in visible].index(plan.diverges_at)]
        after = [(m.role, " ".join(m.content.split())) for m in kept] + [
            (m.role, m.content) for m in plan.imports] + [("user", plan.user_message)]
        client_tail = [(m.role, " ".join(m.content.split())) for m in chat(chat_spec)]
        assert after[len(after) - len(client_tail):] == client_tail, stored_spec
        assert len(kept) + len(plan.imports) == plan.position


def test_a_transcript_must_end_with_a_user_message() -> None:
    with pytest.raises(ValueError):
        plan_reconciliation(stored("u:hi"), chat("u:hi|a:hello"))


# ---- the request split and utility calls -------------------------------------------------------------

def test_split_keeps_system_text_and_leaves_delivered_ghosts_out() -> None:
    transcript = split_transcript(client(
        "s:You are Elena.|d:Be brief.|a:Welcome!|u:hi|a:|s:[author's note]|u:still there?|s:Stay in character."))
    assert transcript.system_prompt == "You are Elena.\n\nBe brief.\n\n[author's note]\n\nStay in character."
    assert transcript.character_prompt == "You are Elena."
    assert [m.content for m in transcript.chat] == ["Welcome!", "hi", "still there?"]  # the empty reply dropped
    assert transcript.trailing_system


# (case, messages, marked, named, reason)
UTILITY_CASES = [
    ("a chat turn", "s:You are Elena.|u:hi", False, False, None),
    ("the explicit header", "s:You are Elena.|u:hi", True, False, "header"),
    ("a summary prompt after the reply", "s:You are Elena.|u:hi|a:hello|s:Summarize the story so far.", False,
     False, "instruction_after_reply"),
    ("impersonation after the reply", "s:You are Elena.|u:hi|a:hello|s:Write the user's next reply.", False,
     True, "instruction_after_reply"),
    ("continue: the transcript ends with the reply", "s:You are Elena.|u:hi|a:hello", False, False,
     "no_user_message"),
    ("only system messages", "s:You are Elena.", False, False, "no_user_message"),
    ("a connection test", "u:Hi", False, False, "probe"),
    ("a named conversation is chat even without a system prompt", "u:Hi", False, True, None),
    ("a long first message is chat", "u:" + "tell me a story " * 20, False, False, None),
    ("post-history instructions after the user message are chat", "s:You are Elena.|u:hi|s:Stay in character.",
     False, False, None),
]


@pytest.mark.parametrize(("case", "spec", "marked", "named", "reason"), UTILITY_CASES,
                         ids=[c[0] for c in UTILITY_CASES])
def test_utility_calls_are_recognised(case: str, spec: str, marked: bool, named: bool, reason: str | None) -> None:
    assert utility_reason(split_transcript(client(spec)), marked=marked, named=named) == reason


# ---- conversation and idempotency keys ---------------------------------------------------------------

def test_conversation_key_prefers_the_chat_id_then_the_user_field() -> None:
    transcript = split_transcript(client("s:You are Elena.|u:hi"))
    assert conversation_key("abc", "bob", transcript) == "chat:abc"
    assert conversation_key("", "bob", transcript) == "user:bob"
    assert conversation_key("", "", transcript).startswith("fingerprint:")


def test_fingerprint_is_the_character_and_the_first_user_message() -> None:
    def key(spec: str) -> str:
        return conversation_key("", "", split_transcript(client(spec)))

    base = key("s:You are Elena.|a:Welcome!|u:hi")
    assert key("s:You are Elena.|a:Welcome!|u:hi|a:hello|u:more|s:[world info]") == base  # later turns
    assert key("s:You are  Elena. |u: hi") == base  # whitespace and the greeting do not matter
    assert key("s:You are Elena.|u:hello") != base
    assert key("s:You are Kai.|u:hi") != base


def test_derived_client_msg_ids_are_deterministic_and_valid() -> None:
    key = derived_client_msg_id("session-1", 2, "how are you?")
    assert key == derived_client_msg_id("session-1", 2, "how  are you? ")
    others = {derived_client_msg_id("session-2", 2, "how are you?"), derived_client_msg_id("session-1", 3,
              "how are you?"), derived_client_msg_id("session-1", 2, "hi"),
              derived_client_msg_id("session-1", 2, "how are you?", generation=1)}
    assert key not in others and len(others) == 4
    assert validate_turn_request(content="x", client_msg_id=key, known_tiers=()).client_msg_id == key


@pytest.mark.parametrize(("model", "spec", "chat_id", "user", "field"), [
    (" ", "u:hi", "", "", "model"),
    ("Elena", "", "", "", "messages"),
    ("Elena", "u:hi|t:tool output", "", "", "messages[1].role"),
    ("Elena", "u:hi", "x" * 201, "", "chat_id"),
    ("Elena", "u:hi", "tab\there", "", "chat_id"),
    ("Elena", "u:hi", "", "é", "user"),
])
def test_invalid_requests_name_the_field(model: str, spec: str, chat_id: str, user: str, field: str) -> None:
    messages = [ClientMessage({"u": "user", "t": "tool"}[item[0]], item[2:]) for item in spec.split("|")] if spec \
        else []
    with pytest.raises(TranscriptError) as raised:
        validate_completion_request(model, messages, chat_id, user)
    assert raised.value.field == field


def test_valid_request_fields_are_trimmed() -> None:
    assert validate_completion_request(" Elena ", client("u:hi"), " abc ", "") == ("Elena", "abc", "")
