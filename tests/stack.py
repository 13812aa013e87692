"""The real services, in-process on ephemeral ports, against a real Postgres — for integration tests.

`start_stack(database_url, ...)` starts every service of the registry (gRPC, port 0; each after the
services it calls, with their addresses) and the gateway (HTTP, port 0), exactly as `rapport serve`
would, with an env mapping per service.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx

from gateway.app import GatewaySettings
from gateway.auth import mint_token
from gateway.server import start_gateway
from services.servicekit import registry
from services.servicekit.config import Env
from services.servicekit.grpc_runtime import outbound_interceptors
from services.servicekit.http_runtime import RunningHttpServer
from services.servicekit.service import RunningService, start_service

JWT_SECRET = "test-secret-for-rapport-integration-tests-0123456789"
# The credential Rapport's services call each other with (services/servicekit/grpc_security.py).
INTERNAL_TOKEN = "test-internal-token-for-rapport-integration-tests-0123456789"
INTERNAL_ENV = {"RAPPORT_INTERNAL_TOKEN": INTERNAL_TOKEN}
INTERNAL_METADATA = (("x-rapport-internal-token", INTERNAL_TOKEN),)


def internal_channel(address: str) -> grpc.aio.Channel:
    """A plaintext channel to a service whose every call carries the internal credential (what the tests
    used `grpc.aio.insecure_channel` for before the services required it)."""
    return grpc.aio.insecure_channel(address, interceptors=outbound_interceptors(None, INTERNAL_METADATA))


@dataclass
class Stack:
    database_url: str
    services: dict[str, RunningService]
    gateway: RunningHttpServer
    env: dict[str, str]
    client: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.AsyncClient(base_url=self.gateway.url, timeout=30)

    @property
    def url(self) -> str:
        return self.gateway.url

    def address(self, name: str) -> str:
        return self.services[name].address

    def token(self, user_id: uuid.UUID) -> str:
        return mint_token(JWT_SECRET, user_id)

    def headers(self, user_id: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id)}"}

    async def stop(self) -> None:
        await self.client.aclose()
        await self.gateway.stop()
        for spec in reversed(registry.start_order()):
            if spec.name in self.services:
                await self.services[spec.name].stop(grace=1.0)

    # -- conveniences for tests ------------------------------------------------------------

    async def personas(self, user_id: uuid.UUID) -> list[dict[str, Any]]:
        response = await self.client.get("/comp/personas", headers=self.headers(user_id))
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def start_chat(self, user_id: uuid.UUID, persona: str | None = None, **body: Any) -> dict[str, Any]:
        personas = await self.personas(user_id)
        chosen = next(p for p in personas if persona is None or p["name"] == persona)
        response = await self.client.post("/comp/chat/start", json={"persona_id": chosen["id"], **body},
                                          headers=self.headers(user_id))
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def send(self, user_id: uuid.UUID, session_id: str, content: str, client_msg_id: str | None = None,
                   **body: Any) -> list[dict[str, Any]]:
        """One turn through the gateway; returns the SSE frames (raises on a non-2xx status)."""
        payload = {"content": content, "client_msg_id": client_msg_id or new_client_msg_id(), **body}
        frames: list[dict[str, Any]] = []
        async with self.client.stream("POST", f"/comp/chat/{session_id}/message/stream", json=payload,
                                      headers=self.headers(user_id)) as response:
            if response.status_code != 200:
                await response.aread()
                raise httpx.HTTPStatusError(f"{response.status_code}: {response.text}", request=response.request,
                                            response=response)
            async for frame in sse_frames(response.aiter_lines()):
                frames.append(frame)
        return frames


def new_client_msg_id() -> str:
    return "cm-" + uuid.uuid4().hex[:28]


async def sse_frames(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    async for line in lines:
        if line.startswith("data:"):
            yield json.loads(line[5:].strip())


def reply_text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["content"] for f in frames if f["type"] == "delta")


async def start_stack(database_url: str, extra_env: dict[str, str] | None = None,
                      per_service_env: dict[str, dict[str, str]] | None = None) -> Stack:
    base = {"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0", "SHUTDOWN_GRACE_SECS": "1",
            "DREAMING_DISABLED": "1", "SNAPSHOT_DISABLED": "1", **INTERNAL_ENV, **(extra_env or {})}
    per_service_env = per_service_env or {}
    services: dict[str, RunningService] = {}
    try:
        for spec in registry.start_order():
            peers = {callee.address_var: services[callee.name].address for callee in registry.called_by(spec.name)}
            env = Env({**base, **peers, **per_service_env.get(spec.name, {})})
            pool_size = 10 if spec.name == "orchestrator" else 5  # the orchestrator runs the turns and the outbox
            services[spec.name] = await start_service(spec.name, env, pool_size=pool_size)
        peers = {callee.address_var: services[callee.name].address for callee in registry.called_by(registry.GATEWAY)}
        gateway_env = {**base, **peers, "SUPABASE_JWT_SECRET": JWT_SECRET, **per_service_env.get("gateway", {})}
        gateway = await start_gateway(GatewaySettings.from_env(Env(gateway_env)), "127.0.0.1", 0)
    except BaseException:
        for service in reversed(list(services.values())):
            await service.stop(grace=0.5)
        raise
    return Stack(database_url=database_url, services=services, gateway=gateway, env=base)


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll an async predicate until it returns something truthy (for background work such as the
    outbox). Not a sleep to green: it returns as soon as the condition holds and fails loudly."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
