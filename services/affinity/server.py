"""Affinity gRPC server: validates requests, runs the pure domain on the stored state, maps errors.

Spec: /work/shared/spec/affinity.md. Every write goes through `store.write_locked` (row lock, lazy
decay materialised, one event row, NOTIFY for watchers); reads decay the vector to now. ProjectBranch
replays a branch's events from the session's starting vector (domain.project_branch) and writes the result.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import openai
from google.protobuf import json_format

from rapport.affinity.v1 import affinity_pb2 as pb
from rapport.affinity.v1 import affinity_pb2_grpc as pb_grpc
from services.affinity import store
from services.affinity.domain import (
    AXES,
    AffinityVector,
    GhostPolicy,
    ReplayEvent,
    apply_delta,
    banded_axes,
    bond,
    chemistry,
    combine_deltas,
    decide_ghost,
    feelings_lines,
    judge_ghost_allowed,
    length_guidance,
    project_branch,
    prompt_lines,
    record_ghost,
    relationship_label,
    reset_streak,
    rule_deltas,
)
from services.affinity.evaluator import (
    Evaluation,
    OfflineEvaluator,
    build_evaluation_messages,
    parse_evaluation,
    should_skip,
)
from services.affinity.watch import AffinityChanges, Resync
from services.contracts.scopes import AffinityScopeError, parse_affinity_scope
from services.servicekit.config import Env
from services.servicekit.cpu_work import run_cpu_bound
from services.servicekit.grpc_errors import (
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
    abort_with,
    maps_errors,
    parse_uuid,
)
from services.servicekit.service import ServiceContext, ServiceParts
from services.servicekit.tasks import TaskLlm, llm_for_task

log = logging.getLogger("rapport.affinity")

EMOTIONAL_CONTEXT_EVENTS = 3
MAX_TURN_ID_CHARS = 200
MAX_GIFT_REQUEST_ID_CHARS = 64
MAX_GIFT_LABEL_CHARS = 200
DEFAULT_EVENTS_LIMIT = 50
MAX_EVENTS_LIMIT = 10_000
MAX_BRANCH_EVENTS = 50_000  # references per ProjectBranch list
MAX_GIFTS_LISTED = 500
WATCH_READY_SECONDS = 5.0

EVENT_KINDS: dict[str, pb.EventKind.ValueType] = {
    "message": pb.EVENT_KIND_MESSAGE,
    "ghost": pb.EVENT_KIND_GHOST,
    "gift": pb.EVENT_KIND_GIFT,
    "reply": pb.EVENT_KIND_REPLY,
}


@dataclass(frozen=True)
class AffinitySettings:
    """EMA_INERTIA, DEMO_EMA_INERTIA (each in [0, 1]), GHOST_MAX_STREAK, GHOST_RAISED_WINDOW_HOURS."""

    inertia: float = 0.8
    demo_inertia: float = 0.3
    ghost_max_streak: int = 1
    ghost_raised_window: timedelta = timedelta(hours=24)

    @classmethod
    def from_env(cls, env: Env) -> AffinitySettings:
        """Read and validate; a bad value raises ConfigError naming the variable."""
        return cls(
            inertia=env.float("EMA_INERTIA", 0.8, 0.0, 1.0),
            demo_inertia=env.float("DEMO_EMA_INERTIA", 0.3, 0.0, 1.0),
            ghost_max_streak=env.int("GHOST_MAX_STREAK", 1, 0, 1000),
            ghost_raised_window=timedelta(hours=env.float("GHOST_RAISED_WINDOW_HOURS", 24.0, 0.0, 24.0 * 365)),
        )

    @property
    def gift_inertia(self) -> float:
        """A gift's EMA inertia: always the global one."""
        return self.inertia

    def message_inertia(self, is_demo: bool) -> float:
        """A turn's EMA inertia: the demo one in a demo session."""
        return self.demo_inertia if is_demo else self.inertia

    def ghost_policy(self, enabled: bool) -> GhostPolicy:
        return GhostPolicy(max_streak=self.ghost_max_streak, raised_window=self.ghost_raised_window, enabled=enabled)


class LlmEvaluator:
    """The evaluator of task `affinity_evaluation`: prompt → strict JSON; anything unusable (an
    unparsable answer or a failed call) → zero evaluator deltas with the error recorded."""

    def __init__(self, llm: TaskLlm) -> None:
        self.llm = llm

    async def evaluate(self, persona_name: str, vector: AffinityVector, user_text: str, reply_text: str) -> Evaluation:
        source = f"llm:{self.llm.models[0]}"
        skip = should_skip(user_text, reply_text)
        if skip is not None:
            return Evaluation.zero(source, f"Not evaluated: {skip}.", skip_reason=skip)
        messages = build_evaluation_messages(persona_name, vector, user_text, reply_text)
        try:
            text, _usage, model = await self.llm.complete(messages, json_mode=True)
        except (openai.APIError, TimeoutError) as error:
            log.warning("affinity evaluator call failed: %s", error)
            return Evaluation.zero(
                source, "Evaluator unavailable; no evaluator deltas applied.", error=f"{type(error).__name__}: {error}"
            )
        return parse_evaluation(text, f"llm:{model}")


# --- proto mapping -------------------------------------------------------------------------------


def _vector_message(vector: AffinityVector | Mapping[str, float]) -> pb.AffinityVector:
    values = vector.as_dict() if isinstance(vector, AffinityVector) else vector
    return pb.AffinityVector(**{axis: float(values.get(axis, 0.0)) for axis in AXES})


def state_message(state: store.SessionAffinity) -> pb.AffinityState:
    """The state as of its read time: the decayed vector, composites, label and bookkeeping."""
    vector = state.current()
    message = pb.AffinityState(
        session_id=str(state.session_id),
        vector=_vector_message(vector),
        bond=bond(vector),
        chemistry=chemistry(vector),
        label=relationship_label(vector),
        ghost_streak=state.book.ghost_streak,
        total_ghosts=state.book.total_ghosts,
        is_demo=state.is_demo,
        version=state.version,
    )
    message.updated_at.FromDatetime(state.updated_at)
    if state.book.last_ghost_at is not None:
        message.last_ghost_at.FromDatetime(state.book.last_ghost_at)
    return message


def event_message(row: asyncpg.Record) -> pb.AffinityEvent:
    event = pb.AffinityEvent(
        event_id=str(row["id"]),
        kind=EVENT_KINDS[row["kind"]],
        turn_id=row["turn_id"] or "",
        deltas=row["deltas"],
        effective_deltas=row["effective_deltas"],
        reason=row["reason"],
        before=_vector_message(row["state_before"]),
        after=_vector_message(row["state_after"]),
        skipped=row["skipped"],
        evaluator=row["evaluator"],
        evaluator_error=row["evaluator_error"] or "",
        label=row["label"] or "",
        rule_deltas=row["rule_deltas"],
        evaluator_deltas=row["evaluator_deltas"],
    )
    event.metadata.update(row["metadata"])
    event.created_at.FromDatetime(row["created_at"])
    return event


def gift_message(row: asyncpg.Record) -> pb.GiftEvent:
    gift = pb.GiftEvent(
        event_id=str(row["id"]), label=row["label"] or "", deltas=row["deltas"], applied_deltas=row["effective_deltas"]
    )
    gift.metadata.update(row["metadata"])
    gift.created_at.FromDatetime(row["created_at"])
    return gift


# --- request validation --------------------------------------------------------------------------


def _owner_and_session(request: Any) -> tuple[uuid.UUID, uuid.UUID]:
    return parse_uuid(request.user_id, "user_id"), parse_uuid(request.session_id, "session_id")


def _turn_id(value: str, field: str = "turn_id") -> str:
    turn_id = value.strip()
    if not turn_id or len(turn_id) > MAX_TURN_ID_CHARS:
        raise InvalidArgument(f"{field} is required (1..{MAX_TURN_ID_CHARS} characters)", field=field)
    return turn_id


def _event_refs(refs: Sequence[pb.AffinityEventRef], field: str) -> list[store.EventRef]:
    """Each reference names a turn or one event by id, never both."""
    if len(refs) > MAX_BRANCH_EVENTS:
        raise InvalidArgument(f"{field} may hold at most {MAX_BRANCH_EVENTS} references", field=field)
    parsed = []
    for i, ref in enumerate(refs):
        where = f"{field}[{i}]"
        if bool(ref.turn_id) == bool(ref.event_id):
            raise InvalidArgument(f"{where} must name exactly one of turn_id and event_id", field=where)
        if ref.turn_id:
            parsed.append(store.EventRef(turn_id=_turn_id(ref.turn_id, f"{where}.turn_id")))
        else:
            parsed.append(store.EventRef(event_id=parse_uuid(ref.event_id, f"{where}.event_id")))
    return parsed


def _check_branch_refs(events: list[store.EventRef], excluded: list[str]) -> None:
    """A branch names each of its events once, and excluded turns are not on it (an event both on the branch
    and to erase is erased: the store leaves it out)."""
    if len(excluded) > MAX_BRANCH_EVENTS:
        raise InvalidArgument(f"excluded_turn_ids may hold at most {MAX_BRANCH_EVENTS} ids", field="excluded_turn_ids")
    if len(set(events)) != len(events):
        raise InvalidArgument("events names an event or turn twice", field="events")
    on_branch = {ref.turn_id for ref in events if ref.turn_id is not None}
    if on_branch & set(excluded):
        raise InvalidArgument("a turn in excluded_turn_ids is also in events", field="excluded_turn_ids")


def _scope(values: list[str]) -> frozenset[str]:
    try:
        return parse_affinity_scope(values)
    except AffinityScopeError as error:
        raise InvalidArgument(str(error), field="affinity_scope") from None


def gift_deltas(deltas: Mapping[str, float]) -> dict[str, float]:
    """A gift's deltas: at least one, known axes only, each a number in [−1, 1]."""
    if not deltas:
        raise InvalidArgument("deltas must name at least one axis", field="deltas")
    for axis, value in deltas.items():
        if axis not in AXES:
            raise InvalidArgument(
                f"unknown axis {axis!r} in deltas; allowed: {', '.join(AXES)}", field=f"deltas.{axis}"
            )
        if not (math.isfinite(value) and -1.0 <= value <= 1.0):
            raise InvalidArgument(f"deltas.{axis} must be within [-1, 1], got {value!r}", field=f"deltas.{axis}")
    return dict(deltas)


def _timestamp(request: Any, name: str) -> datetime | None:
    return getattr(request, name).ToDatetime(tzinfo=UTC) if request.HasField(name) else None


# --- the servicer --------------------------------------------------------------------------------


class AffinityServicer(pb_grpc.AffinityServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: AffinitySettings,
        changes: AffinityChanges,
        llm_evaluator: LlmEvaluator | None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.changes = changes
        self.llm_evaluator = llm_evaluator
        self.offline_evaluator = OfflineEvaluator()

    async def _evaluate(self, persona_name: str, vector: AffinityVector, user_text: str, reply_text: str) -> Evaluation:
        if self.llm_evaluator is not None:
            return await self.llm_evaluator.evaluate(persona_name, vector, user_text, reply_text)
        # CPU-bound (VADER and the cue rules, input capped): off the event loop, so other users' reads go on.
        return await run_cpu_bound(self.offline_evaluator.evaluate, persona_name, vector, user_text, reply_text)

    @maps_errors
    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.OpenSessionResponse:
        user_id, session_id = _owner_and_session(request)
        state, continued = await store.open_session(
            self.pool,
            session_id=session_id,
            user_id=user_id,
            instance_id=parse_uuid(request.instance_id, "instance_id"),
            is_demo=request.is_demo,
            reset_affinity=request.reset_affinity,
        )
        return pb.OpenSessionResponse(state=state_message(state), continued=continued)

    @maps_errors
    async def GetState(self, request: pb.GetStateRequest, context: grpc.aio.ServicerContext) -> pb.GetStateResponse:
        user_id, session_id = _owner_and_session(request)
        scope = _scope(list(request.affinity_scope))
        state = await store.read_owned(self.pool, session_id, user_id)
        return pb.GetStateResponse(**await self._prompt_state(state, scope))

    async def _prompt_state(self, state: store.SessionAffinity, scope: frozenset[str]) -> dict[str, Any]:
        """The state with what of it may reach the prompt under `scope` (GetState and ReadTurnState)."""
        vector = state.current()
        return {
            "state": state_message(state),
            "mood_lines": prompt_lines(vector, scope),
            "feelings_lines": feelings_lines(vector, scope),
            "length_guidance": length_guidance(vector, scope),
            "emotional_context": await store.recent_reasons(self.pool, state.session_id, EMOTIONAL_CONTEXT_EVENTS),
            "scope_axes": [axis for axis in AXES if axis in scope],
        }

    def _ghost_decision(
        self, state: store.SessionAffinity, user_message_count: int, ghosting_enabled: bool
    ) -> pb.GhostDecision:
        if user_message_count < 0:
            raise InvalidArgument("user_message_count must be ≥ 0", field="user_message_count")
        policy = self.settings.ghost_policy(ghosting_enabled)
        decision = decide_ghost(state.current(), state.book, user_message_count, state.read_at, policy)
        return pb.GhostDecision(
            ghost=decision.ghost,
            score=decision.score,
            threshold=decision.threshold,
            rule=decision.rule,
            reason=decision.reason,
            judge_ghost_allowed=judge_ghost_allowed(state.book, user_message_count, state.read_at, policy),
        )

    @maps_errors
    async def ReadTurnState(
        self, request: pb.ReadTurnStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReadTurnStateResponse:
        user_id, session_id = _owner_and_session(request)
        scope = _scope(list(request.affinity_scope))
        state = await store.read_owned(self.pool, session_id, user_id)
        ghost = self._ghost_decision(state, request.user_message_count, request.ghosting_enabled)
        return pb.ReadTurnStateResponse(
            **await self._prompt_state(state, scope), banded_axes=banded_axes(state.current().as_dict()), ghost=ghost
        )

    @maps_errors
    async def ApplyTurn(self, request: pb.ApplyTurnRequest, context: grpc.aio.ServicerContext) -> pb.ApplyTurnResponse:
        user_id, session_id = _owner_and_session(request)
        turn_id = _turn_id(request.turn_id)
        state = await store.read_owned(self.pool, session_id, user_id)
        message_at = _timestamp(request, "user_message_at") or state.read_at
        # The persona answered this turn: its ghost streak ends (idempotent; also on a retry of the turn).
        await self._end_ghost_streak(session_id, user_id, answered_message_at=message_at, turn_id=turn_id)
        if await store.has_event(self.pool, session_id, "message", turn_id):  # skip the evaluator on a retry
            return pb.ApplyTurnResponse(state=state_message(state), applied=False, reason="turn already applied")
        rules = rule_deltas(request.user_text, _timestamp(request, "previous_user_message_at"), message_at)
        evaluation = await self._evaluate(
            request.persona_name or "the persona", state.current(), request.user_text, request.reply_text
        )
        deltas = combine_deltas(rules, evaluation.deltas)
        event = store.EventDraft(
            kind="message",
            turn_id=turn_id,
            deltas=deltas,
            reason=evaluation.reason,
            skipped=evaluation.skipped,
            rule_deltas=rules,
            evaluator_deltas=evaluation.deltas,
            evaluator=evaluation.source,
            evaluator_error=evaluation.error,
        )

        def apply_turn(locked: store.SessionAffinity) -> store.Change:
            inertia = self.settings.message_inertia(locked.is_demo)
            return store.Change(apply_delta(locked.current(), deltas, inertia), locked.book, event)

        outcome = await store.write_locked(self.pool, session_id, user_id, apply_turn, idempotency=("message", turn_id))
        if outcome.off_branch and not outcome.applied:
            reason = "turn erased"
        elif outcome.off_branch:
            reason = "recorded off the active branch"
        else:
            reason = evaluation.reason if outcome.applied else "turn already applied"
        return pb.ApplyTurnResponse(
            state=state_message(outcome.state),
            applied=outcome.applied,
            reason=reason,
            event_id=str(outcome.event_id or ""),
        )

    @maps_errors
    async def DecideGhost(
        self, request: pb.DecideGhostRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecideGhostResponse:
        user_id, session_id = _owner_and_session(request)
        if request.user_message_count < 0:
            raise InvalidArgument("user_message_count must be ≥ 0", field="user_message_count")
        state = await store.read_owned(self.pool, session_id, user_id)
        ghost = self._ghost_decision(state, request.user_message_count, request.ghosting_enabled)
        return pb.DecideGhostResponse(
            ghost=ghost.ghost,
            score=ghost.score,
            threshold=ghost.threshold,
            rule=ghost.rule,
            reason=ghost.reason,
            state=state_message(state),
            judge_ghost_allowed=ghost.judge_ghost_allowed,
        )

    @maps_errors
    async def RecordGhost(
        self, request: pb.RecordGhostRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordGhostResponse:
        user_id, session_id = _owner_and_session(request)
        turn_id = _turn_id(request.turn_id)

        def ghost(locked: store.SessionAffinity) -> store.Change:
            event = store.EventDraft(kind="ghost", turn_id=turn_id, reason="You left their message unanswered.")
            return store.Change(locked.current(), record_ghost(locked.book, locked.read_at), event)

        outcome = await store.write_locked(self.pool, session_id, user_id, ghost, idempotency=("ghost", turn_id))
        return pb.RecordGhostResponse(
            state=state_message(outcome.state), applied=outcome.applied, event_id=str(outcome.event_id or "")
        )

    @maps_errors
    async def RecordReply(
        self, request: pb.RecordReplyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordReplyResponse:
        user_id, session_id = _owner_and_session(request)
        outcome = await self._end_ghost_streak(session_id, user_id, answered_message_at=None, turn_id=None)
        return pb.RecordReplyResponse(state=state_message(outcome.state))

    async def _end_ghost_streak(
        self,
        session_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        answered_message_at: datetime | None,
        turn_id: str | None,
    ) -> store.WriteOutcome:
        """A reply was served: the ghost streak ends (a write of kind `reply`) — unless there is none, the
        persona ghosted a message later than the one answered (a late delivery must not end a newer streak), or
        the answered turn is off the active branch."""

        def reply(locked: store.SessionAffinity) -> store.Change | None:
            book = locked.book
            if book.ghost_streak == 0:
                return None  # nothing to reset: no write
            later_ghost = answered_message_at is not None and book.last_ghost_at is not None
            if later_ghost and book.last_ghost_at > answered_message_at:  # type: ignore[operator]
                return None
            return store.Change(locked.current(), reset_streak(book), kind="reply", turn_id=turn_id)

        return await store.write_locked(self.pool, session_id, user_id, reply)

    @maps_errors
    async def ApplyGift(self, request: pb.ApplyGiftRequest, context: grpc.aio.ServicerContext) -> pb.ApplyGiftResponse:
        user_id, session_id = _owner_and_session(request)
        deltas = gift_deltas(request.deltas)
        label = request.label.strip()
        if len(label) > MAX_GIFT_LABEL_CHARS:
            raise InvalidArgument(f"label must be at most {MAX_GIFT_LABEL_CHARS} characters", field="label")
        metadata = json_format.MessageToDict(request.metadata) if request.HasField("metadata") else {}
        reason = f"They gave you a gift: {label}." if label else "They gave you a gift."
        key = request.client_request_id.strip()
        if len(key) > MAX_GIFT_REQUEST_ID_CHARS:
            raise InvalidArgument(
                f"client_request_id must be at most {MAX_GIFT_REQUEST_ID_CHARS} characters", field="client_request_id"
            )
        event = store.EventDraft(
            kind="gift",
            turn_id=f"gift:{key}" if key else None,
            deltas=deltas,
            reason=reason,
            label=label or None,
            metadata=metadata,
        )

        def gift(locked: store.SessionAffinity) -> store.Change:
            return store.Change(apply_delta(locked.current(), deltas, self.settings.gift_inertia), locked.book, event)

        outcome = await store.write_locked(
            self.pool, session_id, user_id, gift, idempotency=("gift", event.turn_id) if event.turn_id else None
        )
        applied = outcome.effective_deltas(deltas)
        if not outcome.applied and outcome.event_id is not None:  # a retry: the first one's answer
            applied = await store.event_effective_deltas(self.pool, outcome.event_id)
        return pb.ApplyGiftResponse(
            applied_deltas=applied,
            state=state_message(outcome.state),
            event_id=str(outcome.event_id),
            applied=outcome.applied,
        )

    @maps_errors
    async def ListGifts(self, request: pb.ListGiftsRequest, context: grpc.aio.ServicerContext) -> pb.ListGiftsResponse:
        user_id, session_id = _owner_and_session(request)
        await store.read_owned(self.pool, session_id, user_id)
        rows = await store.list_events(self.pool, session_id, limit=MAX_GIFTS_LISTED, kind="gift", oldest_first=True)
        return pb.ListGiftsResponse(gifts=[gift_message(row) for row in rows])

    @maps_errors
    async def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEventsResponse:
        user_id, session_id = _owner_and_session(request)
        limit = request.limit or DEFAULT_EVENTS_LIMIT
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            raise InvalidArgument(f"limit must be in 1..{MAX_EVENTS_LIMIT}", field="limit")
        await store.read_owned(self.pool, session_id, user_id)
        rows = await store.list_events(self.pool, session_id, limit=limit)
        return pb.ListEventsResponse(events=[event_message(row) for row in rows])

    async def WatchAffinity(
        self, request: pb.WatchAffinityRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchAffinityResponse]:
        """The current state first, then every committed change of the session (any replica's),
        until the client hangs up or the session is deleted."""
        try:
            user_id, session_id = _owner_and_session(request)
            await store.read_owned(self.pool, session_id, user_id)
        except ServiceError as error:
            await abort_with(context, error)
            return
        with self.changes.subscribe(session_id) as queue:
            if not await self.changes.wait_listening(WATCH_READY_SECONDS):
                await abort_with(context, Unavailable("affinity change feed is not connected yet"))
                return
            current = await store.read_owned(self.pool, session_id, user_id)  # after subscribing: no gap
            seen = current.version
            yield pb.WatchAffinityResponse(state=state_message(current))
            while True:
                item = await queue.get()
                if isinstance(item, Resync):
                    try:
                        current = await store.read_owned(self.pool, session_id, user_id)
                    except NotFound:
                        return
                    if current.version > seen:
                        seen = current.version
                        yield pb.WatchAffinityResponse(state=state_message(current))
                    continue
                if item.state is None:
                    return  # the session's data was deleted
                if item.state.version <= seen:
                    continue  # already reflected in what this subscriber was sent
                seen = item.state.version
                yield pb.WatchAffinityResponse(
                    state=state_message(item.state),
                    kind=EVENT_KINDS.get(item.kind, pb.EVENT_KIND_UNSPECIFIED),
                    event_id=item.event_id,
                )

    @maps_errors
    async def ProjectBranch(
        self, request: pb.ProjectBranchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProjectBranchResponse:
        user_id, session_id = _owner_and_session(request)
        events = _event_refs(request.events, "events")
        erase = _event_refs(request.erase, "erase")
        excluded = [_turn_id(value, f"excluded_turn_ids[{i}]") for i, value in enumerate(request.excluded_turn_ids)]
        _check_branch_refs(events, excluded)

        def replay(
            locked: store.SessionAffinity, start: AffinityVector, started_at: datetime, branch: list[ReplayEvent]
        ) -> store.Change:
            projection = project_branch(
                start,
                started_at,
                branch,
                message_inertia=self.settings.message_inertia(locked.is_demo),
                gift_inertia=self.settings.gift_inertia,
            )
            return store.Change(projection.current(locked.read_at), projection.book, kind="projection")

        outcome = await store.project_branch(
            self.pool,
            session_id,
            user_id,
            replay,
            events=events,
            excluded_turn_ids=excluded,
            erase=erase,
            dry_run=request.dry_run,
        )
        return pb.ProjectBranchResponse(
            before=state_message(outcome.before),
            state=state_message(outcome.state),
            replayed=outcome.replayed,
            erased=outcome.erased,
        )

    @maps_errors
    async def DeleteUserData(
        self, request: pb.DeleteUserDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserDataResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        instance_id = parse_uuid(request.instance_id, "instance_id") if request.instance_id else None
        return pb.DeleteUserDataResponse(deleted=await store.delete_user_data(self.pool, user_id, instance_id))


async def build(ctx: ServiceContext) -> ServiceParts:
    settings = AffinitySettings.from_env(ctx.env)
    llm = llm_for_task(ctx.env, "affinity_evaluation")
    changes = AffinityChanges(ctx.settings.database_url)
    servicer = AffinityServicer(ctx.pool, settings, changes, LlmEvaluator(llm) if llm is not None else None)
    on_stop: list[Callable[[], Awaitable[None]]] = [llm.client.close] if llm is not None else []
    return ServiceParts(
        register=[lambda server: pb_grpc.add_AffinityServiceServicer_to_server(servicer, server)],
        service_names=[pb.DESCRIPTOR.services_by_name["AffinityService"].full_name],
        background=[changes.listen],
        on_stop=on_stop,
    )
