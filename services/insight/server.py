"""Insight gRPC server: the structured user profile, its extraction from turns, queries and snapshots
(spec: insight.md).

ExtractTurn runs the two-stage LLM task `insight_extraction` when a model is configured (stage 1:
facts about the user; stage 2: fields as strict JSON, validated before anything is merged), else the
rule-based extractor. The store claims the turn, records the run and merges under a row lock in one
transaction, so redeliveries and concurrent turns of one user are safe.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import openai
from google.protobuf.struct_pb2 import Struct

from rapport.insight.v1 import insight_pb2 as pb
from rapport.insight.v1 import insight_pb2_grpc as pb_grpc
from services.insight import store
from services.insight.domain import (
    NEUTRAL_OMITTED,
    FieldUpdate,
    InvalidQuery,
    Profile,
    ProfileQuery,
    RenderMode,
    build_fact_messages,
    build_field_messages,
    parse_facts,
    parse_fields,
    profile_values,
    render_profile,
)
from services.insight.extraction import extract_profile_updates
from services.insight.snapshots import SnapshotSweeper, schedule_from_env
from services.servicekit.cpu_work import run_cpu_bound
from services.servicekit.grpc_errors import InvalidArgument, Unavailable, maps_errors, parse_uuid
from services.servicekit.grpc_runtime import call_timeout
from services.servicekit.service import ServiceContext, ServiceParts
from services.servicekit.tasks import TaskLlm, llm_for_task

log = logging.getLogger("rapport.insight")

EXTRACTION_TASK = "insight_extraction"
LLM_STAGE_TIMEOUT = 20.0  # per stage, further bounded by the caller's deadline
RULES_MODEL = "rules"
MAX_ID_CHARS = 128
MAX_USER_TEXT_CHARS = 16_000
MAX_RAW_CHARS = 2_000  # of an unparseable model answer, kept in the event for debugging
DEFAULT_SNAPSHOT_LIMIT, MAX_SNAPSHOT_LIMIT = 30, 366
MAX_HIDDEN_MESSAGES = 100_000  # one session's messages off its active branch
MAX_ERASED_MESSAGES = 10_000
RENDER_MODES: Mapping[int, RenderMode] = {
    pb.RENDER_MODE_UNSPECIFIED: "neutral",  # the prompt default: neutral is the safe rendering
    pb.RENDER_MODE_FULL: "full",
    pb.RENDER_MODE_NEUTRAL: "neutral",
}


# ---------------------------------------------------------------------------
# extraction runs


@dataclass(frozen=True)
class ExtractionRun:
    """The updates one turn proposes and the events that record how they were obtained."""

    updates: list[FieldUpdate]
    events: list[store.ExtractionEvent]


class UpstreamFailed(Exception):
    """The model could not be reached; `events` record the stages run so far, the last one failed."""

    def __init__(self, events: Sequence[store.ExtractionEvent]) -> None:
        super().__init__(events[-1].payload.get("error", "upstream error"))
        self.events = list(events)


def updates_payload(updates: Sequence[FieldUpdate]) -> dict[str, Any]:
    """The recorded form of proposed updates: `{"fields": {field: {value, confidence, correction[, evidence]}}}`."""
    return {
        "fields": {
            u.field: {
                "value": u.value,
                "confidence": u.confidence,
                "correction": u.correction,
                **({"evidence": u.evidence} if u.evidence else {}),
            }
            for u in updates
        }
    }


def extract_with_rules(user_text: str, message_id: str) -> ExtractionRun:
    updates = extract_profile_updates(user_text, message_id)
    event = store.ExtractionEvent("rules", "ok" if updates else "empty", updates_payload(updates), RULES_MODEL)
    return ExtractionRun(updates, [event])


@dataclass(frozen=True)
class LlmExtractor:
    """The two-stage task: exchange → facts about the user → validated profile fields."""

    llm: TaskLlm

    async def _complete(self, stage: store.Stage, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any], str]:
        try:
            async with asyncio.timeout(call_timeout(LLM_STAGE_TIMEOUT)):
                return await self.llm.complete(messages, json_mode=True)
        except (openai.APIError, TimeoutError) as error:
            detail = f"{type(error).__name__}: {error}"
            raise UpstreamFailed(
                [store.ExtractionEvent(stage, "upstream_error", {"error": detail}, ",".join(self.llm.models))]
            ) from error

    async def extract(self, request: pb.ExtractTurnRequest, message_id: str, profile: Profile) -> ExtractionRun:
        text, usage, model = await self._complete(
            "facts", build_fact_messages(request.user_text, request.reply_text, request.persona_name or "the companion")
        )
        facts, error = parse_facts(text)
        if error:
            return ExtractionRun(
                [],
                [
                    store.ExtractionEvent(
                        "facts", "parse_error", {"error": error, "raw": text[:MAX_RAW_CHARS]}, model, usage
                    )
                ],
            )
        facts_event = store.ExtractionEvent("facts", "ok" if facts else "empty", {"facts": facts}, model, usage)
        if not facts:
            return ExtractionRun([], [facts_event])
        try:
            text, usage, model = await self._complete("fields", build_field_messages(facts, profile))
        except UpstreamFailed as failure:
            raise UpstreamFailed([facts_event, *failure.events]) from failure
        updates, error = parse_fields(text, [message_id])
        if error:
            fields_event = store.ExtractionEvent(
                "fields", "parse_error", {"error": error, "raw": text[:MAX_RAW_CHARS]}, model, usage
            )
        else:
            fields_event = store.ExtractionEvent(
                "fields", "ok" if updates else "empty", updates_payload(updates), model, usage
            )
        return ExtractionRun(updates, [facts_event, fields_event])


# ---------------------------------------------------------------------------
# messages


def _provenance(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key != "value"}


def _fill_profile_fields(insights: Struct, provenance: Struct, profile: Profile) -> None:
    values = profile_values(profile)
    insights.update(values)
    provenance.update({field: _provenance(profile[field]) for field in values})


def profile_message(user_id: uuid.UUID, row: store.ProfileRow | None) -> pb.Profile:
    message = pb.Profile(user_id=str(user_id))
    if row is not None:
        _fill_profile_fields(message.insights, message.provenance, row.insights)
        message.training_level = row.training_level
        if row.updated_at is not None:
            message.updated_at.FromDatetime(row.updated_at)
    return message


def snapshot_message(row: store.SnapshotRow) -> pb.Snapshot:
    message = pb.Snapshot(user_id=str(row.user_id), training_level=row.training_level)
    _fill_profile_fields(message.insights, message.provenance, row.insights)
    message.captured_at.FromDatetime(row.captured_at)
    return message


def _required_text(value: str, field: str, limit: int) -> str:
    text = value.strip()
    if not text or len(text) > limit:
        raise InvalidArgument(f"{field} must be 1-{limit} characters", field=field)
    return text


def _message_ids(values: Sequence[str], field: str, limit: int) -> list[str]:
    """Message ids as the orchestrator sends them: 1..MAX_ID_CHARS characters each, at most `limit`."""
    if len(values) > limit:
        raise InvalidArgument(f"{field} may hold at most {limit} ids", field=field)
    for i, value in enumerate(values):
        if not value.strip() or len(value) > MAX_ID_CHARS:
            raise InvalidArgument(f"{field}[{i}] must be 1-{MAX_ID_CHARS} characters", field=f"{field}[{i}]")
    return list(values)


def _limit(value: int, field: str, default: int, maximum: int) -> int:
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise InvalidArgument(f"{field} must be in 1..{maximum} (0 = {default})", field=field)
    return value


# ---------------------------------------------------------------------------
# the servicer


class InsightServicer(pb_grpc.InsightServiceServicer):
    def __init__(self, pool: asyncpg.Pool, extractor: LlmExtractor | None) -> None:
        self.pool = pool
        self.extractor = extractor

    @maps_errors
    async def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProfileResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        mode = RENDER_MODES.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode must be RENDER_MODE_FULL or RENDER_MODE_NEUTRAL", field="mode")
        row = await store.get_profile(self.pool, user_id)
        insights = row.insights if row else {}
        used = [f for f in profile_values(insights) if not (mode == "neutral" and f in NEUTRAL_OMITTED)]
        return pb.GetProfileResponse(
            profile=profile_message(user_id, row), rendering=render_profile(insights, mode), fields_used=used
        )

    @maps_errors
    async def ExtractTurn(
        self, request: pb.ExtractTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtractTurnResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        turn_id = _required_text(request.turn_id, "turn_id", MAX_ID_CHARS)
        message_id = _required_text(request.user_message_id, "user_message_id", MAX_ID_CHARS)
        if len(request.user_text) > MAX_USER_TEXT_CHARS:
            raise InvalidArgument(f"user_text must be at most {MAX_USER_TEXT_CHARS} characters", field="user_text")
        now = request.occurred_at.ToDatetime(tzinfo=UTC) if request.HasField("occurred_at") else datetime.now(UTC)

        if not await store.turn_extracted(self.pool, turn_id):
            run = await self._extract(request, user_id, turn_id, message_id)
            outcome = await store.apply_extraction(
                self.pool, user_id=user_id, turn_id=turn_id, updates=run.updates, events=run.events, now=now
            )
            if outcome is not None:
                return pb.ExtractTurnResponse(
                    applied=True, updated_fields=outcome.updated_fields, training_level=outcome.training_level
                )
        row = await store.get_profile(self.pool, user_id)  # a redelivery: already applied
        return pb.ExtractTurnResponse(applied=False, training_level=row.training_level if row else 0.0)

    async def _extract(
        self, request: pb.ExtractTurnRequest, user_id: uuid.UUID, turn_id: str, message_id: str
    ) -> ExtractionRun:
        if self.extractor is None or not request.user_text.strip():
            # CPU-bound (regex rules over up to MAX_USER_TEXT_CHARS): off the event loop, so other reads go on.
            return await run_cpu_bound(extract_with_rules, request.user_text, message_id)
        current = await store.get_profile(self.pool, user_id)
        try:
            return await self.extractor.extract(request, message_id, current.insights if current else {})
        except UpstreamFailed as failure:
            await store.record_events(self.pool, user_id, turn_id, failure.events)
            raise Unavailable(
                f"{EXTRACTION_TASK} model unavailable, retry later: {failure}", reason="upstream_error"
            ) from failure

    @maps_errors
    async def QueryProfiles(
        self, request: pb.QueryProfilesRequest, context: grpc.aio.ServicerContext
    ) -> pb.QueryProfilesResponse:
        query = ProfileQuery(
            city=request.city or None,
            occupation=request.occupation or None,
            interests_all=tuple(request.interests_all),
            mbti=request.mbti or None,
            min_training_level=request.min_training_level or None,
            limit=request.limit or ProfileQuery.limit,
        )
        try:
            query = query.validate()
        except InvalidQuery as error:
            raise InvalidArgument(str(error), field=error.field) from None
        rows = await store.query_profiles(self.pool, query)
        return pb.QueryProfilesResponse(profiles=[profile_message(row.user_id, row) for row in rows])

    @maps_errors
    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSnapshotsResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        limit = _limit(request.limit, "limit", DEFAULT_SNAPSHOT_LIMIT, MAX_SNAPSHOT_LIMIT)
        rows = await store.list_snapshots(self.pool, user_id, limit)
        return pb.ListSnapshotsResponse(snapshots=[snapshot_message(row) for row in rows])

    # -- the active branch (issue 10) ---------------------------------------------------------------

    @maps_errors
    async def SetHiddenMessages(
        self, request: pb.SetHiddenMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetHiddenMessagesResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        session_id = parse_uuid(request.session_id, "session_id")
        message_ids = _message_ids(request.hidden_message_ids, "hidden_message_ids", MAX_HIDDEN_MESSAGES)
        hidden = await store.set_hidden_messages(self.pool, user_id, session_id, message_ids)
        return pb.SetHiddenMessagesResponse(hidden_fields=hidden)

    @maps_errors
    async def EraseMessages(
        self, request: pb.EraseMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.EraseMessagesResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        message_ids = _message_ids(request.message_ids, "message_ids", MAX_ERASED_MESSAGES)
        if not message_ids:
            raise InvalidArgument("message_ids must name at least one message", field="message_ids")
        outcome = await store.erase_messages(self.pool, user_id, message_ids, dry_run=request.dry_run)
        return pb.EraseMessagesResponse(removed_fields=outcome.removed_fields, updated_fields=outcome.updated_fields)

    @maps_errors
    async def DeleteUserData(
        self, request: pb.DeleteUserDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserDataResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        return pb.DeleteUserDataResponse(deleted=await store.delete_user_data(self.pool, user_id))


async def build(ctx: ServiceContext) -> ServiceParts:
    schedule = schedule_from_env(ctx.env)  # a bad SNAPSHOT_CRON / SNAPSHOT_TZ stops start-up here
    llm = llm_for_task(ctx.env, EXTRACTION_TASK)
    log.info("insight extraction: %s", f"LLM task {EXTRACTION_TASK} ({', '.join(llm.models)})" if llm else "rules")
    servicer = InsightServicer(ctx.pool, LlmExtractor(llm) if llm else None)
    return ServiceParts(
        register=[lambda server: pb_grpc.add_InsightServiceServicer_to_server(servicer, server)],
        service_names=[pb.DESCRIPTOR.services_by_name["InsightService"].full_name],
        background=[] if schedule is None else [SnapshotSweeper(ctx.pool, schedule).run],
        on_stop=[] if llm is None else [llm.client.close],
    )
