# ruff: noqa: F811  (the `harness` fixture is imported, then requested by name)
"""SillyTavern's three data-losing scenarios (issue 10), replayed through `/v1` with the real `openai` client:
every earlier message id of every chat survives (ids, not counts)."""

from __future__ import annotations

import uuid

from tests.integration.test_openai_api import Harness, harness, reply, transcript  # noqa: F401 (the fixture)


async def every_message(h: Harness, session: str) -> dict[str, tuple[str, str]]:
    rows = await h.pool.fetch("SELECT id, role, content FROM chat.messages WHERE session_id = $1 AND deleted_at IS NULL",
                              uuid.UUID(session))
    return {r["id"]: (r["role"], r["content"]) for r in rows}


async def active_ids(h: Harness, session: str) -> list[str]:
    rows = await h.pool.fetch(
        """WITH RECURSIVE path AS (
               SELECT m.* FROM chat.messages m JOIN chat.branches b ON b.head_id = m.id
               JOIN chat.sessions s ON s.active_branch_id = b.id WHERE s.id = $1
               UNION ALL SELECT m.* FROM chat.messages m JOIN path ON m.id = path.parent_id)
           SELECT id FROM path WHERE kind = 'chat' ORDER BY id""", uuid.UUID(session))
    return [r["id"] for r in rows]


async def chat(h: Harness, turns: list[str], replies: list[str]) -> tuple[str, list[str]]:
    """Send `turns` one by one as SillyTavern does (the whole transcript each time) → (session, transcript)."""
    sent: list[str] = []
    session = ""
    for text, answer in zip(turns, replies, strict=True):
        sent.append(text)
        h.script.add(reply(answer))
        _, headers = await h.complete(transcript(*sent))
        session = headers["x-rapport-session-id"]
        sent.append(answer)
    return session, sent


async def test_a_new_chat_with_the_same_opener_and_going_back_lose_nothing(harness: Harness) -> None:
    h = harness
    old_session, old = await chat(h, ["Hi!", "I love the stars.", "Tell me about Saturn.", "And Jupiter?"],
                                  ["Hello!", "So do I.", "It has rings.", "It is huge."])
    before = await every_message(h, old_session)
    old_ids = await active_ids(h, old_session)
    assert len(old_ids) == 8

    # a new chat with the same character and the same opener
    new_session, new = await chat(h, ["Hi!", "Let's talk about whales."], ["Hey you.", "Whales are wonderful."])
    assert new_session == old_session  # the same conversation of user × persona, now on a new branch
    after_new = await every_message(h, old_session)
    assert all(after_new[i] == before[i] for i in before), "an earlier message changed or vanished"
    new_ids = await active_ids(h, old_session)

    # back to the old chat: its branch again, whole, and the new one stays too
    h.script.add(reply("Its moons are many."))
    _, headers = await h.complete(transcript(*old, "How many moons?"))
    assert headers["x-rapport-handling"] == "new_turn"
    back = await active_ids(h, old_session)
    assert back[:8] == old_ids and len(back) == 10
    everything = await every_message(h, old_session)
    assert set(before) <= set(everything) and set(new_ids) <= set(everything)
    assert h.script.requests[-1].messages[-1]["content"] == "How many moons?"

    # and the new chat continues where it was
    h.script.add(reply("Blue whales sing."))
    _, headers = await h.complete(transcript(*new, "Do they sing?"))
    assert headers["x-rapport-handling"] == "new_turn"
    assert (await active_ids(h, old_session))[:len(new_ids)] == new_ids


async def test_fixing_a_typo_in_the_first_message_is_a_branch_of_the_same_conversation(harness: Harness) -> None:
    h = harness
    session, sent = await chat(h, ["Hi! I'm Sma.", "I live in Porto."], ["Hello Sma!", "Porto is lovely."])
    before = await every_message(h, session)
    sent[0] = "Hi! I'm Sam."
    h.script.add(reply("Sorry, Sam!"))
    _, headers = await h.complete(transcript(*sent, "It's Sam, actually."))
    assert headers["x-rapport-session-id"] == session and headers["x-rapport-handling"] == "new_turn"
    assert await h.pool.fetchval("SELECT count(*) FROM chat.sessions") == 1  # not a second session
    after = await every_message(h, session)
    assert all(after[i] == before[i] for i in before)
    path = [after[i][1] for i in await active_ids(h, session)]
    assert path == [*sent, "It's Sam, actually.", "Sorry, Sam!"]


async def test_after_a_ghost_summarize_impersonate_and_continue_are_utility_calls(harness: Harness) -> None:
    from services.offline_llm.server import ScriptedResponse

    h = harness
    session, sent = await chat(h, ["Hello there."], ["Hi!"])
    h.script.add(ScriptedResponse("empty"))  # the persona leaves the next message unanswered
    _, headers = await h.complete(transcript(*sent, "Are you ignoring me?"))
    before = await every_message(h, session)
    ghosted = [*sent, "Are you ignoring me?"]
    for extra, answer in (
        ([{"role": "system", "content": "Summarize the chat so far in one line."}], "A short chat."),
        ([{"role": "system", "content": "[Write your next reply from the point of view of the user.]"}], "Me again"),
        ([{"role": "assistant", "content": ""}], "…and then she smiled."),  # Continue on the empty reply
    ):
        h.script.add(reply(answer))
        completion, headers = await h.complete(transcript(*ghosted) + extra)
        assert headers["x-rapport-handling"] == "utility", extra
        assert completion.choices[0].message.content == answer
    assert await every_message(h, session) == before  # the ghost stands, nothing stored
    kinds = await h.pool.fetch("SELECT kind FROM chat.messages WHERE session_id = $1 AND role = 'assistant' "
                               "ORDER BY id", uuid.UUID(session))
    assert [k["kind"] for k in kinds] == ["chat", "ghost"]
