"""The offline responder paced like a hosted LLM, for `rapport bench turn --llm realistic`.

Same OpenAI-compatible app and wire format as the offline LLM server (services/offline_llm/server.py),
with a wait before the first chunk (time to first token) and between chunks (one word-piece each, so
`--tokens-per-second` sets the streaming rate). Run as its own process:

    python -m tools.bench.paced_llm --port 8090 --first-token-ms 300 --tokens-per-second 40
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from services.offline_llm.responder import OFFLINE_MODEL_ID
from services.offline_llm.server import completion_response, offline_text, openai_compatible_app


def paced_llm_app(first_token_ms: float, tokens_per_second: float) -> Starlette:
    """The offline responder, answering after `first_token_ms` and streaming `tokens_per_second` pieces."""
    between = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0

    async def answer(request: Request, body: dict[str, Any]) -> Response:
        async def pause(index: int) -> None:
            await asyncio.sleep(first_token_ms / 1000 if index == 0 else between)

        return completion_response(body, offline_text(body), OFFLINE_MODEL_ID, before_chunk=pause)

    return openai_compatible_app(answer, lambda: [OFFLINE_MODEL_ID])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-token-ms", type=float, default=300.0)
    parser.add_argument("--tokens-per-second", type=float, default=40.0)
    args = parser.parse_args(argv)
    app = paced_llm_app(args.first_token_ms, args.tokens_per_second)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
