"""One turn: read state in parallel → PDE → ghost or reply (model chain, streamed) → persist + outbox.

Runs detached from the caller (see live_turns). Frames go to the turn's FrameLog as they happen and,
with the assistant message and post-process jobs, into the database in one transaction.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import openai
from opentelemetry import trace

from rapport.affinity.v1 import affinity_pb2
from rapport.insight.v1 import insight_pb2
from rapport.memory.v1 import memory_pb2
from services.servicekit.grpc_runtime import call_timeout
from services.servicekit.llm import LlmClient, is_retryable_status
from services.servicekit.telemetry import current_trace_id

from . import frames, store
from .live_turns import FrameLog
from .outbox import OutboxWorker, current_trace_context
from .peers import Peers, request_to_payload

log = logging.getLogger("rapport.turn")
tracer = trace.get_tracer("rapport.orchestrator.turn")

READ_TIMEOUT = 2.0  # a slow memory/insight must not hold the reply hostage: degrade instead
HISTORY_MESSAGES = 20


@dataclass
class TurnInput:
    turn_id: str
    user_message_id: str
    session: store.SessionRow
    content: str
    client_msg_id: str
    request: Any  # the SendMessageRequest (tier, traits, scopes, audit, sampling)


@dataclass
class TurnContext:
    """What the parallel reads brought back; absent parts are listed in `degraded`."""

    affinity: affinity_pb2.GetStateResponse | None = None
    ghost: affinity_pb2.DecideGhostResponse | None = None
    recall: memory_pb2.RecallResponse | None = None
    profile: insight_pb2.GetProfileResponse | None = None
    degraded: list[str] = field(default_factory=list)


class GenerationFailed(Exception):
    def __init__(self, code: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


@dataclass
class TurnEngine:
    pool: Any
    peers: Peers
    llm: LlmClient
    outbox: OutboxWorker
    chat_models: tuple[str, ...]
    generation_timeout: float = 300.0

    async def run(self, log_: FrameLog, turn: TurnInput) -> None:
        emitted: list[dict[str, Any]] = []

        async def emit(frame: dict[str, Any]) -> None:
            emitted.append(frame)
            await log_.publish(frame)

        with tracer.start_as_current_span("turn", attributes={"rapport.turn_id": turn.turn_id,
                                                               "rapport.session_id": str(turn.session.id)}):
            try:
                await asyncio.wait_for(self._run(turn, emit, emitted), timeout=self.generation_timeout)
            except TimeoutError:
                frame = frames.error("generation_timeout", "the turn exceeded CHAT_GEN_TIMEOUT_SECS",
                                     "That took too long. Please try again.", True)
                await emit(frame)
                await self._record_failure(turn, emitted, "generation_timeout")
            except GenerationFailed as failure:
                frame = frames.error(failure.code, str(failure), "I couldn't reply just now. Please try again.",
                                     failure.retryable)
                await emit(frame)
                await self._record_failure(turn, emitted, str(failure))
            except Exception as error:
                log.exception("turn %s failed", turn.turn_id)
                await emit(frames.error("internal", "internal error", "Something went wrong. Please try again.", True))
                await self._record_failure(turn, emitted, f"{type(error).__name__}: {error}")

    async def _record_failure(self, turn: TurnInput, emitted: list[dict[str, Any]], reason: str) -> None:
        try:
            await store.finish_turn(self.pool, turn_id=turn.turn_id, session_id=turn.session.id,
                                    user_id=turn.session.user_id, assistant=None, jobs=[], trace_context={},
                                    frames=emitted, explain={}, usage={}, cost=0.0, status="failed", error=reason)
        except Exception:
            log.exception("could not record failure of turn %s", turn.turn_id)

    # -- reads -------------------------------------------------------------------------------

    async def _read(self, name: str, call: Any, ctx: TurnContext) -> Any:
        try:
            return await call(timeout=call_timeout(READ_TIMEOUT))
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as error:
            log.warning("%s unavailable for this turn: %s", name, error)
            if name not in ctx.degraded:
                ctx.degraded.append(name)
            return None

    async def read_context(self, turn: TurnInput) -> TurnContext:
        """Affinity, the ghost decision, memory recall and the insight profile — all in parallel."""
        s = turn.session
        req = turn.request
        ctx = TurnContext()
        user_id, session_id = str(s.user_id), str(s.id)
        results = await asyncio.gather(
            self._read("affinity", lambda timeout: self.peers.affinity.GetState(affinity_pb2.GetStateRequest(
                user_id=user_id, session_id=session_id, affinity_scope=list(req.affinity_scope)), timeout=timeout), ctx),
            self._read("affinity", lambda timeout: self.peers.affinity.DecideGhost(affinity_pb2.DecideGhostRequest(
                user_id=user_id, session_id=session_id, user_message_count=s.user_message_count,
                ghosting_enabled=True), timeout=timeout), ctx),
            self._read("memory", lambda timeout: self.peers.memory.Recall(memory_pb2.RecallRequest(
                user_id=user_id, instance_id=str(s.instance_id), session_id=session_id, query=turn.content,
                memory_scope=req.memory_scope), timeout=timeout), ctx),
            self._read("insight", lambda timeout: self.peers.insight.GetProfile(insight_pb2.GetProfileRequest(
                user_id=user_id, mode=insight_pb2.RENDER_MODE_NEUTRAL), timeout=timeout), ctx),
        )
        ctx.affinity, ctx.ghost, ctx.recall, ctx.profile = results
        return ctx

    # -- the turn ----------------------------------------------------------------------------

    async def _run(self, turn: TurnInput, emit: Any, emitted: list[dict[str, Any]]) -> None:
        ctx = await self.read_context(turn)
        if ctx.ghost is not None and ctx.ghost.ghost:
            await self._ghost(turn, ctx, emit, emitted)
            return
        messages = await self._prompt(turn, ctx)
        reply = await self._generate(turn, messages, emit)
        await self._persist_reply(turn, ctx, reply, emit, emitted)

    async def _ghost(self, turn: TurnInput, ctx: TurnContext, emit: Any, emitted: list[dict[str, Any]]) -> None:
        s = turn.session
        message_id = store.new_message_id()
        await self.peers.affinity.RecordGhost(affinity_pb2.RecordGhostRequest(
            user_id=str(s.user_id), session_id=str(s.id), turn_id=turn.turn_id), timeout=call_timeout(5.0))
        await emit(frames.meta(message_id, "ghost"))
        done = frames.done(message_id)
        final = frames.final(prompt_injected=[], tier=turn.request.tier, retries=0, degraded=ctx.degraded,
                             trace_id=current_trace_id())
        explain = {"decision": {"action": "ghost", "rule": ctx.ghost.rule if ctx.ghost else "",
                                "reason": ctx.ghost.reason if ctx.ghost else "",
                                "score": ctx.ghost.score if ctx.ghost else None}}
        await store.finish_turn(self.pool, turn_id=turn.turn_id, session_id=s.id, user_id=s.user_id,
                                assistant={"id": message_id, "content": "", "kind": "ghost"}, jobs=[],
                                trace_context={}, frames=[*emitted, done, final], explain=explain, usage={}, cost=0.0)
        await emit(done)
        await emit(final)

    async def _prompt(self, turn: TurnInput, ctx: TurnContext) -> list[dict[str, str]]:
        s = turn.session
        persona = await store.get_persona(self.pool, s.persona_id)
        history = await store.recent_messages(self.pool, s.id, HISTORY_MESSAGES, exclude_id=turn.user_message_id)
        system = [persona["system_prompt"] if persona else ""]
        if ctx.profile is not None and ctx.profile.rendering:
            system += ["", "[user_profile]", ctx.profile.rendering]
        if ctx.recall is not None:
            if ctx.recall.profile:
                system += ["", "[user_profile]", *(f"- {m.content}" for m in ctx.recall.profile)]
            if ctx.recall.relationship:
                system += ["", "[shared_memories]", *(f"- {m.content}" for m in ctx.recall.relationship)]
        if ctx.affinity is not None and ctx.affinity.mood_lines:
            system += ["", "[mood]", *ctx.affinity.mood_lines]
        system += ["", "[now]", datetime.now(UTC).strftime("%A %Y-%m-%d %H:%M UTC"),
                   "", "Stay in character. Plain text. Keep to a single beat, leave room for the other person."]
        messages = [{"role": "system", "content": "\n".join(system)}]
        messages += [{"role": row["role"], "content": row["content"]} for row in history]
        messages.append({"role": "user", "content": turn.content})
        return messages

    async def _generate(self, turn: TurnInput, messages: list[dict[str, str]], emit: Any) -> dict[str, Any]:
        """The model chain: each failed or cut attempt ends `done{truncated}`, the next continues from it."""
        text = ""
        previous_id = ""
        retries = 0
        last_error: GenerationFailed | None = None
        for attempt, model in enumerate(self.chat_models):
            message_id = store.new_message_id()
            await emit(frames.meta(message_id, "reply", model, previous_id))
            attempt_messages = list(messages)
            if text:
                attempt_messages.append({"role": "assistant", "content": text})
            usage: dict[str, Any] = {}
            generation_id = ""
            finished = False
            try:
                async for chunk in self.llm.stream_chat(model, attempt_messages, params=_sampling(turn.request)):
                    generation_id = chunk.generation_id or generation_id
                    if chunk.content:
                        text += chunk.content
                        await emit(frames.delta(message_id, chunk.content))
                    if chunk.usage:
                        usage = chunk.usage
                    if chunk.finish_reason:
                        finished = True
            except openai.APIStatusError as error:
                last_error = GenerationFailed("rate_limited" if error.status_code == 429 else "upstream_unavailable",
                                              f"{model}: HTTP {error.status_code}", is_retryable_status(error.status_code))
            except (openai.APITimeoutError, asyncio.TimeoutError):
                last_error = GenerationFailed("timeout", f"{model}: timed out", True)
            except (openai.APIConnectionError, openai.APIError) as error:
                last_error = GenerationFailed("upstream_unavailable", f"{model}: {type(error).__name__}", True)
            else:
                if finished:
                    return {"id": message_id, "content": text, "model": model, "usage": usage,
                            "generation_id": generation_id, "retries": retries,
                            "ghost_fallback": not text.strip() and attempt == len(self.chat_models) - 1}
                last_error = GenerationFailed("upstream_unavailable", f"{model}: stream cut", True)
            retries += 1
            await emit(frames.done(message_id, truncated=True, usage=usage, generation_id=generation_id))
            previous_id = message_id
        assert last_error is not None
        raise last_error

    async def _persist_reply(self, turn: TurnInput, ctx: TurnContext, reply: dict[str, Any], emit: Any,
                             emitted: list[dict[str, Any]]) -> None:
        s = turn.session
        now = datetime.now(UTC)
        jobs = [] if reply["ghost_fallback"] else self._post_process_jobs(turn, reply, now)
        done = frames.done(reply["id"], usage=reply["usage"], generation_id=reply["generation_id"],
                           ghost_fallback=reply["ghost_fallback"])
        final = frames.final(prompt_injected=[], tier=turn.request.tier, retries=reply["retries"],
                             degraded=ctx.degraded, trace_id=current_trace_id())
        explain = {"model": reply["model"], "usage": reply["usage"], "trace_id": current_trace_id(),
                   "decision": {"action": "reply"}}
        await store.finish_turn(
            self.pool, turn_id=turn.turn_id, session_id=s.id, user_id=s.user_id,
            assistant={"id": reply["id"], "content": reply["content"], "model": reply["model"],
                       "usage": reply["usage"], "kind": "ghost" if reply["ghost_fallback"] else "chat"},
            jobs=jobs, trace_context=current_trace_context(), frames=[*emitted, done, final], explain=explain,
            usage=reply["usage"], cost=float(reply["usage"].get("cost", 0.0) or 0.0))
        self.outbox.notify()
        await emit(done)
        try:
            await self.peers.affinity.RecordReply(affinity_pb2.RecordReplyRequest(
                user_id=str(s.user_id), session_id=str(s.id)), timeout=call_timeout(2.0))
        except grpc.aio.AioRpcError as error:
            log.warning("could not reset the ghost streak: %s", error)
        await emit(final)

    def _post_process_jobs(self, turn: TurnInput, reply: dict[str, Any], now: datetime) -> list[store.OutboxJob]:
        s = turn.session
        common = {"turn_id": turn.turn_id, "user_id": str(s.user_id), "session_id": str(s.id)}
        affinity = affinity_pb2.ApplyTurnRequest(**common, persona_name=s.persona_name, user_text=turn.content,
                                                 reply_text=reply["content"])
        affinity.user_message_at.FromDatetime(now)
        memory = memory_pb2.IngestTurnRequest(**common, instance_id=str(s.instance_id),
                                              user_message_id=turn.user_message_id, reply_message_id=reply["id"],
                                              user_text=turn.content, reply_text=reply["content"],
                                              persona_name=s.persona_name)
        memory.occurred_at.FromDatetime(now)
        insight = insight_pb2.ExtractTurnRequest(**common, user_message_id=turn.user_message_id,
                                                 user_text=turn.content, reply_text=reply["content"],
                                                 persona_name=s.persona_name)
        insight.occurred_at.FromDatetime(now)
        return [store.OutboxJob("affinity", request_to_payload(affinity)),
                store.OutboxJob("memory", request_to_payload(memory)),
                store.OutboxJob("insight", request_to_payload(insight))]


def _sampling(request: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"max_tokens": 400, "temperature": 0.85}
    if request.HasField("sampling"):
        s = request.sampling
        for name in ("temperature", "max_tokens", "top_p", "presence_penalty", "frequency_penalty"):
            if s.HasField(name):
                params[name] = getattr(s, name)
        if s.stop:
            params["stop"] = list(s.stop)
    if request.HasField("audit") and request.audit.user:
        params["user"] = request.audit.user
    return params


def elapsed_ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def parse_session_id(value: str) -> uuid.UUID:
    return uuid.UUID(value)
