"""The offline responder served as an OpenAI-compatible chat API (what runs when no LLM is configured).

`build_llm_app("offline")` answers every `POST /v1/chat/completions` with the deterministic
responder (orchestrator.md "LLM client": offline default over the same interface, labelled by its
model id). The orchestrator serves it in-process, `rapport up` as a process of its own
(`rapport serve offline-llm`).

Wire format follows the OpenAI API, so the real `openai.AsyncOpenAI` client parses it: a
`chat.completion` object with `usage`, or SSE `data: {chat.completion.chunk}` lines (role chunk,
word-by-word content deltas, a chunk with `finish_reason`, a usage chunk when
`stream_options.include_usage` is true, then `data: [DONE]`). The app and the wire format are built so
the scriptable stub of the tests (tools/llm_stub.py, a source checkout only) can reuse them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.offline_llm.responder import OFFLINE_MODEL_ID, asks_for_json, compose_json_reply, compose_reply
from services.servicekit.http_runtime import serve_asgi

# Answers one valid chat request (its JSON body); the app has validated `model` and `messages`.
AnswerChat = Callable[[Request, dict[str, Any]], Awaitable[Response]]
# Called before each SSE chunk of a streamed answer is sent, with the chunk's index (pauses, stalls).
BeforeChunk = Callable[[int], Awaitable[None]]


def build_llm_app(mode: Literal["offline", "script"] = "offline", script: Any = None) -> Starlette:
    """The offline OpenAI-compatible app: `GET /v1/models`, `POST /v1/chat/completions`. Any bearer
    token (or none) is accepted. ("script" is the old way to build the tests' stub: tools/llm_stub.py.)"""
    if mode == "offline":
        return openai_compatible_app(answer_offline, lambda: [OFFLINE_MODEL_ID])
    if mode == "script":
        return _llm_stub().build_scripted_app(script)  # type: ignore[no-any-return]
    raise ValueError(f"mode must be 'offline' or 'script', got {mode!r}")


def openai_compatible_app(answer_chat: AnswerChat, model_ids: Callable[[], list[str]]) -> Starlette:
    """The two routes of an OpenAI-compatible chat server; malformed requests are 400s in OpenAI's shape."""

    async def list_models(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": model_id, "object": "model", "created": 0, "owned_by": "rapport"} for model_id in model_ids()
                ],
            }
        )

    async def chat_completions(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "The request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return error_response(400, "'model' is required and must be a string.", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return error_response(400, "'messages' must be a non-empty list of objects.", param="messages")
        return await answer_chat(request, body)

    return Starlette(
        routes=[
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ]
    )


async def answer_offline(request: Request, body: dict[str, Any]) -> Response:
    return completion_response(body, offline_text(body), OFFLINE_MODEL_ID)


def offline_text(body: dict[str, Any]) -> str:
    """The responder's reply to a chat request: in character, or `{}`-style JSON when JSON is asked for."""
    messages = body["messages"]
    response_format = body.get("response_format") or {}
    if asks_for_json(messages) or response_format.get("type") in ("json_object", "json_schema"):
        return compose_json_reply(messages, response_format)
    return compose_reply(messages, body["model"])


# --- the wire format ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
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


def completion_for(body: dict[str, Any], text: str, model: str) -> Completion:
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
    return Completion(
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


def completion_object(completion: Completion) -> dict[str, Any]:
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


def _chunk(completion: Completion, delta: dict[str, Any], finish_reason: str | None, with_usage_field: bool) -> bytes:
    chunk = completion.envelope("chat.completion.chunk") | {
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if with_usage_field:
        chunk["usage"] = None
    return _sse(chunk)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def content_chunks(completion: Completion, with_usage_field: bool) -> Iterator[bytes]:
    """The role chunk, then one chunk per word."""
    yield _chunk(completion, {"role": "assistant", "content": ""}, None, with_usage_field)
    for piece in completion.pieces:
        yield _chunk(completion, {"content": piece}, None, with_usage_field)


def _closing_chunks(completion: Completion, include_usage: bool) -> Iterator[bytes]:
    yield _chunk(completion, {}, completion.finish_reason, include_usage)
    if include_usage:
        yield _sse(completion.envelope("chat.completion.chunk") | {"choices": [], "usage": completion.usage})
    yield _sse("[DONE]")


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def completion_response(
    body: dict[str, Any], text: str, model: str, before_chunk: BeforeChunk | None = None
) -> Response:
    """`text` as a `chat.completion` object, or as an SSE stream when the request asks for one."""
    completion = completion_for(body, text, model)
    if not body.get("stream"):
        return Response(json.dumps(completion_object(completion)).encode(), media_type="application/json")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    async def stream() -> AsyncIterator[bytes]:
        chunks = [*content_chunks(completion, include_usage), *_closing_chunks(completion, include_usage)]
        for index, data in enumerate(chunks):
            if before_chunk is not None:
                await before_chunk(index)
            yield data

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout",
    429: "rate_limit_error",
}


def error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An OpenAI-style error body `{"error": {message, type, param, code}}` (code as OpenRouter
    sends it: the HTTP status)."""
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse(
        {
            "error": {
                "message": message,
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


# --- the tests' stub, at its old import path ------------------------------------------------------
# The scriptable stub moved to tools/llm_stub.py, which only a source checkout has (it is not installed
# and the image does not ship it). Tests written before the move import its names from this module, so
# they resolve to the stub on first use; nothing at run time asks for them.
_STUB_NAMES = frozenset({"LlmScript", "ScriptedResponse", "RecordedRequest", "NOT_JSON_TEXT"})


def _llm_stub() -> Any:
    return importlib.import_module("tools.llm_stub")


def __getattr__(name: str) -> Any:
    if name in _STUB_NAMES:
        return getattr(_llm_stub(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Rapport's offline OpenAI-compatible LLM responder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    arguments = parser.parse_args()
    run_offline_llm_server(arguments.host, arguments.port)
