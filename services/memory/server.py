"""Memory gRPC server (spec: memory.md): two-layer memory with hybrid recall, a near-duplicate-merging
write path, the dreaming sweeper, rolling summaries and the user's data-ownership calls.

Validation and mapping live here; SQL in `store`, pure rules in `domain`, the embedder in `embedders`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import asyncpg
import grpc
import numpy as np
import openai
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict

from rapport.memory.v1 import memory_pb2 as pb
from rapport.memory.v1 import memory_pb2_grpc as pb_grpc
from services.memory import domain, store
from services.memory.embedders import Embedder, EmbeddingError, embedder_from_env
from services.memory.summaries import SessionSummarizer, SummarySettings, history_window
from services.memory.sweeper import DreamingSettings, DreamingSweeper
from services.servicekit.config import Env
from services.servicekit.grpc_errors import (
    InvalidArgument,
    Unavailable,
    maps_errors,
    parse_uuid,
)
from services.servicekit.service import ServiceContext, ServiceParts
from services.servicekit.tasks import TaskLlm, llm_for_task

log = logging.getLogger("rapport.memory")

MAX_TEXT_CHARS = 16_000
MAX_LIST_LIMIT = 500
DEFAULT_LIST_LIMIT = 100
MAX_IMPORT_ITEMS = 20_000
MAX_TOP = 50
MAX_MESSAGE_ID_CHARS = 200
MAX_HIDDEN_MESSAGES = 100_000  # one session's messages off its active branch
MAX_ERASED_MESSAGES = 10_000
LAYER_NAMES: dict[pb.Layer.ValueType, domain.Layer] = {
    pb.LAYER_PROFILE: "profile",
    pb.LAYER_RELATIONSHIP: "relationship",
}
LAYER_VALUES = {name: value for value, name in LAYER_NAMES.items()}
INSIGHTS_MODES: dict[domain.InsightsMode, pb.InsightsMode.ValueType] = {
    "off": pb.INSIGHTS_MODE_OFF,
    "neutral": pb.INSIGHTS_MODE_NEUTRAL,
    "full": pb.INSIGHTS_MODE_FULL,
}
MAX_HISTORY_WINDOW = 10_000
MAX_RECENT_TURNS = 20
MARK_RECALLED_ATTEMPTS = 5
EXTRACTION_INSTRUCTIONS = """You extract long-term memories from one exchange between a user and a companion persona.
Answer with JSON only, exactly: {"memories": [{"content": str, "category": str, "importance": number, "layer": str}]}
- layer "profile": stable facts about the user that hold with any persona (identity, where they live, work,
  family, preferences, constraints such as allergies); layer "relationship": something about this user and
  this persona (a shared moment, a plan, a promise, an in-joke, a conflict or its repair, an open thread).
- category: one of fact, preference, event, emotion, relation, moment, thread.
- content: one short third-person sentence starting with "User" (e.g. "User lives in Lisbon").
- importance: 0 to 1 (1 = must never be forgotten, e.g. an allergy; 0.2 = trivia).
- Only what the USER said about themselves or the two of you; never the persona's own statements.
  No memories → {"memories": []}."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class MemorySettings:
    merge_threshold: float  # MEMORY_MERGE_THRESHOLD
    ranking: Literal["hybrid", "vector"]  # MEMORY_RANKING
    vector_search: store.VectorSearch  # MEMORY_VECTOR_SEARCH
    candidates: int  # MEMORY_CANDIDATES: per layer and per ranking (vector, full text)
    ef_search: int  # MEMORY_HNSW_EF_SEARCH (hnsw only)
    recency_weight: float  # MEMORY_RECENCY_WEIGHT
    importance_weight: float  # MEMORY_IMPORTANCE_WEIGHT
    half_life_days: float  # MEMORY_RECENCY_HALF_LIFE_DAYS
    llm_timeout: float  # MEMORY_LLM_TIMEOUT_SECS
    history_window: int  # MEMORY_HISTORY_WINDOW: messages the prompt carries verbatim
    recall_top: int = 7  # MEMORY_RECALL_TOP: memories across both layers when a request sets no top
    min_profile: int = 1  # MEMORY_RECALL_MIN_PROFILE
    min_relationship: int = 1  # MEMORY_RECALL_MIN_RELATIONSHIP

    @classmethod
    def from_env(cls, env: Env, embedder_model: str = "") -> MemorySettings:
        default_threshold = domain.merge_threshold_for(embedder_model)
        return cls(
            merge_threshold=env.float("MEMORY_MERGE_THRESHOLD", default_threshold, 0.0, 1.0),
            ranking=env.choice("MEMORY_RANKING", ("hybrid", "vector"), "hybrid"),  # type: ignore[arg-type]
            vector_search=env.choice("MEMORY_VECTOR_SEARCH", ("exact", "hnsw"), "exact"),  # type: ignore[arg-type]
            candidates=env.int("MEMORY_CANDIDATES", 20, 1, 500),
            ef_search=env.int("MEMORY_HNSW_EF_SEARCH", 100, 10, 1000),
            recency_weight=env.float("MEMORY_RECENCY_WEIGHT", 0.0, 0.0, 10.0),
            importance_weight=env.float("MEMORY_IMPORTANCE_WEIGHT", 0.0, 0.0, 10.0),
            half_life_days=env.float("MEMORY_RECENCY_HALF_LIFE_DAYS", 30.0, 0.01, 36_500.0),
            llm_timeout=env.float("MEMORY_LLM_TIMEOUT_SECS", 15.0, 0.1, 300.0),
            history_window=history_window(env),
            recall_top=env.int("MEMORY_RECALL_TOP", 7, 1, MAX_TOP),
            min_profile=env.int("MEMORY_RECALL_MIN_PROFILE", 1, 0, MAX_TOP),
            min_relationship=env.int("MEMORY_RECALL_MIN_RELATIONSHIP", 1, 0, MAX_TOP),
        )


class EmbedderMismatch(SystemExit):
    """The configured embedder is not the one the stored vectors were made with."""


def configured_embedder(environ: Mapping[str, str]) -> Embedder:
    """The embedder from the environment; a bad variable stops the process naming it."""
    try:
        return embedder_from_env(environ)
    except ValueError as error:
        raise SystemExit(f"configuration error: {error}") from None


async def check_embedding_config(pool: Any, embedder: Embedder) -> None:
    """Refuse to start when the stored vectors were made by another model or dimension."""
    model, dim = await store.embedding_config(pool)
    if (model, dim) != (embedder.model, embedder.dim):
        raise EmbedderMismatch(
            f"memory: stored embeddings were made with {model} ({dim}-d) but the configured embedder is "
            f"{embedder.model} ({embedder.dim}-d). Run `rapport memory reembed` with the new embedder configured "
            f"to re-embed every memory, or configure {model} again."
        )


def migration_params() -> dict[str, object]:
    """`rapport migrate`: the vector column's dimension and model come from the configured embedder
    (no model weights are loaded)."""
    embedder = configured_embedder(os.environ)
    return {"EMBEDDING_DIM": embedder.dim, "EMBEDDING_MODEL": embedder.model.replace("'", "''")}


# --------------------------------------------------------------------------- conversions


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _datetime(stamp: timestamp_pb2.Timestamp, message: Any, field: str) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if message.HasField(field) else None


def memory_message(row: Mapping[str, Any]) -> pb.Memory:
    layer = pb.LAYER_PROFILE if row["instance_id"] is None else pb.LAYER_RELATIONSHIP
    metadata = struct_pb2.Struct()
    metadata.update(row["metadata"] or {})
    return pb.Memory(
        id=str(row["id"]),
        user_id=str(row["user_id"]),
        instance_id=str(row["instance_id"] or ""),
        session_id=str(row["session_id"] or ""),
        layer=layer,
        category=row["category"],
        content=row["content"],
        importance=row["importance"],
        source_message_ids=list(row["source_message_ids"]),
        occurred_at=_timestamp(row["occurred_at"]),
        created_at=_timestamp(row["created_at"]),
        updated_at=_timestamp(row["updated_at"]),
        recall_count=row["recall_count"],
        embedding_model=row["embedding_model"],
        metadata=metadata,
        speaker=row["speaker"],
        event_dates=[day.isoformat() for day in row["event_dates"]],
        merged_contents=list(row["merged_contents"]),
        hidden=row["hidden"],
    )


def encode_cursor(created_at: datetime, memory_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{memory_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        stamp, _, memory_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(memory_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("cursor is not a cursor returned by ListMemories", field="cursor") from None


def _optional_uuid(value: str, field: str) -> uuid.UUID | None:
    return parse_uuid(value, field) if value else None


def _required_text(value: str, field: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not value.strip():
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} must be at most {max_chars} characters", field=field)
    return value


def _top(value: int, default: int, field: str) -> int:
    if value < 0 or value > MAX_TOP:
        raise InvalidArgument(f"{field} must be between 0 and {MAX_TOP} (0 = default {default})", field=field)
    return value or default


# --------------------------------------------------------------------------- recall


@dataclass(frozen=True)
class RecallResult:
    profile: list[domain.ScoredMemory]
    relationship: list[domain.ScoredMemory]
    sources: dict[str, list[str]]  # memory id → source message ids


def rank_candidates(
    rows: Sequence[tuple[domain.Layer, Mapping[str, Any]]], settings: MemorySettings, now: datetime
) -> list[domain.ScoredMemory]:
    """One ranking over both layers' candidates, so scores compare across layers: RRF of the vector
    ranking, the full-text ranking, and — when the query named days or asked about the persona — the
    nearest memories of those days and the nearest of what the persona said; then recency/importance."""
    by_id = {str(row["id"]): (layer, row) for layer, row in rows}
    every = [row for _, row in by_id.values()]

    def nearest(hit: str) -> list[str]:
        return [str(r["id"]) for r in sorted((r for r in every if r[hit]), key=lambda r: r["distance"])]

    rankings = [nearest("vector_hit")]
    if settings.ranking == "hybrid":
        # Equal text ranks (common: one matching word each) are ordered by vector distance, not by chance.
        text_hits = sorted(
            (r for r in every if r["text_rank"] is not None), key=lambda r: (-r["text_rank"], r["distance"])
        )
        rankings.append([str(r["id"]) for r in text_hits])
    rankings += [ranking for ranking in (nearest("date_hit"), nearest("speaker_hit")) if ranking]
    scored = []
    for memory_id, rrf in domain.reciprocal_rank_fusion(rankings).items():
        layer, row = by_id[memory_id]
        age_days = (now - row["occurred_at"]).total_seconds() / 86_400
        scored.append(
            domain.ScoredMemory(
                id=memory_id,
                layer=layer,
                category=row["category"],
                content=row["content"],
                score=domain.blend_scores(
                    rrf,
                    age_days,
                    row["importance"],
                    settings.recency_weight,
                    settings.importance_weight,
                    settings.half_life_days,
                ),
                vector_score=1.0 - row["distance"],
                text_rank=row["text_rank"],
                importance=row["importance"],
                occurred_at=row["occurred_at"],
                speaker=row["speaker"],
                event_dates=tuple(row["event_dates"]),
                session_id=str(row["session_id"]) if row["session_id"] else None,
            )
        )
    return scored


async def recall_memories(
    pool: Any,
    settings: MemorySettings,
    *,
    user_id: uuid.UUID,
    instance_id: uuid.UUID,
    vector: np.ndarray,
    text: str,
    scope: domain.MemoryScope,
    profile_top: int = 0,
    relationship_top: int = 0,
    top: int = 0,
    session_id: uuid.UUID | None = None,
    history_window: int | None = None,
    dates: Sequence[date] = (),
    about_persona: bool = False,
) -> RecallResult:
    """Search both layers in parallel (each on its own pooled connection), rank them together, select,
    prune. With a per-layer top (profile_top / relationship_top) each layer returns its own best (the
    profile also up to 2 per category); otherwise the `top` best across layers (default
    MEMORY_RECALL_TOP) with the per-layer minimums. The relationship layer leaves out moments of
    `session_id` still inside the prompt's history (`history_window` messages, default
    MEMORY_HISTORY_WINDOW)."""
    text_query = text if settings.ranking == "hybrid" else None
    window = settings.history_window if history_window is None else history_window
    recent_turns = (window + 1) // 2
    per_layer = bool(profile_top or relationship_top) and not top
    wanted = top or settings.recall_top
    limits = {
        "profile": max(settings.candidates, 2 * (profile_top or 4 if per_layer else wanted)),
        "relationship": max(settings.candidates, 2 * (relationship_top or 3 if per_layer else wanted)),
    }

    async def search(layer: domain.Layer, wanted_layer: bool) -> list[Any]:
        if not wanted_layer:
            return []
        relationship = layer == "relationship"
        return await store.search_layer(
            pool,
            user_id=user_id,
            instance_id=instance_id if relationship else None,
            vector=vector,
            text=text_query,
            limit=limits[layer],
            vector_search=settings.vector_search,
            ef_search=settings.ef_search,
            hide_recent=(session_id, recent_turns) if relationship and session_id and recent_turns else None,
            dates=dates,
            speaker="persona" if about_persona and relationship else None,
        )

    profile_rows, relationship_rows = await asyncio.gather(
        search("profile", scope.include_profile), search("relationship", scope.include_relationship)
    )
    now = datetime.now(UTC)
    rows = [*(("profile", r) for r in profile_rows), *(("relationship", r) for r in relationship_rows)]
    ranked = rank_candidates(rows, settings, now)  # type: ignore[arg-type]
    if per_layer:
        profile = domain.select_profile([m for m in ranked if m.layer == "profile"], top=profile_top or 4)
        relationship = domain.select_relationship(
            [m for m in ranked if m.layer == "relationship"], top=relationship_top or 3
        )
    else:
        minimums = {"profile": settings.min_profile, "relationship": settings.min_relationship}
        profile, relationship = domain.select_across_layers(ranked, wanted, minimums)
    profile, relationship = domain.prune_cross_layer_duplicates(profile, relationship)
    sources = {str(row["id"]): list(row["source_message_ids"]) for row in [*profile_rows, *relationship_rows]}
    return RecallResult(profile, relationship, sources)


def _recalled_message(memory: domain.ScoredMemory, sources: list[str]) -> pb.RecalledMemory:
    return pb.RecalledMemory(
        id=memory.id,
        layer=LAYER_VALUES[memory.layer],
        category=memory.category,
        content=memory.content,
        score=memory.score,
        vector_score=memory.vector_score or 0.0,
        text_score=memory.text_rank or 0.0,
        importance=memory.importance,
        occurred_at=_timestamp(memory.occurred_at),
        source_message_ids=sources,
        speaker=memory.speaker,
        event_dates=[day.isoformat() for day in memory.event_dates],
        session_id=memory.session_id or "",
    )


# --------------------------------------------------------------------------- streaming error mapping


# --------------------------------------------------------------------------- the servicer


class MemoryServicer(pb_grpc.MemoryServiceServicer):
    def __init__(
        self,
        pool: Any,
        settings: MemorySettings,
        embedder: Embedder,
        extraction_llm: TaskLlm | None,
        summarizer: SessionSummarizer,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.embedder = embedder
        self.extraction_llm = extraction_llm
        self.summarizer = summarizer
        self._background: set[asyncio.Task[None]] = set()

    async def _embed(self, texts: Sequence[str], kind: Literal["query", "document"]) -> np.ndarray:
        try:
            return await self.embedder.embed(texts, kind)
        except EmbeddingError as error:
            raise Unavailable(f"embedder {self.embedder.model} failed: {error}") from error

    def _in_background(self, work: Any, what: str) -> None:
        """Run `work` after the reply path; its failure is logged, never lost silently."""
        task = asyncio.create_task(work)
        self._background.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._background.discard(done)
            if not done.cancelled() and done.exception() is not None:
                log.error("background %s failed", what, exc_info=done.exception())

        task.add_done_callback(finished)

    async def _mark_recalled(self, user_id: uuid.UUID, memory_ids: list[uuid.UUID]) -> None:
        """Count the recall, retried with backoff (a lost update would skew recall counts silently)."""
        for attempt in range(1, MARK_RECALLED_ATTEMPTS + 1):
            try:
                await store.mark_recalled(self.pool, user_id, memory_ids)
                return
            except (asyncpg.PostgresError, OSError) as error:
                if attempt == MARK_RECALLED_ATTEMPTS:
                    raise
                log.warning("counting a recall failed (attempt %d), retrying: %s", attempt, error)
                await asyncio.sleep(0.05 * 2**attempt)

    async def drain(self) -> None:
        """Wait for background writes (recall counters) — on stop."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- write path ---------------------------------------------------------------------------

    async def _extract(
        self, turn: store.TurnRecord, persona_name: str
    ) -> tuple[list[domain.CandidateMemory], Literal["rules", "llm", "llm_failed"], str | None]:
        """Profile/relationship facts of the exchange: the LLM when configured, else the rules; an
        invalid or failed LLM answer is recorded and the rules are used."""
        if self.extraction_llm is None:
            return domain.extract_self_statements(turn.user_text), "rules", None
        exchange = {"persona_name": persona_name, "user_message": turn.user_text, "persona_reply": turn.reply_text}
        try:
            answer, _, _ = await asyncio.wait_for(
                self.extraction_llm.complete(
                    [
                        {"role": "system", "content": EXTRACTION_INSTRUCTIONS},
                        {"role": "user", "content": json.dumps(exchange, ensure_ascii=False)},
                    ],
                    json_mode=True,
                ),
                self.settings.llm_timeout,
            )
            return domain.parse_extraction(answer), "llm", None
        except domain.ExtractionFormatError as error:
            reason = f"invalid answer: {error}"
        except (openai.APIError, TimeoutError) as error:
            reason = f"unavailable: {type(error).__name__}: {error}"
        log.warning("memory_extraction for turn %s failed (%s); using the rule-based extractor", turn.turn_id, reason)
        return domain.extract_self_statements(turn.user_text), "llm_failed", reason[:1000]

    @maps_errors
    async def IngestTurn(
        self, request: pb.IngestTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestTurnResponse:
        turn_id = _required_text(request.turn_id, "turn_id", 200)
        user_id = parse_uuid(request.user_id, "user_id")
        instance_id = parse_uuid(request.instance_id, "instance_id")
        session_id = parse_uuid(request.session_id, "session_id")
        user_message_id = _required_text(request.user_message_id, "user_message_id", 200)
        user_text = _required_text(request.user_text, "user_text")
        if len(request.reply_text) > MAX_TEXT_CHARS:
            raise InvalidArgument(f"reply_text must be at most {MAX_TEXT_CHARS} characters", field="reply_text")
        if len(request.reply_message_id) > 200:
            raise InvalidArgument("reply_message_id must be at most 200 characters", field="reply_message_id")
        existing = await store.ingested_turn(self.pool, turn_id, user_id)
        if existing is not None:
            await self._summarize(session_id)  # catch up if a previous delivery stopped before it
            return pb.IngestTurnResponse(applied=False, memory_ids=[str(i) for i in existing["memory_ids"]])
        occurred_at = _datetime(request.occurred_at, request, "occurred_at") or datetime.now(UTC)
        draft = store.TurnRecord(
            turn_id,
            user_id,
            instance_id,
            session_id,
            user_message_id,
            request.reply_message_id,
            user_text,
            request.reply_text,
            occurred_at,
            "rules",
            persona_name=request.persona_name,
        )
        facts, extraction, error = await self._extract(draft, request.persona_name)
        turn = dataclasses.replace(draft, extraction=extraction, extraction_error=error)
        candidates = domain.turn_memories(
            user_text, request.reply_text, facts, persona_name=request.persona_name, extraction=extraction
        )
        vectors: np.ndarray | list[np.ndarray] = (
            await self._embed([c.memory.content for c in candidates], "document") if candidates else []
        )
        memories = [
            store.NewMemory(
                user_id=user_id,
                instance_id=instance_id if c.memory.layer == "relationship" else None,
                session_id=session_id,
                content=c.memory.content,
                category=c.memory.category,
                importance=c.memory.importance,
                embedding=vector,
                source_message_ids=(request.reply_message_id,) if c.from_reply else (user_message_id,),
                occurred_at=occurred_at,
                metadata={"source": c.source},
                speaker=c.memory.speaker,
                event_dates=domain.mentioned_dates(c.said, occurred_at.date()),
            )
            for c, vector in zip(candidates, vectors, strict=True)
            if not c.from_reply or request.reply_message_id
        ]
        result = await store.ingest_turn(self.pool, turn, memories, self.embedder.model, self.settings.merge_threshold)
        if result is None:  # a concurrent delivery of the same turn won
            return pb.IngestTurnResponse(applied=False)
        await self._summarize(session_id)
        return pb.IngestTurnResponse(
            applied=True,
            memory_ids=[str(i) for i in dict.fromkeys(result.memory_ids)],
            merged=result.count("merged") + result.count("unchanged"),
        )

    async def _summarize(self, session_id: uuid.UUID) -> None:
        try:
            await self.summarizer.summarize_if_due(session_id)
        except Exception:  # the summary is best effort; the next turn retries it
            log.exception("rolling summary of session %s failed", session_id)

    # -- recall ------------------------------------------------------------------------------

    @maps_errors
    async def Recall(self, request: pb.RecallRequest, context: grpc.aio.ServicerContext) -> pb.RecallResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        instance_id = parse_uuid(request.instance_id, "instance_id")
        session_id = _optional_uuid(request.session_id, "session_id")
        query = _required_text(request.query, "query")
        try:
            scope = domain.parse_memory_scope(request.memory_scope)
        except domain.MemoryScopeError as error:
            raise InvalidArgument(str(error), field="memory_scope") from None
        profile_top = _top(request.profile_top, 0, "profile_top")
        relationship_top = _top(request.relationship_top, 0, "relationship_top")
        top = _top(request.top, 0, "top")
        if len(request.recent_turns) > MAX_RECENT_TURNS or any(len(t) > MAX_TEXT_CHARS for t in request.recent_turns):
            raise InvalidArgument(
                f"recent_turns: at most {MAX_RECENT_TURNS} messages of at most {MAX_TEXT_CHARS} characters",
                field="recent_turns",
            )
        if not 0 <= request.history_window <= MAX_HISTORY_WINDOW:
            raise InvalidArgument(
                f"history_window must be between 0 and {MAX_HISTORY_WINDOW} (0 = MEMORY_HISTORY_WINDOW)",
                field="history_window",
            )
        response = pb.RecallResponse(insights=INSIGHTS_MODES[scope.insights])

        async def recall() -> None:
            if not scope.recalls_memories:  # nothing to search: no embedding, no query
                return
            started = time.perf_counter()
            searched = domain.recall_query_text(query, request.recent_turns)
            vector = (await self._embed([domain.query_embedding_text(searched)], "query"))[0]
            response.embed_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            result = await recall_memories(
                self.pool,
                self.settings,
                user_id=user_id,
                instance_id=instance_id,
                vector=vector,
                text=searched,
                scope=scope,
                profile_top=profile_top,
                relationship_top=relationship_top,
                top=top,
                session_id=session_id,
                history_window=request.history_window or None,
                dates=domain.query_dates(query, datetime.now(UTC).date()),
                about_persona=domain.asks_about_persona(query),
            )
            response.search_ms = (time.perf_counter() - started) * 1000
            response.profile.extend(_recalled_message(m, result.sources[m.id]) for m in result.profile)
            response.relationship.extend(_recalled_message(m, result.sources[m.id]) for m in result.relationship)
            recalled = [uuid.UUID(m.id) for m in (*result.profile, *result.relationship)]
            if recalled:  # counters are written after the reply path, never on it
                self._in_background(self._mark_recalled(user_id, recalled), "recall count update")

        async def latest_summary() -> None:
            summary = await store.latest_summary(self.pool, user_id, session_id) if session_id else None
            if summary is not None:
                response.summary.CopyFrom(
                    pb.SessionSummary(
                        session_id=str(summary["session_id"]),
                        content=summary["content"],
                        first_message_index=summary["first_message_index"],
                        last_message_index=summary["last_message_index"],
                        created_at=_timestamp(summary["created_at"]),
                    )
                )

        await asyncio.gather(recall(), latest_summary())
        return response

    # -- data ownership ------------------------------------------------------------------------

    @maps_errors
    async def ListMemories(
        self, request: pb.ListMemoriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMemoriesResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        if request.category and request.category not in domain.CATEGORIES:
            raise InvalidArgument(f"category must be one of {', '.join(domain.CATEGORIES)}", field="category")
        if request.limit < 0 or request.limit > MAX_LIST_LIMIT:
            raise InvalidArgument(
                f"limit must be between 0 and {MAX_LIST_LIMIT} (0 = {DEFAULT_LIST_LIMIT})", field="limit"
            )
        if len(request.text) > 200:
            raise InvalidArgument("text must be at most 200 characters", field="text")
        where = store.ListFilter(
            user_id=user_id,
            layer=LAYER_NAMES.get(request.layer),
            instance_id=_optional_uuid(request.instance_id, "instance_id"),
            category=request.category or None,
            text=request.text.strip() or None,
        )
        limit = request.limit or DEFAULT_LIST_LIMIT
        rows = await store.list_memories(self.pool, where, limit + 1, decode_cursor(request.cursor))
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else ""
        return pb.ListMemoriesResponse(memories=[memory_message(row) for row in page], next_cursor=next_cursor)

    @maps_errors
    async def DeleteMemory(
        self, request: pb.DeleteMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteMemoryResponse:
        deleted = await store.soft_delete(
            self.pool, parse_uuid(request.user_id, "user_id"), parse_uuid(request.memory_id, "memory_id")
        )
        return pb.DeleteMemoryResponse(deleted=deleted)

    @maps_errors
    async def ExportMemories(
        self, request: pb.ExportMemoriesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportMemoriesResponse]:
        user_id = parse_uuid(request.user_id, "user_id")
        async for row in store.export_memories(self.pool, user_id):
            yield pb.ExportMemoriesResponse(memory=memory_message(row))

    @maps_errors
    async def ImportMemories(
        self, request_iterator: AsyncIterator[pb.ImportMemoriesRequest], context: grpc.aio.ServicerContext
    ) -> pb.ImportMemoriesResponse:
        """All or nothing: every item is validated before anything is embedded or written."""
        user_id: uuid.UUID | None = None
        drafts: list[ImportDraft] = []
        async for item in request_iterator:
            index = len(drafts)
            sender = parse_uuid(item.user_id, f"items[{index}].user_id")
            if user_id is not None and sender != user_id:
                raise InvalidArgument(
                    "every item of one import must carry the same user_id", field=f"items[{index}].user_id"
                )
            user_id = sender
            if index >= MAX_IMPORT_ITEMS:
                raise InvalidArgument(f"at most {MAX_IMPORT_ITEMS} memories per import", field="items")
            drafts.append(ImportDraft.parse(item.memory, index))
        if user_id is None:
            return pb.ImportMemoriesResponse()
        vectors = await self._embed([draft.candidate.content for draft in drafts], "document")
        memories = [draft.new_memory(user_id, vector) for draft, vector in zip(drafts, vectors, strict=True)]
        result = await store.import_memories(
            self.pool, user_id, memories, self.embedder.model, self.settings.merge_threshold
        )
        return pb.ImportMemoriesResponse(
            imported=result.count("inserted"), merged=result.count("merged"), skipped=result.count("unchanged")
        )

    @maps_errors
    async def DeleteUserData(
        self, request: pb.DeleteUserDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserDataResponse:
        deleted = await store.delete_user_data(
            self.pool, parse_uuid(request.user_id, "user_id"), _optional_uuid(request.instance_id, "instance_id")
        )
        return pb.DeleteUserDataResponse(deleted=deleted)

    # -- the active branch (issue 10) ---------------------------------------------------------------

    @maps_errors
    async def SetHiddenMessages(
        self, request: pb.SetHiddenMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetHiddenMessagesResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        session_id = parse_uuid(request.session_id, "session_id")
        message_ids = _message_ids(request.hidden_message_ids, "hidden_message_ids", MAX_HIDDEN_MESSAGES)
        hidden = await store.set_hidden_messages(self.pool, user_id, session_id, message_ids)
        return pb.SetHiddenMessagesResponse(hidden_memories=hidden)

    @maps_errors
    async def EraseMessages(
        self, request: pb.EraseMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.EraseMessagesResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        message_ids = _message_ids(request.message_ids, "message_ids", MAX_ERASED_MESSAGES)
        if not message_ids:
            raise InvalidArgument("message_ids must name at least one message", field="message_ids")
        plan = await store.erase_messages(self.pool, user_id, message_ids, dry_run=request.dry_run)
        return pb.EraseMessagesResponse(deleted=[memory_message(row) for row in plan.deleted], updated=plan.updated)


def _message_ids(values: Sequence[str], field: str, limit: int) -> list[str]:
    """Message ids as the orchestrator sends them: 1..200 characters each, at most `limit`."""
    if len(values) > limit:
        raise InvalidArgument(f"{field} may hold at most {limit} ids", field=field)
    for i, value in enumerate(values):
        if not value.strip() or len(value) > MAX_MESSAGE_ID_CHARS:
            raise InvalidArgument(f"{field}[{i}] must be 1-{MAX_MESSAGE_ID_CHARS} characters", field=f"{field}[{i}]")
    return list(values)


@dataclass(frozen=True)
class ImportDraft:
    """One validated imported memory (its layer from `layer`, else from whether it has an instance)."""

    candidate: domain.CandidateMemory
    instance_id: uuid.UUID | None
    session_id: uuid.UUID | None
    occurred_at: datetime
    source_message_ids: tuple[str, ...]
    metadata: dict[str, Any]
    speaker: domain.Speaker = "user"
    event_dates: tuple[date, ...] = ()

    @classmethod
    def parse(cls, memory: pb.Memory, index: int) -> ImportDraft:
        where = f"items[{index}].memory"
        instance_id = _optional_uuid(memory.instance_id, f"{where}.instance_id")
        layer = LAYER_NAMES.get(memory.layer) or ("relationship" if instance_id else "profile")
        if layer == "relationship" and instance_id is None:
            raise InvalidArgument(
                f"{where}.instance_id is required for a relationship memory", field=f"{where}.instance_id"
            )
        content = _required_text(memory.content, f"{where}.content", domain.MAX_MEMORY_CHARS * 4)
        try:
            candidate = domain.CandidateMemory(
                " ".join(content.split()),
                memory.category or "fact",  # type: ignore[arg-type]
                memory.importance,
                layer,
            )
        except ValueError as error:
            raise InvalidArgument(f"{where}: {error}", field=where) from None
        metadata = MessageToDict(memory.metadata) if memory.HasField("metadata") else {}
        speaker = memory.speaker or "user"
        if speaker not in domain.SPEAKERS:
            raise InvalidArgument(
                f"{where}.speaker must be one of {', '.join(domain.SPEAKERS)}", field=f"{where}.speaker"
            )
        try:
            event_dates = tuple(sorted({date.fromisoformat(day) for day in memory.event_dates}))
        except ValueError:
            raise InvalidArgument(
                f"{where}.event_dates must be ISO dates (YYYY-MM-DD)", field=f"{where}.event_dates"
            ) from None
        return cls(
            candidate=candidate,
            instance_id=instance_id if layer == "relationship" else None,
            session_id=_optional_uuid(memory.session_id, f"{where}.session_id"),
            occurred_at=_datetime(memory.occurred_at, memory, "occurred_at") or datetime.now(UTC),
            source_message_ids=tuple(memory.source_message_ids),
            metadata={**metadata, "source": "import"},
            speaker=speaker,  # type: ignore[arg-type]
            event_dates=event_dates,
        )

    def new_memory(self, user_id: uuid.UUID, vector: np.ndarray) -> store.NewMemory:
        c = self.candidate
        return store.NewMemory(
            user_id=user_id,
            instance_id=self.instance_id,
            session_id=self.session_id,
            content=c.content,
            category=c.category,
            importance=c.importance,
            embedding=vector,
            source_message_ids=self.source_message_ids,
            occurred_at=self.occurred_at,
            metadata=self.metadata,
            speaker=self.speaker,
            event_dates=self.event_dates,
        )


# --------------------------------------------------------------------------- bootstrap


async def build(ctx: ServiceContext) -> ServiceParts:
    embedder = configured_embedder(ctx.env.environ)
    await check_embedding_config(ctx.pool, embedder)
    inner = getattr(embedder, "inner", embedder)
    if hasattr(inner, "warm_up"):
        await inner.warm_up()
    settings = MemorySettings.from_env(ctx.env, embedder.model)
    extraction_llm = llm_for_task(ctx.env, "memory_extraction")
    summary_llm = llm_for_task(ctx.env, "summarization")
    summarizer = SessionSummarizer(ctx.pool, SummarySettings.from_env(ctx.env), summary_llm)
    servicer = MemoryServicer(ctx.pool, settings, embedder, extraction_llm, summarizer)
    sweeper = DreamingSweeper(
        ctx.pool, embedder, DreamingSettings.from_env(ctx.env), merge_threshold=settings.merge_threshold
    )

    async def stop() -> None:
        await servicer.drain()
        for llm in (extraction_llm, summary_llm):
            if llm is not None:
                await llm.client.close()

    return ServiceParts(
        register=[lambda server: pb_grpc.add_MemoryServiceServicer_to_server(servicer, server)],
        service_names=[pb.DESCRIPTOR.services_by_name["MemoryService"].full_name],
        background=[sweeper.run],
        on_stop=[stop],
    )
