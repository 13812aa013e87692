"""One way to serve and to call gRPC, used by all four services.

- `start_grpc_server`: grpc.aio server with health (one status per service name), reflection when
  enabled, OTel server spans (health checks not traced), every call admitted by the server's
  `CallGuard` (grpc_security.py: the internal credential, or the public API's own callers), TLS when
  configured, and the caller's deadline remembered per call.
- `run_until_stopped`: SERVING after start; on SIGTERM/SIGINT flips to NOT_SERVING, stops accepting
  and gives in-flight calls a grace period.
- `open_channel`: a client channel whose every call carries OTel context and a deadline of
  `min(own timeout, time remaining on the call being served)` (STYLE 8); `open_peer_channel` dials a
  Rapport service with the internal credential (and TLS when configured).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters

from .config import Env, peer_address
from .grpc_errors import abort_with
from .grpc_security import CallGuard, ChannelSecurity, ServerSecurity, open_services

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


@contextmanager
def detached_from_call() -> Iterator[None]:
    """Tasks created inside do not inherit the served call's deadline (work that outlives the call, such
    as a turn's generation, keeps its own timeouts)."""
    token = _serving_deadline.set(None)
    try:
        yield
    finally:
        _serving_deadline.reset(token)


# Runs before a handler: gets the request (None for a request stream) and returns the one to serve.
BeforeCall = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _wrap_handler(handler: grpc.RpcMethodHandler, before: BeforeCall) -> grpc.RpcMethodHandler:
    """The same handler, with `before` run at the start of every call, whatever its streaming shape."""
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await inner_uu(await before(request, context), context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async for item in inner_us(await before(request, context), context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(None, context)
            return await inner_su(request_iterator, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream:
        inner_ss = handler.stream_stream

        async def stream_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(None, context)
            async for item in inner_ss(request_iterator, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler


class _DeadlineServerInterceptor(grpc.aio.ServerInterceptor):
    """Stores the incoming call's deadline in a contextvar that outbound calls read."""

    async def intercept_service(
        self, continuation: Callable[..., Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None

        async def remember(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _remember_deadline(context)
            return request

        return _wrap_handler(handler, remember)


class _GuardServerInterceptor(grpc.aio.ServerInterceptor):
    """Admits every call through the server's CallGuard, except to the open services (health, reflection)."""

    def __init__(self, guard: CallGuard, open_to_all: frozenset[str]) -> None:
        self.guard = guard
        self.open_to_all = open_to_all

    async def intercept_service(
        self, continuation: Callable[..., Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.split("/")[1] in self.open_to_all:
            return handler
        metadata = {key: value for key, value in details.invocation_metadata or () if isinstance(value, str)}

        async def admit(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await self.guard.admit(method, metadata, request)
            except Exception as error:
                await abort_with(context, error)

        return _wrap_handler(handler, admit)


class _OutboundCall:
    """What every outbound call gets: a deadline from the served call's remaining time, and the channel's
    metadata (the internal credential)."""

    def __init__(self, default_timeout: float | None, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.default_timeout = default_timeout
        self.metadata = metadata

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        own = details.timeout if details.timeout is not None else self.default_timeout
        metadata = details.metadata
        if self.metadata:
            metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + self.metadata))
        return grpc.aio.ClientCallDetails(
            details.method, call_timeout(own), metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under the first call shape it implements only: one class per shape.
class _UnaryUnaryOutbound(_OutboundCall, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamOutbound(_OutboundCall, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryOutbound(_OutboundCall, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def outbound_interceptors(
    default_timeout: float | None, metadata: tuple[tuple[str, str], ...] = ()
) -> list[grpc.aio.ClientInterceptor]:
    """The deadline and metadata interceptors, for unary, server-streaming and client-streaming calls."""
    return [
        shape(default_timeout, metadata) for shape in (_UnaryUnaryOutbound, _UnaryStreamOutbound, _StreamUnaryOutbound)
    ]


def open_channel(
    address: str,
    *,
    default_timeout: float | None = DEFAULT_CALL_TIMEOUT,
    security: ChannelSecurity | None = None,
) -> grpc.aio.Channel:
    """A traced channel to a peer; calls carry a deadline derived from the caller's remaining time, and,
    with `security`, the internal credential (over TLS when a CA is configured)."""
    metadata = security.token.metadata if security is not None else ()
    interceptors: list[Any] = [*outbound_interceptors(default_timeout, metadata), *aio_client_interceptors()]
    # round_robin over every address DNS gives (a headless Service in Kubernetes spreads load over replicas)
    options = [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.lb_policy_name", "round_robin"),
        # A restarted peer is used again within about a second: reconnect attempts back off from 250 ms to at
        # most 1 s (gRPC's default grows to 120 s, which left turns degraded for 8–16 s after a restart).
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]
    credentials = security.tls.channel_credentials() if security is not None else None
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, interceptors=interceptors, options=options)
    return grpc.aio.insecure_channel(address, interceptors=interceptors, options=options)


def open_peer_channel(name: str, env: Env, *, default_timeout: float | None = DEFAULT_CALL_TIMEOUT) -> grpc.aio.Channel:
    """A channel from a Rapport process to the registered service `name`: its address from `env`, the
    internal credential and TLS as configured there."""
    return open_channel(
        peer_address(name, env), default_timeout=default_timeout, security=ChannelSecurity.from_env(env)
    )


@dataclass
class RunningGrpcServer:
    server: grpc.aio.Server
    port: int
    service_names: tuple[str, ...]
    health: health.aio.HealthServicer
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    health_server: grpc.aio.Server | None = None  # GRPC_HEALTH_BIND_ADDR: health only, plaintext

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
        if self.health_server is not None:
            await self.health_server.stop(0)
        for hook in self.on_stop:
            await hook()


async def start_grpc_server(
    *,
    bind_addr: str,
    register: Iterable[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    security: ServerSecurity,
    guard: CallGuard,
    public: bool = False,
    health_servicer: health.aio.HealthServicer | None = None,
) -> RunningGrpcServer:
    """Start a grpc.aio server with health, reflection (when enabled), tracing, deadline propagation and
    every call admitted by `guard`; SERVING on return. `public`: backends call it, so client certificates
    are optional (internal services require them when a CA is configured). `health_servicer`: the one to
    serve (the service may report statuses of its own on it), else a new one."""
    credentials = security.tls.server_credentials(require_client_cert=not public)
    security.check_bind(bind_addr, credentials)
    server = grpc.aio.server(
        interceptors=[
            aio_server_interceptor(filter_=filters.negate(filters.health_check())),
            _DeadlineServerInterceptor(),
            _GuardServerInterceptor(guard, open_services(security.reflection)),
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
    health_servicer = health_servicer or health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if security.reflection:
        reflection.enable_server_reflection(
            (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    port = server.add_secure_port(bind_addr, credentials) if credentials else server.add_insecure_port(bind_addr)
    if port == 0:
        raise RuntimeError(f"could not bind gRPC server to {bind_addr}")
    await server.start()
    health_server = None
    if security.health_bind_addr:
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        if health_server.add_insecure_port(security.health_bind_addr) == 0:
            await server.stop(0)
            raise RuntimeError(f"could not bind the health address {security.health_bind_addr}")
        await health_server.start()
    running = RunningGrpcServer(server, port, tuple(service_names), health_servicer, health_server=health_server)
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


async def peer_serving(
    address: str, service_name: str = "", timeout: float = 1.0, security: ChannelSecurity | None = None
) -> bool:
    """True when the peer's health service reports SERVING for service_name (health is open to every
    caller: `security` only says whether to speak TLS; health checks are not traced)."""
    return bool(await peer_status(address, service_name, timeout, security) == health_pb2.HealthCheckResponse.SERVING)


async def peer_status(
    address: str, service_name: str = "", timeout: float = 1.0, security: ChannelSecurity | None = None
) -> int | None:
    """The status the peer's health service reports for service_name (a `HealthCheckResponse.ServingStatus`), or
    None when the peer does not answer or knows no such name."""
    credentials = security.tls.channel_credentials() if security is not None else None
    channel = grpc.aio.secure_channel(address, credentials) if credentials else grpc.aio.insecure_channel(address)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service_name), timeout=timeout)
        except grpc.aio.AioRpcError:
            return None
        return int(reply.status)
