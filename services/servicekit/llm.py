"""The LLM client: the `openai` library's AsyncOpenAI against any OpenAI-compatible base URL.

`OPENROUTER_API_KEY` → OpenRouter (with the OPENROUTER_APP_* headers); or `LLM_BASE_URL` + `LLM_API_KEY`
for any other provider (OpenAI, vLLM, llama.cpp server, Ollama). With neither, the caller starts the
offline responder (served over the same protocol) and points `LLM_BASE_URL` at it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry import trace

from .config import ConfigError, Env

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
OFFLINE_MODEL_ID = "rapport-offline-responder"


@dataclass(frozen=True)
class LlmEndpoint:
    base_url: str
    api_key: str
    headers: Mapping[str, str] = field(default_factory=dict)
    offline: bool = False
    default_model: str = ""


def llm_endpoint_from_env(env: Env | None = None) -> LlmEndpoint | None:
    """The configured provider, or None when the offline responder must be used."""
    env = env or Env()
    headers: dict[str, str] = {}
    if env.str("OPENROUTER_APP_URL"):
        headers["HTTP-Referer"] = env.str("OPENROUTER_APP_URL") or ""
    if env.str("OPENROUTER_APP_TITLE"):
        headers["X-OpenRouter-Title"] = env.str("OPENROUTER_APP_TITLE") or ""
        headers["X-Title"] = env.str("OPENROUTER_APP_TITLE") or ""
    if env.str("OPENROUTER_APP_CATEGORIES"):
        headers["X-OpenRouter-Categories"] = env.str("OPENROUTER_APP_CATEGORIES") or ""
    offline = env.bool("LLM_OFFLINE", False)
    base_url = env.str("LLM_BASE_URL")
    if base_url:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError("LLM_BASE_URL", "an http(s):// URL of an OpenAI-compatible API", base_url)
        return LlmEndpoint(
            base_url=base_url,
            api_key=env.str("LLM_API_KEY") or env.str("OPENROUTER_API_KEY") or "none",
            headers=headers,
            offline=offline,
            default_model=OFFLINE_MODEL_ID if offline else (env.str("LLM_MODEL") or ""),
        )
    key = env.str("OPENROUTER_API_KEY")
    if key:
        return LlmEndpoint(
            base_url=OPENROUTER_BASE_URL,
            api_key=key,
            headers=headers,
            default_model=env.str("LLM_MODEL") or "openai/gpt-4o-mini",
        )
    if env.str("LLM_API_KEY"):
        raise ConfigError("LLM_BASE_URL", "set together with LLM_API_KEY (an OpenAI-compatible base URL)")
    return None


@dataclass
class StreamChunk:
    """One piece of a streamed completion: text, pieces of tool calls, or the closing usage/finish information.
    A tool-call piece is `{index, id?, type?, name?, arguments?}` (OpenAI's streamed `tool_calls`, flattened)."""

    content: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    generation_id: str = ""
    model: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class LlmClient:
    def __init__(self, endpoint: LlmEndpoint, *, timeout: float = 60.0, max_retries: int = 0) -> None:
        self.endpoint = endpoint
        self.client = openai.AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            default_headers=dict(endpoint.headers),
            timeout=timeout,
            max_retries=max_retries,
        )
        self.tracer = trace.get_tracer("rapport.llm")

    async def close(self) -> None:
        await self.client.close()

    async def stream_chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        params: Mapping[str, Any] | None = None,
        first_token_timeout: float | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """Stream a chat completion. Raises openai errors on failure; a stream that ends without a
        finish_reason is reported by the caller as cut."""
        kwargs = {k: v for k, v in (params or {}).items() if v is not None}
        extra_body = kwargs.pop("extra_body", None)
        with self.tracer.start_as_current_span("llm.chat", attributes={"gen_ai.request.model": model}) as span:
            started = time.monotonic()
            stream = await self.client.chat.completions.create(
                model=model,
                messages=_wire_messages(messages),
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra_body,
                **kwargs,
            )
            first = True
            async for chunk in stream:
                piece = StreamChunk(generation_id=chunk.id or "", model=chunk.model or model)
                if chunk.choices:
                    choice = chunk.choices[0]
                    piece.content = (choice.delta.content or "") if choice.delta else ""
                    piece.tool_calls = _tool_call_pieces(choice.delta)
                    piece.finish_reason = choice.finish_reason
                if chunk.usage is not None:
                    piece.usage = chunk.usage.model_dump(exclude_none=True)
                if first and piece.content:
                    span.set_attribute("rapport.ttft_ms", (time.monotonic() - started) * 1000)
                    first = False
                yield piece

    async def complete(
        self, model: str, messages: Sequence[Mapping[str, Any]], *, params: Mapping[str, Any] | None = None
    ) -> tuple[str, dict[str, Any], str]:
        """A non-streamed completion: (text, usage, model)."""
        kwargs = {k: v for k, v in (params or {}).items() if v is not None}
        with self.tracer.start_as_current_span("llm.complete", attributes={"gen_ai.request.model": model}):
            response = await self.client.chat.completions.create(
                model=model, messages=_wire_messages(messages), **kwargs
            )
        text = response.choices[0].message.content or "" if response.choices else ""
        usage = response.usage.model_dump(exclude_none=True) if response.usage else {}
        return text, usage, response.model or model


def _tool_call_pieces(delta: Any) -> list[dict[str, Any]]:
    pieces = []
    for call in (getattr(delta, "tool_calls", None) or []) if delta is not None else []:
        function = call.function
        piece = {
            "index": call.index,
            "id": call.id or "",
            "type": call.type or "",
            "name": (function.name or "") if function else "",
            "arguments": (function.arguments or "") if function else "",
        }
        pieces.append({k: v for k, v in piece.items() if v != ""})
    return pieces


def is_retryable_status(status: int | None) -> bool:
    """HTTP convention: 5xx, 408 and 429 are worth retrying."""
    return status is None or status >= 500 or status in (408, 429)


def _wire_messages(messages: Sequence[Mapping[str, Any]]) -> list[ChatCompletionMessageParam]:
    """The messages as sent: Rapport relays OpenAI-shaped dicts (a client's own included), which the
    library's typed parameters describe but cannot check at run time."""
    return cast("list[ChatCompletionMessageParam]", list(messages))
