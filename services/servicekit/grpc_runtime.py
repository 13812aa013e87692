"""One way to serve and to call gRPC, used by all four services.

- `start_grpc_server`: grpc.aio server with health (one status per service name), reflection,
  OTel server spans (health checks not traced), and the caller's deadline remembered per call.
- `run_until_stopped`: SERVING after start; on SIGTERM/SIGINT flips to NOT_SERVING, stops accepting
  and gives in-flight calls a grace period.
- `open_channel`: a client channel whose every call carries OTel context and a deadline of
  `min(own timeout, time remaining on the call being served)` (STYLE 8).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters

log = logging.getLogger("rapport.grpc")

# Monotonic deadline of the call currently being served in this task (None = no deadline).
_serving_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "rapport_serving_deadline", default=None
)

DEFAULT_CALL_TIMEOUT = 10.0


def remaining_seconds() -> float | None:
    deadline = _serving_deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def call_timeout(own: float | None = DEFAULT_CALL_TIMEOUT) -> float | None:
    """min(own timeout, the served call's remaining time)."""
    remaining = remaining_seconds()
    if remaining is None:
        return own
    if own is None:
        return remaining
    return min(own, remaining)


def _remember_deadline(context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    _serving_deadline.set(None if remaining is None else time.monotonic() + remaining)


class _DeadlineServerInterceptor(grpc.aio.ServerInterceptor):
    """Stores the incoming call's deadline in a contextvar that outbound calls read."""

    async def intercept_service(
        self, continuation: Callable[..., Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _remember_deadline(context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _remember_deadline(context)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                _remember_deadline(context)
                return await inner_su(request_iterator, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        return handler


class _DeadlineClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor, grpc.aio.StreamUnaryClientInterceptor
):
    def __init__(self, default_timeout: float | None) -> None:
        self.default_timeout = default_timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        own = details.timeout if details.timeout is not None else self.default_timeout
        return grpc.aio.ClientCallDetails(
            details.method, call_timeout(own), details.metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def open_channel(address: str, *, default_timeout: float | None = DEFAULT_CALL_TIMEOUT) -> grpc.aio.Channel:
    """A traced channel to a peer; calls carry a deadline derived from the caller's remaining time."""
    interceptors: list[Any] = [_DeadlineClientInterceptor(default_timeout), *aio_client_interceptors()]
    return grpc.aio.insecure_channel(
        address,
        interceptors=interceptors,
        # round_robin over every address DNS gives (a headless Service in Kubernetes spreads load over replicas)
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.lb_policy_name", "round_robin"),
        ],
    )


@dataclass
class RunningGrpcServer:
    server: grpc.aio.Server
    port: int
    service_names: tuple[str, ...]
    health: health.aio.HealthServicer
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        for name in self.service_names:
            await self.health.set(name, status)

    async def stop(self, grace: float = 10.0) -> None:
        """NOT_SERVING, stop accepting, let in-flight calls finish within the grace period, then run hooks."""
        await self.set_serving(False)
        await self.server.stop(grace)
        for hook in self.on_stop:
            await hook()


async def start_grpc_server(
    *,
    bind_addr: str,
    register: Iterable[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
) -> RunningGrpcServer:
    """Start a grpc.aio server with health, reflection, tracing and deadline propagation; SERVING on return."""
    server = grpc.aio.server(
        interceptors=[
            aio_server_interceptor(filter_=filters.negate(filters.health_check())),
            _DeadlineServerInterceptor(),
        ],
        # Connections are recycled every few minutes so clients rebalance onto new replicas; the grace
        # outlives the longest turn (CHAT_GEN_TIMEOUT_SECS).
        options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_connection_age_ms", 300_000),
            ("grpc.max_connection_age_grace_ms", 360_000),
        ],
    )
    for add in register:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(bind_addr)
    if port == 0:
        raise RuntimeError(f"could not bind gRPC server to {bind_addr}")
    await server.start()
    running = RunningGrpcServer(server, port, tuple(service_names), health_servicer)
    await running.set_serving(True)
    log.info("serving %s on port %d", ", ".join(service_names), port)
    return running


async def run_until_stopped(running: RunningGrpcServer, grace: float) -> None:
    """Block until SIGTERM/SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", grace)
    await running.stop(grace)


async def peer_serving(address: str, service_name: str = "", timeout: float = 1.0) -> bool:
    """True when the peer's health service reports SERVING for service_name."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service_name), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
