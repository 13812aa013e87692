"""A scriptable OpenAI-compatible chat server for the tests: the offline responder's app and wire
format (services/offline_llm/server.py), answering from a script.

An `LlmScript` is a FIFO of `ScriptedResponse`s, optionally keyed by the requested model, that drives
every failure the model chain must survive (orchestrator.md "Model chain"): HTTP errors, stalls,
streams cut mid-way, empty and non-JSON completions. It records every request it receives. When the
script runs out it answers like the offline responder.

Tests build it with `build_scripted_app(script)` (or, at the old import path,
`services.offline_llm.server.build_llm_app("script", script)`) and serve it with `serve_llm`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from services.offline_llm.server import (
    OFFLINE_MODEL_ID,
    SSE_HEADERS,
    completion_for,
    completion_object,
    completion_response,
    content_chunks,
    error_response,
    offline_text,
    openai_compatible_app,
)

ScriptKind = Literal["reply", "fail", "stall", "cut", "empty", "invalid_json", "json", "tool_calls"]
NOT_JSON_TEXT = "Sure! Here is what you asked for: {action: reply, tone: warm"


@dataclass(frozen=True)
class ScriptedResponse:
    """One scripted answer.

    - reply: `text` (None → the offline responder's reply), streamed or not as requested.
    - fail: HTTP `status` with an OpenAI-style error body (`text` is the message); with
      `retry_after_seconds`, `Retry-After` and `retry-after-ms` headers.
    - stall: waits up to `stall_seconds`, ended early by `LlmScript.release_stalls()` or the client
      hanging up, then answers like `reply`. Before anything is sent by default; with
      `stall_mid_stream` on a stream, after the headers and `after_chunks` content chunks.
    - cut: sends `after_chunks` content chunks (non-stream: half the body) then closes the
      connection without a finish_reason, `[DONE]` or chunked-encoding terminator.
    - empty: a completion whose content is "".
    - invalid_json: `text` (default NOT_JSON_TEXT), content that does not parse as JSON.
    - json: `text` (default "{}") verbatim.
    - tool_calls: the model calls `tool_calls` (each `{"id", "name", "arguments"}`) instead of answering
      (finish_reason "tool_calls"); streamed, each call's arguments arrive in two pieces.
    `model` set → used only for requests of that model; `per_chunk_delay` slows a stream.
    """

    kind: ScriptKind = "reply"
    text: str | None = None
    status: int = 500
    after_chunks: int = 2
    stall_seconds: float = 30.0
    stall_mid_stream: bool = False
    per_chunk_delay: float = 0.0
    retry_after_seconds: float | None = None
    model: str | None = None
    tool_calls: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class RecordedRequest:
    """What a client sent: `params` is the JSON body minus `model` and `messages`; header names
    are lower-case."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    headers: dict[str, str]

    @property
    def stream(self) -> bool:
        return bool(self.params.get("stream"))


class LlmScript:
    """A queue of scripted responses (per requested model first, then the unkeyed FIFO) and the
    requests received, in order."""

    def __init__(self, *responses: ScriptedResponse) -> None:
        self.requests: list[RecordedRequest] = []
        self._unkeyed: deque[ScriptedResponse] = deque()
        self._by_model: dict[str, deque[ScriptedResponse]] = {}
        self._stalls_released = asyncio.Event()
        self._request_arrived = asyncio.Event()
        self.add(*responses)

    def record(self, request: RecordedRequest) -> None:
        self.requests.append(request)
        self._request_arrived.set()

    async def wait_for_requests(self, count: int) -> list[RecordedRequest]:
        """Return once `count` requests have arrived (lets a test act while one is in flight)."""
        while len(self.requests) < count:
            self._request_arrived.clear()
            await self._request_arrived.wait()
        return self.requests[:count]

    def add(self, *responses: ScriptedResponse) -> None:
        for response in responses:
            if response.model is None:
                self._unkeyed.append(response)
            else:
                self._by_model.setdefault(response.model, deque()).append(response)

    def take(self, model: str) -> ScriptedResponse | None:
        """The next response for `model`, or None when the script has nothing left for it."""
        keyed = self._by_model.get(model)
        if keyed:
            return keyed.popleft()
        return self._unkeyed.popleft() if self._unkeyed else None

    @property
    def pending(self) -> int:
        return len(self._unkeyed) + sum(len(queue) for queue in self._by_model.values())

    @property
    def scripted_models(self) -> list[str]:
        return sorted(self._by_model)

    def release_stalls(self) -> None:
        """End every current and future stall at once (call it in test teardown)."""
        self._stalls_released.set()

    async def wait_for_release(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stalls_released.wait(), seconds)


def build_scripted_app(script: LlmScript | None = None) -> Starlette:
    """The OpenAI-compatible app answering from `script` (a new, empty one when None): `GET /v1/models`
    lists the offline model and the scripted ones, `POST /v1/chat/completions` records and answers."""
    active = script if script is not None else LlmScript()

    async def answer(request: Request, body: dict[str, Any]) -> Response:
        model = body["model"]
        active.record(
            RecordedRequest(
                model=model,
                messages=body["messages"],
                params={k: v for k, v in body.items() if k not in ("model", "messages")},
                headers={name.lower(): value for name, value in request.headers.items()},
            )
        )
        scripted = active.take(model)
        if scripted is None:
            return completion_response(body, offline_text(body), OFFLINE_MODEL_ID)
        if scripted.kind == "fail":
            return _scripted_error(scripted)
        if scripted.kind == "tool_calls":
            return _tool_calls_response(body, model, scripted.tool_calls)
        stall_first = scripted.kind == "stall" and not (scripted.stall_mid_stream and body.get("stream"))
        if stall_first and await _stall_until_gone(request, active, scripted.stall_seconds):
            return Response(status_code=499)  # the client hung up; nobody reads this
        return _scripted_answer(body, _scripted_text(scripted, body), model, scripted, active)

    return openai_compatible_app(answer, lambda: [OFFLINE_MODEL_ID, *active.scripted_models])


def _tool_calls_response(body: dict[str, Any], model: str, calls: tuple[dict[str, str], ...]) -> Response:
    """A completion that calls tools, whole or streamed as OpenAI does (id and name first, then arguments)."""
    completion = completion_for(body, "", model)
    whole = [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls
    ]
    if not body.get("stream"):
        answer = completion_object(completion)
        answer["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": whole}
        answer["choices"][0]["finish_reason"] = "tool_calls"
        return Response(json.dumps(answer).encode(), media_type="application/json")

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        payload = completion.envelope("chat.completion.chunk") | {
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        }
        return f"data: {json.dumps(payload)}\n\n".encode()

    pieces = [chunk({"role": "assistant", "content": None})]
    for index, call in enumerate(calls):
        half = len(call["arguments"]) // 2
        pieces.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        for part in (call["arguments"][:half], call["arguments"][half:]):
            pieces.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]}))
    pieces.append(chunk({}, "tool_calls"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = completion.envelope("chat.completion.chunk") | {"choices": [], "usage": completion.usage}
        pieces.append(f"data: {json.dumps(usage)}\n\n".encode())
    pieces.append(b"data: [DONE]\n\n")

    async def stream() -> Any:
        for piece in pieces:
            yield piece

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


def _scripted_error(scripted: ScriptedResponse) -> Response:
    headers = None
    if scripted.retry_after_seconds is not None:
        seconds = scripted.retry_after_seconds
        headers = {"retry-after": str(math.ceil(seconds)), "retry-after-ms": str(int(seconds * 1000))}
    message = scripted.text or f"Scripted upstream error ({scripted.status})."
    return error_response(scripted.status, message, headers=headers)


def _scripted_text(scripted: ScriptedResponse, body: dict[str, Any]) -> str:
    if scripted.kind == "empty":
        return ""
    if scripted.kind == "invalid_json":
        return NOT_JSON_TEXT if scripted.text is None else scripted.text
    if scripted.kind == "json":
        return "{}" if scripted.text is None else scripted.text
    return offline_text(body) if scripted.text is None else scripted.text


async def _stall_until_gone(request: Request, script: LlmScript, seconds: float) -> bool:
    """Wait until the stall is released or times out; True when the client hung up first."""
    released = asyncio.ensure_future(script.wait_for_release(seconds))
    hung_up = asyncio.ensure_future(_wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({released, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        return hung_up.done()
    finally:
        for task in (released, hung_up):
            task.cancel()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _scripted_answer(
    body: dict[str, Any], text: str, model: str, scripted: ScriptedResponse, script: LlmScript
) -> Response:
    """The completion shaped by the scripted kind: cut mid-way, stalled mid-stream, or slowed."""
    role_and_words = 1 + scripted.after_chunks
    if scripted.kind == "cut":
        completion = completion_for(body, text, model)
        if not body.get("stream"):
            payload = json.dumps(completion_object(completion)).encode()
            return _AbruptlyClosedResponse(
                [payload[: len(payload) // 2]], "application/json", {"content-length": str(len(payload))}
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = list(content_chunks(completion, include_usage))[:role_and_words]
        return _AbruptlyClosedResponse(chunks, "text/event-stream", SSE_HEADERS, scripted.per_chunk_delay)

    async def pace(index: int) -> None:
        if scripted.kind == "stall" and index == role_and_words:
            await script.wait_for_release(scripted.stall_seconds)
        if index and scripted.per_chunk_delay:
            await asyncio.sleep(scripted.per_chunk_delay)

    return completion_response(body, text, model, before_chunk=pace)


class _AbruptlyClosedResponse(Response):
    """Sends the head and some body chunks, then returns without finishing the body: the server
    closes the connection mid-message, as an upstream that dies mid-generation does. (uvicorn logs
    "ASGI callable returned without completing response." — that is the point.)"""

    def __init__(
        self, chunks: list[bytes], media_type: str, headers: dict[str, str], per_chunk_delay: float = 0.0
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", media_type.encode("latin-1"))] + [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
        ]
        self.chunks = chunks
        self.per_chunk_delay = per_chunk_delay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        for index, chunk in enumerate(self.chunks):
            if index and self.per_chunk_delay:
                await asyncio.sleep(self.per_chunk_delay)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
