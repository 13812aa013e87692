"""The one service bootstrap: settings → pool → servicers → gRPC server → background loops → graceful stop.

A service module provides `async def build(ctx: ServiceContext) -> ServiceParts`; everything else
(pool, health, reflection, tracing, signals, grace period) is here, so a fifth service is a page.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import grpc

from .config import Env, ServiceSettings
from .db import DbTimeouts, create_pool
from .grpc_runtime import RunningGrpcServer, run_until_stopped, start_grpc_server

log = logging.getLogger("rapport.service")


@dataclass
class ServiceContext:
    name: str
    env: Env
    settings: ServiceSettings
    pool: asyncpg.Pool


@dataclass
class ServiceParts:
    register: list[Callable[[grpc.aio.Server], None]]
    service_names: list[str]
    # Long-running loops (sweepers, outbox workers); cancelled on stop.
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass
class RunningService:
    name: str
    grpc: RunningGrpcServer
    pool: asyncpg.Pool
    tasks: list[asyncio.Task[None]]
    parts: ServiceParts

    @property
    def address(self) -> str:
        return self.grpc.address

    async def stop(self, grace: float = 5.0) -> None:
        await self.grpc.stop(grace)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for hook in self.parts.on_stop:
            await hook()
        await self.pool.close()


async def _supervised(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop; restart it after an unexpected crash (never silently stop working)."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop of %s crashed; restarting in 1s", name)
            await asyncio.sleep(1.0)


def service_module(name: str) -> str:
    return f"services.{name}.server"


async def start_service(name: str, env: Env | None = None, *, pool_size: int = 10) -> RunningService:
    env = env or Env()
    settings = ServiceSettings.from_env(name, env)
    pool = await create_pool(settings.database_url, max_size=pool_size, timeouts=DbTimeouts.from_env(env))
    try:
        module = importlib.import_module(service_module(name))
        ctx = ServiceContext(name=name, env=env, settings=settings, pool=pool)
        parts: ServiceParts = await module.build(ctx)
        running_grpc = await start_grpc_server(
            bind_addr=settings.bind_addr, register=parts.register, service_names=parts.service_names
        )
    except BaseException:
        await pool.close()
        raise
    tasks = [asyncio.create_task(_supervised(name, loop), name=f"{name}-background") for loop in parts.background]
    return RunningService(name=name, grpc=running_grpc, pool=pool, tasks=tasks, parts=parts)


async def serve_forever(name: str) -> None:
    """`rapport serve <name>`: one process, until SIGTERM/SIGINT."""
    from .telemetry import setup_telemetry

    setup_telemetry(name)
    env = Env()
    running = await start_service(name, env)
    print(f"rapport {name} serving on {running.address}", flush=True)
    grace = running_grace(env)
    await run_until_stopped(running.grpc, grace)
    for task in running.tasks:
        task.cancel()
    await asyncio.gather(*running.tasks, return_exceptions=True)
    for hook in running.parts.on_stop:
        await hook()
    await running.pool.close()


def running_grace(env: Env) -> float:
    return env.float("SHUTDOWN_GRACE_SECS", 10.0, 0.0, 300.0)
