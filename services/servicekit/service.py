"""The one service bootstrap: settings → pool → servicers → gRPC server → background loops → graceful stop.

A service module provides `async def build(ctx: ServiceContext) -> ServiceParts`; everything else
(pool, health, reflection, tracing, who may call it, TLS, signals, grace period) is here, so a fifth
service is a page. A service accepts only Rapport's own processes (the internal credential) unless its
parts give a `public_api` guard of their own (the orchestrator: backends with tokens and service keys).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import grpc
from grpc_health.v1 import health

from . import registry
from .config import Env, ServiceSettings
from .db import DbTimeouts, create_pool
from .grpc_runtime import RunningGrpcServer, run_until_stopped, start_grpc_server
from .grpc_security import CallGuard, InternalCallersOnly, ServerSecurity
from .telemetry import setup_telemetry

log = logging.getLogger("rapport.service")


@dataclass
class ServiceContext:
    name: str
    env: Env
    settings: ServiceSettings
    pool: asyncpg.Pool
    security: ServerSecurity
    # The server's health service: a service may report statuses of its own under other names
    # (services/contracts/health.py); its own name's status is the kit's (SERVING while it serves).
    health: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)


@dataclass
class ServiceParts:
    register: list[Callable[[grpc.aio.Server], None]]
    service_names: list[str]
    # Long-running loops (sweepers, outbox workers); cancelled on stop.
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Who else may call it (backends, on the public API); None: only Rapport's own processes.
    public_api: CallGuard | None = None


@dataclass
class RunningService:
    name: str
    settings: ServiceSettings
    grpc: RunningGrpcServer
    pool: asyncpg.Pool
    tasks: list[asyncio.Task[None]]
    parts: ServiceParts

    @property
    def address(self) -> str:
        return self.grpc.address

    async def stop(self, grace: float = 5.0) -> None:
        await self.grpc.stop(grace)
        await self.release()

    async def release(self) -> None:
        """After the gRPC server has stopped: cancel the background loops, run the stop hooks, close the pool."""
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


async def start_service(name: str, env: Env | None = None, *, pool_size: int = 10) -> RunningService:
    env = env or Env()
    spec = registry.service(name)
    settings = ServiceSettings.from_env(name, env)
    security = ServerSecurity.from_env(env)
    pool = await create_pool(settings.database_url, max_size=pool_size, timeouts=DbTimeouts.from_env(env))
    try:
        module = importlib.import_module(spec.server_module)
        ctx = ServiceContext(name=name, env=env, settings=settings, pool=pool, security=security)
        parts: ServiceParts = await module.build(ctx)
        if spec.proto_service not in parts.service_names:
            # Health checks, probes and /readyz ask for the registry's name: fail here, not in a cluster.
            raise RuntimeError(
                f"{spec.server_module} serves {parts.service_names}, not {spec.proto_service} (services/servicekit/registry.py)"
            )
        running_grpc = await start_grpc_server(
            bind_addr=settings.bind_addr,
            register=parts.register,
            service_names=parts.service_names,
            security=security,
            guard=parts.public_api or InternalCallersOnly(security.token),
            public=parts.public_api is not None,
            health_servicer=ctx.health,
        )
    except BaseException:
        await pool.close()
        raise
    tasks = [asyncio.create_task(_supervised(name, loop), name=f"{name}-background") for loop in parts.background]
    return RunningService(name=name, settings=settings, grpc=running_grpc, pool=pool, tasks=tasks, parts=parts)


async def serve_forever(name: str) -> None:
    """`rapport serve <name>`: one process, until SIGTERM/SIGINT (then SHUTDOWN_GRACE_SECS for in-flight calls)."""
    setup_telemetry(name)
    running = await start_service(name)
    print(f"rapport {name} serving on {running.address}", flush=True)
    await run_until_stopped(running.grpc, running.settings.grace_seconds)
    await running.release()
