"""`rapport serve gateway`: the gateway app, traced (the HTTP span is the turn's root), on BIND_ADDR."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

from services.servicekit.config import Env
from services.servicekit.http_runtime import RunningHttpServer, serve_asgi
from services.servicekit.telemetry import setup_telemetry

from .app import GatewaySettings, create_app


def traced_app(settings: GatewaySettings | None = None) -> Any:
    """The gateway wrapped in the OTel ASGI middleware; SSE sends are not a span each."""
    return OpenTelemetryMiddleware(
        create_app(settings), exclude_spans=["receive", "send"], excluded_urls="healthz,readyz"
    )


async def start_gateway(settings: GatewaySettings, host: str, port: int) -> RunningHttpServer:
    return await serve_asgi(traced_app(settings), host, port)


async def serve_gateway_forever(env: Env | None = None) -> None:
    env = env or Env()
    setup_telemetry("gateway")
    settings = GatewaySettings.from_env(env)
    bind = env.address("BIND_ADDR", "127.0.0.1:8080") or "127.0.0.1:8080"
    host, _, port = bind.rpartition(":")
    running = await start_gateway(settings, host, int(port))
    print(f"rapport gateway serving on {running.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()
