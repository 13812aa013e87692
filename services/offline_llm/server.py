"""An OpenAI-compatible chat server: the offline responder, and the scriptable stub for tests.

`offline` mode answers every `POST /v1/chat/completions` with the deterministic responder
(orchestrator.md "LLM client": offline default over the same interface, labelled by its model id).
`script` mode follows an `LlmScript` — a FIFO of `ScriptedResponse`s, optionally keyed by the
requested model — to drive every failure the model chain must survive (orchestrator.md "Model
chain"): HTTP errors, stalls, streams cut mid-way, empty and non-JSON completions. It records every
request it receives. When the script runs out it falls back to the offline responder.

Wire format follows the OpenAI API, so the real `openai.AsyncOpenAI` client parses it: a
`chat.completion` object with `usage`, or SSE `data: {chat.completion.chunk}` lines (role chunk,
word-by-word content deltas, a chunk with `finish_reason`, a usage chunk when
`stream_options.include_usage` is true, then `data: [DONE]`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.offline_llm.responder import OFFLINE_MODEL_ID, asks_for_json, compose_json_reply, compose_reply
from services.servicekit.http_runtime import serve_asgi

ScriptKind = Literal["reply", "fail", "stall", "cut", "empty", "invalid_json", "json"]
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


def build_llm_app(mode: Literal["offline", "script"], script: LlmScript | None = None) -> Starlette:
    """The OpenAI-compatible app: `GET /v1/models`, `POST /v1/chat/completions`. Any bearer
    token (or none) is accepted."""
    if mode not in ("offline", "script"):
        raise ValueError(f"mode must be 'offline' or 'script', got {mode!r}")
    if mode == "script" and script is None:
        script = LlmScript()
    active_script = script if mode == "script" else None

    async def list_models(request: Request) -> JSONResponse:
        ids = [OFFLINE_MODEL_ID] + (active_script.scripted_models if active_script else [])
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "rapport"} for model_id in ids],
            }
        )

    async def chat_completions(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error_response(400, "The request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error_response(400, "'model' is required and must be a string.", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return _error_response(400, "'messages' must be a non-empty list of objects.", param="messages")
        model = body["model"]
        if active_script is not None:
            active_script.record(
                RecordedRequest(
                    model=model,
                    messages=messages,
                    params={k: v for k, v in body.items() if k not in ("model", "messages")},
                    headers={name.lower(): value for name, value in request.headers.items()},
                )
            )
        scripted = active_script.take(model) if active_script else None
        if scripted is None:
            return _answer(body, _offline_text(body), OFFLINE_MODEL_ID, ScriptedResponse())
        if scripted.kind == "fail":
            return _error_response(scripted.status, scripted.text, retry_after=scripted.retry_after_seconds)
        assert active_script is not None
        stall_first = scripted.kind == "stall" and not (scripted.stall_mid_stream and body.get("stream"))
        if stall_first and await _stall_until_gone(request, active_script, scripted.stall_seconds):
            return Response(status_code=499)  # the client hung up; nobody reads this
        return _answer(body, _scripted_text(scripted, body), model, scripted, active_script)

    return Starlette(
        routes=[
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ]
    )


def _offline_text(body: dict[str, Any]) -> str:
    messages = body["messages"]
    response_format = body.get("response_format") or {}
    if asks_for_json(messages) or response_format.get("type") in ("json_object", "json_schema"):
        return compose_json_reply(messages)
    return compose_reply(messages, body["model"])


def _scripted_text(scripted: ScriptedResponse, body: dict[str, Any]) -> str:
    if scripted.kind == "empty":
        return ""
    if scripted.kind == "invalid_json":
        return NOT_JSON_TEXT if scripted.text is None else scripted.text
    if scripted.kind == "json":
        return "{}" if scripted.text is None else scripted.text
    return _offline_text(body) if scripted.text is None else scripted.text


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


# --- the wire format ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Completion:
    """One completion being answered: the words to send and the shared chunk envelope."""

    id: str
    created: int
    model: str
    pieces: list[str]
    finish_reason: str
    usage: dict[str, int]

    def envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "system_fingerprint": None}

    @property
    def content(self) -> str:
        return "".join(self.pieces)


def _completion_for(body: dict[str, Any], text: str, model: str) -> _Completion:
    """Split into word deltas, cut to `max_tokens` words (finish_reason "length"), count usage in
    words (a rough token count is enough for a stand-in)."""
    pieces = [piece for piece in re.split(r"(?<=\s)(?=\S)", text) if piece]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    finish_reason = "stop"
    if isinstance(limit, int) and 0 < limit < len(pieces):
        pieces, finish_reason = pieces[:limit], "length"
        pieces[-1] = pieces[-1].rstrip()
    prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
    completion_tokens = len("".join(pieces).split())
    return _Completion(
        id=f"gen-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        pieces=pieces,
        finish_reason=finish_reason,
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )


def _completion_object(completion: _Completion) -> dict[str, Any]:
    return completion.envelope("chat.completion") | {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.content, "refusal": None},
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": completion.usage,
    }


def _chunk(completion: _Completion, delta: dict[str, Any], finish_reason: str | None, with_usage_field: bool) -> bytes:
    chunk = completion.envelope("chat.completion.chunk") | {
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if with_usage_field:
        chunk["usage"] = None
    return _sse(chunk)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _content_chunks(completion: _Completion, with_usage_field: bool) -> Iterator[bytes]:
    """The role chunk, then one chunk per word."""
    yield _chunk(completion, {"role": "assistant", "content": ""}, None, with_usage_field)
    for piece in completion.pieces:
        yield _chunk(completion, {"content": piece}, None, with_usage_field)


def _closing_chunks(completion: _Completion, include_usage: bool) -> Iterator[bytes]:
    yield _chunk(completion, {}, completion.finish_reason, include_usage)
    if include_usage:
        yield _sse(completion.envelope("chat.completion.chunk") | {"choices": [], "usage": completion.usage})
    yield _sse("[DONE]")


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _answer(
    body: dict[str, Any], text: str, model: str, scripted: ScriptedResponse, script: LlmScript | None = None
) -> Response:
    """The completion as JSON or as an SSE stream, shaped by the scripted kind (cut / stall)."""
    completion = _completion_for(body, text, model)
    if not body.get("stream"):
        payload = json.dumps(_completion_object(completion)).encode()
        if scripted.kind == "cut":
            return _AbruptlyClosedResponse(
                [payload[: len(payload) // 2]], "application/json", {"content-length": str(len(payload))}
            )
        return Response(payload, media_type="application/json")

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    content = list(_content_chunks(completion, include_usage))
    role_and_words = 1 + scripted.after_chunks
    if scripted.kind == "cut":
        return _AbruptlyClosedResponse(
            content[:role_and_words], "text/event-stream", SSE_HEADERS, scripted.per_chunk_delay
        )

    async def stream() -> AsyncIterator[bytes]:
        for index, chunk in enumerate(content + list(_closing_chunks(completion, include_usage))):
            if scripted.kind == "stall" and index == role_and_words and script is not None:
                await script.wait_for_release(scripted.stall_seconds)
            if index and scripted.per_chunk_delay:
                await asyncio.sleep(scripted.per_chunk_delay)
            yield chunk

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


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


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout",
    429: "rate_limit_error",
}


def _error_response(
    status: int, message: str | None, param: str | None = None, retry_after: float | None = None
) -> JSONResponse:
    """An OpenAI-style error body `{"error": {message, type, param, code}}` (code as OpenRouter
    sends it: the HTTP status)."""
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    headers = {}
    if retry_after is not None:
        headers = {"retry-after": str(math.ceil(retry_after)), "retry-after-ms": str(int(retry_after * 1000))}
    return JSONResponse(
        {
            "error": {
                "message": message or f"Scripted upstream error ({status}).",
                "type": error_type,
                "param": param,
                "code": status,
            }
        },
        status_code=status,
        headers=headers,
    )


# --- running it -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningServer:
    """A server started by `serve_llm`; `base_url` ends in `/v1` as OpenAI clients expect."""

    base_url: str
    port: int
    stop: Callable[[], Awaitable[None]]


async def serve_llm(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Run `app` in the current event loop (port 0 works; the base URL is known at once)."""
    running = await serve_asgi(app, host, port, lifespan="off", timeout_graceful_shutdown=2)
    return RunningServer(base_url=f"{running.url}/v1", port=running.port, stop=running.stop)


def run_offline_llm_server(host: str = "127.0.0.1", port: int = 8089) -> None:
    """Serve the offline responder until interrupted (blocking; for a separate process)."""
    uvicorn.run(build_llm_app("offline"), host=host, port=port, log_level="info", lifespan="off")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Rapport's offline OpenAI-compatible LLM responder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    arguments = parser.parse_args()
    run_offline_llm_server(arguments.host, arguments.port)
