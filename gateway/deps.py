"""What every gateway route shares: the gRPC clients, the authenticated user, the JSON-body check, and the
relay of a turn's frames from gRPC to server-sent events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import grpc
from fastapi import Depends, Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse

from rapport.affinity.v1 import affinity_pb2_grpc
from rapport.insight.v1 import insight_pb2_grpc
from rapport.memory.v1 import memory_pb2_grpc
from rapport.orchestrator.v1 import orchestrator_pb2 as orch_pb2
from rapport.orchestrator.v1 import orchestrator_pb2_grpc as orch_grpc
from services.contracts.frames import delta as delta_frame
from services.contracts.frames import to_json as frame_json

from . import errors
from .auth import AuthError
from .errors import ApiError

SSE_PING_SECONDS = 15
TURN_STREAM_TIMEOUT = 3600.0  # a turn may run up to CHAT_GEN_TIMEOUT_SECS; unary calls keep the channel's default


@dataclass
class Clients:
    orchestrator: orch_grpc.OrchestratorServiceStub
    affinity: affinity_pb2_grpc.AffinityServiceStub
    memory: memory_pb2_grpc.MemoryServiceStub
    insight: insight_pb2_grpc.InsightServiceStub
    channels: list[grpc.aio.Channel]


def clients(request: Request) -> Clients:
    return request.app.state.clients  # type: ignore[no-any-return]


def current_user(request: Request) -> uuid.UUID:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token")
    try:
        return request.app.state.settings.verifier.verify(token.strip())  # type: ignore[no-any-return]
    except AuthError as error:
        raise ApiError(401, "unauthorized", str(error)) from None


User = Annotated[uuid.UUID, Depends(current_user)]


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.split(";")[0].strip().lower() == "application/json":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")


async def relay_frames(call: Any, frame_of: Callable[[Any], orch_pb2.SendMessageResponse]) -> Response:
    """A streamed turn as server-sent events: each `data:` line one JSON frame. Errors before the first frame
    are HTTP errors; after it, an `error` frame. A client that goes away cancels only this relay, never the turn."""
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as error:
        raise errors.from_grpc(error) from None
    if first is grpc.aio.EOF:
        raise ApiError(500, "internal", "the turn produced no frames")
    return EventSourceResponse(
        frame_events(frame_of(first), call, frame_of),
        ping=SSE_PING_SECONDS,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def frame_events(
    first: orch_pb2.SendMessageResponse, call: Any, frame_of: Callable[[Any], orch_pb2.SendMessageResponse]
) -> AsyncIterator[dict[str, str]]:
    """The SSE events of a turn's frames, each rendered to JSON once. The frames are read from gRPC as fast as
    they come (a reader task); when the client reads slower than the LLM streams, the deltas of one message
    that queued meanwhile go out as one delta — only what has already arrived is merged, so no frame (the
    first delta least of all) ever waits for a later one."""
    queue: asyncio.Queue[orch_pb2.SendMessageResponse | BaseException | None] = asyncio.Queue()

    async def read_frames() -> None:
        try:
            while (item := await call.read()) is not grpc.aio.EOF:
                queue.put_nowait(frame_of(item))
            queue.put_nowait(None)
        except grpc.aio.AioRpcError as error:
            queue.put_nowait(error)

    reader = asyncio.create_task(read_frames())
    try:
        yield {"data": json.dumps(frame_json(first))}
        item = await queue.get()
        while isinstance(item, orch_pb2.SendMessageResponse):
            frame, after = item, None
            if frame.WhichOneof("frame") == "delta":
                parts = [frame.delta.content]
                while after is None and not queue.empty():
                    queued = queue.get_nowait()
                    if (
                        isinstance(queued, orch_pb2.SendMessageResponse)
                        and queued.WhichOneof("frame") == "delta"
                        and queued.delta.message_id == frame.delta.message_id
                    ):
                        parts.append(queued.delta.content)
                    else:
                        after = (queued,)
                if len(parts) > 1:
                    frame = delta_frame(frame.delta.message_id, "".join(parts))
            yield {"data": json.dumps(frame_json(frame))}
            item = after[0] if after is not None else await queue.get()
        if isinstance(item, grpc.aio.AioRpcError):
            api = errors.from_grpc(item)
            yield {
                "data": json.dumps(
                    {
                        "type": "error",
                        "code": "upstream_unavailable" if api.status >= 500 else api.code,
                        "retryable": api.status >= 500,
                        "message": api.message,
                        "user_message": api.user_message,
                    }
                )
            }
    finally:
        reader.cancel()
        call.cancel()
