"""What the gateway accepts as a request, checked before anything else reads it (before auth, before
JSON parsing): a pure ASGI middleware, so nothing buffers a body it has not bounded.

- The body is read as it streams, chunked or not, and refused with 413 as soon as it passes the limit
  (64 KiB; 4 MiB on `/v1`, where OpenAI-style clients send the whole transcript). A declared
  Content-Length over the limit is refused before one byte is read. The server then discards the rest
  of the body as it arrives (the client still gets its 413; a closed connection would lose it), so
  memory stays bounded by the limit whatever the client sends.
- Text PostgreSQL cannot store (invalid UTF-8, NUL characters, lone UTF-16 surrogates) → 400.
- JSON nested deeper than `MAX_JSON_DEPTH` → 400 (deeper structures made parsers and protobuf fail with 500).

Errors use the error contract: `{code, message, user_message}`, or OpenAI's `{"error": {...}}` on `/v1`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np

from .errors import ApiError
from .openai_api import OpenAiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024
MAX_TRANSCRIPT_BYTES = 4 * 1024 * 1024  # /v1: the whole transcript on every request
MAX_JSON_DEPTH = 32

# +1 for an opening bracket, -1 for a closing one, 0 for any other byte.
_DEPTH_STEPS = np.zeros(256, dtype=np.int8)
_DEPTH_STEPS[[ord("["), ord("{")]] = 1
_DEPTH_STEPS[[ord("]"), ord("}")]] = -1
_QUOTE = ord('"')


def body_limit(path: str) -> int:
    return MAX_TRANSCRIPT_BYTES if path.startswith("/v1/") else MAX_BODY_BYTES


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the arrays and objects of a JSON text nest deeper than `limit` (brackets inside strings
    do not count).

    Vectorised, a 4 MiB body takes tens of milliseconds: escaped backslashes and quotes are removed,
    every remaining quote opens or closes a string, and the depth is the running sum of the brackets
    outside strings. For malformed JSON the answer is approximate; the route reports the error.
    """
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    codes = np.frombuffer(text, dtype=np.uint8)
    inside_strings = (np.cumsum(codes == _QUOTE, dtype=np.uint8) & 1).view(bool)  # uint8 wraps, parity holds
    steps = _DEPTH_STEPS[codes]
    steps[inside_strings] = 0
    # int16 may wrap only past 32767, and every ±1 walk to there passes every depth below it first.
    return int(np.cumsum(steps, dtype=np.int16).max(initial=0)) > limit


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return not media or media == "application/json" or media.endswith("+json")


def body_problem(body: bytes, content_type: str) -> str | None:
    """Why this body cannot be parsed or stored, else None."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body must be UTF-8"
    lowered = body.lower()
    if b"\\u0000" in lowered:
        return "text must not contain NUL (\\u0000) characters"
    if not _is_json(content_type):
        return None  # the route refuses the media type
    if nests_deeper_than(body, MAX_JSON_DEPTH):
        return f"JSON must not nest deeper than {MAX_JSON_DEPTH} levels"
    if b"\\ud" in lowered:  # a JSON surrogate escape: a lone one cannot be encoded as UTF-8
        try:
            _encodable(json.loads(body))
        except UnicodeEncodeError:
            return "text must not contain unpaired UTF-16 surrogates"
        except ValueError:
            return None  # malformed JSON: the route answers that
    return None


def _encodable(value: Any) -> None:
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            _encodable(key)
            _encodable(item)
    elif isinstance(value, list):
        for item in value:
            _encodable(item)


class RequestLimits:
    """ASGI middleware: bounds, reads and checks the body, then hands the app a replay of it."""

    def __init__(self, app: Asgi) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        limit = body_limit(path)
        if b"%00" in scope.get("raw_path", b"") or b"%00" in scope.get("query_string", b""):
            await self._refuse(scope, receive, send, 400, "invalid_payload", "the URL must not contain NUL characters")
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nobody to answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, receive, send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            problem = body_problem(body, headers.get("content-type", ""))
            if problem:
                await self._refuse(scope, receive, send, 400, "invalid_payload", problem)
                return
        await self.app(scope, _replay(body, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        await self._refuse(scope, receive, send, 413, "too_large", f"request body over {limit} bytes")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
        if scope["path"].startswith("/v1/"):
            response = OpenAiError(status, message, code).response()
        else:
            response = ApiError(status, code, message).response()
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body already read, then what the server says next (disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
