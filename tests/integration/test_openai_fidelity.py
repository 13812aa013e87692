"""What the model receives and what the client gets back on `/v1` (issue 12), tried as SillyTavern and the
official `openai` client would: the client's character is the speaker (character mode), long cards arrive
whole and what had to be cut is named, the request's structure is kept, no first message is lost,
parameters are honoured or refused, concurrent conversations of one user survive, errors say what to do.

The orchestrator's LLM is the scriptable OpenAI-compatible stub (a real HTTP server that records what it
received), or the offline responder where the test is about what it answers."""
from __future__ import annotations

import asyncio
import json
import tomllib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from services.offline_llm.server import LlmScript, ScriptedResponse, build_llm_app, serve_llm
from services.orchestrator import api_keys
from services.orchestrator.domain.prompt import TiktokenCounter
from services.orchestrator.persona_catalog import EXAMPLE_PERSONAS_DIR
from services.servicekit.db import create_pool
from tests.stack import Stack, start_stack, wait_for

ELENA = tomllib.loads((EXAMPLE_PERSONAS_DIR / "elena_astronomer_atacama.toml").read_text())
MAIN_PROMPT = ("Write Seraphina's next reply in a fictional chat between Seraphina and Alex. Write 1 reply only in "
               "internet RP style, italicize actions, and avoid quotation marks.")
CARD = ("Seraphina is the guardian of an enchanted forest glade. She has long pink hair and amber eyes, and she "
        "speaks warmly, with a playful streak. She heals the wounded travellers who stumble into her glade.")
PERSONALITY = "Seraphina's personality: caring, protective, gentle, playful."
SCENARIO = "Scenario: Alex wakes up in Seraphina's glade after being attacked by shadow beasts."
EXAMPLE_USER = "What is this place?"
EXAMPLE_ASSISTANT = "*smiles softly* This is my glade. You are safe here, traveller."
GREETING = "*Seraphina kneels beside you, her hands glowing.* Rest now. The beasts cannot follow you here."
POST_HISTORY = "[System note: stay in character as Seraphina; describe her actions in italics.]"


def sillytavern_messages(chat: list[str], *, card: str = CARD, post_history: str = POST_HISTORY) -> list[dict]:
    """A request as SillyTavern builds it: several system messages, example dialogue named example_user /
    example_assistant, chat-start markers, the greeting first, then the chat, then the post-history
    instruction."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": MAIN_PROMPT},
        {"role": "system", "content": card},
        {"role": "system", "content": PERSONALITY},
        {"role": "system", "content": SCENARIO},
        {"role": "system", "content": "[Example Chat]"},
        {"role": "system", "name": "example_user", "content": EXAMPLE_USER},
        {"role": "system", "name": "example_assistant", "content": EXAMPLE_ASSISTANT},
        {"role": "system", "content": "[Start a new Chat]"},
        {"role": "assistant", "content": GREETING},
    ]
    messages += [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(chat)]
    if post_history:
        messages.append({"role": "system", "content": post_history})
    return messages


def sillytavern_body(messages: list[dict], **params: Any) -> dict[str, Any]:
    return {"model": "Elena", "messages": messages, "temperature": 1, "max_tokens": 300, "stream": False,
            "presence_penalty": 0, "frequency_penalty": 0, "top_p": 1, "logit_bias": {}, **params}


@dataclass
class Harness:
    stack: Stack
    script: LlmScript
    pool: asyncpg.Pool
    user: uuid.UUID
    key: str

    def client(self, key: str | None = None, **options: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.stack.url + "/v1", api_key=key or self.key, max_retries=0,
                                  **options)

    async def post(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.stack.client.post("/v1/chat/completions", json=body, headers={
            "Authorization": f"Bearer {self.key}", **(headers or {})})

    async def explain(self, session_id: str, completion_id: str) -> dict[str, Any]:
        message_id = completion_id.removeprefix("chatcmpl-")
        response = await self.stack.client.get(f"/comp/chat/{session_id}/messages/{message_id}/explain",
                                               headers=self.stack.headers(self.user))
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def jobs(self, session_id: str) -> list[tuple[str, str]]:
        """Delivered outbox jobs of the session (target, the user text it carries), once none is pending."""
        async def settled() -> list[tuple[str, str]] | None:
            rows = await self.pool.fetch(
                "SELECT o.target, o.status, m.content FROM chat.outbox o JOIN chat.turns t ON t.id = o.turn_id "
                "JOIN chat.messages m ON m.id = t.user_message_id WHERE t.session_id = $1 ORDER BY o.id",
                uuid.UUID(session_id))
            if not rows or any(r["status"] == "pending" for r in rows):
                return None
            return [(r["target"], r["content"]) for r in rows]
        return await wait_for(settled)  # type: ignore[no-any-return]


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(database_url: str, tmp_path: Path, spans: Any) -> AsyncIterator[HarnessFactory]:
    """Start the stack: with the scriptable stub as the LLM (`offline=False`) or the offline responder, and an
    optional model_config.toml."""
    running: list[Callable[[], Awaitable[None]]] = []

    async def start(model_config: str | None = None, offline: bool = False) -> Harness:
        script = LlmScript()
        env: dict[str, str] = {}
        if not offline:
            llm = await serve_llm(build_llm_app("script", script))
            running.append(llm.stop)
            env.update({"LLM_BASE_URL": llm.base_url, "LLM_API_KEY": "x", "LLM_MODEL": "m"})
        if model_config is not None:
            path = tmp_path / "model_config.toml"
            path.write_text(model_config)
            env["MODEL_CONFIG_PATH"] = str(path)
        stack = await start_stack(database_url, per_service_env={"orchestrator": env})
        running.append(stack.stop)
        pool = await create_pool(database_url, max_size=2)
        running.append(pool.close)
        user = uuid.uuid4()
        key, _ = await api_keys.create_api_key(pool, user, "tests")
        running.append(lambda: asyncio.sleep(0, script.release_stalls()))
        return Harness(stack, script, pool, user, key)

    try:
        yield start
    finally:
        for stop in reversed(running):
            await stop()


def context_config(tokens: int) -> str:
    """The default chat settings with another model context size."""
    return f"""
[defaults]
context_tokens = {tokens}

[tasks.chat_companion]
temperature = 0.85
max_tokens = 400
budget = {{ system = 0.20, memory = 0.25, history = 0.35, response = 0.20 }}
"""


def everything_sent(messages: list[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("content") or "") for m in messages)


def elena_texts() -> list[str]:
    """Elena's own identity, backstory, speech style, quirks and topics: none of it may reach a character."""
    meta = ELENA["art_metadata"]
    sentences = [s.strip() for s in meta["backstory"].split(". ") + meta["speech_style"].split(". ")]
    return ["You are Elena", *(s for s in sentences if s), *meta["quirks"], *meta["topics"]]


# ---- character mode and structure -------------------------------------------------------------------

async def test_a_sillytavern_character_is_the_speaker_and_its_structure_is_kept(
        make_harness: HarnessFactory) -> None:
    harness = await make_harness()
    harness.script.add(ScriptedResponse("reply", "*Seraphina smiles.* You are awake at last."))
    response = await harness.post(sillytavern_body(sillytavern_messages(["Where am I? My head hurts."])))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "*Seraphina smiles.* You are awake at last."
    assert response.headers["x-rapport-handling"] == "new_turn" and "x-rapport-prompt-trimmed" not in response.headers
    sent = harness.script.requests[-1]
    messages = sent.messages

    # The whole card, none of Elena: no identity line, backstory, speech style, quirks or topics.
    text = everything_sent(messages)
    for part in (MAIN_PROMPT, CARD, PERSONALITY, SCENARIO, GREETING):
        assert part in text
    assert [t for t in elena_texts() if t in text] == []
    assert "Stay in character as Elena" not in text and "Elena" not in text

    # The client's order and roles: its system messages one by one, Rapport's sections appended to the
    # last message of the character's text (the scenario), example dialogue with its speakers, the
    # markers, the greeting, the user message, then the post-history instruction — last.
    assert [m["role"] for m in messages] == ["system"] * 8 + ["assistant", "user", "system"]
    assert [m["content"] for m in messages[:3]] == [MAIN_PROMPT, CARD, PERSONALITY]
    scenario = messages[3]["content"]
    assert scenario.startswith(SCENARIO + "\n\n[relationship]\nWhat Seraphina knows and feels about the user")
    assert "[rules]\n- Never mention these notes" in scenario and "[now]\n" in scenario
    assert messages[4]["content"] == "[Example Chat]"
    assert messages[5] == {"role": "system", "name": "example_user", "content": f"User: {EXAMPLE_USER}"}
    assert messages[6] == {"role": "system", "name": "example_assistant",
                           "content": f"Seraphina: {EXAMPLE_ASSISTANT}"}
    assert messages[7]["content"] == "[Start a new Chat]"
    assert messages[8:] == [{"role": "assistant", "content": GREETING},
                            {"role": "user", "content": "Where am I? My head hurts."},
                            {"role": "system", "content": POST_HISTORY}]
    assert "logit_bias" not in sent.params  # SillyTavern's empty logit_bias is accepted, nothing to forward

    # The next turn: the history comes from the store, the structure stays.
    session = response.headers["x-rapport-session-id"]
    harness.script.add(ScriptedResponse("reply", "*She hands you a cup of tea.*"))
    second = await harness.post(sillytavern_body(sillytavern_messages(
        ["Where am I? My head hurts.", "*Seraphina smiles.* You are awake at last.", "Who are you?"])))
    assert second.headers["x-rapport-session-id"] == session and second.headers["x-rapport-handling"] == "new_turn"
    messages = harness.script.requests[-1].messages
    assert [m["content"] for m in messages[8:]] == [
        GREETING, "Where am I? My head hurts.", "*Seraphina smiles.* You are awake at last.", "Who are you?",
        POST_HISTORY]
    explain = await harness.explain(session, second.json()["id"])
    assert explain["prompt"]["character_mode"] is True and explain["prompt"]["trimmed"] == {}
    assert explain["prompt"]["section_tokens"]["character"] > 0


async def test_an_authors_note_keeps_its_depth(make_harness: HarnessFactory) -> None:
    harness = await make_harness()
    chat = ["Hello.", "Hi there.", "How are you?", "Fine, thanks.", "Tell me a story."]
    harness.script.add(ScriptedResponse("reply", "Once upon a time."))
    messages = sillytavern_messages(chat, post_history="")
    messages.insert(len(messages) - 2, {"role": "system", "content": "[Author's note: it is raining.]"})
    response = await harness.post(sillytavern_body(messages))
    assert response.status_code == 200, response.text
    sent = [m["content"] for m in harness.script.requests[-1].messages[8:]]
    assert sent == [GREETING, *chat[:3], "[Author's note: it is raining.]", *chat[3:]]


# ---- budgets that fit the card ------------------------------------------------------------------------

def long_card(tokens: int) -> str:
    """A character card of about `tokens` tokens (cl100k), in whole sentences."""
    counter = TiktokenCounter()
    sentences: list[str] = []
    index = 0
    while counter.count(" ".join(sentences)) < tokens:
        sentences.append(f"Seraphina remembers the {index}th spring of the glade, when the silver moss bloomed "
                         f"along stream number {index} and the foxes came to drink at dusk.")
        index += 1
    return " ".join(sentences)


CARD_6000 = long_card(6000)
EARLIER_TURNS = [f"Turn {i}: " + "The glade hums with quiet life and old stories. " * 12 for i in range(8)]


async def test_a_6000_token_card_arrives_whole_with_a_32k_context(make_harness: HarnessFactory) -> None:
    harness = await make_harness(context_config(32768))
    harness.script.add(ScriptedResponse("reply", "*She nods.*"))
    response = await harness.post(sillytavern_body(sillytavern_messages([*EARLIER_TURNS, "Go on."], card=CARD_6000)))
    assert response.status_code == 200, response.text
    assert "x-rapport-prompt-trimmed" not in response.headers
    messages = harness.script.requests[-1].messages
    assert messages[1]["content"] == CARD_6000
    assert [m["content"] for m in messages[9:-1]] == [*EARLIER_TURNS, "Go on."]
    assert messages[-1]["content"] == POST_HISTORY


async def test_with_an_8k_context_what_was_cut_is_named_and_the_post_history_instruction_survives(
        make_harness: HarnessFactory) -> None:
    harness = await make_harness(context_config(8192))
    harness.script.add(ScriptedResponse("reply", "*She nods.*"))
    response = await harness.post(sillytavern_body(sillytavern_messages([*EARLIER_TURNS, "Go on."], card=CARD_6000)))
    assert response.status_code == 200, response.text
    trimmed = dict(item.split("=") for item in response.headers["x-rapport-prompt-trimmed"].split(", "))
    assert int(trimmed["history"]) > 0 and "character" not in trimmed and "examples" not in trimmed
    messages = harness.script.requests[-1].messages
    assert messages[1]["content"] == CARD_6000  # the card, whole
    assert messages[-2:] == [{"role": "user", "content": "Go on."}, {"role": "system", "content": POST_HISTORY}]
    kept = [m["content"] for m in messages[9:-2]]
    assert len(kept) < len(EARLIER_TURNS) + 1 and [GREETING, *EARLIER_TURNS][-len(kept):] == kept  # oldest first
    total = sum(TiktokenCounter().count(str(m.get("content") or "")) for m in messages)
    assert total < 8192 - 300
    explain = await harness.explain(response.headers["x-rapport-session-id"], response.json()["id"])
    assert explain["prompt"]["trimmed"] == {name: int(tokens) for name, tokens in trimmed.items()}


# ---- no first message lost -------------------------------------------------------------------------------

async def test_a_plain_apps_first_message_is_a_turn_and_only_known_probes_are_tests(
        make_harness: HarnessFactory) -> None:
    harness = await make_harness()
    client = harness.client()
    first = "I just moved to Porto with my cat Miso."
    harness.script.add(ScriptedResponse("reply", "Welcome to Porto!"))
    raw = await client.chat.completions.with_raw_response.create(
        model="Elena", messages=[{"role": "user", "content": first}])
    assert raw.headers["x-rapport-handling"] == "new_turn"
    session = raw.headers["x-rapport-session-id"]
    assert await harness.jobs(session) == [(target, first) for target in ("affinity", "memory", "insight")]

    for probe, max_tokens in (("Hi", None), ("Are you there?", 1)):  # SillyTavern's test; a one-token probe
        raw = await client.chat.completions.with_raw_response.create(
            model="Kai", messages=[{"role": "user", "content": probe}],
            **({"max_tokens": max_tokens} if max_tokens else {}))
        assert raw.headers["x-rapport-handling"] == "utility"
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.sessions") == 1

    # A probe that was in fact the user's first message: the next request brings it back, and it is
    # imported and post-processed once, so memory knows it.
    harness.script.add(ScriptedResponse("reply", "Hello!"), ScriptedResponse("reply", "Nice to meet you, Ana."))
    hello = await client.chat.completions.create(model="Kai", messages=[{"role": "user", "content": "Hi"}])
    raw = await client.chat.completions.with_raw_response.create(model="Kai", messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": hello.choices[0].message.content},
        {"role": "user", "content": "I'm Ana, I work as a nurse."}])
    assert raw.headers["x-rapport-handling"] == "new_turn"
    jobs = await harness.jobs(raw.headers["x-rapport-session-id"])
    assert sorted(jobs) == sorted([(t, m) for t in ("affinity", "memory", "insight")
                                   for m in ("Hi", "I'm Ana, I work as a nurse.")])


# ---- parameters honoured or refused -------------------------------------------------------------------------

async def test_max_tokens_cut_is_finish_reason_length(make_harness: HarnessFactory) -> None:
    harness = await make_harness()
    client = harness.client()
    long_reply = "The night is clear and the dunes are silver under the moon tonight."
    harness.script.add(ScriptedResponse("reply", long_reply), ScriptedResponse("reply", long_reply))
    completion = await client.chat.completions.create(
        model="Elena", messages=[{"role": "user", "content": "Describe the sky, please."}], max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "The night is"
    stream = await client.chat.completions.create(
        model="Elena", messages=[{"role": "user", "content": "And the wind?"}], max_tokens=3, stream=True)
    finishes = [c.choices[0].finish_reason async for c in stream if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]


async def test_seed_and_stop_reach_the_model_and_more_than_four_stops_are_refused(
        make_harness: HarnessFactory) -> None:
    harness = await make_harness()
    client = harness.client()
    await client.chat.completions.create(model="Elena", messages=[{"role": "user", "content": "Tell me more."}],
                                         seed=42, stop=["\nAlex:", "###"])
    assert {k: harness.script.requests[-1].params[k] for k in ("seed", "stop")} == {"seed": 42,
                                                                                     "stop": ["\nAlex:", "###"]}
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="Elena", messages=[{"role": "user", "content": "x y z"}],
                                             stop=["a", "b", "c", "d", "e"])
    assert raised.value.body["param"] == "stop"  # type: ignore[index]


async def test_response_format_gives_valid_json_from_the_offline_responder(make_harness: HarnessFactory) -> None:
    harness = await make_harness(offline=True)
    client = harness.client()
    completion = await client.chat.completions.create(
        model="Elena", messages=[{"role": "user", "content": "What do you see tonight?"}],
        response_format={"type": "json_object"})
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)
    schema = {"type": "object", "properties": {"planet": {"type": "string", "minLength": 2},
                                               "magnitude": {"type": "number", "minimum": -3},
                                               "visible": {"type": "boolean"}},
              "required": ["planet", "magnitude", "visible"], "additionalProperties": False}
    completion = await client.chat.completions.create(
        model="Elena", messages=[{"role": "user", "content": "Which planet is up?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "sky", "schema": schema, "strict": True}})
    answer = json.loads(completion.choices[0].message.content or "")
    assert set(answer) == {"planet", "magnitude", "visible"}
    assert isinstance(answer["planet"], str) and len(answer["planet"]) >= 2
    assert answer["magnitude"] >= -3 and isinstance(answer["visible"], bool)

    # The offline responder cannot call tools; logprobs are not relayed: 400s naming the parameter.
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    for params, param in (({"tools": [tool]}, "tools"), ({"logprobs": True}, "logprobs")):
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(
                model="Elena", messages=[{"role": "user", "content": "Weather?"}], **params)
        assert raised.value.body["param"] == param  # type: ignore[index]
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.messages WHERE content = 'Weather?'") == 0


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Calama"}'}


@pytest.mark.parametrize("stream", [False, True])
async def test_tools_are_forwarded_and_tool_calls_relayed(make_harness: HarnessFactory, stream: bool) -> None:
    harness = await make_harness()
    client = harness.client()
    question = [{"role": "system", "content": "You are Mira, a helpful weather fairy."},
                {"role": "user", "content": "What's the weather in Calama?"}]
    harness.script.add(ScriptedResponse("tool_calls", tool_calls=(CALL,)))
    raw = await client.chat.completions.with_raw_response.create(
        model="Elena", messages=question, tools=[WEATHER_TOOL], tool_choice="auto", stream=stream)  # type: ignore
    session = raw.headers["x-rapport-session-id"]
    if stream:
        chunks = [c async for c in raw.parse()]
        pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        assert pieces[0].id == "call_1" and pieces[0].function.name == "get_weather"
        assert "".join(p.function.arguments or "" for p in pieces) == CALL["arguments"]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        completion = raw.parse()
        calls = completion.choices[0].message.tool_calls or []
        assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
            ("call_1", "get_weather", CALL["arguments"])]
        finish = [completion.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    sent = harness.script.requests[-1].params
    assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == "auto"
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.messages WHERE role = 'assistant' "
                                       "AND session_id = $1", uuid.UUID(session)) == 0

    # The client runs the tool and sends the result: the same user message is answered, with the
    # exchange after it in the prompt; that answer is the stored reply, post-processed once.
    exchange = [{"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                      "arguments": CALL["arguments"]}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24°C"}]
    harness.script.add(ScriptedResponse("reply", "Sunny and warm in Calama!"))
    raw = await client.chat.completions.with_raw_response.create(
        model="Elena", messages=question + exchange, tools=[WEATHER_TOOL])  # type: ignore[arg-type]
    assert raw.headers["x-rapport-session-id"] == session
    assert raw.parse().choices[0].message.content == "Sunny and warm in Calama!"
    assert raw.parse().choices[0].finish_reason == "stop"
    prompt = harness.script.requests[-1].messages
    assert prompt[-3]["content"] == "What's the weather in Calama?"
    assert prompt[-2]["tool_calls"][0]["id"] == "call_1" and prompt[-2]["role"] == "assistant"
    assert prompt[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24°C"}
    rows = await harness.pool.fetch("SELECT role, content FROM chat.messages WHERE session_id = $1 ORDER BY id",
                                    uuid.UUID(session))
    assert [(r["role"], r["content"]) for r in rows] == [("user", "What's the weather in Calama?"),
                                                         ("assistant", "Sunny and warm in Calama!")]
    assert await harness.jobs(session) == [(t, "What's the weather in Calama?")
                                           for t in ("affinity", "memory", "insight")]


async def test_a_model_that_refuses_a_parameter_is_a_400_naming_it(make_harness: HarnessFactory) -> None:
    harness = await make_harness()
    harness.script.add(ScriptedResponse("fail", "No endpoints found that support tool use.", status=404))
    with pytest.raises(openai.BadRequestError) as raised:
        await harness.client().chat.completions.create(
            model="Elena", messages=[{"role": "user", "content": "Weather in Calama?"}],
            tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert raised.value.body["param"] == "tools"  # type: ignore[index]
    assert "support tool use" in raised.value.body["message"]  # type: ignore[index]


# ---- concurrency ------------------------------------------------------------------------------------------

async def test_eight_concurrent_conversations_of_one_user_are_all_answered(make_harness: HarnessFactory) -> None:
    harness = await make_harness()
    client = harness.client()

    async def conversation(index: int) -> str:
        completion = await client.chat.completions.create(
            model="Elena", user=f"conversation-{index}",
            messages=[{"role": "system", "content": "You are Elena, an astronomer."},
                      {"role": "user", "content": f"Hello from conversation {index}!"}])
        return completion.choices[0].message.content or ""

    replies = await asyncio.gather(*(conversation(i) for i in range(8)), return_exceptions=True)
    assert [r for r in replies if isinstance(r, BaseException)] == []
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.sessions") == 8
    assert await harness.pool.fetchval("SELECT count(*) FROM chat.messages WHERE role = 'assistant'") == 8


# ---- errors a person can act on ------------------------------------------------------------------------

async def test_auth_errors_say_what_to_do(make_harness: HarnessFactory) -> None:
    harness = await make_harness()
    body = {"model": "Elena", "messages": [{"role": "user", "content": "hi"}]}
    for authorization in ("Bearer undefined", "Bearer", "Bearer null", None):
        headers = {"Authorization": authorization} if authorization is not None else {}
        response = await harness.stack.client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["message"].startswith("No API key: create one with `rapport keys create`")
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    with pytest.raises(openai.AuthenticationError) as raised:
        await harness.client("sk-not-ours-1234").models.list()
    assert raised.value.body["message"].startswith("This is not a Rapport API key or token")  # type: ignore[index]


async def test_unknown_v1_routes_and_methods_answer_in_openais_shape(make_harness: HarnessFactory) -> None:
    harness = await make_harness()
    headers = {"Authorization": f"Bearer {harness.key}"}
    missing = await harness.stack.client.post("/v1/embeddings", json={}, headers=headers)
    wrong = await harness.stack.client.get("/v1/chat/completions", headers=headers)
    assert (missing.status_code, wrong.status_code) == (404, 405)
    assert set(missing.json()["error"]) == set(wrong.json()["error"]) == {"message", "type", "code", "param"}
    assert wrong.headers["allow"] == "POST"
