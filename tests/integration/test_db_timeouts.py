"""Lock waits and statements are bounded on every pooled connection (issue 13): a locked row gives a clear
error within DB_LOCK_TIMEOUT_SECS instead of a client waiting 30 s with no byte."""
from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
import pytest
from rapport.affinity.v1 import affinity_pb2 as pb
from rapport.affinity.v1 import affinity_pb2_grpc as pb_grpc

from services.servicekit.config import Env
from services.servicekit.db import DbTimeouts, create_pool
from services.servicekit.service import start_service
from tests.stack import INTERNAL_ENV, internal_channel


async def test_pooled_connections_carry_the_timeouts(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=1)
    try:
        assert await pool.fetchval("SHOW lock_timeout") == "10s"
        assert await pool.fetchval("SHOW statement_timeout") == "30s"
    finally:
        await pool.close()
    configured = DbTimeouts.from_env(Env({"DB_LOCK_TIMEOUT_SECS": "0.25", "DB_STATEMENT_TIMEOUT_SECS": "0"}))
    pool = await create_pool(database_url, max_size=1, timeouts=configured)
    try:
        assert await pool.fetchval("SHOW lock_timeout") == "250ms"
        assert await pool.fetchval("SHOW statement_timeout") == "0"
    finally:
        await pool.close()


async def test_a_long_statement_is_cancelled_by_the_server(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=1, timeouts=DbTimeouts(statement_secs=0.3))
    try:
        started = time.monotonic()
        with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
            await pool.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 5
    finally:
        await pool.close()


async def test_a_locked_row_fails_the_write_within_the_lock_timeout(database_url: str) -> None:
    service = await start_service("affinity", Env({"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0", **INTERNAL_ENV,
                                                   "SHUTDOWN_GRACE_SECS": "1", "DB_LOCK_TIMEOUT_SECS": "0.5"}),
                                  pool_size=3)
    channel = internal_channel(service.address)
    stub = pb_grpc.AffinityServiceStub(channel)
    holder = await asyncpg.connect(database_url)
    try:
        user_id, session_id = str(uuid.uuid4()), str(uuid.uuid4())
        await stub.OpenSession(pb.OpenSessionRequest(user_id=user_id, session_id=session_id,
                                                     instance_id=str(uuid.uuid4())))
        async with holder.transaction():  # someone holds the session's row (an operator's psql, a stuck job…)
            await holder.execute("SELECT 1 FROM affinity.vectors WHERE session_id = $1 FOR UPDATE",
                                 uuid.UUID(session_id))
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.ApplyTurn(pb.ApplyTurnRequest(
                    turn_id="t-1", user_id=user_id, session_id=session_id, persona_name="Mara",
                    user_text="I spent the whole afternoon repainting the kitchen walls.", reply_text="Nice."),
                    timeout=20)
            waited = time.monotonic() - started
        assert failure.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED
        assert waited < 5, waited  # the lock timeout (0.5 s), not the 30 s command timeout
        # Once the row is free the same turn applies.
        reply = await asyncio.wait_for(stub.ApplyTurn(pb.ApplyTurnRequest(
            turn_id="t-1", user_id=user_id, session_id=session_id, persona_name="Mara",
            user_text="I spent the whole afternoon repainting the kitchen walls.", reply_text="Nice.")), 10)
        assert reply.applied
    finally:
        await holder.close()
        await channel.close()
        await service.stop(grace=0.5)
