"""One way to serve an ASGI app (the gateway, the offline LLM responder): uvicorn on a pre-bound
socket in the current event loop, so port 0 works and the URL is known before the first request."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

KEEP_ALIVE_SECONDS = 75  # an idle connection is kept this long (clients: httpx 5 s, browsers up to 60 s)


class _InLoopServer(uvicorn.Server):
    """uvicorn without its own signal handling (the process owner handles signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningHttpServer:
    host: str
    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
        except TimeoutError:
            self.server.force_exit = True
            await self.task


def bind_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve_asgi(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    timeout_graceful_shutdown: float = 5.0,
    lifespan: str = "on",
    keep_alive_seconds: int = KEEP_ALIVE_SECONDS,
) -> RunningHttpServer:
    """Start serving `app` in this loop; returns once the server accepts connections. Idle keep-alive
    connections are held `keep_alive_seconds`: longer than HTTP clients keep theirs in a pool, so a client
    never sends a request on a connection the server is closing at that moment (uvicorn's default, 5 s,
    equals httpx's pool expiry: under load some requests then failed with a connection error)."""
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan=lifespan,  # type: ignore[arg-type]
        timeout_graceful_shutdown=round(timeout_graceful_shutdown),
        timeout_keep_alive=keep_alive_seconds,
        ws="none",
    )
    server = _InLoopServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"http-{host}:{sock.getsockname()[1]}")
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("HTTP server stopped during start-up")
        await asyncio.sleep(0.01)
    return RunningHttpServer(host=host, port=int(sock.getsockname()[1]), server=server, task=task)
