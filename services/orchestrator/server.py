"""Orchestrator gRPC server: personas, sessions, history and the streamed turn."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2

from rapport.affinity.v1 import affinity_pb2
from rapport.orchestrator.v1 import orchestrator_pb2 as pb
from rapport.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc
from services.contracts import frames
from services.contracts.frames import Frame
from services.contracts.health import POST_PROCESS_QUEUE
from services.contracts.scopes import NAMED_AFFINITY_SCOPES
from services.offline_llm.server import build_llm_app, serve_llm
from services.servicekit.grpc_errors import (
    Aborted,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    maps_errors,
    parse_uuid,
)
from services.servicekit.grpc_runtime import detached_from_call
from services.servicekit.llm import OFFLINE_MODEL_ID, LlmClient, LlmEndpoint, llm_endpoint_from_env
from services.servicekit.model_config import ModelConfig
from services.servicekit.service import ServiceContext, ServiceParts
from services.servicekit.tasks import llm_for_task, load_model_config_from_env

from . import api_keys, branching
from .access import PublicApiGuard
from .domain.admission import admit
from .domain.transcript import ClientPrompt
from .domain.turn_request import TurnRequest, TurnRequestError, validate_turn_request
from .leases import TurnLeases
from .live_turns import FrameLog, LiveTurns, TooManyTurns
from .openai_compat import BeginTurn, ChatCompletions
from .outbox import OutboxWorker
from .peers import Peers
from .store import catalog, conversations, sessions, turns
from .store import outbox as outbox_store
from .store.rows import PersonaRow, SessionRow, TurnRow
from .turn import TurnEngine, TurnInput
from .user_data import delete_user_data, export_user_data

log = logging.getLogger("rapport.orchestrator")


def validate_send(request: pb.SendMessageRequest, config: ModelConfig) -> TurnRequest:
    """Every field checked before anything is persisted (INVALID_ARGUMENT naming the field)."""
    scope: str | list[str] | None = None
    if len(request.affinity_scope) == 1 and request.affinity_scope[0] in NAMED_AFFINITY_SCOPES:
        scope = request.affinity_scope[0]
    elif request.affinity_scope:
        scope = list(request.affinity_scope)
    audit = None
    if request.HasField("audit"):
        audit = {
            "user": request.audit.user or None,
            "session_id": request.audit.session_id or None,
            "metadata": MessageToDict(request.audit.metadata) if request.audit.HasField("metadata") else None,
        }
    try:
        return validate_turn_request(
            content=request.content,
            client_msg_id=request.client_msg_id,
            known_tiers=config.tier_names(),
            tier=request.tier or None,
            prompt_traits=list(request.prompt_traits),
            memory_scope=request.memory_scope,
            affinity_scope=scope,
            audit=audit,
        )
    except TurnRequestError as error:
        raise InvalidArgument(str(error), field=error.field, user_message=str(error)) from None


def sampling_overrides(request: pb.SendMessageRequest | pb.ChatCompletionRequest) -> dict[str, Any]:
    if not request.HasField("sampling"):
        return {}
    s = request.sampling
    params: dict[str, Any] = {
        name: getattr(s, name)
        for name in ("temperature", "max_tokens", "top_p", "presence_penalty", "frequency_penalty", "seed")
        if s.HasField(name)
    }
    if s.stop:
        params["stop"] = list(s.stop)
    return params


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    def __init__(
        self, ctx: ServiceContext, peers: Peers, engine: TurnEngine, live: LiveTurns, leases: TurnLeases
    ) -> None:
        self.leases = leases
        self.pool = ctx.pool
        self.peers = peers
        self.engine = engine
        self.live = live
        self.completions = ChatCompletions(ctx.pool, peers, engine, live)

    async def _owned_session(self, user_id: str, session_id: str) -> SessionRow:
        session = await sessions.get_session(self.pool, parse_uuid(session_id, "session_id"))
        if session is None:
            raise NotFound("unknown session", user_message="This conversation does not exist.")
        if session.user_id != parse_uuid(user_id, "user_id"):
            raise PermissionDenied("session belongs to another user", user_message="This is not your conversation.")
        return session

    @maps_errors
    async def ListPersonas(
        self, request: pb.ListPersonasRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPersonasResponse:
        return pb.ListPersonasResponse(
            personas=[persona_message(row) for row in await catalog.list_personas(self.pool)]
        )

    @maps_errors
    async def StartChat(self, request: pb.StartChatRequest, context: grpc.aio.ServicerContext) -> pb.StartChatResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        async with self.pool.acquire() as conn:
            if request.instance_id:
                instance = await catalog.get_instance(conn, parse_uuid(request.instance_id, "instance_id"))
                if instance is None:
                    raise NotFound("unknown persona instance")
                if instance.user_id != user_id:
                    raise PermissionDenied("persona instance belongs to another user")
                persona_id = instance.persona_id
            elif request.persona_id:
                persona_id = parse_uuid(request.persona_id, "persona_id")
            else:
                raise InvalidArgument("persona_id or instance_id is required", field="persona_id")
            persona = await catalog.get_persona(conn, persona_id)
            if persona is None:
                raise NotFound("unknown persona", user_message="That persona does not exist.")
            async with conn.transaction():
                instance_id = await catalog.ensure_instance(conn, user_id, persona_id)
                session_id = None if request.force_new else await sessions.latest_session(conn, instance_id)
                is_new = session_id is None
                if session_id is None:
                    session_id = await sessions.create_session(conn, user_id, instance_id, request.is_demo)
        if is_new:
            try:
                await self.peers.open_session(
                    affinity_pb2.OpenSessionRequest(
                        user_id=str(user_id),
                        session_id=str(session_id),
                        instance_id=str(instance_id),
                        is_demo=request.is_demo,
                        reset_affinity=request.reset_affinity,
                    )
                )
            except grpc.aio.AioRpcError:
                await sessions.delete_session(self.pool, session_id)  # never leave a half-opened session
                raise
        return pb.StartChatResponse(
            session_id=str(session_id),
            instance_id=str(instance_id),
            persona_name=persona.name,
            is_new=is_new,
            persona_id=str(persona_id),
        )

    @maps_errors
    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSessionsResponse:
        limit = request.limit or 50
        if not 1 <= limit <= 200:
            raise InvalidArgument("limit must be in 1..200", field="limit")
        response = pb.ListSessionsResponse()
        for row in await sessions.list_sessions(self.pool, parse_uuid(request.user_id, "user_id"), limit):
            info = response.sessions.add(
                session_id=str(row.id),
                instance_id=str(row.instance_id),
                persona_id=str(row.persona_id),
                persona_name=row.persona_name,
                message_count=row.message_count,
                is_demo=row.is_demo,
            )
            info.started_at.FromDatetime(row.started_at)
            info.last_active_at.FromDatetime(row.last_active_at)
            info.usage.update({**row.usage, "cost": row.cost})
        return response

    @maps_errors
    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetHistoryResponse:
        """The active branch, newest page first in chronological order; replies list their alternatives."""
        session = await self._owned_session(request.user_id, request.session_id)
        limit = request.limit or 20
        if not 1 <= limit <= 50:
            raise InvalidArgument("limit must be in 1..50", field="limit")
        rows, total, has_more = await sessions.history_page(self.pool, session.id, limit, request.before or None)
        parents = sorted({row.parent_id for row in rows if row.role == "assistant" and row.parent_id})
        siblings: dict[str, list[str]] = {}
        for node in await conversations.children_of(self.pool, session.id, parents):
            if node.role == "assistant" and not node.deleted:
                siblings.setdefault(node.parent_id or "", []).append(node.id)
        branch = await conversations.active_branch(self.pool, session.id)
        response = pb.GetHistoryResponse(total=total, has_more=has_more, branch_id=str(branch.id))
        for row in rows:
            alternatives = siblings.get(row.parent_id or "", []) if row.role == "assistant" else []
            message = response.messages.add(
                id=row.id,
                role=row.role,
                content=row.content,
                kind=row.kind,
                client_msg_id=row.client_msg_id or "",
                parent_id=row.parent_id or "",
                alternatives=alternatives,
                alternative_index=alternatives.index(row.id) if row.id in alternatives else 0,
            )
            message.sent_at.FromDatetime(row.sent_at)
        if has_more and rows:
            response.next_cursor = rows[0].id
        return response

    # -- the event log: regenerate, select, branch, delete ------------------------------------------------

    @maps_errors
    async def RegenerateMessage(
        self, request: pb.RegenerateMessageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RegenerateMessageResponse]:
        session = await self._owned_session(request.user_id, request.session_id)
        loaded = await branching.load(self.pool, session.id)
        user_message = branching.resolve_user_message(loaded, request.message_id)
        stored = await conversations.get_message(self.pool, session.id, user_message.id)
        assert stored is not None
        turn_request = validate_send(
            pb.SendMessageRequest(
                content=stored.content,
                client_msg_id=request.client_msg_id,
                tier=request.tier,
                prompt_traits=request.prompt_traits,
                memory_scope=request.memory_scope,
                affinity_scope=request.affinity_scope,
            ),
            self.engine.model_config,
        )
        attempts = await turns.turns_answering(self.pool, session.id, user_message.id)

        async def begin() -> tuple[str, str, bool]:
            return await branching.begin_regenerate(
                self.pool, session, user_message.id, turn_request.client_msg_id, actor="user"
            )

        frame_stream = await self._start_or_attach(
            session,
            turn_request,
            {},
            begin=begin,
            post_process=not any(t.post_processed for t in attempts),
        )
        async for frame in frame_stream:
            yield pb.RegenerateMessageResponse(frame=frame)

    @maps_errors
    async def SelectAlternative(
        self, request: pb.SelectAlternativeRequest, context: grpc.aio.ServicerContext
    ) -> pb.SelectAlternativeResponse:
        session = await self._owned_session(request.user_id, request.session_id)
        branch_id, branched = await branching.select_alternative(self.pool, session, request.message_id)
        self.engine.outbox.notify()
        return pb.SelectAlternativeResponse(branch_id=branch_id, branched=branched)

    @maps_errors
    async def CreateBranch(
        self, request: pb.CreateBranchRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateBranchResponse:
        session = await self._owned_session(request.user_id, request.session_id)
        if len(request.client_request_id) > 64:
            raise InvalidArgument("client_request_id: at most 64 characters", field="client_request_id")
        branch_id = await branching.create_branch(
            self.pool, session, request.from_message_id, request.client_request_id
        )
        self.engine.outbox.notify()
        return pb.CreateBranchResponse(branch_id=branch_id)

    @maps_errors
    async def ListBranches(
        self, request: pb.ListBranchesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBranchesResponse:
        session = await self._owned_session(request.user_id, request.session_id)
        active = await conversations.active_branch(self.pool, session.id)
        response = pb.ListBranchesResponse()
        for branch in await conversations.list_branches(self.pool, session.id):
            path = await conversations.path_to(self.pool, branch.head_id)
            shown = [m for m in path if m.kind != "ghost" and m.deleted_at is None]
            item = response.branches.add(
                branch_id=str(branch.id),
                head_message_id=branch.head_id or "",
                forked_from_message_id=branch.forked_from or "",
                active=branch.id == active.id,
                message_count=len(shown),
                preview=shown[-1].content[:120] if shown else "",
            )
            item.created_at.FromDatetime(branch.created_at)
        return response

    @maps_errors
    async def ActivateBranch(
        self, request: pb.ActivateBranchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ActivateBranchResponse:
        session = await self._owned_session(request.user_id, request.session_id)
        branch_id = await branching.activate_branch(self.pool, session, request.branch_id)
        self.engine.outbox.notify()
        return pb.ActivateBranchResponse(branch_id=branch_id)

    @maps_errors
    async def DeleteMessage(
        self, request: pb.DeleteMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteMessageResponse:
        session = await self._owned_session(request.user_id, request.session_id)
        response = await branching.delete_message(
            self.pool, self.peers, session, request.message_id, dry_run=request.dry_run
        )
        self.engine.outbox.notify()
        return response

    @maps_errors
    async def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEventsResponse:
        session = await self._owned_session(request.user_id, request.session_id)
        limit = request.limit or 100
        if not 1 <= limit <= 500:
            raise InvalidArgument("limit must be in 1..500", field="limit")
        if request.after_seq < 0:
            raise InvalidArgument("after_seq must be ≥ 0", field="after_seq")
        events = await conversations.events_page(self.pool, session.id, request.after_seq, limit + 1)
        response = pb.ListEventsResponse()
        for event in events[:limit]:
            item = response.events.add(
                seq=event.seq,
                id=event.id,
                kind=event.kind,
                actor=event.actor,
                message_id=event.message_id or "",
                branch_id=str(event.branch_id) if event.branch_id else "",
            )
            item.data.update(event.data)
            item.created_at.FromDatetime(event.created_at)
        if len(events) > limit:
            response.next_after_seq = events[limit - 1].seq
        return response

    @maps_errors
    async def SendMessage(
        self, request: pb.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SendMessageResponse]:
        turn_request = validate_send(request, self.engine.model_config)
        session = await self._owned_session(request.user_id, request.session_id)
        frame_stream = await self._start_or_attach(session, turn_request, sampling_overrides(request))
        async for frame in frame_stream:
            yield frame

    async def _start_or_attach(
        self,
        session: SessionRow,
        turn_request: TurnRequest,
        sampling: dict[str, Any],
        *,
        begin: BeginTurn | None = None,
        client_prompt: ClientPrompt | None = None,
        post_process: bool = True,
        queue: bool = False,
    ) -> AsyncIterator[Frame]:
        """Idempotency on client_msg_id (domain/admission.py): replay a finished turn, attach to a live one,
        refuse one in progress elsewhere, or start (or restart a failed) one.

        `begin` persists the turn (default: a new user message + its turn); the OpenAI-compatible API
        passes its own to answer a user message that is already stored (a regenerate).
        """
        existing = await turns.find_turn(self.pool, session.id, turn_request.client_msg_id)
        if existing is not None:
            admitted = self._admitted(existing)
            if admitted is not None:
                return admitted
        user_key = str(session.user_id)
        try:
            await self.live.admit(user_key, queue=queue)
        except TooManyTurns as error:
            raise ResourceExhausted(str(error), user_message="Too many replies at once. Wait a moment.") from None
        lock = self.live.session_lock(str(session.id))
        prefetch = None
        if begin is None and not lock.locked():
            # Nothing else runs on this session: read affinity, memory, insight, persona and history while
            # the user message is being persisted (the reads see the session as it will be after it).
            with detached_from_call():  # the turn keeps its own timeouts, whatever the caller's deadline
                prefetch = asyncio.create_task(
                    self.engine.read_context(
                        TurnInput(
                            turn_id="",
                            user_message_id="",
                            session=prefetch_session(session),
                            request=turn_request,
                            sampling=sampling,
                        )
                    )
                )
            prefetch.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            if begin is None:
                turn_id, message_id, created = await turns.begin_turn(
                    self.pool,
                    session_id=session.id,
                    user_id=session.user_id,
                    client_msg_id=turn_request.client_msg_id,
                    content=turn_request.content,
                    attach=not lock.locked(),  # else it joins the branch when its turn starts, after that reply
                )
            else:
                turn_id, message_id, created = await begin()
            if not created:  # a concurrent request stored it first
                existing = await turns.find_turn(self.pool, session.id, turn_request.client_msg_id)
                assert existing is not None
                admitted = self._admitted(existing)
                if admitted is not None:
                    self.live.release(user_key)
                    if prefetch is not None:
                        prefetch.cancel()
                    return admitted
                await turns.restart_turn(self.pool, turn_id)
        except BaseException:
            self.live.release(user_key)
            if prefetch is not None:
                prefetch.cancel()
            raise
        turn = TurnInput(
            turn_id=turn_id,
            user_message_id=message_id,
            session=session,
            request=turn_request,
            sampling=sampling,
            client_prompt=client_prompt,
            post_process=post_process,
        )

        async def work(frame_log: FrameLog) -> None:
            try:
                uncontended = not lock.locked()
                await self.leases.claim(turn_id)  # ours from now on, also while it waits for the session
                async with lock:
                    await turns.attach_user_message(self.pool, turn_id)
                    if uncontended and prefetch is not None and created:
                        run = dataclasses.replace(turn, session=prefetch_session(session), prefetched=prefetch)
                    else:
                        if prefetch is not None:
                            prefetch.cancel()
                        fresh = await sessions.get_session(self.pool, session.id)
                        run = dataclasses.replace(turn, session=fresh or session)
                    await self.engine.run(frame_log, run)
            finally:
                self.live.release(user_key)

        # Generation is detached from the call: a cancel or an expired deadline only stops this listener.
        with detached_from_call():
            return self.live.start(turn_id, work).follow()

    def _admitted(self, existing: TurnRow) -> AsyncIterator[Frame] | None:
        """The frames for a request whose turn is already stored, or None when it must be (re)generated."""
        live = self.live.get(existing.id)
        admission = admit(existing.status, live is not None)
        if admission == "replay":
            return _replay(existing.frames)
        if admission == "attach":
            assert live is not None
            return live.follow()
        if admission == "in_progress":
            raise _in_progress(existing.user_message_id)
        return None

    @maps_errors
    async def ChatCompletion(
        self, request: pb.ChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatCompletionResponse]:
        """The OpenAI-compatible chat (see openai_compat): how the request was handled, then the turn's frames."""
        user_id = parse_uuid(request.user_id, "user_id")
        prepared = await self.completions.prepare(request, user_id)
        sampling = {**sampling_overrides(request), **prepared.provider_params}
        if prepared.session is None or prepared.turn_request is None:
            frame_stream = self.completions.answer_utility(user_id, request, sampling)
        else:
            frame_stream = await self._start_or_attach(
                prepared.session,
                prepared.turn_request,
                sampling,
                begin=prepared.begin,
                client_prompt=prepared.client_prompt,
                post_process=prepared.post_process,
                queue=True,  # OpenAI clients fan out: wait for a place (live_turns)
            )
        yield pb.ChatCompletionResponse(conversation=prepared.conversation)
        async for frame in frame_stream:
            yield pb.ChatCompletionResponse(frame=frame)

    @maps_errors
    async def VerifyApiKey(
        self, request: pb.VerifyApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyApiKeyResponse:
        found = await api_keys.verify_api_key(self.pool, request.key)
        if found is None:
            return pb.VerifyApiKeyResponse(valid=False)
        return pb.VerifyApiKeyResponse(valid=True, user_id=str(found[0]), key_id=str(found[1]))

    @maps_errors
    async def ApplyGift(self, request: pb.ApplyGiftRequest, context: grpc.aio.ServicerContext) -> pb.ApplyGiftResponse:
        session = await self._owned_session(request.user_id, request.session_id)
        reply = await self.peers.apply_gift(
            affinity_pb2.ApplyGiftRequest(
                user_id=str(session.user_id),
                session_id=str(session.id),
                deltas=dict(request.deltas),
                label=request.label,
                metadata=request.metadata,
                client_request_id=request.client_request_id,
            )
        )
        if reply.applied:  # a retried gift (same client_request_id) is recorded once
            await sessions.record_gift_message(
                self.pool, session, request.label or "gift", dict(reply.applied_deltas), reply.event_id
            )
        return pb.ApplyGiftResponse(applied_deltas=dict(reply.applied_deltas), affinity=reply.state)

    @maps_errors
    async def ListGifts(self, request: pb.ListGiftsRequest, context: grpc.aio.ServicerContext) -> pb.ListGiftsResponse:
        session = await self._owned_session(request.user_id, request.session_id)
        reply = await self.peers.list_gifts(
            affinity_pb2.ListGiftsRequest(user_id=str(session.user_id), session_id=str(session.id))
        )
        return pb.ListGiftsResponse(gifts=list(reply.gifts))

    @maps_errors
    async def ExplainMessage(
        self, request: pb.ExplainMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainMessageResponse:
        session = await self._owned_session(request.user_id, request.session_id)
        row = await turns.turn_for_message(self.pool, session.id, request.message_id)
        if row is None:
            raise NotFound("no turn produced this message in this session")
        explanation = {
            "turn_id": row.id,
            "status": row.status,
            "client_msg_id": row.client_msg_id,
            "user_message_id": row.user_message_id,
            "started_at": row.started_at.isoformat(),
            "finished_at": row.finished_at.isoformat() if row.finished_at else None,
            **(row.explain or {}),
        }
        response = pb.ExplainMessageResponse()
        response.explanation.update(explanation)
        return response

    @maps_errors
    async def ExportUserData(
        self, request: pb.ExportUserDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportUserDataResponse:
        data = await export_user_data(self.pool, self.peers, parse_uuid(request.user_id, "user_id"))
        response = pb.ExportUserDataResponse()
        response.data.update(data)
        return response

    @maps_errors
    async def DeleteUserData(
        self, request: pb.DeleteUserDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserDataResponse:
        deleted = await delete_user_data(self.pool, self.peers, parse_uuid(request.user_id, "user_id"))
        response = pb.DeleteUserDataResponse()
        response.deleted.update(deleted)
        return response


def prefetch_session(session: SessionRow) -> SessionRow:
    """The session as it is once the new user message is stored."""
    return dataclasses.replace(
        session, message_count=session.message_count + 1, user_message_count=session.user_message_count + 1
    )


def _in_progress(message_id: str) -> Aborted:
    return Aborted(
        "a turn with this client_msg_id is still in progress",
        reason="duplicate_in_progress",
        extra={"message-id": message_id},
        user_message="That message is still being answered.",
    )


async def _replay(saved: list[dict[str, Any]]) -> AsyncIterator[Frame]:
    for frame in saved:
        yield frames.from_json(frame)


def persona_message(row: PersonaRow) -> pb.Persona:
    meta = row.art_metadata or {}
    return pb.Persona(
        id=str(row.id),
        name=row.name,
        tip_personality=row.tip_personality or "",
        gender=str(meta.get("gender", "")),
        age=int(meta.get("age") or 0),
        mbti=str(meta.get("mbti", "")),
        timezone=str(meta.get("timezone", "")),
        appearance=str(meta.get("appearance", "")),
        topics=[str(t) for t in meta.get("topics", [])],
        source=row.source,
    )


async def build(ctx: ServiceContext) -> ServiceParts:
    env = ctx.env
    model_config = load_model_config_from_env(env)
    peers = Peers.connect(env)
    endpoint = llm_endpoint_from_env(env)
    offline_server = None
    if endpoint is None:
        offline_server = await serve_llm(build_llm_app("offline"), host="127.0.0.1", port=0)
        endpoint = LlmEndpoint(
            base_url=offline_server.base_url, api_key="offline", offline=True, default_model=OFFLINE_MODEL_ID
        )
    llm = LlmClient(endpoint, timeout=env.float("LLM_TIMEOUT_SECS", 60.0, 0.1, 600.0))
    attempts = env.int("POST_PROCESS_MAX_ATTEMPTS", 0, 0, 100_000)
    replica_id = uuid.uuid4()  # this process, in turn leases and post-process claims
    outbox = OutboxWorker(
        ctx.pool,
        peers,
        max_attempts=attempts or None,
        horizon_seconds=env.float("POST_PROCESS_HORIZON_SECS", 86_400.0, 1.0, 30 * 86_400.0),
        backoff_cap=env.float("POST_PROCESS_BACKOFF_CAP_SECS", 300.0, 0.1, 3600.0),
        retention_seconds=env.float("OUTBOX_RETENTION_SECS", 7 * 86_400.0, 0.0, 365 * 86_400.0),
        replica_id=replica_id,
    )

    async def report_dead_jobs(counts: dict[str, int]) -> None:
        """Dead jobs show in the health of POST_PROCESS_QUEUE (the orchestrator's own status is unaffected)."""
        serving = (
            health_pb2.HealthCheckResponse.NOT_SERVING if counts.get("dead") else health_pb2.HealthCheckResponse.SERVING
        )
        await ctx.health.set(POST_PROCESS_QUEUE, serving)

    outbox.report_counts = report_dead_jobs
    await report_dead_jobs(await outbox_store.counts(ctx.pool))  # known from the start, not after the first round
    hidden = frozenset(k.strip() for k in (env.str("OPENROUTER_USAGE_HIDDEN_KEYS") or "").split(",") if k.strip())
    engine = TurnEngine(
        pool=ctx.pool,
        peers=peers,
        llm=llm,
        outbox=outbox,
        model_config=model_config,
        offline_model=endpoint.default_model if endpoint.offline else None,
        default_model=endpoint.default_model,
        judge=None if endpoint.offline else llm_for_task(env, "pde_decision", model_config, client=llm),
        generation_timeout=env.float("CHAT_GEN_TIMEOUT_SECS", 300.0, 0.1, 3600.0),
        hidden_usage_keys=hidden,
    )
    live = LiveTurns(
        max_per_user=env.int("MAX_TURNS_PER_USER", 3, 1, 100),
        queue_wait=env.float("TURN_QUEUE_WAIT_SECS", 10.0, 0.0, 120.0),
    )
    leases = TurnLeases(ctx.pool, live, replica_id=replica_id)
    await leases.start()  # turns of stopped or silent replicas end failed; live ones of others are left alone
    servicer = OrchestratorServicer(ctx, peers, engine, live, leases)

    async def stop() -> None:
        await live.drain(timeout=5.0)
        await leases.stop()
        await peers.close()
        await llm.close()
        if offline_server is not None:
            await offline_server.stop()

    return ServiceParts(
        register=[lambda server: pb_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)],
        service_names=[pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name],
        background=[outbox.run, outbox.watch_reconnects, leases.run],
        on_stop=[stop],
        public_api=PublicApiGuard.from_env(ctx.pool, ctx.security.token, env),
    )
