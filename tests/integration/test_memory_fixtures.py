"""Shared fixtures and helpers of the memory integration tests (no tests here).

`memory` is the real memory service on an ephemeral port against the per-test database, with a
gRPC stub; `ingest` sends one turn through IngestTurn the way the orchestrator's outbox does.
"""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import pytest
from rapport.memory.v1 import memory_pb2 as pb
from rapport.memory.v1 import memory_pb2_grpc as pb_grpc

from services.servicekit.config import Env
from services.servicekit.service import RunningService, start_service
from tests.stack import INTERNAL_ENV, internal_channel


@dataclass
class MemoryClient:
    """A running memory service and a stub to it; `close()` stops both."""

    service: RunningService
    channel: grpc.aio.Channel
    stub: pb_grpc.MemoryServiceStub
    turns: int = field(default=0)

    async def close(self) -> None:
        await self.channel.close()
        await self.service.stop(grace=0.5)

    async def ingest(self, user: uuid.UUID, instance: uuid.UUID, session: uuid.UUID, user_text: str,
                     reply_text: str = "That's lovely to hear.", *, turn_id: str | None = None,
                     occurred_at: datetime | None = None, persona_name: str = "Ines") -> pb.IngestTurnResponse:
        self.turns += 1
        request = pb.IngestTurnRequest(
            turn_id=turn_id or f"turn-{uuid.uuid4().hex}", user_id=str(user), instance_id=str(instance),
            session_id=str(session), user_message_id=f"m-{uuid.uuid4().hex[:12]}",
            reply_message_id=f"m-{uuid.uuid4().hex[:12]}", user_text=user_text, reply_text=reply_text,
            persona_name=persona_name)
        if occurred_at is not None:
            request.occurred_at.FromDatetime(occurred_at)
        return await self.stub.IngestTurn(request)

    async def recall(self, user: uuid.UUID, instance: uuid.UUID, query: str, **fields: object) -> pb.RecallResponse:
        return await self.stub.Recall(pb.RecallRequest(user_id=str(user), instance_id=str(instance), query=query,
                                                       **fields))  # type: ignore[arg-type]


async def start_memory(database_url: str, **env: str) -> MemoryClient:
    service = await start_service("memory", Env({"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0", **INTERNAL_ENV,
                                                 "SHUTDOWN_GRACE_SECS": "1", "DREAMING_DISABLED": "1", **env}),
                                  pool_size=5)
    channel = internal_channel(service.address)
    return MemoryClient(service, channel, pb_grpc.MemoryServiceStub(channel))


@pytest.fixture(name="memory")
async def memory_service(database_url: str) -> AsyncIterator[MemoryClient]:
    """The memory service for one test (import `memory_service`; request it as `memory`)."""
    client = await start_memory(database_url)
    try:
        yield client
    finally:
        await client.close()


def contents(memories: object) -> list[str]:
    return [m.content for m in memories]  # type: ignore[attr-defined]


def ids() -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A fresh (user, instance, session)."""
    return uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)
