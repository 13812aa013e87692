"""Every outbound call of a channel from `open_channel` gets the deadline and the metadata, whatever its shape:
grpc.aio files a client interceptor under the first call shape it implements, so one object implementing
all three used to bound (and credential) unary calls only (issue 14)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from services.servicekit.grpc_runtime import open_channel
from services.servicekit.grpc_security import ChannelSecurity, GrpcTls, InternalToken

TOKEN = "outbound-test-token-0123456789-0123456789"


@pytest.fixture
async def slow_server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """Three slow handlers (unary, server-streaming, client-streaming) recording the metadata they got."""
    seen: list[dict[str, str]] = []

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata()))
        await asyncio.sleep(3)
        return b""

    async def server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        seen.append(dict(context.invocation_metadata()))
        await asyncio.sleep(3)
        yield b""

    async def client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata()))
        await asyncio.sleep(3)
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Slow", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        await server.stop(0)


async def test_every_call_shape_gets_the_default_deadline_and_the_internal_credential(slow_server) -> None:  # type: ignore[no-untyped-def]
    address, seen = slow_server
    security = ChannelSecurity(InternalToken(TOKEN), GrpcTls())
    async with open_channel(address, default_timeout=0.3, security=security) as channel:
        calls = {
            "unary": lambda: channel.unary_unary("/test.Slow/Unary")(b""),
            "server-streaming": lambda: channel.unary_stream("/test.Slow/ServerStream")(b"").read(),
            "client-streaming": lambda: channel.stream_unary("/test.Slow/ClientStream")(iter([b""])),
        }
        for shape, call in calls.items():
            started = asyncio.get_running_loop().time()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, shape
            assert asyncio.get_running_loop().time() - started < 2, shape
    assert [metadata.get("x-rapport-internal-token") for metadata in seen] == [TOKEN] * 3
