"""Found under a 64-session load through `rapport up`: a turn now and then failed with `upstream_unavailable`
(the LLM client's APIConnectionError). uvicorn closed idle keep-alive connections after 5 s, exactly when httpx
(the openai client's pool) still reuses them, so a request could go out on a connection being closed. Every
ASGI server of Rapport (the gateway, the offline LLM responder) now keeps idle connections longer than the
clients that talk to it keep them."""
from __future__ import annotations

import httpx
from openai._constants import DEFAULT_CONNECTION_LIMITS

from services.offline_llm.server import build_llm_app
from services.servicekit.http_runtime import serve_asgi


async def test_servers_keep_idle_connections_longer_than_their_clients_pool_them() -> None:
    running = await serve_asgi(build_llm_app(), lifespan="off")
    try:
        held = running.server.config.timeout_keep_alive
        assert held > DEFAULT_CONNECTION_LIMITS.keepalive_expiry  # the openai client (orchestrator → LLM)
        assert held > httpx.Limits().keepalive_expiry  # httpx defaults (the gateway's callers, tests)
        assert held >= 60  # browsers keep idle sockets up to about a minute before reuse
        async with httpx.AsyncClient(base_url=running.url) as client:  # and the server still answers
            assert (await client.get("/v1/models")).status_code == 200
    finally:
        await running.stop()
