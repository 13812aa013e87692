"""The gateway: REST + SSE for browsers over the gRPC services. No business logic here — HTTP shapes,
auth, mapping to gRPC, mapping errors back, streaming frames out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from rapport.affinity.v1 import affinity_pb2, affinity_pb2_grpc
from rapport.insight.v1 import insight_pb2, insight_pb2_grpc
from rapport.memory.v1 import memory_pb2, memory_pb2_grpc
from rapport.orchestrator.v1 import orchestrator_pb2 as orch_pb2
from rapport.orchestrator.v1 import orchestrator_pb2_grpc as orch_grpc
from services.contracts.health import POST_PROCESS_QUEUE
from services.servicekit import registry
from services.servicekit.config import Env, peer_address
from services.servicekit.grpc_runtime import open_channel, peer_serving, peer_status
from services.servicekit.grpc_security import ChannelSecurity

from . import errors
from .auth import TokenVerifier, verifier_from_env
from .conversation_api import conversation_router
from .deps import SSE_PING_SECONDS, TURN_STREAM_TIMEOUT, Clients, User, clients, relay_frames, require_json
from .errors import ApiError
from .openai_api import openai_router
from .request_limits import RequestLimits

log = logging.getLogger("rapport.gateway")

STATIC_DIR = Path(__file__).resolve().parent / "static"
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.json"
WATCH_STREAM_SECONDS = 3600  # a live affinity stream ends after this; the page reconnects
# The services the gateway calls (and checks in /readyz), by name: their full gRPC service names.
SERVICE_NAMES = {spec.name: spec.proto_service for spec in registry.called_by(registry.GATEWAY)}
# What /readyz says of the post-process queue, by the orchestrator's status of POST_PROCESS_QUEUE.
POST_PROCESS_REPORTS = {
    health_pb2.HealthCheckResponse.SERVING: "ok",
    health_pb2.HealthCheckResponse.NOT_SERVING: "dead_jobs",
}


@dataclass
class GatewaySettings:
    addresses: dict[str, str]
    expose_affinity_debug: bool
    verifier: TokenVerifier
    auth_mode: str
    # The internal credential (and TLS) its channels to the services carry; None only in offline checks.
    channel_security: ChannelSecurity | None = None

    @classmethod
    def from_env(cls, env: Env | None = None) -> GatewaySettings:
        env = env or Env()
        verifier, mode = verifier_from_env(env)
        return cls(
            addresses={name: peer_address(name, env) for name in SERVICE_NAMES},
            expose_affinity_debug=env.bool("EXPOSE_AFFINITY_DEBUG", False),
            verifier=verifier,
            auth_mode=mode,
            channel_security=ChannelSecurity.from_env(env),
        )


# ---- request bodies --------------------------------------------------------------------------


class StartChatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    persona_id: uuid.UUID | None = None
    instance_id: uuid.UUID | None = None
    is_demo: bool = False
    force_new: bool = False
    reset_affinity: bool = False


class PromptTraitBody(BaseModel):
    tag: str
    text: str


class AuditBody(BaseModel):
    user: str = ""
    session_id: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class SendMessageBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str = Field(min_length=1, max_length=4096)
    client_msg_id: str = Field(min_length=26, max_length=36, pattern=r"^[\x21-\x7e]+$")
    tier: str = ""
    prompt_traits: list[PromptTraitBody] = Field(default_factory=list, max_length=8)
    audit: AuditBody | None = None
    memory_scope: str = ""
    affinity_scope: str | list[str] | None = None


class GiftBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    deltas: dict[str, float]
    label: str = Field(default="", max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # A retry with the same id applies the gift once (and answers as the first time).
    client_request_id: str = Field(default="", max_length=64, pattern=r"^[\x21-\x7e]*$")


class ErrorBody(BaseModel):
    """Every non-2xx response (the error contract)."""

    code: str
    message: str
    user_message: str
    field: str | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "invalid_payload (names the field)"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found"),
        (409, "duplicate_in_progress / conflict"),
        (413, "too_large"),
        (415, "unsupported_media_type"),
        (429, "rate_limited (with Retry-After)"),
        (500, "internal"),
        (503, "unavailable"),
    )
}


# ---- helpers -------------------------------------------------------------------------------


def same_user(user: uuid.UUID, path_user: uuid.UUID) -> None:
    if user != path_user:
        raise ApiError(403, "forbidden", "a user can only access their own data")


def as_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def affinity_json(state: affinity_pb2.AffinityState) -> dict[str, Any]:
    vector = as_dict(state.vector)
    return {
        **{k: round(float(v), 4) for k, v in vector.items()},
        "bond": round(state.bond, 4),
        "chemistry": round(state.chemistry, 4),
        "label": state.label,
        "ghost_streak": state.ghost_streak,
        "total_ghosts": state.total_ghosts,
    }


def scope_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# ---- the app ------------------------------------------------------------------------------


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channels = {
            name: open_channel(address, default_timeout=30.0, security=settings.channel_security)
            for name, address in settings.addresses.items()
        }
        app.state.clients = Clients(
            orchestrator=orch_grpc.OrchestratorServiceStub(channels["orchestrator"]),
            affinity=affinity_pb2_grpc.AffinityServiceStub(channels["affinity"]),
            memory=memory_pb2_grpc.MemoryServiceStub(channels["memory"]),
            insight=insight_pb2_grpc.InsightServiceStub(channels["insight"]),
            channels=list(channels.values()),
        )
        try:
            yield
        finally:
            for channel in channels.values():
                await channel.close()

    app = FastAPI(
        title="Rapport",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/api-docs/openapi.json",
        redoc_url=None,
        responses=ERROR_RESPONSES,
        description="REST + SSE API of Rapport, a self-hosted engine for AI companions.",
    )
    app.state.settings = settings
    app.add_exception_handler(ApiError, errors.api_error_handler)
    app.add_exception_handler(grpc.aio.AioRpcError, errors.grpc_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(Exception, errors.unhandled_error_handler)

    app.add_middleware(RequestLimits)  # bodies bounded and checked before anything reads them

    # -- health ---------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Ready when every peer is SERVING. `post_process` says whether post-process jobs are dead (`ok`,
        `dead_jobs`: `rapport outbox` lists them; `unknown`: the orchestrator did not say) — it is reported,
        never a reason to be unready (the turns are served; the dead jobs wait for an operator)."""
        names = list(settings.addresses)
        states = await asyncio.gather(
            *(peer_serving(settings.addresses[n], SERVICE_NAMES[n], security=settings.channel_security) for n in names),
            peer_status(settings.addresses["orchestrator"], POST_PROCESS_QUEUE, security=settings.channel_security),
        )
        queue = POST_PROCESS_REPORTS.get(states.pop(), "unknown")
        peers = {name: ("SERVING" if ok else "NOT_SERVING") for name, ok in zip(names, states, strict=True)}
        if all(states):
            return JSONResponse({"status": "ready", "peers": peers, "post_process": queue})
        return JSONResponse(
            {
                "code": "unavailable",
                "message": "not every peer is SERVING",
                "user_message": errors.USER_MESSAGES[503],
                "peers": peers,
                "post_process": queue,
            },
            status_code=503,
        )

    # -- personas and sessions --------------------------------------------------------------

    @app.get("/comp/personas", tags=["chat"])
    async def list_personas(request: Request, user: User) -> list[dict[str, Any]]:
        reply = await clients(request).orchestrator.ListPersonas(orch_pb2.ListPersonasRequest(user_id=str(user)))
        return [as_dict(p) for p in reply.personas]

    @app.post("/comp/chat/start", tags=["chat"], dependencies=[Depends(require_json)])
    async def start_chat(request: Request, body: StartChatBody, user: User) -> dict[str, Any]:
        if body.persona_id is None and body.instance_id is None:
            raise ApiError(400, "invalid_payload", "persona_id is required", extra={"field": "persona_id"})
        reply = await clients(request).orchestrator.StartChat(
            orch_pb2.StartChatRequest(
                user_id=str(user),
                persona_id=str(body.persona_id or ""),
                instance_id=str(body.instance_id or ""),
                is_demo=body.is_demo,
                force_new=body.force_new,
                reset_affinity=body.reset_affinity,
            )
        )
        return {
            "session_id": reply.session_id,
            "instance_id": reply.instance_id,
            "persona_name": reply.persona_name,
            "persona_id": reply.persona_id,
            "is_new": reply.is_new,
        }

    @app.get("/comp/chat/{user_id}/sessions", tags=["chat"])
    async def list_sessions(
        request: Request, user_id: uuid.UUID, user: User, limit: Annotated[int, Query(ge=1, le=200)] = 50
    ) -> dict[str, Any]:
        same_user(user, user_id)
        reply = await clients(request).orchestrator.ListSessions(
            orch_pb2.ListSessionsRequest(user_id=str(user), limit=limit)
        )
        return {"sessions": [as_dict(s) for s in reply.sessions]}

    @app.get("/comp/chat/{session_id}/history", tags=["chat"])
    async def history(
        request: Request,
        session_id: uuid.UUID,
        user: User,
        limit: Annotated[int, Query(ge=1, le=50)] = 20,
        before: Annotated[str | None, Query(max_length=40)] = None,
    ) -> dict[str, Any]:
        reply = await clients(request).orchestrator.GetHistory(
            orch_pb2.GetHistoryRequest(user_id=str(user), session_id=str(session_id), limit=limit, before=before or "")
        )
        return {
            "messages": [
                {
                    "id": m.id,
                    "role": m.role,
                    "content": m.content,
                    "kind": m.kind,
                    "sent_at": m.sent_at.ToDatetime().isoformat() + "Z",
                    "parent_id": m.parent_id or None,
                    **(
                        {"alternatives": list(m.alternatives), "alternative_index": m.alternative_index}
                        if m.role == "assistant"
                        else {}
                    ),
                }
                for m in reply.messages
            ],
            "total": reply.total,
            "next_cursor": reply.next_cursor or None,
            "has_more": reply.has_more,
            "branch_id": reply.branch_id,
        }

    # -- the turn ---------------------------------------------------------------------------

    @app.post(
        "/comp/chat/{session_id}/message/stream",
        tags=["chat"],
        dependencies=[Depends(require_json)],
        response_description="Server-sent events; each `data:` line is one JSON frame "
        "(meta, delta, done, final, error).",
    )
    async def send_message(request: Request, session_id: uuid.UUID, body: SendMessageBody, user: User) -> Response:
        grpc_request = orch_pb2.SendMessageRequest(
            user_id=str(user),
            session_id=str(session_id),
            content=body.content,
            client_msg_id=body.client_msg_id,
            tier=body.tier,
            prompt_traits=[orch_pb2.PromptTrait(tag=t.tag, text=t.text) for t in body.prompt_traits],
            memory_scope=body.memory_scope,
            affinity_scope=scope_list(body.affinity_scope),
        )
        if body.audit is not None:
            grpc_request.audit.user = body.audit.user
            grpc_request.audit.session_id = body.audit.session_id
            grpc_request.audit.metadata.update(body.audit.metadata)
        return await stream_turn(request, grpc_request)

    async def stream_turn(request: Request, grpc_request: orch_pb2.SendMessageRequest) -> Response:
        # The turn may legitimately run up to CHAT_GEN_TIMEOUT_SECS; the channel's default deadline is for unary calls.
        call = clients(request).orchestrator.SendMessage(grpc_request, timeout=TURN_STREAM_TIMEOUT)
        return await relay_frames(call, lambda item: item)

    @app.get("/comp/chat/{session_id}/messages/{message_id}/explain", tags=["chat"])
    async def explain(
        request: Request, session_id: uuid.UUID, message_id: Annotated[str, PathParam(max_length=40)], user: User
    ) -> dict[str, Any]:
        """Why did it say that: the PDE decision, the affinity state and label, the memories recalled, the
        profile fields used, tokens per prompt section, model, usage and the trace id."""
        reply = await clients(request).orchestrator.ExplainMessage(
            orch_pb2.ExplainMessageRequest(user_id=str(user), session_id=str(session_id), message_id=message_id)
        )
        return MessageToDict(reply.explanation)

    # -- affinity ---------------------------------------------------------------------------

    @app.post("/comp/chat/{session_id}/event/gift", tags=["affinity"], dependencies=[Depends(require_json)])
    async def gift(request: Request, session_id: uuid.UUID, body: GiftBody, user: User) -> dict[str, Any]:
        grpc_request = orch_pb2.ApplyGiftRequest(
            user_id=str(user),
            session_id=str(session_id),
            deltas=body.deltas,
            label=body.label,
            client_request_id=body.client_request_id,
        )
        grpc_request.metadata.update(body.metadata)
        reply = await clients(request).orchestrator.ApplyGift(grpc_request)
        return {"applied_deltas": dict(reply.applied_deltas), "affinity": affinity_json(reply.affinity)}

    @app.get("/comp/chat/{session_id}/gifts", tags=["affinity"])
    async def gifts(request: Request, session_id: uuid.UUID, user: User) -> dict[str, Any]:
        reply = await clients(request).orchestrator.ListGifts(
            orch_pb2.ListGiftsRequest(user_id=str(user), session_id=str(session_id))
        )
        return {"gifts": [as_dict(g) for g in reply.gifts]}

    @app.get("/comp/affinity/{session_id}", tags=["affinity"])
    async def affinity_debug(request: Request, session_id: uuid.UUID, user: User) -> dict[str, Any]:
        if not settings.expose_affinity_debug:
            raise ApiError(404, "not_found", "not found")
        reply = await clients(request).affinity.GetState(
            affinity_pb2.GetStateRequest(user_id=str(user), session_id=str(session_id), affinity_scope=["full"])
        )
        return affinity_json(reply.state)

    @app.get(
        "/comp/affinity/{session_id}/stream",
        tags=["affinity"],
        response_description="Server-sent events; each `data:` line is one JSON frame: `state` (the vector, "
        "composites, label, version and the `kind` of change; the current state first) "
        "or `error`.",
    )
    async def affinity_stream(request: Request, session_id: uuid.UUID, user: User) -> Response:
        """The live affinity state of a session (same gate as `GET /comp/affinity/{session_id}`)."""
        if not settings.expose_affinity_debug:
            raise ApiError(404, "not_found", "not found")
        call = clients(request).affinity.WatchAffinity(
            affinity_pb2.WatchAffinityRequest(user_id=str(user), session_id=str(session_id)),
            timeout=WATCH_STREAM_SECONDS,
        )
        try:
            first = await call.read()  # the owner check and UNIMPLEMENTED are HTTP errors, not frames
        except grpc.aio.AioRpcError as error:
            raise errors.from_grpc(error) from None
        if first is grpc.aio.EOF:
            raise ApiError(404, "not_found", "no affinity state for this session")

        async def events() -> AsyncIterator[dict[str, str]]:
            change = first
            try:
                while change is not grpc.aio.EOF:
                    yield {"data": json.dumps(affinity_change_json(change))}
                    change = await call.read()
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return  # the stream's lifetime is over; the client reconnects
                api = errors.from_grpc(error)
                yield {
                    "data": json.dumps(
                        {
                            "type": "error",
                            "code": api.code,
                            "retryable": api.status >= 500,
                            "message": api.message,
                            "user_message": api.user_message,
                        }
                    )
                }
            finally:
                call.cancel()

        return EventSourceResponse(
            events(), ping=SSE_PING_SECONDS, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    # -- what it knows about the user ------------------------------------------------------------

    @app.get("/comp/user/{user_id}/profile", tags=["user"])
    async def profile(request: Request, user_id: uuid.UUID, user: User) -> dict[str, Any]:
        same_user(user, user_id)
        reply = await clients(request).insight.GetProfile(
            insight_pb2.GetProfileRequest(user_id=str(user), mode=insight_pb2.RENDER_MODE_FULL)
        )
        p = reply.profile
        return {
            "insights": MessageToDict(p.insights),
            "provenance": MessageToDict(p.provenance),
            "training_level": round(p.training_level, 3),
            "updated_at": p.updated_at.ToDatetime().isoformat() + "Z" if p.HasField("updated_at") else None,
        }

    @app.get("/comp/user/{user_id}/memories", tags=["user"])
    async def memories(
        request: Request,
        user_id: uuid.UUID,
        user: User,
        layer: Annotated[str | None, Query(pattern="^(profile|relationship)$")] = None,
        category: Annotated[str | None, Query(max_length=32)] = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        same_user(user, user_id)
        layer_value = {"profile": memory_pb2.LAYER_PROFILE, "relationship": memory_pb2.LAYER_RELATIONSHIP}.get(
            layer or "", memory_pb2.LAYER_UNSPECIFIED
        )
        reply = await clients(request).memory.ListMemories(
            memory_pb2.ListMemoriesRequest(
                user_id=str(user), layer=layer_value, category=category or "", text=q or "", limit=limit
            )
        )
        return {"memories": [memory_json(m) for m in reply.memories], "next_cursor": reply.next_cursor or None}

    @app.delete("/comp/user/{user_id}/memories/{memory_id}", tags=["user"])
    async def delete_memory(request: Request, user_id: uuid.UUID, memory_id: uuid.UUID, user: User) -> dict[str, Any]:
        same_user(user, user_id)
        reply = await clients(request).memory.DeleteMemory(
            memory_pb2.DeleteMemoryRequest(user_id=str(user), memory_id=str(memory_id))
        )
        if not reply.deleted:
            raise ApiError(404, "not_found", "no such memory")
        return {"deleted": True, "id": str(memory_id)}

    @app.get("/comp/user/{user_id}/export", tags=["user"])
    async def export(request: Request, user_id: uuid.UUID, user: User) -> dict[str, Any]:
        same_user(user, user_id)
        reply = await clients(request).orchestrator.ExportUserData(orch_pb2.ExportUserDataRequest(user_id=str(user)))
        return MessageToDict(reply.data)

    @app.delete("/comp/user/{user_id}/data", tags=["user"])
    async def delete_data(request: Request, user_id: uuid.UUID, user: User) -> dict[str, Any]:
        same_user(user, user_id)
        reply = await clients(request).orchestrator.DeleteUserData(orch_pb2.DeleteUserDataRequest(user_id=str(user)))
        return {"deleted": MessageToDict(reply.deleted)}

    # -- the web page -------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if page.exists():
            return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})
        return JSONResponse({"name": "Rapport", "docs": "/docs"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    app.include_router(openai_router())
    app.include_router(conversation_router())

    return app


def affinity_change_json(change: affinity_pb2.WatchAffinityResponse) -> dict[str, Any]:
    """One WatchAffinity message as an SSE frame; `kind` is `snapshot` for a state not tied to one event."""
    kind = affinity_pb2.EventKind.Name(change.kind).removeprefix("EVENT_KIND_").lower()
    return {
        "type": "state",
        **affinity_json(change.state),
        "version": change.state.version,
        "kind": "snapshot" if kind == "unspecified" else kind,
        "event_id": change.event_id,
    }


def memory_json(m: memory_pb2.Memory) -> dict[str, Any]:
    return {
        "id": m.id,
        "layer": "profile" if m.layer == memory_pb2.LAYER_PROFILE else "relationship",
        "category": m.category,
        "content": m.content,
        "importance": round(m.importance, 3),
        "created_at": m.created_at.ToDatetime().isoformat() + "Z",
        "source_message_ids": list(m.source_message_ids),
        "instance_id": m.instance_id or None,
        "session_id": m.session_id or None,
        "hidden": m.hidden,  # every source message is off the active branch: not recalled until it is back
    }
