"""The OpenAI-compatible API (gateway.md): `GET /v1/models` and `POST /v1/chat/completions`, for
SillyTavern and any OpenAI-style client.

HTTP shapes only: auth, the OpenAI request/response/chunk formats, and OpenAI's error shape
`{"error": {"message", "type", "code", "param"}}` (clients parse that, so the /v1 routes do not use
the /comp error contract). What a request means — which conversation, swipe, edit, utility call — is
decided by the orchestrator's `ChatCompletion`.

Auth: `Authorization: Bearer <api key>` (`rapport keys create`), checked with the orchestrator's
`VerifyApiKey` and cached in-process for `API_KEY_CACHE_SECS` (default 30 s: a revoked key stops
working within that), or a JWT as on /comp. Errors say what to do: no key (also SillyTavern's
`Bearer undefined`) → "No API key: create one with `rapport keys create`…"; something that is neither a
key nor a JWT → "This is not a Rapport API key or token".

Parameters: sampling (temperature, top_p, max_tokens, stop ≤ 4, penalties, seed) and `response_format`,
`tools` / `tool_choice` / `parallel_tool_calls`, a non-empty `logit_bias` go to the model; `tool_calls`
come back (streamed and whole) with `finish_reason: "tool_calls"`; `finish_reason` is `length` when
`max_tokens` cut the reply. `logprobs` is refused (400 naming it): Rapport does not relay token
probabilities. What the prompt budget had to cut is in the `X-Rapport-Prompt-Trimmed` header
(`section=tokens, …`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from rapport.orchestrator.v1 import orchestrator_pb2 as orch_pb2
from services.contracts.api_keys import looks_like_api_key
from services.contracts.frames import to_json as frame_to_dict
from services.servicekit.config import Env

from . import errors
from .auth import AuthError
from .errors import ApiError

log = logging.getLogger("rapport.gateway.openai")

TURN_STREAM_TIMEOUT = 3600.0
VERIFY_TIMEOUT = 5.0
SSE_PING_SECONDS = 15
NEGATIVE_CACHE_SECONDS = 5.0  # an unknown key is asked about again after this
FRAME_ERROR_STATUS = {
    "rate_limited": 429,
    "timeout": 504,
    "generation_timeout": 504,
    "internal": 500,
    "unsupported_parameter": 400,
}
UTILITY_HEADER_VALUES = frozenset({"1", "true", "yes"})
NO_KEY_VALUES = frozenset({"", "undefined", "null", "none"})  # what clients send when no key is set
TRIMMED_HEADER = "X-Rapport-Prompt-Trimmed"
NO_KEY_MESSAGE = (
    "No API key: create one with `rapport keys create` (`--user <your user id>`) and send it as "
    "`Authorization: Bearer <key>` (in SillyTavern: the API key field of the connection)."
)
NOT_A_KEY_MESSAGE = (
    "This is not a Rapport API key or token: send a key from `rapport keys create` (it starts with rk_) "
    "or a JWT of your identity provider."
)


# ---- errors in OpenAI's shape ----------------------------------------------------------------------


def error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status == 403:
        return "permission_error"
    return "server_error" if status >= 500 else "invalid_request_error"


class OpenAiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": error_type(self.status), "code": self.code, "param": self.param}
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_grpc_error(error: grpc.aio.AioRpcError) -> OpenAiError:
    api = errors.from_grpc(error)
    trailing = dict(error.trailing_metadata() or ())
    code = str(trailing.get("rapport-reason") or api.code)
    field_name = api.extra.get("field")
    return OpenAiError(api.status, api.message, code, str(field_name) if field_name else None, api.headers)


def from_frame(frame: dict[str, Any]) -> OpenAiError:
    """An `error` frame (the turn failed) as an HTTP error."""
    status = FRAME_ERROR_STATUS.get(frame.get("code", ""), 502)
    headers = {"Retry-After": "2"} if status in (429, 503) else {}
    return OpenAiError(
        status,
        frame.get("user_message") or frame.get("message") or "the reply failed",
        frame.get("code") or "upstream_unavailable",
        frame.get("param") or None,
        headers=headers,
    )


def _param(location: tuple[Any, ...]) -> str:
    parts = [p for p in location if p not in ("body", "query", "path", "header")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class OpenAiRoute(APIRoute):
    """Every failure of a /v1 route — auth, validation, gRPC, ours — in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAiError as error:
                return error.response()
            except RequestValidationError as error:
                first = error.errors()[0] if error.errors() else {}
                if first.get("type") == "json_invalid":
                    return OpenAiError(400, "We could not parse the JSON body of your request.").response()
                param = _param(tuple(first.get("loc", ())))
                message = f"{param}: {first.get('msg', 'invalid value')}" if param else "invalid request"
                return OpenAiError(400, message, "invalid_value", param or None).response()
            except grpc.aio.AioRpcError as error:
                return from_grpc_error(error).response()
            except ApiError as error:
                return OpenAiError(error.status, error.message, error.code, headers=error.headers).response()
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return OpenAiError(500, "internal error", "internal").response()

        return guarded


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class OpenAiErrorBody(BaseModel):
    """Every non-2xx response of the /v1 routes (OpenAI's error shape)."""

    error: ErrorDetail


OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAiErrorBody, "description": description}
    for status, description in (
        (400, "invalid_request_error (`param` names the field)"),
        (401, "invalid_api_key"),
        (403, "permission_error"),
        (404, "model_not_found"),
        (409, "conflict / duplicate_in_progress"),
        (413, "too_large"),
        (415, "unsupported_media_type"),
        (429, "rate_limit_error (with Retry-After)"),
        (500, "server_error"),
        (503, "server_error (unavailable)"),
    )
}


# ---- auth ------------------------------------------------------------------------------------------


@dataclass
class ApiKeyCache:
    """What VerifyApiKey said about a key (by its SHA-256), for `ttl` seconds (`negative_ttl` for a no)."""

    ttl: float
    negative_ttl: float = NEGATIVE_CACHE_SECONDS
    max_entries: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[str, tuple[float, uuid.UUID | None]] = field(default_factory=OrderedDict)

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def get(self, key: str) -> tuple[bool, uuid.UUID | None]:
        """(known, user): known False when the key must be asked about."""
        entry = self._entries.get(self.digest(key))
        if entry is None or entry[0] <= self.clock():
            return False, None
        return True, entry[1]

    def put(self, key: str, user_id: uuid.UUID | None) -> None:
        ttl = self.ttl if user_id is not None else min(self.ttl, self.negative_ttl)
        if ttl <= 0:
            return
        digest = self.digest(key)
        self._entries.pop(digest, None)
        self._entries[digest] = (self.clock() + ttl, user_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _unauthorized(message: str) -> OpenAiError:
    return OpenAiError(401, message, "invalid_api_key")


def _looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(part and JWT_SEGMENT.match(part) for part in parts[:2])


JWT_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")


async def authenticate(request: Request, cache: ApiKeyCache) -> uuid.UUID:
    """The user of the bearer API key (or JWT)."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or token.lower() in NO_KEY_VALUES:
        raise _unauthorized(NO_KEY_MESSAGE)
    if looks_like_api_key(token):
        known, user_id = cache.get(token)
        if not known:
            reply = await request.app.state.clients.orchestrator.VerifyApiKey(
                orch_pb2.VerifyApiKeyRequest(key=token), timeout=VERIFY_TIMEOUT
            )
            user_id = uuid.UUID(reply.user_id) if reply.valid else None
            cache.put(token, user_id)
        if user_id is None:
            raise _unauthorized("Incorrect API key provided (unknown or revoked).")
        return user_id
    if not _looks_like_jwt(token):
        raise _unauthorized(NOT_A_KEY_MESSAGE)
    try:
        return request.app.state.settings.verifier.verify(token)  # type: ignore[no-any-return]
    except AuthError as error:
        raise _unauthorized(f"Incorrect API key provided: {error}") from None


# ---- request bodies ------------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=200)
    arguments: str = Field(default="", max_length=100_000)


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=200)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=128)
    tool_call_id: str | None = Field(default=None, max_length=200)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""

    def to_grpc(self) -> orch_pb2.ChatCompletionMessage:
        calls = [call.model_dump() for call in self.tool_calls or []]
        return orch_pb2.ChatCompletionMessage(
            role=self.role,
            content=self.text(),
            name=self.name or "",
            tool_calls_json=json.dumps(calls) if calls else "",
            tool_call_id=self.tool_call_id or "",
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: text, json_object, or json_schema with its `json_schema` object."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: FunctionTool


class ChatCompletionBody(BaseModel):
    """OpenAI's chat-completions request; fields Rapport does not use are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=200, description="a persona name (case-insensitive) or id")
    messages: list[ChatMessageBody] = Field(min_length=1, max_length=5000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    n: int | None = Field(default=None, ge=1, le=1, description="only 1 is supported")
    user: str | None = Field(
        default=None, max_length=200, description="names the conversation when there is no X-Chat-Id header"
    )
    response_format: ResponseFormat | None = Field(default=None, description="forwarded to the model")
    tools: list[Tool] | None = Field(
        default=None, max_length=128, description="forwarded to the model; its `tool_calls` come back"
    )
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logit_bias: dict[str, float] | None = Field(default=None, description="forwarded when not empty")
    logprobs: bool | None = Field(default=None, description="refused when true: token probabilities are not relayed")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="refused: see logprobs")

    def check_parameters(self) -> None:
        """Parameters Rapport cannot honour, or that do not go together: a 400 naming the parameter."""
        if self.response_format is not None and self.response_format.type == "json_schema":
            if not self.response_format.json_schema:
                param = "response_format.json_schema"
                raise OpenAiError(400, f"{param}: required for type json_schema", "invalid_value", param)
        if self.logprobs or self.top_logprobs:
            param = "logprobs" if self.logprobs else "top_logprobs"
            raise OpenAiError(
                400,
                f"{param}: Rapport does not relay token probabilities; leave it unset",
                "unsupported_parameter",
                param,
            )
        if self.tool_choice is not None and not self.tools:
            raise OpenAiError(400, "tool_choice: only allowed together with tools", "invalid_value", "tool_choice")

    def sampling(self) -> orch_pb2.Sampling:
        sampling = orch_pb2.Sampling()
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed"):
            value = getattr(self, name)
            if value is not None:
                setattr(sampling, name, value)
        max_tokens = self.max_tokens or self.max_completion_tokens
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise OpenAiError(400, "stop: at most 4 sequences", "invalid_value", "stop")
        sampling.stop.extend(s for s in stops if s)
        return sampling

    def provider_params(self) -> orch_pb2.ProviderParams:
        """What goes to the model as sent (JSON)."""
        params = orch_pb2.ProviderParams()
        if self.response_format is not None:
            params.response_format_json = json.dumps(self.response_format.model_dump(exclude_none=True))
        if self.tools:
            params.tools_json = json.dumps([tool.model_dump(exclude_none=True) for tool in self.tools])
        if self.tool_choice is not None:
            params.tool_choice_json = json.dumps(self.tool_choice)
        if self.parallel_tool_calls is not None:
            params.parallel_tool_calls = self.parallel_tool_calls
        if self.logit_bias:
            params.logit_bias_json = json.dumps(self.logit_bias)
        return params


# ---- frames → OpenAI's completion and chunks -----------------------------------------------------------


@dataclass
class CompletionAssembler:
    """Turns the turn's frames into OpenAI chunks (and, at the end, a whole completion).

    A reply streams as its deltas (text, and the pieces of its tool calls); a model-chain hand-over
    (`done{truncated}`, then a new `meta`) is invisible to the client; a ghost is an empty assistant
    message with finish_reason "stop". The finish reason is the model's: stop, length, tool_calls.
    """

    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = ""
    parts: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, int] = field(
        default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    )
    finished: bool = False
    finish_reason: str = "stop"
    error: dict[str, Any] | None = None
    _role_sent: bool = False

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    def feed(self, frame: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks this frame produces."""
        kind = frame["type"]
        if kind == "meta":
            self.id = self.id or f"chatcmpl-{frame['message_id']}"
            if not self._role_sent:
                self._role_sent = True
                return [self.chunk({"role": "assistant", "content": ""})]
        elif kind == "delta":
            self.parts.append(frame["content"])
            delta: dict[str, Any] = {"content": frame["content"]} if frame["content"] else {}
            if frame.get("tool_calls"):
                delta["tool_calls"] = [self._tool_call_piece(piece) for piece in frame["tool_calls"]]
            return [self.chunk(delta)]
        elif kind == "done" and not frame.get("truncated"):
            self.usage = usage_json(frame.get("usage") or {})
            self.finished = True
            self.finish_reason = frame.get("finish_reason") or "stop"
            return [self.chunk({}, self.finish_reason)]
        elif kind == "error":
            self.error = frame
        return []

    def _tool_call_piece(self, piece: dict[str, Any]) -> dict[str, Any]:
        """A frame's tool-call piece as OpenAI streams it; the whole call is assembled for `completion`."""
        index = int(piece.get("index", 0))
        call = self.tool_calls.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        call["id"] = piece.get("id") or call["id"]
        call["function"]["name"] += piece.get("name", "")
        call["function"]["arguments"] += piece.get("arguments", "")
        out: dict[str, Any] = {"index": index}
        if piece.get("id"):
            out["id"], out["type"] = piece["id"], piece.get("type") or "function"
        function = {k: piece[k] for k in ("name", "arguments") if k in piece}
        if function or "id" in out:
            out["function"] = {"arguments": "", **function}
        return out

    def usage_chunk(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [],
            "usage": self.usage,
        }

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.parts)}
        if self.tool_calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = [self.tool_calls[index] for index in sorted(self.tool_calls)]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason, "logprobs": None}],
            "usage": self.usage,
        }


def trimmed_header(frame: dict[str, Any]) -> dict[str, str]:
    """`X-Rapport-Prompt-Trimmed: history=812, shared_memories=40` from the first frame (nothing cut: none)."""
    trimmed = frame.get("prompt_trimmed") or {}
    if not trimmed:
        return {}
    return {TRIMMED_HEADER: ", ".join(f"{section}={tokens}" for section, tokens in trimmed.items())}


def usage_json(usage: dict[str, Any]) -> dict[str, int]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def stream_error_event(error: OpenAiError) -> dict[str, str]:
    """An error after the stream started: a `data:` line with OpenAI's error object (clients raise it)."""
    return {"data": json.dumps(error.body())}


# ---- the router ---------------------------------------------------------------------------------------


def openai_router(env: Env | None = None) -> APIRouter:
    """The /v1 routes; `API_KEY_CACHE_SECS` (0–300, default 30) bounds how long a key's check is reused."""
    env = env or Env()
    cache = ApiKeyCache(ttl=env.float("API_KEY_CACHE_SECS", 30.0, 0.0, 300.0))
    router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAiRoute, responses=OPENAI_ERROR_RESPONSES)

    async def api_user(request: Request) -> uuid.UUID:
        return await authenticate(request, cache)

    # A default, not an Annotated alias: these annotations are strings resolved at module level.
    authenticated = Depends(api_user)

    @router.get("/models")
    async def list_models(request: Request, user: uuid.UUID = authenticated) -> dict[str, Any]:
        """The personas, as models (`id` = the persona's name)."""
        reply = await request.app.state.clients.orchestrator.ListPersonas(
            orch_pb2.ListPersonasRequest(user_id=str(user))
        )
        return {
            "object": "list",
            "data": [{"id": p.name, "object": "model", "created": 0, "owned_by": "rapport"} for p in reply.personas],
        }

    @router.post(
        "/chat/completions",
        response_model=None,
        responses={
            200: {
                "description": "A `chat.completion` object, or with `stream: true` server-sent `chat.completion.chunk`s "
                "ending with `data: [DONE]`.",
                "content": {"application/json": {}, "text/event-stream": {}},
            }
        },
    )
    async def chat_completions(
        request: Request,
        body: ChatCompletionBody,
        user: uuid.UUID = authenticated,
        x_chat_id: Annotated[str | None, Header(max_length=200)] = None,
        x_rapport_utility: Annotated[str | None, Header(max_length=10)] = None,
    ) -> Response:
        """A reply of the persona named by `model` — or, when the request carries its own character (system
        messages), of that character, with the persona's relationship with you. The conversation is the
        `X-Chat-Id` header, else `user`, else a fingerprint of the first system message and the first user
        message; the transcript is reconciled with the stored one (a swipe replaces the last reply, an edit
        is taken over). Utility calls (summaries, impersonation, connection tests, or `X-Rapport-Utility: 1`)
        are not stored. `X-Rapport-Prompt-Trimmed` names what the prompt budget cut (`section=tokens, …`)."""
        body.check_parameters()
        grpc_request = orch_pb2.ChatCompletionRequest(
            user_id=str(user),
            model=body.model,
            sampling=body.sampling(),
            chat_id=x_chat_id or "",
            client_user=body.user or "",
            utility=(x_rapport_utility or "").strip().lower() in UTILITY_HEADER_VALUES,
            messages=[m.to_grpc() for m in body.messages],
            provider_params=body.provider_params(),
        )
        call = request.app.state.clients.orchestrator.ChatCompletion(grpc_request, timeout=TURN_STREAM_TIMEOUT)
        try:
            conversation, first = await _opening(call)
        except BaseException:
            call.cancel()
            raise
        assembler = CompletionAssembler(model=body.model)
        headers = {
            "X-Rapport-Session-Id": conversation.session_id,
            "X-Rapport-Handling": conversation.handling,
            **trimmed_header(first),
        }
        if first.get("type") == "error":
            call.cancel()
            error = from_frame(first)
            raise OpenAiError(error.status, error.message, error.code, error.param, {**error.headers, **headers})
        if not body.stream:
            return await _whole_completion(call, first, assembler, headers)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventSourceResponse(
            _chunks(call, first, assembler, include_usage),
            ping=SSE_PING_SECONDS,
            sep="\n",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown_route(request: Request, path: str) -> Response:
        """Anything else under /v1: 404 (or 405 for a known path) in OpenAI's error shape."""
        if path in V1_ROUTES:
            allowed = V1_ROUTES[path]
            raise OpenAiError(
                405, f"{request.method} /v1/{path}: use {allowed}", "method_not_allowed", headers={"Allow": allowed}
            )
        raise OpenAiError(404, f"/v1/{path} does not exist: Rapport serves {V1_SERVED}", "not_found")

    return router


V1_ROUTES = {"models": "GET", "chat/completions": "POST"}
V1_SERVED = "GET /v1/models and POST /v1/chat/completions"


async def _opening(call: Any) -> tuple[orch_pb2.ChatCompletionConversation, dict[str, Any]]:
    """The conversation item and the first frame: errors before any content are HTTP errors."""
    try:
        item = await call.read()
        if item is grpc.aio.EOF or item.WhichOneof("item") != "conversation":
            raise OpenAiError(500, "the orchestrator did not say how it handled the request", "internal")
        frame = await call.read()
    except grpc.aio.AioRpcError as error:
        raise from_grpc_error(error) from None
    if frame is grpc.aio.EOF:
        raise OpenAiError(500, "the turn produced no frames", "internal")
    return item.conversation, frame_to_dict(frame.frame)


async def _whole_completion(
    call: Any, first: dict[str, Any], assembler: CompletionAssembler, headers: dict[str, str]
) -> JSONResponse:
    try:
        assembler.feed(first)
        while (item := await call.read()) is not grpc.aio.EOF:
            assembler.feed(frame_to_dict(item.frame))
    except grpc.aio.AioRpcError as error:
        raise from_grpc_error(error) from None
    finally:
        call.cancel()
    if assembler.error is not None:
        raise from_frame(assembler.error)
    return JSONResponse(assembler.completion(), headers=headers)


async def _chunks(
    call: Any, first: dict[str, Any], assembler: CompletionAssembler, include_usage: bool
) -> AsyncIterator[dict[str, str]]:
    try:
        frame: Any = first
        while True:
            for chunk in assembler.feed(frame):
                yield {"data": json.dumps(chunk)}
            if assembler.error is not None:
                yield stream_error_event(from_frame(assembler.error))
                return
            item = await call.read()
            if item is grpc.aio.EOF:
                break
            frame = frame_to_dict(item.frame)
        if not assembler.finished:
            yield {"data": json.dumps(assembler.chunk({}, assembler.finish_reason))}
        if include_usage:
            yield {"data": json.dumps(assembler.usage_chunk())}
        yield {"data": "[DONE]"}
    except grpc.aio.AioRpcError as error:
        yield stream_error_event(from_grpc_error(error))
    finally:
        call.cancel()  # the client went away: cancel our tap, never the turn
