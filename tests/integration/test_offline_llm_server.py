"""The offline/scripted LLM server, driven by the real `openai.AsyncOpenAI` client on an ephemeral
port: what the client sees for every reply and failure mode (orchestrator.md "LLM client",
"Model chain")."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import openai
import pytest
import pytest_asyncio

from services.offline_llm.responder import OFFLINE_MODEL_ID, compose_reply
from services.offline_llm.server import LlmScript, RunningServer, ScriptedResponse, build_llm_app, serve_llm

pytestmark = pytest.mark.asyncio

PERSONA_PROMPT = (
    "You are a quiet bookshop owner.\n\n"
    "You are Mara, female, 34, INTJ. Local time for you: Tuesday 21:14.\n\n"
    "[shared_memories]\n- User lives in Lisbon\n\n[mood]\naffectionate\ncurious, asks back\n\n"
    "Reply in up to three sentences."
)
MESSAGES = [{"role": "system", "content": PERSONA_PROMPT}, {"role": "user", "content": "How are you?"}]
SHORT_TIMEOUT = 0.3


@dataclass
class Stub:
    script: LlmScript
    server: RunningServer
    client: openai.AsyncOpenAI

    def client_with(self, **options: object) -> openai.AsyncOpenAI:
        return self.client.with_options(**options)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def stub() -> AsyncIterator[Stub]:
    script = LlmScript()
    server = await serve_llm(build_llm_app("script", script))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10.0)
    yield Stub(script, server, client)
    script.release_stalls()
    await client.close()
    await server.stop()


@pytest_asyncio.fixture
async def offline() -> AsyncIterator[openai.AsyncOpenAI]:
    server = await serve_llm(build_llm_app("offline"))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=10.0)
    yield client
    await client.close()
    await server.stop()


async def collect(stream: openai.AsyncStream) -> tuple[list[str], list[str | None], list[object]]:
    """Content deltas, finish reasons and usages seen while iterating a stream to its end."""
    deltas: list[str] = []
    finishes: list[str | None] = []
    usages: list[object] = []
    async for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            finishes.append(choice.finish_reason)
    return deltas, finishes, usages


# --- offline mode ---------------------------------------------------------------------------------


async def test_offline_reply_is_the_responders_reply_labelled_offline(offline: openai.AsyncOpenAI) -> None:
    completion = await offline.chat.completions.create(model="anything", messages=MESSAGES)
    assert completion.model == OFFLINE_MODEL_ID
    assert completion.id.startswith("gen-") and len(completion.id) > 10
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    text = completion.choices[0].message.content
    assert text == compose_reply(MESSAGES, "anything")
    assert "Lisbon" in text and text.endswith("?")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(text.split())
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_streamed_deltas_add_up_to_the_non_streamed_reply(offline: openai.AsyncOpenAI) -> None:
    whole = await offline.chat.completions.create(model="m", messages=MESSAGES)
    stream = await offline.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    deltas, finishes, usages = await collect(stream)
    assert "".join(deltas) == whole.choices[0].message.content
    assert len([d for d in deltas if d]) == len(whole.choices[0].message.content.split())  # word by word
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert usages == [whole.usage]


async def test_no_usage_chunk_unless_asked(offline: openai.AsyncOpenAI) -> None:
    stream = await offline.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    _, finishes, usages = await collect(stream)
    assert usages == [] and finishes[-1] == "stop"


async def test_max_tokens_cuts_the_reply_with_finish_reason_length(offline: openai.AsyncOpenAI) -> None:
    completion = await offline.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    full = compose_reply(MESSAGES, "m")
    assert completion.choices[0].message.content == " ".join(full.split()[:3])
    assert completion.choices[0].finish_reason == "length"


async def test_offline_json_request_gets_an_empty_object(offline: openai.AsyncOpenAI) -> None:
    completion = await offline.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Say hi"}], response_format={"type": "json_object"})
    assert json.loads(completion.choices[0].message.content) == {}


async def test_lists_the_offline_model(offline: openai.AsyncOpenAI) -> None:
    models = await offline.models.list()
    assert [model.id async for model in models] == [OFFLINE_MODEL_ID]


async def test_a_malformed_request_is_a_400_in_openai_shape(offline: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await offline.chat.completions.create(model="m", messages=[])
    assert raised.value.status_code == 400
    assert raised.value.body == {"message": "'messages' must be a non-empty list of objects.",
                                 "type": "invalid_request_error", "param": "messages", "code": 400}


async def test_a_stopped_server_refuses_connections() -> None:
    server = await serve_llm(build_llm_app("offline"))
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    assert (await client.chat.completions.create(model="m", messages=MESSAGES)).choices
    await server.stop()
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=MESSAGES)
    await client.close()


# --- script mode: replies and recording -------------------------------------------------------------


async def test_scripted_replies_come_in_order_then_the_offline_responder(stub: Stub) -> None:
    stub.script.add(ScriptedResponse(text="first"), ScriptedResponse(text="second one"))
    completions = [await stub.client.chat.completions.create(model="m", messages=MESSAGES) for _ in range(3)]
    texts = [completion.choices[0].message.content for completion in completions]
    assert texts == ["first", "second one", compose_reply(MESSAGES, "m")]
    assert stub.script.pending == 0


async def test_scripted_reply_reports_the_requested_model(stub: Stub) -> None:
    stub.script.add(ScriptedResponse(text="hello there"))
    stream = await stub.client.chat.completions.create(model="vendor/model-a", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert {chunk.model for chunk in chunks} == {"vendor/model-a"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello there"


async def test_records_what_the_client_sent(stub: Stub) -> None:
    client = stub.client_with(default_headers={"HTTP-Referer": "https://rapport.example",
                                               "X-OpenRouter-Title": "Rapport"})
    await client.chat.completions.create(
        model="model-a", messages=MESSAGES, temperature=0.85, max_tokens=400, top_p=0.9, user="user-123",
        stream=True, stream_options={"include_usage": True})
    [request] = stub.script.requests
    assert request.model == "model-a"
    assert request.messages == MESSAGES
    assert request.params == {"temperature": 0.85, "max_tokens": 400, "top_p": 0.9, "user": "user-123",
                              "stream": True, "stream_options": {"include_usage": True}}
    assert request.stream
    assert request.headers["http-referer"] == "https://rapport.example"
    assert request.headers["x-openrouter-title"] == "Rapport"
    assert request.headers["authorization"] == "Bearer sk-test"


async def test_model_keyed_script_drives_a_primary_to_fallback_chain(stub: Stub) -> None:
    stub.script.add(ScriptedResponse(kind="fail", status=503, model="model-a"),
                    ScriptedResponse(text="fallback speaking", model="model-b"))
    model_ids = [model.id async for model in await stub.client.models.list()]
    assert model_ids == [OFFLINE_MODEL_ID, "model-a", "model-b"]
    reply = None
    for model in ("model-a", "model-b"):
        try:
            reply = await stub.client.chat.completions.create(model=model, messages=MESSAGES)
            break
        except openai.APIStatusError as error:
            assert error.status_code == 503
    assert reply is not None and reply.choices[0].message.content == "fallback speaking"
    assert [r.model for r in stub.script.requests] == ["model-a", "model-b"]


async def test_keyed_responses_are_not_served_to_other_models(stub: Stub) -> None:
    stub.script.add(ScriptedResponse(text="for b only", model="model-b"), ScriptedResponse(text="anyone"))
    a = await stub.client.chat.completions.create(model="model-a", messages=MESSAGES)
    b = await stub.client.chat.completions.create(model="model-b", messages=MESSAGES)
    assert (a.choices[0].message.content, b.choices[0].message.content) == ("anyone", "for b only")


# --- script mode: failure modes as the client sees them ----------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_fail_surfaces_as_an_api_status_error(stub: Stub, stream: bool) -> None:
    stub.script.add(ScriptedResponse(kind="fail", status=502, text="upstream exploded"))
    with pytest.raises(openai.InternalServerError) as raised:
        await stub.client.chat.completions.create(model="m", messages=MESSAGES, stream=stream)
    assert raised.value.status_code == 502
    assert raised.value.body == {"message": "upstream exploded", "type": "server_error", "param": None,
                                 "code": 502}


async def test_rate_limit_carries_retry_after(stub: Stub) -> None:
    stub.script.add(ScriptedResponse(kind="fail", status=429, retry_after_seconds=2.5))
    with pytest.raises(openai.RateLimitError) as raised:
        await stub.client.chat.completions.create(model="m", messages=MESSAGES)
    assert raised.value.response.headers["retry-after"] == "3"
    assert raised.value.response.headers["retry-after-ms"] == "2500"


async def test_client_retries_consume_scripted_responses(stub: Stub) -> None:
    """The openai client retries 408/409/429/5xx on its own (max_retries defaults to 2): each
    retry is a new request that takes the next scripted response."""
    stub.script.add(ScriptedResponse(kind="fail", status=429, retry_after_seconds=0.01),
                    ScriptedResponse(text="second try"))
    completion = await stub.client_with(max_retries=1).chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == "second try"
    assert len(stub.script.requests) == 2


async def test_cut_stream_raises_a_connection_error_after_the_first_chunks(stub: Stub) -> None:
    """An upstream dying mid-stream: the client gets `after_chunks` deltas, never a finish_reason,
    then `openai.APIConnectionError` (httpx reports the incomplete chunked body) — not a clean end."""
    stub.script.add(ScriptedResponse(kind="cut", text="one two three four five", after_chunks=2))
    stream = await stub.client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    deltas: list[str] = []
    finishes: list[str | None] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            deltas.append(chunk.choices[0].delta.content or "")
            finishes.append(chunk.choices[0].finish_reason)
    assert "".join(deltas) == "one two "
    assert finishes == [None, None, None]


async def test_cut_non_streamed_reply_raises_a_connection_error(stub: Stub) -> None:
    stub.script.add(ScriptedResponse(kind="cut", text="one two three"))
    with pytest.raises(openai.APIConnectionError):
        await stub.client.chat.completions.create(model="m", messages=MESSAGES)


@pytest.mark.parametrize("stream", [False, True])
async def test_stall_before_anything_is_sent_hits_the_client_timeout(stub: Stub, stream: bool) -> None:
    stub.script.add(ScriptedResponse(kind="stall", text="too late"))
    with pytest.raises(openai.APITimeoutError):
        await stub.client_with(timeout=SHORT_TIMEOUT).chat.completions.create(
            model="m", messages=MESSAGES, stream=stream)


async def test_stall_mid_stream_times_out_while_reading(stub: Stub) -> None:
    """Headers and two deltas arrive, then nothing: the read timeout fires inside the iteration."""
    stub.script.add(
        ScriptedResponse(kind="stall", text="one two three", after_chunks=2, stall_mid_stream=True))
    stream = await stub.client_with(timeout=SHORT_TIMEOUT).chat.completions.create(
        model="m", messages=MESSAGES, stream=True)
    deltas: list[str] = []
    with pytest.raises(openai.APITimeoutError):
        async for chunk in stream:
            deltas.append(chunk.choices[0].delta.content or "")
    assert "".join(deltas) == "one two "


async def test_a_released_stall_answers(stub: Stub) -> None:
    stub.script.add(ScriptedResponse(kind="stall", text="worth the wait"))
    request = asyncio.ensure_future(stub.client.chat.completions.create(model="m", messages=MESSAGES))
    await stub.script.wait_for_requests(1)
    assert not request.done()
    stub.script.release_stalls()
    completion = await request
    assert completion.choices[0].message.content == "worth the wait"


async def test_a_stall_ends_by_itself_after_stall_seconds(stub: Stub) -> None:
    stub.script.add(ScriptedResponse(kind="stall", text="slow but sure", stall_seconds=0.01))
    completion = await stub.client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == "slow but sure"


@pytest.mark.parametrize("stream", [False, True])
async def test_empty_completion(stub: Stub, stream: bool) -> None:
    stub.script.add(ScriptedResponse(kind="empty"))
    if stream:
        deltas, finishes, _ = await collect(
            await stub.client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        assert "".join(deltas) == "" and finishes[-1] == "stop"
    else:
        completion = await stub.client.chat.completions.create(model="m", messages=MESSAGES)
        assert completion.choices[0].message.content == ""
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.completion_tokens == 0


async def test_invalid_json_and_json_contents(stub: Stub) -> None:
    stub.script.add(ScriptedResponse(kind="invalid_json"),
                    ScriptedResponse(kind="json", text='{"action": "ghost", "tone": "cold"}'))
    bad = await stub.client.chat.completions.create(model="judge", messages=MESSAGES)
    good = await stub.client.chat.completions.create(model="judge", messages=MESSAGES)
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.choices[0].message.content)
    assert json.loads(good.choices[0].message.content) == {"action": "ghost", "tone": "cold"}


async def test_slow_stream_still_arrives_whole(stub: Stub) -> None:
    stub.script.add(ScriptedResponse(text="a b c d", per_chunk_delay=0.005))
    deltas, finishes, _ = await collect(
        await stub.client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert deltas == ["", "a ", "b ", "c ", "d", ""] and finishes[-1] == "stop"
