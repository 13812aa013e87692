"""One turn: read state in parallel → PDE → ghost or reply (prompt within budget, model chain,
streamed) → persist reply + post-process jobs in one transaction.

Runs detached from the caller (see live_turns). Frames go to the turn's FrameLog as they happen and,
with the assistant message and the outbox jobs, into the database in one transaction. Everything
that shaped the reply is kept in `chat.turns.explain` ("why did it say that?").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import openai
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace

from rapport.affinity.v1 import affinity_pb2
from rapport.insight.v1 import insight_pb2
from rapport.memory.v1 import memory_pb2
from services.servicekit.grpc_runtime import call_timeout
from services.servicekit.llm import LlmClient, is_retryable_status
from services.servicekit.model_config import ModelConfig, ResolvedTask
from services.servicekit.tasks import TaskLlm
from services.servicekit.telemetry import current_trace_id, meter

from . import frames, store
from .domain import pde
from .domain.prompt import AssembledPrompt, PromptInputs, assemble_prompt
from .domain.turn_request import MEMORY_GATES, TurnRequest, kept_traits
from .live_turns import FrameLog
from .outbox import OutboxWorker, current_trace_context
from .peers import Peers, request_to_payload
from .persona_catalog import persona_spec

log = logging.getLogger("rapport.turn")
tracer = trace.get_tracer("rapport.orchestrator.turn")


class TurnMetrics:
    """Turn latency, time to first token, tokens and cost, and the latency of each parallel read."""

    def __init__(self) -> None:
        m = meter("rapport.orchestrator")
        self.turn_seconds = m.create_histogram("rapport.turn.duration", unit="s", description="whole turn")
        self.ttft_seconds = m.create_histogram("rapport.turn.time_to_first_token", unit="s")
        self.read_seconds = m.create_histogram(
            "rapport.turn.read.duration", unit="s", description="affinity / memory recall / insight reads"
        )
        self.tokens = m.create_counter("rapport.llm.tokens", unit="{token}")
        self.cost = m.create_counter("rapport.llm.cost", unit="USD")
        self.outcomes = m.create_counter("rapport.turn.outcomes", description="reply, ghost, error")


METRICS = TurnMetrics()

READ_TIMEOUT = 2.0  # a slow memory/insight must not hold the reply hostage: degrade instead
HISTORY_MESSAGES = 20  # keep equal to the memory service's MEMORY_HISTORY_WINDOW (recent moments are not recalled)
CHAT_TASK = "chat_companion"


@dataclass
class TurnInput:
    turn_id: str
    user_message_id: str
    session: store.SessionRow
    request: TurnRequest
    sampling: dict[str, Any]  # per-request overrides (OpenAI-compatible clients)
    system_prompt: str | None = None  # the client's system messages (OpenAI-compatible API) replace the persona's
    post_process: bool = True  # False when a reply to this user message was already post-processed (a regenerate)
    received_at: float = field(default_factory=time.monotonic)  # for time-to-first-token
    prefetched: asyncio.Task[TurnContext] | None = None  # reads started while the turn was being persisted


@dataclass
class TurnContext:
    """What the parallel reads brought back; absent parts are listed in `degraded`."""

    affinity: affinity_pb2.GetStateResponse | None = None
    ghost: affinity_pb2.DecideGhostResponse | None = None
    recall: memory_pb2.RecallResponse | None = None
    profile: insight_pb2.GetProfileResponse | None = None
    persona_row: Any = None
    history_rows: list[Any] = field(default_factory=list)  # may include the current message: filtered by id
    degraded: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


class GenerationFailed(Exception):
    def __init__(self, code: str, message: str, retryable: bool, retries: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.retries = retries


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

    # -- configuration -----------------------------------------------------------------------

    def chat_task(self, tier: str | None) -> ResolvedTask:
        return self.model_config.resolve(CHAT_TASK, tier)

    def model_chain(self, resolved: ResolvedTask) -> tuple[str, ...]:
        if self.offline_model:
            return (self.offline_model,)
        return resolved.models or (self.default_model,)

    @property
    def ghosting_enabled(self) -> bool:
        return bool(self.model_config.resolve("pde_decision").extra.get("ghosting", True))

    # -- the turn ----------------------------------------------------------------------------

    async def run(self, log_: FrameLog, turn: TurnInput) -> None:
        emitted: list[dict[str, Any]] = []

        async def emit(frame: dict[str, Any]) -> None:
            emitted.append(frame)
            await log_.publish(frame)

        started = time.monotonic()
        with tracer.start_as_current_span(
            "turn", attributes={"rapport.turn_id": turn.turn_id, "rapport.session_id": str(turn.session.id)}
        ):
            try:
                await asyncio.wait_for(self._run(turn, emit, emitted), timeout=self.generation_timeout)
                outcome = next((f.get("action_type") for f in emitted if f["type"] == "meta"), "reply")
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
                await emit(
                    frames.error(
                        failure.code, str(failure), "I couldn't reply just now. Please try again.", failure.retryable
                    )
                )
                await self._record_failure(turn, emitted, str(failure))
            except Exception as error:
                log.exception("turn %s failed", turn.turn_id)
                await emit(frames.error("internal", "internal error", "Something went wrong. Please try again.", True))
                await self._record_failure(turn, emitted, f"{type(error).__name__}: {error}")

    async def _record_failure(self, turn: TurnInput, emitted: list[dict[str, Any]], reason: str) -> None:
        try:
            await store.finish_turn(
                self.pool,
                turn_id=turn.turn_id,
                session_id=turn.session.id,
                user_id=turn.session.user_id,
                assistant=None,
                jobs=[],
                trace_context={},
                frames=emitted,
                explain={"error": reason},
                usage={},
                cost=0.0,
                status="failed",
                error=reason,
            )
        except Exception:
            log.exception("could not record failure of turn %s", turn.turn_id)

    async def _run(self, turn: TurnInput, emit: Any, emitted: list[dict[str, Any]]) -> None:
        started = time.monotonic()
        ctx = await turn.prefetched if turn.prefetched is not None else await self.read_context(turn)
        decision, judge_audit = await self._decide(turn, ctx)
        explain: dict[str, Any] = {
            "decision": {
                "action": decision.action,
                "style": decision.style,
                "reason": decision.reason,
                "ghost": _ghost_json(ctx.ghost),
                "judge": judge_audit,
            },
            "affinity": _affinity_json(ctx.affinity),
            "memories": _memories_json(ctx.recall),
            "profile": _profile_json(ctx.profile),
            "degraded": ctx.degraded,
            "timings_ms": ctx.timings_ms,
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
        }
        explain["timings_ms"]["before_llm"] = round((time.monotonic() - started) * 1000, 2)
        reply = await self._generate(turn, prompt, resolved, emit)
        await self._persist_reply(turn, ctx, prompt, reply, explain, emit, emitted)

    # -- reads ------------------------------------------------------------------------------

    async def _read(self, name: str, label: str, call: Any, ctx: TurnContext) -> Any:
        started = time.monotonic()
        try:
            return await call(timeout=call_timeout(READ_TIMEOUT))
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise
            log.warning("%s unavailable for this turn: %s", name, error)
            if name not in ctx.degraded:
                ctx.degraded.append(name)
            return None
        finally:
            ctx.timings_ms[label] = round((time.monotonic() - started) * 1000, 2)
            METRICS.read_seconds.record(time.monotonic() - started, {"read": label})

    async def read_context(self, turn: TurnInput) -> TurnContext:
        """Affinity, the ghost decision, memory recall and the insight profile — all in parallel."""
        s, req = turn.session, turn.request
        gates = MEMORY_GATES[req.memory_scope]
        ctx = TurnContext()
        user_id, session_id = str(s.user_id), str(s.id)
        scope = [req.affinity_scope] if isinstance(req.affinity_scope, str) else list(req.affinity_scope)
        reads = [
            self._read(
                "affinity",
                "affinity_state",
                lambda timeout: self.peers.affinity.GetState(
                    affinity_pb2.GetStateRequest(user_id=user_id, session_id=session_id, affinity_scope=scope),
                    timeout=timeout,
                ),
                ctx,
            ),
            self._read(
                "affinity",
                "ghost_decision",
                lambda timeout: self.peers.affinity.DecideGhost(
                    affinity_pb2.DecideGhostRequest(
                        user_id=user_id,
                        session_id=session_id,
                        user_message_count=s.user_message_count,
                        ghosting_enabled=self.ghosting_enabled,
                    ),
                    timeout=timeout,
                ),
                ctx,
            ),
        ]
        if gates.profile_memories or gates.relationship_memories:
            reads.append(
                self._read(
                    "memory",
                    "memory_recall",
                    lambda timeout: self.peers.memory.Recall(
                        memory_pb2.RecallRequest(
                            user_id=user_id,
                            instance_id=str(s.instance_id),
                            session_id=session_id,
                            query=req.content,
                            memory_scope=req.memory_scope,
                        ),
                        timeout=timeout,
                    ),
                    ctx,
                )
            )
        else:
            reads.append(_nothing())
        if gates.insights != "off":
            mode = insight_pb2.RENDER_MODE_FULL if gates.insights == "full" else insight_pb2.RENDER_MODE_NEUTRAL
            reads.append(
                self._read(
                    "insight",
                    "insight_profile",
                    lambda timeout: self.peers.insight.GetProfile(
                        insight_pb2.GetProfileRequest(user_id=user_id, mode=mode), timeout=timeout
                    ),
                    ctx,
                )
            )
        else:
            reads.append(_nothing())
        reads.append(store.get_persona(self.pool, s.persona_id))
        reads.append(store.recent_messages(self.pool, s.id, HISTORY_MESSAGES + 1))
        (ctx.affinity, ctx.ghost, ctx.recall, ctx.profile, ctx.persona_row, ctx.history_rows) = await asyncio.gather(
            *reads
        )
        return ctx

    # -- the Persona Decision Engine ------------------------------------------------------------

    async def _decide(self, turn: TurnInput, ctx: TurnContext) -> tuple[pde.Decision, dict[str, Any] | None]:
        vector = _vector(ctx.affinity)
        rules = pde.decide_by_rules(bool(ctx.ghost and ctx.ghost.ghost and self.ghosting_enabled), vector)
        filter_prompt = str(self.model_config.resolve("pde_decision").extra.get("filter_prompt") or "")
        if self.judge is None or not filter_prompt or ctx.affinity is None:
            return rules, None
        return await self._judge(turn, ctx, rules, vector, filter_prompt)

    async def _judge(
        self, turn: TurnInput, ctx: TurnContext, rules: pde.Decision, vector: dict[str, float], filter_prompt: str
    ) -> tuple[pde.Decision, dict[str, Any]]:
        """The opt-in LLM judge: banded inputs, strict JSON, rules veto, any failure → the rules."""
        assert self.judge is not None
        s = turn.session
        persona = await store.get_persona(self.pool, s.persona_id)
        recent = await store.recent_messages(self.pool, s.id, 8, exclude_id=turn.user_message_id)
        signals = {
            "user_messages_in_session": s.user_message_count,
            "ghost_streak": ctx.affinity.state.ghost_streak if ctx.affinity else 0,
            "relationship": ctx.affinity.state.label if ctx.affinity else "",
        }
        banded = pde.banded_state(vector)
        brief = f"{persona['name']}: {persona['tip_personality'] or ''}".strip() if persona else s.persona_name
        messages = pde.build_judge_messages(
            filter_prompt, brief, [(r["role"], r["content"]) for r in recent], banded, signals, turn.request.content
        )
        run_id = store.new_message_id()
        text, usage, model, status = "", {}, "", "ok"
        try:
            text, usage, model = await self.judge.complete(messages, json_mode=True)
            verdict, status = pde.parse_judge_output(text)
        except (TimeoutError, openai.APIError) as error:
            verdict, status = None, "upstream_error"
            text = f"{type(error).__name__}: {error}"
        allow_ghost = bool(ctx.ghost and ctx.ghost.judge_ghost_allowed)
        decision = (
            pde.apply_veto(verdict, allow_ghost, self.ghosting_enabled, rules.style)
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
        await self.pool.execute(
            """INSERT INTO chat.decision_events (run_id, turn_id, session_id, status, proposed_action, final_action,
                   inputs, output, model, usage) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            run_id,
            turn.turn_id,
            s.id,
            status,
            audit["proposed_action"],
            decision.action,
            {"banded": banded, "signals": signals, "new_message": turn.request.content, "recent": len(recent)},
            {"text": text[:4000]},
            model,
            usage,
        )
        return decision, audit

    # -- ghost -------------------------------------------------------------------------------

    async def _ghost(
        self, turn: TurnInput, ctx: TurnContext, explain: dict[str, Any], emit: Any, emitted: list[dict[str, Any]]
    ) -> None:
        s = turn.session
        message_id = store.new_message_id()
        await self.peers.affinity.RecordGhost(
            affinity_pb2.RecordGhostRequest(user_id=str(s.user_id), session_id=str(s.id), turn_id=turn.turn_id),
            timeout=call_timeout(5.0),
        )
        await emit(frames.meta(message_id, "ghost"))
        done = frames.done(message_id)
        final = frames.final(
            prompt_injected=[],
            tier=turn.request.tier or "",
            retries=0,
            degraded=ctx.degraded,
            trace_id=current_trace_id(),
        )
        explain["trace_id"] = current_trace_id()
        await store.finish_turn(
            self.pool,
            turn_id=turn.turn_id,
            session_id=s.id,
            user_id=s.user_id,
            assistant={"id": message_id, "content": "", "kind": "ghost"},
            jobs=[],
            trace_context={},
            frames=[*emitted, done, final],
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
        gates = MEMORY_GATES[req.memory_scope]
        persona_row = ctx.persona_row
        history = [row for row in ctx.history_rows if row["id"] != turn.user_message_id][-HISTORY_MESSAGES:]
        recall, affinity = ctx.recall, ctx.affinity
        profile_memories = [(m.content, m.score) for m in recall.profile] if recall and gates.profile_memories else []
        relationship = (
            [(m.content, m.score) for m in recall.relationship] if recall and gates.relationship_memories else []
        )
        summary = recall.summary.content if recall is not None and recall.HasField("summary") else None
        persona = persona_spec(persona_row)
        if turn.system_prompt:
            persona = dataclasses.replace(persona, system_prompt=turn.system_prompt)
        inputs = PromptInputs(
            persona=persona,
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
            history=[(row["role"], row["content"]) for row in history],
            user_message=req.content,
            now=datetime.now(UTC),
            earlier_history_omitted=s.message_count - 1 > len(history),
        )
        return await asyncio.to_thread(assemble_prompt, inputs, resolved)

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
        self, turn: TurnInput, prompt: AssembledPrompt, resolved: ResolvedTask, emit: Any
    ) -> dict[str, Any]:
        """Each failed or cut attempt ends `done{truncated}`; the next model continues from the text so far."""
        chain = self.model_chain(resolved)
        params = self._params(turn, prompt, resolved)
        text, previous_id, retries = "", "", 0
        total_usage: dict[str, Any] = {}
        last_error: GenerationFailed | None = None
        for attempt, model in enumerate(chain):
            is_last = attempt == len(chain) - 1
            message_id = store.new_message_id()
            await emit(frames.meta(message_id, "reply", model, previous_id))
            messages = list(prompt.messages)
            if text:
                messages.append({"role": "assistant", "content": text})
            usage: dict[str, Any] = {}
            generation_id, finished, attempt_text = "", False, ""
            try:
                async for chunk in self.llm.stream_chat(model, messages, params=params):
                    generation_id = chunk.generation_id or generation_id
                    if chunk.content:
                        if not text and not attempt_text:
                            METRICS.ttft_seconds.record(time.monotonic() - turn.received_at, {"model": model})
                        attempt_text += chunk.content
                        await emit(frames.delta(message_id, chunk.content))
                    if chunk.usage:
                        usage = chunk.usage
                    if chunk.finish_reason:
                        finished = True
            except openai.APIStatusError as error:
                code = "rate_limited" if error.status_code == 429 else "upstream_unavailable"
                last_error = GenerationFailed(
                    code, f"{model}: HTTP {error.status_code}", is_retryable_status(error.status_code)
                )
            except (TimeoutError, openai.APITimeoutError):
                last_error = GenerationFailed("timeout", f"{model}: timed out", True)
            except openai.APIError as error:
                last_error = GenerationFailed("upstream_unavailable", f"{model}: {type(error).__name__}", True)
            text += attempt_text
            _add_usage(total_usage, usage)
            if last_error is None and finished:
                if text.strip() or is_last:
                    return {
                        "id": message_id,
                        "content": text,
                        "model": model,
                        "usage": total_usage,
                        "generation_id": generation_id,
                        "retries": retries,
                        "ghost_fallback": not text.strip(),
                    }
                last_error = GenerationFailed("upstream_unavailable", f"{model}: empty completion", True)
            elif last_error is None:
                last_error = GenerationFailed("upstream_unavailable", f"{model}: stream cut", True)
            if is_last:
                break
            retries += 1
            await emit(frames.done(message_id, truncated=True, usage=self._visible(usage), generation_id=generation_id))
            previous_id = message_id
            last_error = None
        assert last_error is not None
        last_error.retries = retries
        raise last_error

    def _visible(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in usage.items() if k not in self.hidden_usage_keys}

    # -- persist -----------------------------------------------------------------------------

    async def _persist_reply(
        self,
        turn: TurnInput,
        ctx: TurnContext,
        prompt: AssembledPrompt,
        reply: dict[str, Any],
        explain: dict[str, Any],
        emit: Any,
        emitted: list[dict[str, Any]],
    ) -> None:
        s = turn.session
        now = datetime.now(UTC)
        processed = turn.post_process and not reply["ghost_fallback"]
        jobs = await self._post_process_jobs(turn, reply, now) if processed else []
        trace_id = current_trace_id()
        done = frames.done(
            reply["id"],
            usage=self._visible(reply["usage"]),
            generation_id=reply["generation_id"],
            ghost_fallback=reply["ghost_fallback"],
        )
        final = frames.final(
            prompt_injected=list(prompt.injected_traits),
            tier=turn.request.tier or "",
            retries=reply["retries"],
            degraded=ctx.degraded,
            trace_id=trace_id,
        )
        explain.update(
            {
                "model": reply["model"],
                "usage": reply["usage"],
                "trace_id": trace_id,
                "retries": reply["retries"],
                "message_id": reply["id"],
                "post_process": bool(jobs),
            }
        )
        await store.finish_turn(
            self.pool,
            turn_id=turn.turn_id,
            session_id=s.id,
            user_id=s.user_id,
            assistant={
                "id": reply["id"],
                "content": reply["content"],
                "model": reply["model"],
                "usage": reply["usage"],
                "kind": "ghost" if reply["ghost_fallback"] else "chat",
            },
            jobs=jobs,
            trace_context=current_trace_context(),
            frames=[*emitted, done, final],
            explain=explain,
            usage=reply["usage"],
            cost=float(reply["usage"].get("cost", 0.0) or 0.0),
        )
        self.outbox.notify()
        usage = reply["usage"]
        for kind in ("prompt_tokens", "completion_tokens"):
            if isinstance(usage.get(kind), int):
                METRICS.tokens.add(usage[kind], {"kind": kind, "model": reply["model"]})
        if usage.get("cost"):
            METRICS.cost.add(float(usage["cost"]), {"model": reply["model"]})
        await emit(done)
        if not reply["ghost_fallback"]:
            try:
                await self.peers.affinity.RecordReply(
                    affinity_pb2.RecordReplyRequest(user_id=str(s.user_id), session_id=str(s.id)),
                    timeout=call_timeout(2.0),
                )
            except grpc.aio.AioRpcError as error:
                log.warning("could not reset the ghost streak: %s", error)
        await emit(final)

    async def _post_process_jobs(self, turn: TurnInput, reply: dict[str, Any], now: datetime) -> list[store.OutboxJob]:
        s = turn.session
        content = turn.request.content
        common = {"turn_id": turn.turn_id, "user_id": str(s.user_id), "session_id": str(s.id)}
        affinity = affinity_pb2.ApplyTurnRequest(
            **common, persona_name=s.persona_name, user_text=content, reply_text=reply["content"]
        )
        sent_at = await self.pool.fetchval("SELECT sent_at FROM chat.messages WHERE id = $1", turn.user_message_id)
        affinity.user_message_at.FromDatetime(sent_at or now)
        previous = await store.previous_user_message_at(self.pool, s.id, turn.user_message_id)
        if previous is not None:
            affinity.previous_user_message_at.FromDatetime(previous)
        memory = memory_pb2.IngestTurnRequest(
            **common,
            instance_id=str(s.instance_id),
            user_message_id=turn.user_message_id,
            reply_message_id=reply["id"],
            user_text=content,
            reply_text=reply["content"],
            persona_name=s.persona_name,
        )
        memory.occurred_at.FromDatetime(now)
        insight = insight_pb2.ExtractTurnRequest(
            **common,
            user_message_id=turn.user_message_id,
            user_text=content,
            reply_text=reply["content"],
            persona_name=s.persona_name,
        )
        insight.occurred_at.FromDatetime(now)
        return [
            store.OutboxJob("affinity", request_to_payload(affinity)),
            store.OutboxJob("memory", request_to_payload(memory)),
            store.OutboxJob("insight", request_to_payload(insight)),
        ]


async def _nothing() -> None:
    return None


def _add_usage(total: dict[str, Any], usage: dict[str, Any]) -> None:
    for key, value in usage.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
        elif key not in total:
            total[key] = value


def _vector(state: affinity_pb2.GetStateResponse | None) -> dict[str, float]:
    if state is None:
        return {"warmth": 0.3, "trust": 0.2, "intimacy": 0.0, "intrigue": 0.5, "patience": 0.5, "tension": 0.1}
    v = state.state.vector
    return {
        "warmth": v.warmth,
        "trust": v.trust,
        "intimacy": v.intimacy,
        "intrigue": v.intrigue,
        "patience": v.patience,
        "tension": v.tension,
    }


def _affinity_json(state: affinity_pb2.GetStateResponse | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        "vector": {k: round(v, 4) for k, v in _vector(state).items()},
        "bond": round(state.state.bond, 4),
        "chemistry": round(state.state.chemistry, 4),
        "label": state.state.label,
        "mood_lines": list(state.mood_lines),
        "length_guidance": state.length_guidance,
        "scope_axes": list(state.scope_axes),
    }


def _ghost_json(ghost: affinity_pb2.DecideGhostResponse | None) -> dict[str, Any] | None:
    if ghost is None:
        return None
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
