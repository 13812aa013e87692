"""The hardened turn, driven by the scriptable OpenAI-compatible LLM stub (a real HTTP server, so the
real `openai` client code runs): the model chain, the judge, timeouts, idempotency, disconnects,
validation, degradation and the explain endpoint."""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.offline_llm.server import LlmScript, ScriptedResponse, build_llm_app, serve_llm
from tests.stack import Stack, new_client_msg_id, reply_text, sse_frames, start_stack, wait_for

MODEL_CONFIG = """
[defaults]
fallback_temperature = 0.7

[tasks.chat_companion]
model = ["model-a", "model-b"]
fallback = ["model-c"]
retry_depth = 2
temperature = 0.85
max_tokens = 400

[tasks.chat_companion.tiers.premium]
model = ["model-a", "model-b"]
allow_traits = ["flirty", "brief"]

[tasks.pde_decision]
filter_prompt = "Decide whether the persona replies or ghosts."
model = "judge-model"
ghosting = true
"""


class Harness:
    def __init__(self, stack: Stack, script: LlmScript) -> None:
        self.stack = stack
        self.script = script


@pytest.fixture
async def harness(database_url: str, tmp_path: Path, spans) -> AsyncIterator[Harness]:  # type: ignore[no-untyped-def]
    script = LlmScript()
    llm = await serve_llm(build_llm_app("script", script))
    config = tmp_path / "model_config.toml"
    config.write_text(MODEL_CONFIG)
    env = {"LLM_BASE_URL": llm.base_url, "LLM_API_KEY": "sk-test", "MODEL_CONFIG_PATH": str(config),
           "LLM_TIMEOUT_SECS": "1.5", "OPENROUTER_USAGE_HIDDEN_KEYS": "completion_tokens",
           "OPENROUTER_APP_URL": "https://rapport.example", "OPENROUTER_APP_TITLE": "Rapport tests"}
    stack = await start_stack(database_url, per_service_env={"orchestrator": env})
    try:
        yield Harness(stack, script)
    finally:
        script.release_stalls()
        await stack.stop()
        await llm.stop()


def kinds(frames: list[dict]) -> list[str]:
    return [f["type"] for f in frames]


def judge_reply(action: str = "reply") -> ScriptedResponse:
    return ScriptedResponse("json", json.dumps({"action": action, "inner_state": "curious", "tone": "light",
                                                "reason": "test"}), model="judge-model")


async def test_failed_primary_hands_over_to_the_fallback_which_continues(harness: Harness, db) -> None:
    s, script = harness.stack, harness.script
    script.add(judge_reply(), ScriptedResponse("fail", status=503, model="model-a"),
               ScriptedResponse("reply", "Hello from B.", model="model-b"))
    user = uuid.uuid4()
    chat = await s.start_chat(user)
    frames = await s.send(user, chat["session_id"], "Hi there, how is your evening going?")
    assert kinds(frames)[:3] == ["meta", "done", "meta"]
    first_meta, cut_done, second_meta = frames[0], frames[1], frames[2]
    assert first_meta["model"] == "model-a" and cut_done["truncated"] is True
    assert second_meta["model"] == "model-b" and second_meta["continues_from"] == first_meta["message_id"]
    assert reply_text(frames) == "Hello from B."
    assert frames[-2]["type"] == "done" and frames[-2]["truncated"] is False and frames[-1]["retries"] == 1
    history = (await s.client.get(f"/comp/chat/{chat['session_id']}/history", headers=s.headers(user))).json()
    assert [m["content"] for m in history["messages"]][-1] == "Hello from B."
    assert history["messages"][-1]["id"] == second_meta["message_id"]


async def test_a_cut_stream_is_continued_by_the_next_model_from_the_partial_text(harness: Harness) -> None:
    s, script = harness.stack, harness.script
    script.add(judge_reply(), ScriptedResponse("cut", "one two three four five six", after_chunks=2, model="model-a"),
               ScriptedResponse("reply", "and the rest.", model="model-b"))
    user = uuid.uuid4()
    chat = await s.start_chat(user)
    frames = await s.send(user, chat["session_id"], "Tell me a story about the sea, please.")
    dones = [f for f in frames if f["type"] == "done"]
    assert dones[0]["truncated"] is True and dones[-1]["truncated"] is False
    partial = "".join(f["content"] for f in frames if f["type"] == "delta" and f["message_id"] == frames[0]["message_id"])
    assert partial and "one" in partial
    continuation_request = [r for r in script.requests if r.model == "model-b"][0]
    assert continuation_request.messages[-1] == {"role": "assistant", "content": partial}
    assert reply_text(frames) == partial + "and the rest."


async def test_all_models_failing_ends_with_a_retryable_error_and_a_retry_regenerates(harness: Harness, db) -> None:
    s, script = harness.stack, harness.script
    script.add(judge_reply(), *(ScriptedResponse("fail", status=502, model=m) for m in ("model-a", "model-b", "model-c")))
    user = uuid.uuid4()
    chat = await s.start_chat(user)
    client_msg_id = new_client_msg_id()
    frames = await s.send(user, chat["session_id"], "Are you there? I wanted to ask something.", client_msg_id)
    assert frames[-1]["type"] == "error" and frames[-1]["retryable"] is True
    assert frames[-1]["code"] == "upstream_unavailable" and frames[-1]["user_message"]
    assert kinds(frames).count("meta") == 3
    assert await db.fetchval("SELECT count(*) FROM chat.messages WHERE role = 'assistant'") == 0
    assert await db.fetchval("SELECT status FROM chat.turns") == "failed"
    script.add(judge_reply(), ScriptedResponse("reply", "Sorry, I'm here now.", model="model-a"))
    again = await s.send(user, chat["session_id"], "Are you there? I wanted to ask something.", client_msg_id)
    assert reply_text(again) == "Sorry, I'm here now." and again[-1]["type"] == "final"
    assert await db.fetchval("SELECT count(*) FROM chat.messages WHERE role = 'user'") == 1


async def test_an_empty_last_completion_is_a_ghost_fallback(harness: Harness, db) -> None:
    s, script = harness.stack, harness.script
    script.add(judge_reply(), ScriptedResponse("empty", model="model-a"), ScriptedResponse("empty", model="model-b"),
               ScriptedResponse("empty", model="model-c"))
    user = uuid.uuid4()
    chat = await s.start_chat(user)
    frames = await s.send(user, chat["session_id"], "Hmm, what do you think about that?")
    done = [f for f in frames if f["type"] == "done"][-1]
    assert done.get("ghost_fallback") is True and frames[-1]["type"] == "final"
    assert await db.fetchval("SELECT count(*) FROM chat.outbox") == 0  # nothing to post-process


async def test_a_stalled_model_times_out_and_the_chain_moves_on(harness: Harness) -> None:
    s, script = harness.stack, harness.script
    script.add(judge_reply(), ScriptedResponse("stall", stall_seconds=30, model="model-a"),
               ScriptedResponse("reply", "Made it.", model="model-b"))
    user = uuid.uuid4()
    chat = await s.start_chat(user)
    frames = await s.send(user, chat["session_id"], "Still awake at this hour?")
    assert frames[1]["type"] == "done" and frames[1]["truncated"] is True
    assert reply_text(frames) == "Made it."


async def test_generation_timeout_ends_the_turn_with_a_recorded_failure(database_url: str, spans) -> None:  # type: ignore[no-untyped-def]
    script = LlmScript(ScriptedResponse("stall", stall_seconds=30))
    llm = await serve_llm(build_llm_app("script", script))
    stack = await start_stack(database_url, per_service_env={"orchestrator": {
        "LLM_BASE_URL": llm.base_url, "LLM_API_KEY": "x", "LLM_MODEL": "slow", "CHAT_GEN_TIMEOUT_SECS": "0.5"}})
    try:
        user = uuid.uuid4()
        chat = await stack.start_chat(user)
        frames = await stack.send(user, chat["session_id"], "Hello?")
        assert frames[-1] == {**frames[-1], "type": "error", "code": "generation_timeout", "retryable": True}
    finally:
        script.release_stalls()
        await stack.stop()
        await llm.stop()


async def test_the_judge_is_audited_vetoed_by_the_rules_and_failures_fall_back(harness: Harness, db) -> None:
    s, script = harness.stack, harness.script
    user = uuid.uuid4()
    chat = await s.start_chat(user)
    script.add(judge_reply("ghost"), ScriptedResponse("reply", "Hi.", model="model-a"))
    frames = await s.send(user, chat["session_id"], "First message, so no ghosting allowed yet.")
    assert frames[0]["action_type"] == "reply"  # rule 1 (fewer than 10 messages) vetoes the judge's ghost
    script.add(ScriptedResponse("invalid_json", model="judge-model"), ScriptedResponse("reply", "Ok.", model="model-a"))
    frames = await s.send(user, chat["session_id"], "Second message with a broken judge.")
    assert frames[0]["action_type"] == "reply" and reply_text(frames) == "Ok."
    rows = await db.fetch("SELECT status, proposed_action, final_action, model FROM chat.decision_events "
                          "ORDER BY created_at")
    assert [(r["status"], r["proposed_action"], r["final_action"]) for r in rows] == [
        ("ok", "ghost", "reply"), ("parse_error", None, "reply")]
    assert rows[0]["model"] == "judge-model"
    judge_request = next(r for r in script.requests if r.model == "judge-model")
    case = judge_request.messages[-1]["content"]
    assert "[relationship_state]" in case and "0." not in case.split("[relationship_state]")[1].split("[")[0]


async def test_tier_traits_scopes_audit_and_hidden_usage_keys(harness: Harness) -> None:
    s, script = harness.stack, harness.script
    script.add(judge_reply(), ScriptedResponse("reply", "Sure.", model="model-a"))
    user = uuid.uuid4()
    chat = await s.start_chat(user)
    frames = await s.send(user, chat["session_id"], "Say something nice.", tier="premium",
                          prompt_traits=[{"tag": "brief", "text": "Answer in one short sentence."},
                                         {"tag": "secret_sauce", "text": "Mention pineapples."}],
                          affinity_scope=["warmth", "trust"], memory_scope="relationship_only",
                          audit={"user": "end-user-42", "session_id": "app-session-9", "metadata": {"ab": "b"}})
    final = frames[-1]
    assert final["prompt_injected"] == ["brief"] and final["tier"] == "premium"
    request = next(r for r in script.requests if r.model == "model-a")
    system = request.messages[0]["content"]
    assert "Answer in one short sentence." in system and "pineapples" not in system
    assert request.params["user"] == "end-user-42" and request.params["metadata"] == {"ab": "b"}
    assert request.params["session_id"] == "app-session-9"
    assert request.params["temperature"] == 0.85 and request.params["max_tokens"] <= 400
    assert request.headers["http-referer"] == "https://rapport.example"
    assert request.headers["x-openrouter-title"] == "Rapport tests"
    done = [f for f in frames if f["type"] == "done"][-1]
    assert "completion_tokens" not in done["usage"] and "prompt_tokens" in done["usage"]


@pytest.mark.parametrize("extra, field", [
    ({"prompt_traits": [{"tag": "Bad Tag!", "text": "x"}]}, "prompt_traits"),
    ({"prompt_traits": [{"tag": f"t{i}", "text": "x"} for i in range(9)]}, "prompt_traits"),
    ({"memory_scope": "everything"}, "memory_scope"),
    ({"affinity_scope": ["warmth", "charisma"]}, "affinity_scope"),
    ({"affinity_scope": "sparkle"}, "affinity_scope"),
    ({"tier": "platinum"}, "tier"),
])
async def test_invalid_turn_fields_get_400_and_persist_nothing(harness: Harness, db, extra: dict, field: str) -> None:
    s = harness.stack
    user = uuid.uuid4()
    chat = await s.start_chat(user)
    response = await s.client.post(f"/comp/chat/{chat['session_id']}/message/stream",
                                   json={"content": "hello", "client_msg_id": new_client_msg_id(), **extra},
                                   headers=s.headers(user))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_payload" and body["field"].startswith(field)
    assert await db.fetchval("SELECT count(*) FROM chat.messages") == 0
    assert await db.fetchval("SELECT count(*) FROM chat.turns") == 0


async def test_a_disconnect_after_the_first_delta_leaves_a_complete_reply_that_a_retry_replays(
        harness: Harness, db) -> None:
    s, script = harness.stack, harness.script
    text = "This reply keeps going word by word long after the client has gone away entirely."
    script.add(judge_reply(), ScriptedResponse("reply", text, per_chunk_delay=0.02, model="model-a"))
    user = uuid.uuid4()
    chat = await s.start_chat(user)
    client_msg_id = new_client_msg_id()
    payload = {"content": "Tell me something long.", "client_msg_id": client_msg_id}
    async with s.client.stream("POST", f"/comp/chat/{chat['session_id']}/message/stream", json=payload,
                               headers=s.headers(user)) as response:
        async for frame in sse_frames(response.aiter_lines()):
            if frame["type"] == "delta":
                break  # the client goes away after the first delta

    async def finished() -> bool:
        return await db.fetchval("SELECT status FROM chat.turns WHERE client_msg_id = $1", client_msg_id) == "done"

    await wait_for(finished)
    stored = await db.fetchval("SELECT content FROM chat.messages WHERE role = 'assistant'")
    assert stored == text
    replay = await s.send(user, chat["session_id"], "Tell me something long.", client_msg_id)
    assert reply_text(replay) == text and replay[-1]["type"] == "final"
    saved = await db.fetchval("SELECT frames FROM chat.turns WHERE client_msg_id = $1", client_msg_id)
    assert replay == json.loads(saved)
    assert await db.fetchval("SELECT count(*) FROM chat.messages") == 2


async def test_a_repeat_while_generating_attaches_to_the_live_turn(harness: Harness, db) -> None:
    s, script = harness.stack, harness.script
    script.add(judge_reply(), ScriptedResponse("reply", "Slow and steady wins the race today.", per_chunk_delay=0.03,
                                               model="model-a"))
    user = uuid.uuid4()
    chat = await s.start_chat(user)
    client_msg_id = new_client_msg_id()
    first, second = await asyncio.gather(
        s.send(user, chat["session_id"], "Hello slow model.", client_msg_id),
        s.send(user, chat["session_id"], "Hello slow model.", client_msg_id))
    assert first == second and reply_text(first) == "Slow and steady wins the race today."
    assert await db.fetchval("SELECT count(*) FROM chat.messages") == 2


async def test_more_than_three_concurrent_turns_per_user_get_429(harness: Harness) -> None:
    s, script = harness.stack, harness.script
    for _ in range(3):
        script.add(ScriptedResponse("stall", stall_seconds=30, model="judge-model"))
    user = uuid.uuid4()
    sessions = [(await s.start_chat(user, persona=name))["session_id"] for name in ("Elena", "Inês", "Kai")]
    extra = (await s.start_chat(user, persona="Elena", force_new=True))["session_id"]
    running = [asyncio.create_task(s.send(user, sid, "hi, are you there?")) for sid in sessions]
    await script.wait_for_requests(3)
    response = await s.client.post(f"/comp/chat/{extra}/message/stream",
                                   json={"content": "one more", "client_msg_id": new_client_msg_id()},
                                   headers=s.headers(user))
    assert response.status_code == 429 and response.json()["code"] == "rate_limited"
    assert response.headers["retry-after"]
    script.release_stalls()
    results = await asyncio.gather(*running)
    assert all(r[-1]["type"] == "final" for r in results)


async def test_memory_down_still_streams_and_final_reports_degradation(stack: Stack, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    await stack.services["memory"].grpc.server.stop(0)
    frames = await stack.send(user, chat["session_id"], "I moved to Porto last month.")
    assert reply_text(frames) and frames[-1]["degraded"] == ["memory"]
    rows = await db.fetch("SELECT target, status FROM chat.outbox")
    assert {r["target"] for r in rows} == {"affinity", "memory", "insight"}

    async def others_done() -> bool:
        rows = await db.fetch("SELECT target, status, last_error FROM chat.outbox")
        return all(r["status"] == "done" for r in rows if r["target"] != "memory")

    await wait_for(others_done)
    memory_job = await db.fetchrow("SELECT status, attempts, last_error FROM chat.outbox WHERE target = 'memory'")
    assert memory_job["status"] == "pending" and memory_job["last_error"]  # waits for memory, never dropped


async def test_explain_says_why_it_said_that(stack: Stack) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    frames = await stack.send(user, chat["session_id"], "I love hiking and I live in Lisbon.")
    message_id = frames[0]["message_id"]
    response = await stack.client.get(f"/comp/chat/{chat['session_id']}/messages/{message_id}/explain",
                                      headers=stack.headers(user))
    assert response.status_code == 200, response.text
    explain = response.json()
    assert explain["decision"]["action"] == "reply" and explain["decision"]["reason"]
    assert explain["affinity"]["label"] and set(explain["affinity"]["vector"]) == {
        "warmth", "trust", "intimacy", "intrigue", "patience", "tension"}
    assert explain["model"] == "rapport-offline-responder" and explain["trace_id"] == frames[-1]["trace_id"]
    tokens = explain["prompt"]["section_tokens"]
    assert tokens["persona"] > 0 and tokens["user_message"] > 0
    assert isinstance(explain["memories"], list) and "usage" in explain
    other = await stack.client.get(f"/comp/chat/{chat['session_id']}/messages/{message_id}/explain",
                                   headers=stack.headers(uuid.uuid4()))
    assert other.status_code == 403


async def test_sessions_are_listed_most_recent_first_and_history_pages_with_a_true_total(stack: Stack) -> None:
    user = uuid.uuid4()
    older = await stack.start_chat(user, persona="Elena")
    newer = await stack.start_chat(user, persona="Kai")
    for i in range(3):
        await stack.send(user, older["session_id"], f"message number {i}")
    listed = (await stack.client.get(f"/comp/chat/{user}/sessions", headers=stack.headers(user))).json()["sessions"]
    assert [x["session_id"] for x in listed] == [older["session_id"], newer["session_id"]]
    assert listed[0]["persona_name"] == "Elena" and listed[0]["last_active_at"]
    forbidden = await stack.client.get(f"/comp/chat/{user}/sessions", headers=stack.headers(uuid.uuid4()))
    assert forbidden.status_code == 403
    page = (await stack.client.get(f"/comp/chat/{older['session_id']}/history?limit=4",
                                   headers=stack.headers(user))).json()
    assert page["total"] == 6 and len(page["messages"]) == 4 and page["has_more"] is True
    assert page["messages"][-1]["role"] == "assistant"
    rest = (await stack.client.get(f"/comp/chat/{older['session_id']}/history?limit=4&before={page['next_cursor']}",
                                   headers=stack.headers(user))).json()
    assert [(m["role"], m["content"]) for m in rest["messages"]][0] == ("user", "message number 0")
    assert [m["role"] for m in rest["messages"]] == ["user", "assistant"]
    assert rest["has_more"] is False and rest["total"] == 6


async def test_usage_is_summed_per_session(stack: Stack) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    totals = 0
    for text in ("first message here", "second message here"):
        frames = await stack.send(user, chat["session_id"], text)
        totals += [f for f in frames if f["type"] == "done"][-1]["usage"]["total_tokens"]
    sessions = (await stack.client.get(f"/comp/chat/{user}/sessions", headers=stack.headers(user))).json()["sessions"]
    assert sessions[0]["usage"]["total_tokens"] == totals and sessions[0]["usage"]["turns"] == 2


async def test_gift_appears_in_history(stack: Stack) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    response = await stack.client.post(f"/comp/chat/{chat['session_id']}/event/gift",
                                       json={"deltas": {"warmth": 0.5}, "label": "a rose"}, headers=stack.headers(user))
    assert response.status_code == 200, response.text
    history = (await stack.client.get(f"/comp/chat/{chat['session_id']}/history", headers=stack.headers(user))).json()
    assert [(m["role"], m["kind"], m["content"]) for m in history["messages"]] == [("event", "gift", "a rose")]

