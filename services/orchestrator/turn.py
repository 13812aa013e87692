"""One turn: read state in parallel → PDE → ghost or reply (prompt within budget, model chain,
streamed) → persist reply + post-process jobs in one transaction.

Runs detached from the caller (see live_turns). Frames go to the turn's FrameLog as they happen and,
with the assistant message and the outbox jobs, into the database in one transaction. Everything
that shaped the reply is kept with the turn ("why did it say that?"). Every peer call goes
through `peers` with its named policy; effects after the reply (affinity, memory, insight, the end of
a ghost streak) are outbox jobs only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import grpc
import openai
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace

from rapport.affinity.v1 import affinity_pb2
from rapport.insight.v1 import insight_pb2
from rapport.memory.v1 import memory_pb2
from services.contracts import frames
from services.contracts.frames import Frame
from services.servicekit.cpu_work import run_cpu_bound
from services.servicekit.dates import relative_date_phrase
from services.servicekit.grpc_errors import DATABASE_BUSY, DATABASE_DOWN
from services.servicekit.llm import LlmClient
from services.servicekit.model_chain import Attempt, ChainFailed, ModelFailure, run_model_chain
from services.servicekit.model_config import ModelConfig, ResolvedTask
from services.servicekit.tasks import TaskLlm
from services.servicekit.telemetry import current_trace_id, meter

from . import branching
from .domain import pde
from .domain.prompt import AssembledPrompt, PromptInputs, assemble_prompt, default_token_counter
from .domain.transcript import ClientPrompt
from .domain.turn_request import TurnRequest, kept_traits
from .live_turns import FrameLog
from .outbox import OutboxWorker, current_trace_context
from .peers import Peers, ReadReport
from .persona_catalog import persona_spec
from .store import catalog, new_message_id, sessions, turns
from .store.outbox import OutboxJob
from .store.rows import AssistantMessage, MessageRow, PersonaRow, SessionRow

log = logging.getLogger("rapport.turn")
tracer = trace.get_tracer("rapport.orchestrator.turn")


class TurnMetrics:
    """Turn latency, time to first token, tokens and cost."""

    def __init__(self) -> None:
        m = meter("rapport.orchestrator")
        self.turn_seconds = m.create_histogram("rapport.turn.duration", unit="s", description="whole turn")
        self.ttft_seconds = m.create_histogram("rapport.turn.time_to_first_token", unit="s")
        self.tokens = m.create_counter("rapport.llm.tokens", unit="{token}")
        self.cost = m.create_counter("rapport.llm.cost", unit="USD")
        self.outcomes = m.create_counter("rapport.turn.outcomes", description="reply, ghost, error")


METRICS = TurnMetrics()

# Request parameters not every model takes: a model that refuses one makes the turn a 400 naming it.
OPTIONAL_CAPABILITIES = ("tools", "tool_choice", "response_format", "parallel_tool_calls", "logit_bias", "seed")
HISTORY_MESSAGES = 20  # the prompt's verbatim history; sent to memory as RecallRequest.history_window
RECALL_CONTEXT_TURNS = 2  # the messages before the user's that memory may read a short or back-referring one with
CHAT_TASK = "chat_companion"
PROFILE_MODES = {
    memory_pb2.INSIGHTS_MODE_FULL: insight_pb2.RENDER_MODE_FULL,
    memory_pb2.INSIGHTS_MODE_NEUTRAL: insight_pb2.RENDER_MODE_NEUTRAL,
}

Emit = Callable[[Frame], Awaitable[None]]


@dataclass
class TurnInput:
    turn_id: str
    user_message_id: str
    session: SessionRow
    request: TurnRequest
    sampling: dict[str, Any]  # per-request overrides and provider parameters (OpenAI-compatible clients)
    client_prompt: ClientPrompt | None = None  # an OpenAI client's own messages (its character: character mode)
    post_process: bool = True  # False when a reply to this user message was already post-processed (a regenerate)
    received_at: float = field(default_factory=time.monotonic)  # for time-to-first-token
    prefetched: asyncio.Task[TurnContext] | None = None  # reads started while the turn was being persisted


@dataclass
class TurnContext:
    """What the parallel reads brought back; peers that did not answer are in `report.degraded`.

    `affinity` None means no relationship state is known this turn (affinity did not answer): the PDE
    then replies in a neutral style, and nothing about the relationship reaches the prompt.
    """

    affinity: affinity_pb2.ReadTurnStateResponse | None = None
    recall: memory_pb2.RecallResponse | None = None
    profile: insight_pb2.GetProfileResponse | None = None
    persona: PersonaRow | None = None
    history: list[MessageRow] = field(default_factory=list)  # may include the current message: filtered by id
    report: ReadReport = field(default_factory=ReadReport)


@dataclass(frozen=True)
class GeneratedReply:
    id: str
    content: str
    model: str
    usage: dict[str, Any]
    generation_id: str
    retries: int
    ghost_fallback: bool  # every model answered with nothing: stored as a ghost
    finish_reason: str = "stop"  # stop, length (max_tokens reached) or tool_calls
    tool_calls: tuple[dict[str, Any], ...] = ()  # the tool calls the model made (OpenAI's shape)


class GenerationFailed(Exception):
    def __init__(self, code: str, message: str, retryable: bool, retries: int = 0, param: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.retries = retries
        self.param = param  # the request parameter the model refused ("" = not that)

    def error_frame(self, user_message: str) -> Frame:
        """The error frame; the person is told which parameter was refused when that is the cause."""
        told = str(self) if self.param else user_message
        return frames.error(self.code, str(self), told, self.retryable, self.param)


@dataclass
class TurnEngine:
    pool: Any
    peers: Peers
    llm: LlmClient
    outbox: OutboxWorker
    model_config: ModelConfig
    offline_model: str | None  # set when the offline responder serves every model
    default_model: str
    judge: TaskLlm | None = None
    generation_timeout: float = 300.0
    hidden_usage_keys: frozenset[str] = frozenset()

    # Tasks resolved once per (task, tier): the model config is fixed for the life of the process.
    _resolved: dict[tuple[str, str | None], ResolvedTask] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        default_token_counter()  # the tokenizer is loaded with the process, not by its first turn

    # -- configuration -----------------------------------------------------------------------

    def resolved(self, task: str, tier: str | None = None) -> ResolvedTask:
        key = (task, tier or None)
        if key not in self._resolved:
            self._resolved[key] = self.model_config.resolve(task, tier)
        return self._resolved[key]

    def chat_task(self, tier: str | None) -> ResolvedTask:
        return self.resolved(CHAT_TASK, tier)

    def model_chain(self, resolved: ResolvedTask) -> tuple[str, ...]:
        if self.offline_model:
            return (self.offline_model,)
        return resolved.models or (self.default_model,)

    @property
    def ghosting_enabled(self) -> bool:
        return bool(self.resolved("pde_decision").extra.get("ghosting", True))

    def visible_usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in usage.items() if k not in self.hidden_usage_keys}

    # -- the turn ----------------------------------------------------------------------------

    async def run(self, log_: FrameLog, turn: TurnInput) -> None:
        emitted: list[Frame] = []

        async def emit(frame: Frame) -> None:
            emitted.append(frame)
            await log_.publish(frame)

        started = time.monotonic()
        with tracer.start_as_current_span(
            "turn", attributes={"rapport.turn_id": turn.turn_id, "rapport.session_id": str(turn.session.id)}
        ):
            try:
                await asyncio.wait_for(self._run(turn, emit, emitted), timeout=self.generation_timeout)
                outcome = next((f.meta.action_type for f in emitted if frames.kind(f) == "meta"), "reply")
                METRICS.outcomes.add(1, {"outcome": outcome})
                METRICS.turn_seconds.record(time.monotonic() - started, {"outcome": outcome})
            except TimeoutError:
                METRICS.outcomes.add(1, {"outcome": "error"})
                await emit(
                    frames.error(
                        "generation_timeout",
                        "the turn exceeded CHAT_GEN_TIMEOUT_SECS",
                        "That took too long. Please try again.",
                        True,
                    )
                )
                await self._record_failure(turn, emitted, "generation_timeout")
            except GenerationFailed as failure:
                METRICS.outcomes.add(1, {"outcome": "error"})
                await emit(failure.error_frame("I couldn't reply just now. Please try again."))
                await self._record_failure(turn, emitted, str(failure))
            except (*DATABASE_BUSY, *DATABASE_DOWN) as error:  # an outage mid-turn: say so, the retry will work
                METRICS.outcomes.add(1, {"outcome": "error"})
                log.warning(
                    "turn %s failed: the database is unavailable (%s: %s)", turn.turn_id, type(error).__name__, error
                )
                await emit(
                    frames.error(
                        "unavailable",
                        f"the database is unavailable: {type(error).__name__}",
                        "The service is briefly unavailable. Please try again.",
                        True,
                    )
                )
                await self._record_failure(turn, emitted, f"{type(error).__name__}: {error}")
            except Exception as error:
                log.exception("turn %s failed", turn.turn_id)
                await emit(frames.error("internal", "internal error", "Something went wrong. Please try again.", True))
                await self._record_failure(turn, emitted, f"{type(error).__name__}: {error}")

    async def _record_failure(self, turn: TurnInput, emitted: list[Frame], reason: str) -> None:
        try:
            await turns.finish_turn(
                self.pool,
                turn_id=turn.turn_id,
                session_id=turn.session.id,
                user_id=turn.session.user_id,
                assistant=None,
                jobs=[],
                trace_context={},
                frames=[frames.to_json(f) for f in emitted],
                explain={"error": reason},
                usage={},
                cost=0.0,
                status="failed",
                error=reason,
            )
        except Exception:
            log.exception("could not record failure of turn %s", turn.turn_id)

    async def _run(self, turn: TurnInput, emit: Emit, emitted: list[Frame]) -> None:
        started = time.monotonic()
        ctx = await turn.prefetched if turn.prefetched is not None else await self.read_context(turn)
        decision, judge_audit = await self._decide(turn, ctx)
        explain: dict[str, Any] = {
            "decision": {
                "action": decision.action,
                "style": decision.style,
                "reason": decision.reason,
                "ghost": _ghost_json(ctx.affinity),
                "judge": judge_audit,
            },
            "affinity": _affinity_json(ctx.affinity),
            "memories": _memories_json(ctx.recall),
            "profile": _profile_json(ctx.profile),
            "degraded": ctx.report.degraded,
            "timings_ms": ctx.report.timings_ms,
        }
        if decision.action == "ghost":
            await self._ghost(turn, ctx, explain, emit, emitted)
            return
        resolved = self.chat_task(turn.request.tier)
        prompt = await self._prompt(turn, ctx, decision, resolved)
        explain["prompt"] = {
            "section_tokens": prompt.section_tokens,
            "dropped": prompt.dropped,
            "budgets": prompt.budgets,
            "history_cut": prompt.history_cut,
            "max_tokens": prompt.max_tokens,
            "injected_traits": list(prompt.injected_traits),
            "trimmed": prompt.trimmed,
            "character_mode": prompt.character_mode,
        }
        explain["timings_ms"]["before_llm"] = round((time.monotonic() - started) * 1000, 2)
        reply = await self._generate(turn, prompt, resolved, emit)
        await self._persist_reply(turn, ctx, prompt, reply, explain, emit, emitted)

    # -- reads ------------------------------------------------------------------------------

    async def read_context(self, turn: TurnInput) -> TurnContext:
        """Affinity (state + ghost decision), memory recall then the profile it allows, the persona and the
        history — all in parallel."""
        s, req = turn.session, turn.request
        report = ReadReport()
        user_id, session_id = str(s.user_id), str(s.id)
        scope = [req.affinity_scope] if isinstance(req.affinity_scope, str) else list(req.affinity_scope)
        turn_state = self.peers.turn_state(
            affinity_pb2.ReadTurnStateRequest(
                user_id=user_id,
                session_id=session_id,
                affinity_scope=scope,
                user_message_count=s.user_message_count,
                ghosting_enabled=self.ghosting_enabled,
            ),
            report,
        )

        history = asyncio.ensure_future(
            sessions.recent_messages(self.pool, s.id, HISTORY_MESSAGES + 1, until=turn.user_message_id or None)
        )

        async def recall_and_profile() -> tuple[
            memory_pb2.RecallResponse | None, insight_pb2.GetProfileResponse | None
        ]:
            # memory alone interprets memory_scope: its answer says what of the profile may be used (none when
            # memory did not answer). A short or back-referring message is read with the turns before it.
            before = [m.content for m in await history if m.id != turn.user_message_id][-RECALL_CONTEXT_TURNS:]
            recall = await self.peers.recall(
                memory_pb2.RecallRequest(
                    user_id=user_id,
                    instance_id=str(s.instance_id),
                    session_id=session_id,
                    query=req.content,
                    memory_scope=req.memory_scope,
                    history_window=HISTORY_MESSAGES,
                    recent_turns=before,
                ),
                report,
            )
            if recall is not None:  # where the recall's time went, as memory measured it
                report.timings_ms["memory_embed"] = round(recall.embed_ms, 2)
                report.timings_ms["memory_search"] = round(recall.search_ms, 2)
            mode = PROFILE_MODES.get(recall.insights) if recall is not None else None
            if mode is None:
                return recall, None
            return recall, await self.peers.profile(insight_pb2.GetProfileRequest(user_id=user_id, mode=mode), report)

        affinity, (recall, profile), persona, recent = await asyncio.gather(
            turn_state, recall_and_profile(), catalog.get_persona(self.pool, s.persona_id), history
        )
        return TurnContext(affinity, recall, profile, persona, recent, report)

    # -- the Persona Decision Engine ------------------------------------------------------------

    async def _decide(self, turn: TurnInput, ctx: TurnContext) -> tuple[pde.Decision, dict[str, Any] | None]:
        vector = _vector(ctx.affinity)
        ghost = ctx.affinity is not None and ctx.affinity.ghost.ghost and self.ghosting_enabled
        rules = pde.decide_by_rules(ghost, vector)
        filter_prompt = str(self.resolved("pde_decision").extra.get("filter_prompt") or "")
        if self.judge is None or not filter_prompt or ctx.affinity is None:
            return rules, None
        return await self._judge(turn, ctx, ctx.affinity, rules, filter_prompt)

    async def _judge(
        self,
        turn: TurnInput,
        ctx: TurnContext,
        affinity: affinity_pb2.ReadTurnStateResponse,
        rules: pde.Decision,
        filter_prompt: str,
    ) -> tuple[pde.Decision, dict[str, Any]]:
        """The opt-in LLM judge: banded inputs, strict JSON, rules veto, any failure → the rules. It sees the
        persona and recent messages the turn has already read."""
        assert self.judge is not None
        s = turn.session
        recent = [m for m in ctx.history if m.id != turn.user_message_id]
        signals = {
            "user_messages_in_session": s.user_message_count,
            "ghost_streak": affinity.state.ghost_streak,
            "relationship": affinity.state.label,
        }
        banded = dict(affinity.banded_axes)
        persona = ctx.persona
        brief = f"{persona.name}: {persona.tip_personality or ''}".strip() if persona else s.persona_name
        messages = pde.build_judge_messages(
            filter_prompt, brief, [(m.role, m.content) for m in recent], banded, signals, turn.request.content
        )
        run_id = new_message_id()
        usage: dict[str, Any] = {}
        text, model, status = "", "", "ok"
        try:
            text, usage, model = await self.judge.complete(messages, json_mode=True)
            verdict, status = pde.parse_judge_output(text)
        except (TimeoutError, openai.APIError) as error:
            verdict, status = None, "upstream_error"
            text = f"{type(error).__name__}: {error}"
        decision = (
            pde.apply_veto(verdict, affinity.ghost.judge_ghost_allowed, self.ghosting_enabled, rules.style)
            if verdict is not None and rules.action != "ghost"
            else rules
        )
        audit = {
            "run_id": run_id,
            "status": status,
            "proposed_action": verdict.action if verdict else None,
            "final_action": decision.action,
            "model": model,
        }
        await turns.record_judge_decision(
            self.pool,
            run_id=run_id,
            turn_id=turn.turn_id,
            session_id=s.id,
            status=status,
            proposed_action=audit["proposed_action"],
            final_action=decision.action,
            inputs={
                "banded": banded,
                "signals": signals,
                "new_message": turn.request.content,
                "recent": min(len(recent), pde.JUDGE_HISTORY_MESSAGES),
            },
            output={"text": text[:4000]},
            model=model,
            usage=usage,
        )
        return decision, audit

    # -- ghost -------------------------------------------------------------------------------

    async def _ghost(
        self, turn: TurnInput, ctx: TurnContext, explain: dict[str, Any], emit: Emit, emitted: list[Frame]
    ) -> None:
        """The persona does not answer. The ghost is recorded in affinity first: if that fails, the turn fails
        (retryable) rather than leaving a ghost the relationship does not know about."""
        s = turn.session
        message_id = new_message_id()
        try:
            await self.peers.record_ghost(
                affinity_pb2.RecordGhostRequest(user_id=str(s.user_id), session_id=str(s.id), turn_id=turn.turn_id)
            )
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            raise GenerationFailed(
                "upstream_unavailable", f"affinity could not record the ghost: {error}", True
            ) from None
        await emit(frames.meta(message_id, "ghost"))
        done = frames.done(message_id)
        final = frames.final(
            prompt_injected=[],
            tier=turn.request.tier or "",
            retries=0,
            degraded=ctx.report.degraded,
            trace_id=current_trace_id(),
        )
        explain["trace_id"] = current_trace_id()
        await turns.finish_turn(
            self.pool,
            turn_id=turn.turn_id,
            session_id=s.id,
            user_id=s.user_id,
            assistant=AssistantMessage(id=message_id, content="", kind="ghost"),
            jobs=[],
            trace_context={},
            frames=[frames.to_json(f) for f in (*emitted, done, final)],
            explain=explain,
            usage={},
            cost=0.0,
        )
        await emit(done)
        await emit(final)

    # -- prompt ------------------------------------------------------------------------------

    async def _prompt(
        self, turn: TurnInput, ctx: TurnContext, decision: pde.Decision, resolved: ResolvedTask
    ) -> AssembledPrompt:
        s, req = turn.session, turn.request
        history = [m for m in ctx.history if m.id != turn.user_message_id][-HISTORY_MESSAGES:]
        recall, affinity = ctx.recall, ctx.affinity
        now = datetime.now(UTC)
        profile_memories = [(dated(m, now), m.score) for m in recall.profile] if recall else []
        relationship = [(dated(m, now), m.score) for m in recall.relationship] if recall else []
        summary = recall.summary.content if recall is not None and recall.HasField("summary") else None
        if ctx.persona is None:
            raise GenerationFailed("internal", "the session's persona no longer exists", False)
        inputs = PromptInputs(
            persona=persona_spec(ctx.persona),
            traits=kept_traits(req.prompt_traits, resolved.allow_traits),
            turn_style=list(decision.turn_style_lines),
            profile_rendering=ctx.profile.rendering if ctx.profile is not None else "",
            profile_memories=profile_memories,
            relationship_memories=relationship,
            summary=summary or None,
            mood=list(affinity.mood_lines) if affinity else [],
            feelings=list(affinity.feelings_lines) if affinity else [],
            emotional_context=list(affinity.emotional_context) if affinity else [],
            length_guidance=affinity.length_guidance if affinity else "",
            history=[(m.role, m.content) for m in history],
            user_message=req.content,
            now=now,
            earlier_history_omitted=s.message_count - 1 > len(history),
            client=turn.client_prompt,
        )
        # On the one CPU worker: concurrent turns' assemblies in a thread pool would fight the event loop for
        # the GIL (servicekit/cpu_work.py), slowing every other turn's reads and streams.
        return await run_cpu_bound(assemble_prompt, inputs, resolved)

    # -- generation: the model chain ---------------------------------------------------------------

    def _params(self, turn: TurnInput, prompt: AssembledPrompt, resolved: ResolvedTask) -> dict[str, Any]:
        params = resolved.sampling_params()
        params["max_tokens"] = min(params.get("max_tokens") or prompt.max_tokens, prompt.max_tokens)
        params.update({k: v for k, v in turn.sampling.items() if v is not None})
        audit = turn.request.audit
        if audit:
            if audit.get("user"):
                params["user"] = audit["user"]
            extra = {k: v for k, v in audit.items() if k != "user" and v}
            if extra:
                params["extra_body"] = extra
        return params

    async def _generate(
        self, turn: TurnInput, prompt: AssembledPrompt, resolved: ResolvedTask, emit: Emit
    ) -> GeneratedReply:
        """Each failed or cut attempt ends `done{truncated}`; the next model continues from the text so far."""
        params = self._params(turn, prompt, resolved)
        text = ""  # what every attempt so far produced
        total_usage: dict[str, Any] = {}
        previous_id = ""
        current: dict[str, Any] = {}  # the attempt in progress: its message id and what it streamed

        async def attempt(this: Attempt) -> GeneratedReply:
            nonlocal text
            message_id = new_message_id()
            streamed = Streamed()
            current.update(message_id=message_id, streamed=streamed)
            await emit(frames.meta(message_id, "reply", this.model, previous_id, prompt.trimmed))
            messages = list(prompt.messages)
            if text:
                messages.append({"role": "assistant", "content": text})

            async def on_piece(content: str, calls: list[dict[str, Any]]) -> None:
                nonlocal text
                if not text and not streamed.tool_calls:
                    METRICS.ttft_seconds.record(time.monotonic() - turn.received_at, {"model": this.model})
                text += content
                await emit(frames.delta(message_id, content, calls))

            try:
                await stream_reply(self.llm, this.model, messages, params, streamed, on_piece)
            finally:
                _add_usage(total_usage, streamed.usage)
            if not streamed.finish_reason:
                raise ModelFailure("upstream_unavailable", f"{this.model}: stream cut")
            if not text.strip() and not streamed.tool_calls and not this.is_last:
                raise ModelFailure("upstream_unavailable", f"{this.model}: empty completion")
            return GeneratedReply(
                id=message_id,
                content=text,
                model=this.model,
                usage=total_usage,
                generation_id=streamed.generation_id,
                retries=this.index,
                ghost_fallback=not text.strip() and not streamed.tool_calls,
                finish_reason=streamed.outcome,
                tool_calls=streamed.tool_calls.whole(),
            )

        async def close_attempt(this: Attempt, failure: ModelFailure) -> None:
            nonlocal previous_id
            streamed: Streamed = current["streamed"]
            await emit(
                frames.done(
                    current["message_id"],
                    truncated=True,
                    usage=self.visible_usage(streamed.usage),
                    generation_id=streamed.generation_id,
                )
            )
            previous_id = current["message_id"]

        try:
            return await run_model_chain(self.model_chain(resolved), attempt, before_next=close_attempt, task=CHAT_TASK)
        except ChainFailed as failed:
            raise generation_failure(failed, params) from None

    # -- persist -----------------------------------------------------------------------------

    async def _persist_reply(
        self,
        turn: TurnInput,
        ctx: TurnContext,
        prompt: AssembledPrompt,
        reply: GeneratedReply,
        explain: dict[str, Any],
        emit: Emit,
        emitted: list[Frame],
    ) -> None:
        s = turn.session
        now = datetime.now(UTC)
        # A reply that calls tools is not the answer yet: nothing is stored for it, and the client's next
        # request (with the tool results) answers the same user message.
        stored = not reply.tool_calls
        processed = turn.post_process and not reply.ghost_fallback and stored
        jobs = await self._post_process_jobs(turn, reply, now) if processed else []
        trace_id = current_trace_id()
        done = frames.done(
            reply.id,
            usage=self.visible_usage(reply.usage),
            generation_id=reply.generation_id,
            ghost_fallback=reply.ghost_fallback,
            finish_reason=reply.finish_reason,
        )
        final = frames.final(
            prompt_injected=list(prompt.injected_traits),
            tier=turn.request.tier or "",
            retries=reply.retries,
            degraded=ctx.report.degraded,
            trace_id=trace_id,
        )
        explain.update(
            {
                "model": reply.model,
                "usage": reply.usage,
                "trace_id": trace_id,
                "retries": reply.retries,
                "message_id": reply.id,
                "post_process": bool(jobs),
                "finish_reason": reply.finish_reason,
            }
        )
        if reply.tool_calls:
            explain["tool_calls"] = list(reply.tool_calls)
        await turns.finish_turn(
            self.pool,
            turn_id=turn.turn_id,
            session_id=s.id,
            user_id=s.user_id,
            assistant=AssistantMessage(
                id=reply.id,
                content=reply.content,
                model=reply.model,
                usage=reply.usage,
                kind="ghost" if reply.ghost_fallback else "chat",
            )
            if stored
            else None,
            jobs=jobs,
            trace_context=current_trace_context(),
            frames=[frames.to_json(f) for f in (*emitted, done, final)],
            explain=explain,
            usage=reply.usage,
            cost=float(reply.usage.get("cost", 0.0) or 0.0),
            on_alternative=lambda conn: branching.follow_active_branch(conn, s, f"swipe-{turn.turn_id}"),
        )
        self.outbox.notify()
        for kind in ("prompt_tokens", "completion_tokens"):
            if isinstance(reply.usage.get(kind), int):
                METRICS.tokens.add(reply.usage[kind], {"kind": kind, "model": reply.model})
        if reply.usage.get("cost"):
            METRICS.cost.add(float(reply.usage["cost"]), {"model": reply.model})
        await emit(done)
        await emit(final)

    async def _post_process_jobs(self, turn: TurnInput, reply: GeneratedReply, now: datetime) -> list[OutboxJob]:
        sent_at, previous = await asyncio.gather(
            sessions.message_sent_at(self.pool, turn.user_message_id),
            sessions.previous_user_message_at(self.pool, turn.user_message_id),
        )
        return post_process_jobs(
            turn.session,
            turn_id=turn.turn_id,
            user_message_id=turn.user_message_id,
            user_text=turn.request.content,
            reply_id=reply.id,
            reply_text=reply.content,
            user_message_at=sent_at or now,
            previous_user_message_at=previous,
            occurred_at=now,
        )


def post_process_jobs(
    session: SessionRow,
    *,
    turn_id: str,
    user_message_id: str,
    user_text: str,
    reply_id: str,
    reply_text: str,
    user_message_at: datetime,
    previous_user_message_at: datetime | None,
    occurred_at: datetime,
) -> list[OutboxJob]:
    """A turn's effects after the reply, as outbox jobs: affinity (the turn's deltas, and the end of a ghost
    streak: a reply was served), memory and insight. Also used for messages a client's transcript brought in."""
    common: dict[str, Any] = {"turn_id": turn_id, "user_id": str(session.user_id), "session_id": str(session.id)}
    affinity = affinity_pb2.ApplyTurnRequest(
        **common, persona_name=session.persona_name, user_text=user_text, reply_text=reply_text
    )
    affinity.user_message_at.FromDatetime(user_message_at)
    if previous_user_message_at is not None:
        affinity.previous_user_message_at.FromDatetime(previous_user_message_at)
    memory = memory_pb2.IngestTurnRequest(
        **common,
        instance_id=str(session.instance_id),
        user_message_id=user_message_id,
        reply_message_id=reply_id,
        user_text=user_text,
        reply_text=reply_text,
        persona_name=session.persona_name,
    )
    memory.occurred_at.FromDatetime(occurred_at)
    insight = insight_pb2.ExtractTurnRequest(
        **common,
        user_message_id=user_message_id,
        user_text=user_text,
        reply_text=reply_text,
        persona_name=session.persona_name,
    )
    insight.occurred_at.FromDatetime(occurred_at)
    return [OutboxJob("affinity", affinity), OutboxJob("memory", memory), OutboxJob("insight", insight)]


class ToolCalls:
    """The tool calls of a streamed reply, assembled from their pieces (OpenAI's streamed `tool_calls`)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, pieces: list[dict[str, Any]]) -> None:
        for piece in pieces:
            call = self._calls.setdefault(
                int(piece.get("index", 0)), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            call["id"] = piece.get("id") or call["id"]
            call["type"] = piece.get("type") or call["type"]
            call["function"]["name"] += piece.get("name") or ""
            call["function"]["arguments"] += piece.get("arguments") or ""

    def whole(self) -> tuple[dict[str, Any], ...]:
        return tuple(self._calls[index] for index in sorted(self._calls))


@dataclass
class Streamed:
    """What one model's streamed answer brought so far (kept when the stream fails mid-way)."""

    text: str = ""
    tool_calls: ToolCalls = field(default_factory=ToolCalls)
    finish_reason: str = ""  # the provider's; "" = the stream ended without one (cut)
    usage: dict[str, Any] = field(default_factory=dict)
    generation_id: str = ""

    @property
    def outcome(self) -> str:
        """The reply's finish reason as clients see it: tool_calls when tools were called."""
        return "tool_calls" if self.tool_calls else (self.finish_reason or "stop")


async def stream_reply(
    llm: LlmClient,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    streamed: Streamed,
    on_piece: Callable[[str, list[dict[str, Any]]], Awaitable[None]],
) -> None:
    """Stream one model's answer into `streamed`; `on_piece(text, tool-call pieces)` sees each piece first.
    The one streaming loop of the turn and of the OpenAI-compatible utility calls."""
    async for chunk in llm.stream_chat(model, messages, params=params):
        streamed.generation_id = chunk.generation_id or streamed.generation_id
        if chunk.content or chunk.tool_calls:
            await on_piece(chunk.content, chunk.tool_calls)
            streamed.text += chunk.content
            streamed.tool_calls.add(chunk.tool_calls)
        if chunk.usage:
            streamed.usage = chunk.usage
        if chunk.finish_reason:
            streamed.finish_reason = chunk.finish_reason


def generation_failure(failed: ChainFailed, params: dict[str, Any]) -> GenerationFailed:
    """Why no model could answer, for the error frame: a parameter the model refused (`unsupported_parameter`,
    naming it), else the last model's failure."""
    refused = refused_parameter(failed.failure, params)
    if refused:
        message = f"The model could not take `{refused}`: {failed.failure.message}"
        return GenerationFailed("unsupported_parameter", message, False, failed.retries, param=refused)
    return GenerationFailed(failed.failure.code, failed.failure.message, failed.failure.retryable, failed.retries)


def refused_parameter(failure: ModelFailure, params: dict[str, Any]) -> str:
    """The parameter a model refused ("" = none): the provider answered the request as invalid (a 4xx other
    than 408/429) and it carried a parameter not every model takes — the one the provider names, else the
    first of them sent."""
    sent = [name for name in OPTIONAL_CAPABILITIES if params.get(name) is not None]
    if not sent or failure.status is None or failure.status >= 500 or failure.status in (408, 429):
        return ""
    return failure.param if failure.param in sent else sent[0]


def dated(memory: memory_pb2.RecalledMemory, now: datetime) -> str:
    """A memory as the prompt shows it: when it was said, relative to now, and the days it is about when
    those differ ("(on 2 May, three weeks ago) Yesterday I went to the dentist [1 May]")."""
    if not memory.HasField("occurred_at"):
        return memory.content
    said = memory.occurred_at.ToDatetime(tzinfo=UTC)
    about = [d for d in memory.event_dates if d != said.date().isoformat()]
    days = f" [{', '.join(_day_label(d) for d in about)}]" if about else ""
    return f"({relative_date_phrase(said, now)}) {memory.content}{days}"


def _day_label(iso_day: str) -> str:
    try:
        day = date.fromisoformat(iso_day)
    except ValueError:
        return iso_day
    return f"{day.day} {day.strftime('%B')} {day.year}"


def _add_usage(total: dict[str, Any], usage: dict[str, Any]) -> None:
    for key, value in usage.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
        elif key not in total:
            total[key] = value


def _vector(state: affinity_pb2.ReadTurnStateResponse | None) -> dict[str, float] | None:
    """The relationship vector as numbers, or None when no state is known this turn."""
    if state is None:
        return None
    v = state.state.vector
    return {
        "warmth": v.warmth,
        "trust": v.trust,
        "intimacy": v.intimacy,
        "intrigue": v.intrigue,
        "patience": v.patience,
        "tension": v.tension,
    }


def _affinity_json(state: affinity_pb2.ReadTurnStateResponse | None) -> dict[str, Any] | None:
    vector = _vector(state)
    if state is None or vector is None:
        return None
    return {
        "vector": {k: round(v, 4) for k, v in vector.items()},
        "bond": round(state.state.bond, 4),
        "chemistry": round(state.state.chemistry, 4),
        "label": state.state.label,
        "mood_lines": list(state.mood_lines),
        "length_guidance": state.length_guidance,
        "scope_axes": list(state.scope_axes),
    }


def _ghost_json(state: affinity_pb2.ReadTurnStateResponse | None) -> dict[str, Any] | None:
    if state is None:
        return None
    ghost = state.ghost
    return {
        "ghost": ghost.ghost,
        "score": round(ghost.score, 4),
        "threshold": ghost.threshold,
        "rule": ghost.rule,
        "reason": ghost.reason,
    }


def _memories_json(recall: memory_pb2.RecallResponse | None) -> list[dict[str, Any]]:
    if recall is None:
        return []
    layers = (("profile", recall.profile), ("relationship", recall.relationship))
    return [
        {"layer": layer, "id": m.id, "category": m.category, "content": m.content, "score": round(m.score, 4)}
        for layer, items in layers
        for m in items
    ]


def _profile_json(profile: insight_pb2.GetProfileResponse | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    return {
        "fields_used": list(profile.fields_used) or sorted(MessageToDict(profile.profile.insights)),
        "training_level": round(profile.profile.training_level, 3),
        "rendering": profile.rendering,
    }
