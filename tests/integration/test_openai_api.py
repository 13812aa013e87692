"""The OpenAI-compatible API through the gateway, with the real `openai` client: API keys, models,
streamed and whole completions, transcript reconciliation (turns, swipes, edits), utility calls,
conversations by X-Chat-Id, errors in OpenAI's shape, sampling passed to the LLM.

The orchestrator's LLM is the scriptable OpenAI-compatible stub (a real HTTP server), so the test
decides the replies and sees every request the orchestrator makes."""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import openai
import pytest

from gateway.openai_api import ApiKeyCache, CompletionAssembler
from services import cli
from services.offline_llm.server import LlmScript, ScriptedResponse, build_llm_app, serve_llm
from services.orchestrator import api_keys
from services.servicekit.db import create_pool
from tests.stack import Stack, start_stack, wait_for

CHARACTER = "You are Elena, an astronomer in the Atacama desert. You speak softly and love the night sky."
KEY_CACHE_SECONDS = 2.0


@dataclass
class Harness:
    stack: Stack
    script: LlmScript
    pool: asyncpg.Pool
    user: uuid.UUID
    key: str
    client: openai.AsyncOpenAI

    def client_for(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.stack.url + "/v1", api_key=key, max_retries=0)

    async def complete(self, messages: list[dict[str, str]], *, chat_id: str | None = None, model: str = "Elena",
                       **params: Any) -> tuple[Any, dict[str, str]]:
        """A whole completion → (the ChatCompletion, the response headers)."""
        headers = {"X-Chat-Id": chat_id} if chat_id else {}
        raw = await self.client.chat.completions.with_raw_response.create(
            model=model, messages=messages, extra_headers=headers, **params)  # type: ignore[arg-type]
        return raw.parse(), dict(raw.headers)

    async def stored(self, session_id: str) -> list[tuple[str, str]]:
        """The conversation as stored on its active branch (issue 10: other branches and alternatives are kept
        beside it; `everything` has every message)."""
        rows = await self.pool.fetch(
            """WITH RECURSIVE path AS (
                   SELECT m.* FROM chat.messages m JOIN chat.branches b ON b.head_id = m.id
                   JOIN chat.sessions s ON s.active_branch_id = b.id WHERE s.id = $1
                   UNION ALL SELECT m.* FROM chat.messages m JOIN path ON m.id = path.parent_id)
               SELECT role, content FROM path WHERE kind = 'chat' AND deleted_at IS NULL ORDER BY id""",
            uuid.UUID(session_id))
        return [(r["role"], r["content"]) for r in rows]

    async def everything(self, session_id: str) -> list[tuple[str, str, str]]:
        """Every chat message of the session, on any branch: (id, role, content)."""
        rows = await self.pool.fetch("SELECT id, role, content FROM chat.messages WHERE session_id = $1 "
                                     "AND kind = 'chat' ORDER BY id", uuid.UUID(session_id))
        return [(r["id"], r["role"], r["content"]) for r in rows]

    async def post_processed(self, session_id: str) -> int:
        """Outbox jobs delivered for the session, once none is pending."""
        async def settled() -> int | None:
            rows = await self.pool.fetch("SELECT o.status FROM chat.outbox o JOIN chat.turns t ON t.id = o.turn_id "
                                         "WHERE t.session_id = $1", uuid.UUID(session_id))
            return None if any(r["status"] == "pending" for r in rows) else len(rows) or None
        return await wait_for(settled)  # type: ignore[no-any-return]


@pytest.fixture
async def harness(database_url: str, monkeypatch: pytest.MonkeyPatch, spans: Any) -> AsyncIterator[Harness]:
    monkeypatch.setenv("API_KEY_CACHE_SECS", str(KEY_CACHE_SECONDS))
    script = LlmScript()
    llm = await serve_llm(build_llm_app("script", script))
    stack = await start_stack(database_url, per_service_env={"orchestrator": {
        "LLM_BASE_URL": llm.base_url, "LLM_API_KEY": "x", "LLM_MODEL": "m"}})
    pool = await create_pool(database_url, max_size=2)
    user = uuid.uuid4()
    key, _ = await api_keys.create_api_key(pool, user, "tests")
    client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)
    try:
        yield Harness(stack, script, pool, user, key, client)
    finally:
        script.release_stalls()
        await client.close()
        await pool.close()
        await stack.stop()
        await llm.stop()


def transcript(*turns: str) -> list[dict[str, str]]:
    """The character's system prompt, then alternating user/assistant messages."""
    roles = ("user", "assistant")
    return [{"role": "system", "content": CHARACTER}] + [
        {"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


def reply(text: str) -> ScriptedResponse:
    return ScriptedResponse("reply", text)


# ---- keys and models ---------------------------------------------------------------------------

async def test_models_are_the_personas(harness: Harness) -> None:
    models = await harness.client.models.list()
    assert [m.id for m in models.data] == ["Elena", "Inês", "Kai"]
    assert {(m.object, m.owned_by) for m in models.data} == {("model", "rapport")}


async def test_a_bad_or_missing_key_is_401_in_openais_shape(harness: Harness) -> None:
    for key in ("rk_" + "x" * 32, "not-a-jwt"):
        with pytest.raises(openai.AuthenticationError) as raised:
            await harness.client_for(key).models.list()
        assert raised.value.status_code == 401
        assert raised.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        assert set(raised.value.body) == {"message", "type", "code", "param"}  # type: ignore[arg-type]
    response = await harness.stack.client.post("/v1/chat/completions", json={"model": "Elena", "messages": []})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


async def test_a_jwt_is_accepted_too(harness: Harness) -> None:
    models = await harness.client_for(harness.stack.token(harness.user)).models.list()
    assert len(models.data) == 3


async def test_keys_cli_and_a_revoked_key_stops_working(harness: Harness, database_url: str,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert await asyncio.to_thread(cli.main, ["keys", "create", "--user", str(harness.user), "--name", "laptop"]) == 0
    key, details = capsys.readouterr().out.splitlines()
    assert key.startswith("rk_") and len(key) == 35
    key_id = details.split()[1]
    stored = await harness.pool.fetchrow("SELECT prefix, key_hash FROM chat.api_keys WHERE id = $1",
                                         uuid.UUID(key_id))
    assert stored["prefix"] == key[:11] and stored["key_hash"] == api_keys.key_hash(key) and key not in str(stored)

    client = harness.client_for(key)
    assert len((await client.models.list()).data) == 3
    assert await asyncio.to_thread(cli.main, ["keys", "revoke", key_id]) == 0
    # The gateway reuses a key's check for API_KEY_CACHE_SECS, then the revocation applies.
    assert len((await client.models.list()).data) == 3
    assert await asyncio.to_thread(cli.main, ["keys", "list", "--user", str(harness.user)]) == 0
    listing = capsys.readouterr().out
    assert "laptop" in listing and "REVOKED" in listing and key not in listing

    async def refused() -> bool:
        try:
            await client.models.list()
        except openai.AuthenticationError:
            return True
        return False
    await wait_for(refused, timeout=KEY_CACHE_SECONDS + 5)


def test_the_key_cache_expires_after_its_ttl() -> None:
    now = [100.0]
    cache = ApiKeyCache(ttl=30, negative_ttl=5, clock=lambda: now[0])
    user = uuid.uuid4()
    cache.put("rk_a", user)
    cache.put("rk_b", None)
    assert cache.get("rk_a") == (True, user) and cache.get("rk_b") == (True, None)
    now[0] += 6
    assert cache.get("rk_a") == (True, user) and cache.get("rk_b") == (False, None)
    now[0] += 25
    assert cache.get("rk_a") == (False, None)


# ---- completions ------------------------------------------------------------------------------

async def test_a_whole_completion_is_a_turn_with_the_clients_system_prompt(harness: Harness) -> None:
    harness.script.add(reply("The sky is clear tonight."))
    completion, headers = await harness.complete(transcript("Hello Elena, what are you looking at?"))
    assert completion.object == "chat.completion" and completion.model == "Elena"
    assert completion.choices[0].message.content == "The sky is clear tonight."
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert headers["x-rapport-handling"] == "new_turn"
    session = headers["x-rapport-session-id"]
    assert await harness.stored(session) == [("user", "Hello Elena, what are you looking at?"),
                                             ("assistant", "The sky is clear tonight.")]
    assert await harness.post_processed(session) == 3
    system = harness.script.requests[-1].messages[0]
    assert system["role"] == "system" and system["content"].startswith(CHARACTER)
    assert "[rules]" in system["content"]  # Rapport's own sections around the client's
    persona_prompt = await harness.pool.fetchval("SELECT system_prompt FROM chat.personas WHERE name = 'Elena'")
    assert persona_prompt.strip().split("\n")[0] not in system["content"]


async def test_a_streamed_completion(harness: Harness) -> None:
    harness.script.add(reply("Look, a shooting star over the dunes."))
    stream = await harness.client.chat.completions.create(
        model="elena", messages=transcript("Anything happening up there?"), stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Look, a shooting star over the dunes."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")

    harness.script.add(reply("Second."))
    raw: list[str] = []
    async with harness.stack.client.stream("POST", "/v1/chat/completions", headers={
            "Authorization": f"Bearer {harness.key}"}, json={"model": "Elena", "stream": True, "messages": transcript(
                "Anything happening up there?", "Look, a shooting star over the dunes.", "Wow!")}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        raw = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert raw[-1] == "data: [DONE]" and json.loads(raw[-2][5:])["choices"][0]["finish_reason"] == "stop"


async def test_a_multi_turn_conversation_keeps_the_stored_history_equal_to_the_clients(harness: Harness) -> None:
    turns = ["Hi! I'm Sam.", "Hello Sam, welcome to the observatory.", "What can we see tonight?",
             "Saturn, if the wind stays calm.", "Can I look through the big telescope?"]
    sessions = set()
    for index in range(0, len(turns), 2):
        if index + 1 < len(turns):
            harness.script.add(reply(turns[index + 1]))
        completion, headers = await harness.complete(transcript(*turns[:index + 1]))
        assert headers["x-rapport-handling"] == "new_turn"
        sessions.add(headers["x-rapport-session-id"])
    assert len(sessions) == 1  # the fingerprint (character + first user message) found the conversation
    session = sessions.pop()
    stored = await harness.stored(session)
    assert stored[:5] == [(["user", "assistant"][i % 2], text) for i, text in enumerate(turns)]
    assert len(stored) == 6 and stored[5] == ("assistant", completion.choices[0].message.content)
    last = harness.script.requests[-1].messages
    assert [m["content"] for m in last[1:]] == turns  # the history came from the store, then the new message
    assert await harness.post_processed(session) == 9
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.messages WHERE session_id = $1 AND imported",
                                       uuid.UUID(session)) == 0


async def test_a_swipe_replaces_the_last_reply_without_post_processing_it_again(harness: Harness) -> None:
    first = transcript("Tell me about the Milky Way.")
    harness.script.add(reply("It is our home galaxy."))
    _, headers = await harness.complete(first)
    session = headers["x-rapport-session-id"]
    assert await harness.post_processed(session) == 3
    affinity_before = await harness.pool.fetchval("SELECT version FROM affinity.vectors WHERE session_id = $1",
                                                  uuid.UUID(session))

    harness.script.add(reply("A river of stars across the whole sky."))
    swiped, headers = await harness.complete(first)  # SillyTavern sends the transcript without the last reply
    assert headers["x-rapport-handling"] == "regenerate" and headers["x-rapport-session-id"] == session
    assert swiped.choices[0].message.content == "A river of stars across the whole sky."
    assert await harness.stored(session) == [("user", "Tell me about the Milky Way."),
                                             ("assistant", "A river of stars across the whole sky.")]
    # the first reply is kept as an alternative (issue 10: nothing said is lost)
    assert [c for _, _, c in await harness.everything(session)] == [
        "Tell me about the Milky Way.", "It is our home galaxy.", "A river of stars across the whole sky."]
    assert await harness.post_processed(session) == 3  # no second post-process for the same user message
    assert await harness.pool.fetchval("SELECT count(*) FROM affinity.events WHERE session_id = $1 AND kind = "
                                       "'message'", uuid.UUID(session)) == 1
    assert await harness.pool.fetchval("SELECT version FROM affinity.vectors WHERE session_id = $1",
                                       uuid.UUID(session)) == affinity_before
    turns = await harness.pool.fetch("SELECT status, explain->>'post_process' AS processed FROM chat.turns "
                                     "WHERE session_id = $1 ORDER BY id", uuid.UUID(session))
    assert [(t["status"], t["processed"]) for t in turns] == [("done", "true"), ("done", "false")]  # recorded

    harness.script.add(reply("Continuing after the swipe."))
    _, headers = await harness.complete(transcript("Tell me about the Milky Way.",
                                                   "A river of stars across the whole sky.", "Beautiful."))
    assert headers["x-rapport-handling"] == "new_turn"
    assert [c for _, c in await harness.stored(session)][-2:] == ["Beautiful.", "Continuing after the swipe."]


async def test_an_edited_message_is_reconciled(harness: Harness) -> None:
    harness.script.add(reply("Clear skies."), reply("About 3000 stars."))
    await harness.complete(transcript("How is the weather?"))
    _, headers = await harness.complete(transcript("How is the weather?", "Clear skies.", "How many stars?"))
    session = headers["x-rapport-session-id"]
    assert await harness.post_processed(session) == 6

    harness.script.add(reply("Then let's count them together."))
    edited = ["How is the weather?", "Clear skies, and no moon.", "How many stars?", "About 3000 stars.",
              "Amazing."]
    _, headers = await harness.complete(transcript(*edited))
    assert headers["x-rapport-handling"] == "new_turn" and headers["x-rapport-session-id"] == session
    assert [c for _, c in await harness.stored(session)] == edited + ["Then let's count them together."]
    imported = await harness.pool.fetch("SELECT content FROM chat.messages WHERE session_id = $1 AND imported "
                                        "ORDER BY id", uuid.UUID(session))
    assert [r["content"] for r in imported] == edited[1:4]
    # issue 10: the edit is a new branch from the last shared message; the old branch stays whole (its two
    # turns and four messages), the imported user message is post-processed once (a turn of its own)
    everything = await harness.everything(session)
    assert [c for _, _, c in everything if c in ("Clear skies.", "How many stars?", "About 3000 stars.")] == [
        "Clear skies.", "How many stars?", "About 3000 stars.", "How many stars?", "About 3000 stars."]
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.turns WHERE session_id = $1",
                                       uuid.UUID(session)) == 4
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.branches WHERE session_id = $1",
                                       uuid.UUID(session)) == 2
    counts = await harness.pool.fetchrow("SELECT message_count, user_message_count FROM chat.sessions WHERE id = $1",
                                         uuid.UUID(session))
    assert (counts["message_count"], counts["user_message_count"]) == (6, 3)
    history = await harness.stack.client.get(f"/comp/chat/{session}/history",
                                             headers=harness.stack.headers(harness.user))
    assert [m["content"] for m in history.json()["messages"]] == edited + ["Then let's count them together."]


async def test_utility_calls_are_answered_and_not_stored(harness: Harness) -> None:
    harness.script.add(reply("Clear skies."))
    _, headers = await harness.complete(transcript("How is the weather?"))
    session = headers["x-rapport-session-id"]
    before = await harness.pool.fetchval("SELECT count(*) FROM chat.messages")

    summary = transcript("How is the weather?", "Clear skies.") + [
        {"role": "system", "content": "Summarize the conversation so far in one sentence."}]
    harness.script.add(reply("They talked about the weather."), reply("Hi there."), reply("Marked utility."))
    completion, headers = await harness.complete(summary)
    assert completion.choices[0].message.content == "They talked about the weather."
    assert headers["x-rapport-handling"] == "utility" and headers["x-rapport-session-id"] == ""
    assert harness.script.requests[-1].messages == summary  # the client's messages, as they are

    probe, headers = await harness.complete([{"role": "user", "content": "Hi"}], max_tokens=5)
    assert probe.choices[0].message.content == "Hi there." and headers["x-rapport-handling"] == "utility"
    marked = await harness.client.chat.completions.create(
        model="Elena", messages=transcript("Write a title for this chat."),  # type: ignore[arg-type]
        extra_headers={"X-Rapport-Utility": "1"})
    assert marked.choices[0].message.content == "Marked utility."

    assert await harness.pool.fetchval("SELECT count(*) FROM chat.messages") == before
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.sessions") == 1
    assert len(await harness.stored(session)) == 2


async def test_a_client_that_trims_its_oldest_messages_stays_in_its_conversation(harness: Harness) -> None:
    """Without X-Chat-Id the fingerprint holds the first user message, which a client trims away once the
    chat outgrows its context: the conversation is found again by the messages it still sends."""
    turns = ["Hi! I'm Sam.", "Hello Sam.", "Do you sleep in the day?", "Mostly, yes.", "Even in summer?"]
    harness.script.add(reply(turns[1]), reply(turns[3]), reply("Especially then."))
    await harness.complete(transcript(turns[0]))
    await harness.complete(transcript(*turns[:3]))
    _, headers = await harness.complete(transcript(*turns[:5]))
    session = headers["x-rapport-session-id"]

    harness.script.add(reply("It is cooler at night."))
    trimmed = turns[2:] + ["Especially then.", "Why?"]
    _, headers = await harness.complete(transcript(*trimmed))
    assert headers["x-rapport-session-id"] == session and headers["x-rapport-handling"] == "new_turn"
    assert [c for _, c in await harness.stored(session)] == turns + ["Especially then.", "Why?",
                                                                      "It is cooler at night."]
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.sessions") == 1


async def test_x_chat_id_separates_conversations(harness: Harness) -> None:
    harness.script.add(reply("One."), reply("Two."), reply("Three."))
    _, first = await harness.complete(transcript("Hello!"), chat_id="chat-a")
    _, second = await harness.complete(transcript("Hello!"), chat_id="chat-b")
    _, again = await harness.complete(transcript("Hello!", "One.", "And you?"), chat_id="chat-a")
    assert first["x-rapport-session-id"] != second["x-rapport-session-id"]
    assert again["x-rapport-session-id"] == first["x-rapport-session-id"] and again["x-rapport-handling"] == "new_turn"
    assert [c for _, c in await harness.stored(first["x-rapport-session-id"])] == ["Hello!", "One.", "And you?",
                                                                                  "Three."]
    assert [c for _, c in await harness.stored(second["x-rapport-session-id"])] == ["Hello!", "Two."]
    keys = await harness.pool.fetch("SELECT client_key FROM chat.sessions ORDER BY started_at")
    assert [k["client_key"] for k in keys] == ["chat:chat-a", "chat:chat-b"]


async def test_the_same_request_while_it_is_answered_attaches_to_the_same_turn(harness: Harness) -> None:
    harness.script.add(ScriptedResponse("stall", "Patience, the dome is opening.", stall_seconds=10))
    messages = transcript("Open the dome, please.")
    first = asyncio.create_task(harness.complete(messages))
    await harness.script.wait_for_requests(1)  # the first request's turn is generating
    raw = await harness.client.chat.completions.with_raw_response.create(
        model="Elena", messages=messages, stream=True)  # type: ignore[arg-type]
    assert raw.headers["x-rapport-handling"] == "resume"  # attached to the turn in progress
    harness.script.release_stalls()
    repeat = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    one, headers = await first
    assert one.choices[0].message.content == repeat == "Patience, the dome is opening."
    assert await harness.stored(headers["x-rapport-session-id"]) == [
        ("user", "Open the dome, please."), ("assistant", "Patience, the dome is opening.")]
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.turns") == 1
    assert len(harness.script.requests) == 1


async def test_a_ghost_is_an_empty_message_and_the_next_turn_follows_it(harness: Harness) -> None:
    harness.script.add(ScriptedResponse("empty"))
    ghost, headers = await harness.complete(transcript("Are you there?"))
    assert ghost.choices[0].message.content == "" and ghost.choices[0].finish_reason == "stop"
    session = headers["x-rapport-session-id"]
    assert await harness.pool.fetchval("SELECT kind FROM chat.messages WHERE session_id = $1 AND role = 'assistant'",
                                       uuid.UUID(session)) == "ghost"
    harness.script.add(reply("Sorry, I was at the telescope."))
    _, headers = await harness.complete(transcript("Are you there?", "", "Hello??"))  # the client kept the empty one
    assert headers["x-rapport-handling"] == "new_turn" and headers["x-rapport-session-id"] == session
    assert await harness.stored(session) == [("user", "Are you there?"), ("user", "Hello??"),
                                             ("assistant", "Sorry, I was at the telescope.")]


# ---- errors and parameters ------------------------------------------------------------------------

async def test_an_unknown_model_is_404_model_not_found(harness: Harness) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await harness.client.chat.completions.create(
            model="gpt-4o", messages=transcript("hi"))  # type: ignore[arg-type]
    assert raised.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.sessions") == 0


async def test_invalid_parameters_are_400_naming_the_parameter(harness: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await harness.client.chat.completions.create(model="Elena", messages=transcript("hi"),  # type: ignore[arg-type]
                                                     temperature=5)
    assert raised.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as raised:
        await harness.client.chat.completions.create(
            model="Elena", messages=[{"role": "system", "content": CHARACTER},  # type: ignore[list-item]
                                     {"role": "user", "content": "x" * 5000}])
    assert raised.value.body["param"] == "messages[1].content"  # type: ignore[index]
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.messages") == 0


async def test_sampling_parameters_reach_the_llm(harness: Harness) -> None:
    harness.script.add(reply("Fine."))
    await harness.complete(transcript("Short answer please."), temperature=0.3, max_tokens=55, top_p=0.8,
                           stop=["\nSam:"], presence_penalty=0.1, frequency_penalty=0.2)
    params = harness.script.requests[-1].params
    assert {k: params[k] for k in ("temperature", "max_tokens", "top_p", "stop", "presence_penalty",
                                   "frequency_penalty")} == {
        "temperature": 0.3, "max_tokens": 55, "top_p": 0.8, "stop": ["\nSam:"], "presence_penalty": 0.1,
        "frequency_penalty": 0.2}


# ---- frames → chunks ----------------------------------------------------------------------------

def test_a_model_hand_over_is_invisible_to_the_client() -> None:
    assembler = CompletionAssembler(model="Elena")
    frames = [{"type": "meta", "message_id": "A", "action_type": "reply"},
              {"type": "delta", "message_id": "A", "content": "Hel"},
              {"type": "done", "message_id": "A", "truncated": True, "usage": {}},
              {"type": "meta", "message_id": "B", "action_type": "reply", "continues_from": "A"},
              {"type": "delta", "message_id": "B", "content": "lo."},
              {"type": "done", "message_id": "B", "truncated": False,
               "usage": {"prompt_tokens": 10, "completion_tokens": 2}},
              {"type": "final"}]
    chunks = [chunk for frame in frames for chunk in assembler.feed(frame)]
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}, {"content": "Hel"},
                                                          {"content": "lo."}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    completion = assembler.completion()
    assert completion["id"] == "chatcmpl-A" and completion["choices"][0]["message"]["content"] == "Hello."
    assert completion["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
