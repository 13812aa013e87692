"""asyncpg queries for the `memory` schema — the only code that touches it.

Every query that reads or changes memories is scoped by user_id. Writes of one user are
serialized by a transaction-scoped advisory lock (near-duplicate merging reads, then writes).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, Literal

import asyncpg
import numpy as np

from services.memory.domain import all_sources_hidden, erase_effect, may_merge, merged_content, normalize_for_dedup

WriteOutcome = Literal["inserted", "merged", "unchanged"]
VectorSearch = Literal["exact", "hnsw"]
USER_LOCK_NAMESPACE = 0x4D454D  # "MEM": pg_advisory_xact_lock(namespace, hashtext(user_id))

MEMORY_COLUMNS = """id, user_id, instance_id, session_id, content, category, importance, embedding_model,
    source_message_ids, occurred_at, created_at, updated_at, recall_count, last_recalled_at, metadata,
    speaker, event_dates, merged_contents,
    EXISTS (SELECT 1 FROM memory.hidden_memories h WHERE h.memory_id = memories.id) AS hidden"""
MERGE_CANDIDATES = 3  # nearest memories above the threshold checked for being the same statement


@dataclass(frozen=True)
class NewMemory:
    """A memory to write (merged into a near-duplicate of the same user and layer when one exists)."""

    user_id: uuid.UUID
    instance_id: uuid.UUID | None  # None = profile layer
    session_id: uuid.UUID | None
    content: str
    category: str
    importance: float
    embedding: np.ndarray
    source_message_ids: tuple[str, ...]
    occurred_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)
    speaker: Literal["user", "persona", "both"] = "user"
    event_dates: tuple[date, ...] = ()


@dataclass(frozen=True)
class TurnRecord:
    """One ingested turn: the service's own copy of the transcript."""

    turn_id: str
    user_id: uuid.UUID
    instance_id: uuid.UUID
    session_id: uuid.UUID
    user_message_id: str
    reply_message_id: str
    user_text: str
    reply_text: str
    occurred_at: datetime
    extraction: Literal["rules", "llm", "llm_failed"]
    extraction_error: str | None = None
    persona_name: str = ""

    @property
    def message_count(self) -> int:
        return 1 + (1 if self.reply_text else 0)


@dataclass(frozen=True)
class WriteResult:
    memory_ids: list[uuid.UUID]
    outcomes: list[WriteOutcome]

    def count(self, outcome: WriteOutcome) -> int:
        return self.outcomes.count(outcome)


def _layer_condition(instance_id: uuid.UUID | None, params: list[Any], alias: str = "") -> str:
    """SQL for "this layer": profile = instance_id IS NULL, relationship = this pair."""
    if instance_id is None:
        return f"{alias}instance_id IS NULL"
    params.append(instance_id)
    return f"{alias}instance_id = ${len(params)}"


# --------------------------------------------------------------------------- embedding config


async def embedding_config(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[str, int]:
    row = await conn.fetchrow("SELECT model, dim FROM memory.embedding_config")
    if row is None:
        raise RuntimeError("memory.embedding_config is empty: run `rapport migrate`")
    return row["model"], row["dim"]


# --------------------------------------------------------------------------- writing memories


async def lock_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
    """Serialize this transaction with every other memory write of the user."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", USER_LOCK_NAMESPACE, str(user_id))


async def write_memory(
    conn: asyncpg.Connection, memory: NewMemory, model: str, merge_threshold: float
) -> tuple[uuid.UUID, WriteOutcome]:
    """Insert, or merge into a live memory of the same user and layer that says the same thing: cosine
    similarity ≥ merge_threshold and `domain.may_merge` (same names, places, numbers and polarity).
    A merge keeps everything: the more informative text (the other joins `merged_contents`), every
    source message id, the union of the event dates, the higher importance, the later occurred_at,
    and `both` as speaker when the two came from different sides. Call inside a transaction holding
    `lock_user`."""
    params: list[Any] = [memory.user_id, memory.embedding, merge_threshold]
    layer = _layer_condition(memory.instance_id, params)
    near = await conn.fetch(
        f"""WITH scoped AS MATERIALIZED (
                SELECT id, content, source_message_ids, merged_contents, speaker, embedding <=> $2 AS distance
                FROM memory.memories WHERE user_id = $1 AND {layer} AND deleted_at IS NULL)
            SELECT * FROM scoped WHERE 1 - distance >= $3 ORDER BY distance LIMIT {MERGE_CANDIDATES}""",
        *params,
    )
    nearest = next((row for row in near if may_merge(row["content"], memory.content)), None)
    if nearest is not None:
        old_sources = list(nearest["source_message_ids"])
        sources = old_sources + [s for s in memory.source_message_ids if s not in old_sources]
        if normalize_for_dedup(nearest["content"]) == normalize_for_dedup(memory.content) and sources == old_sources:
            return nearest["id"], "unchanged"
        content = merged_content(nearest["content"], memory.content)
        folded = memory.content if content == nearest["content"] else nearest["content"]
        variants = list(nearest["merged_contents"])
        known = {normalize_for_dedup(v) for v in (*variants, content)}
        if normalize_for_dedup(folded) not in known:
            variants.append(folded)
        speaker = nearest["speaker"] if nearest["speaker"] == memory.speaker else "both"
        merged = await conn.fetchval(
            """UPDATE memory.memories
               SET content = $2, category = CASE WHEN $11 THEN $3 ELSE category END,
                   importance = greatest(importance, $4),
                   embedding = CASE WHEN $11 THEN $5 ELSE embedding END,
                   embedding_model = CASE WHEN $11 THEN $6 ELSE embedding_model END, source_message_ids = $7,
                   session_id = coalesce($8, session_id), occurred_at = greatest(occurred_at, $9), updated_at = now(),
                   metadata = metadata || $10::jsonb
                              || jsonb_build_object('merges', coalesce((metadata->>'merges')::int, 0) + 1),
                   merged_contents = $12, speaker = $13,
                   event_dates = ARRAY(SELECT DISTINCT d FROM unnest(event_dates || $14::date[]) d ORDER BY d)
               WHERE id = $1 AND deleted_at IS NULL RETURNING id""",
            nearest["id"],
            content,
            memory.category,
            memory.importance,
            memory.embedding,
            model,
            sources,
            memory.session_id,
            memory.occurred_at,
            dict(memory.metadata),
            content == memory.content,  # the new text is kept: its vector and category come along
            variants,
            speaker,
            list(memory.event_dates),
        )
        if merged is not None:
            return merged, "merged"
    inserted = await conn.fetchval(
        """INSERT INTO memory.memories (user_id, instance_id, session_id, content, category, importance, embedding,
               embedding_model, source_message_ids, occurred_at, metadata, speaker, event_dates)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id""",
        memory.user_id,
        memory.instance_id,
        memory.session_id,
        memory.content,
        memory.category,
        memory.importance,
        memory.embedding,
        model,
        list(memory.source_message_ids),
        memory.occurred_at,
        dict(memory.metadata),
        memory.speaker,
        list(memory.event_dates),
    )
    return inserted, "inserted"


async def write_memories(
    conn: asyncpg.Connection, memories: Sequence[NewMemory], model: str, merge_threshold: float
) -> WriteResult:
    ids: list[uuid.UUID] = []
    outcomes: list[WriteOutcome] = []
    for memory in await without_erased_sources(conn, memories):
        memory_id, outcome = await write_memory(conn, memory, model, merge_threshold)
        ids.append(memory_id)
        outcomes.append(outcome)
    await refresh_visibility(conn, memories, ids)
    return WriteResult(ids, outcomes)


# --------------------------------------------------------------------------- turns


async def ingested_turn(pool: asyncpg.Pool, turn_id: str, user_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT memory_ids FROM memory.ingested_turns WHERE turn_id = $1 AND user_id = $2", turn_id, user_id
    )


async def ingest_turn(
    pool: asyncpg.Pool, turn: TurnRecord, memories: Sequence[NewMemory], model: str, merge_threshold: float
) -> WriteResult | None:
    """Record the turn, bump its session, write its memories — one transaction. None when the turn
    id was already ingested (idempotency)."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_user(conn, turn.user_id)
        seq = await conn.fetchval(
            """INSERT INTO memory.ingested_turns (turn_id, user_id, instance_id, session_id, user_message_id,
                   reply_message_id, user_text, reply_text, occurred_at, extraction, extraction_error, persona_name)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT (turn_id) DO NOTHING RETURNING seq""",
            turn.turn_id,
            turn.user_id,
            turn.instance_id,
            turn.session_id,
            turn.user_message_id,
            turn.reply_message_id,
            turn.user_text,
            turn.reply_text,
            turn.occurred_at,
            turn.extraction,
            turn.extraction_error,
            turn.persona_name,
        )
        if seq is None:
            return None
        await conn.execute(
            """INSERT INTO memory.sessions (session_id, user_id, instance_id, last_activity_at, last_seq, message_count)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (session_id) DO UPDATE
               SET last_activity_at = greatest(sessions.last_activity_at, EXCLUDED.last_activity_at),
                   last_seq = greatest(sessions.last_seq, EXCLUDED.last_seq),
                   message_count = sessions.message_count + EXCLUDED.message_count""",
            turn.session_id,
            turn.user_id,
            turn.instance_id,
            turn.occurred_at,
            seq,
            turn.message_count,
        )
        result = await write_memories(conn, memories, model, merge_threshold)
        await conn.execute(
            "UPDATE memory.ingested_turns SET memory_ids = $2 WHERE turn_id = $1",
            turn.turn_id,
            list(dict.fromkeys(result.memory_ids)),
        )
        return result


# --------------------------------------------------------------------------- recall

# OR of the query's words (plainto_tsquery ANDs them, which almost never matches a question), in the
# exact-words configuration of the generated column (English stop words out). A scalar subquery, so it
# is an InitPlan computed once per statement: as a plain expression, a cached generic plan (asyncpg
# prepares every statement; Postgres switches to a generic plan after five runs) re-parses the query
# text for every candidate row, which was most of a Recall for a user with thousands of memories.
_TEXT_QUERY = "(SELECT replace(plainto_tsquery('memory.exact_words', ${n})::text, ' & ', ' | ')::tsquery)"


async def search_layer(
    pool: asyncpg.Pool,
    *,
    user_id: uuid.UUID,
    instance_id: uuid.UUID | None,
    vector: np.ndarray,
    text: str | None,
    limit: int,
    vector_search: VectorSearch,
    ef_search: int = 100,
    hide_recent: tuple[uuid.UUID, int] | None = None,
    dates: Sequence[date] = (),
    speaker: str | None = None,
) -> list[asyncpg.Record]:
    """One layer's candidates: the `limit` nearest live memories by cosine distance, plus (when
    `text` is given) the `limit` best full-text matches, plus (when `dates` are given) the `limit`
    nearest of those that happened or refer to one of those days, plus (when `speaker` is given) the
    `limit` nearest of what that speaker said. Each row carries its cosine `distance`, `vector_hit`,
    `text_rank` (ts_rank_cd, NULL when not a text hit), `date_hit` and `speaker_hit`.

    Vector hits: `exact` scans the user's rows of this layer (owner btree) and sorts — its cost follows
    the user's memories, not the table's; `hnsw` walks the HNSW index with pgvector's iterative scan
    (relaxed order) so a filtered search still returns `limit` rows. Text hits come from the
    (user_id, content_tsv) GIN index: only the user's rows that contain a word of the question are
    read and ranked, whatever the table's size. Date and speaker hits, asked for by few questions,
    scan the user's rows of the layer with their condition. `hide_recent=(session_id, turns)` leaves
    out that session's memories from its last `turns` turns — the prompt's history already carries
    them verbatim.
    """
    params: list[Any] = [user_id, vector, limit]
    layer = _layer_condition(instance_id, params)
    scope = f"user_id = $1 AND {layer} AND deleted_at IS NULL AND {_NOT_HIDDEN}"
    if hide_recent is not None:
        params.extend(hide_recent)
        session, turns = f"${len(params) - 1}", f"${len(params)}"
        scope += f""" AND NOT (session_id IS NOT DISTINCT FROM {session}::uuid AND occurred_at >= (
            SELECT coalesce(min(occurred_at), 'infinity') FROM (
                SELECT occurred_at FROM memory.ingested_turns WHERE session_id = {session}::uuid
                ORDER BY seq DESC LIMIT {turns}) recent))"""

    def nearest(condition: str) -> str:
        # OFFSET 0 fences the subquery: the sort is over the computed distances, never an index order
        # (an HNSW walk under a filter may return fewer than `limit` rows without the iterative scan).
        return f"""SELECT id, distance FROM (SELECT id, embedding <=> $2 AS distance FROM memory.memories
                   WHERE {scope}{condition} OFFSET 0) candidates ORDER BY distance LIMIT $3"""

    ctes = []
    if text:
        params.append(text)
        query = _TEXT_QUERY.format(n=len(params))
        ctes.append(
            f"""text_hits AS (SELECT id, ts_rank_cd(content_tsv, {query}) AS rank FROM memory.memories
                    WHERE {scope} AND content_tsv @@ {query} ORDER BY rank DESC, id LIMIT $3)"""
        )
    else:
        ctes.append("text_hits AS (SELECT NULL::uuid AS id, NULL::real AS rank WHERE false)")
    if dates:
        params.append(list(dates))
        days = f"${len(params)}::date[]"
        condition = f" AND (event_dates && {days} OR (occurred_at AT TIME ZONE 'UTC')::date = ANY({days}))"
        ctes.append(f"date_hits AS ({nearest(condition)})")
    else:
        ctes.append("date_hits AS (SELECT NULL::uuid AS id WHERE false)")
    if speaker:
        params.append(speaker)
        ctes.append(f"speaker_hits AS ({nearest(f' AND speaker = ${len(params)}')})")
    else:
        ctes.append("speaker_hits AS (SELECT NULL::uuid AS id WHERE false)")
    if vector_search == "exact":
        vector_hits = nearest("")
    else:
        vector_hits = f"""SELECT id, embedding <=> $2 AS distance FROM memory.memories WHERE {scope}
                          ORDER BY embedding <=> $2 LIMIT $3"""
    sql = f"""WITH vector_hits AS MATERIALIZED ({vector_hits}), {", ".join(ctes)}
        SELECT m.id, m.category, m.content, m.importance, m.occurred_at, m.source_message_ids, m.session_id,
               m.speaker, m.event_dates, m.embedding <=> $2 AS distance, v.id IS NOT NULL AS vector_hit,
               t.rank AS text_rank, d.id IS NOT NULL AS date_hit, s.id IS NOT NULL AS speaker_hit
        FROM (SELECT id FROM vector_hits UNION SELECT id FROM text_hits UNION SELECT id FROM date_hits
              UNION SELECT id FROM speaker_hits) hits
        JOIN memory.memories m ON m.id = hits.id
        LEFT JOIN vector_hits v ON v.id = m.id LEFT JOIN text_hits t ON t.id = m.id
        LEFT JOIN date_hits d ON d.id = m.id LEFT JOIN speaker_hits s ON s.id = m.id"""
    async with pool.acquire() as conn:
        if vector_search == "exact":
            return list(await conn.fetch(sql, *params))
        async with conn.transaction():
            await conn.execute(
                f"SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL hnsw.ef_search = {int(ef_search)}"
            )
            return list(await conn.fetch(sql, *params))


async def mark_recalled(pool: asyncpg.Pool, user_id: uuid.UUID, memory_ids: Sequence[uuid.UUID]) -> None:
    """Count one recall of each memory. Takes the user's write lock first, like every other multi-row
    write of the user's memories: two transactions that update the same rows in different orders
    (a merge and this update) would otherwise deadlock."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_user(conn, user_id)
        await conn.execute(
            """UPDATE memory.memories SET recall_count = recall_count + 1, last_recalled_at = now()
               WHERE user_id = $1 AND id = ANY($2::uuid[]) AND deleted_at IS NULL""",
            user_id,
            sorted(set(memory_ids)),
        )


async def latest_summary(pool: asyncpg.Pool, user_id: uuid.UUID, session_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(
        """SELECT session_id, content, first_message_index, last_message_index, created_at
           FROM memory.session_summaries WHERE user_id = $1 AND session_id = $2
           ORDER BY last_message_index DESC LIMIT 1""",
        user_id,
        session_id,
    )


# --------------------------------------------------------------------------- data ownership


@dataclass(frozen=True)
class ListFilter:
    user_id: uuid.UUID
    layer: Literal["profile", "relationship"] | None = None
    instance_id: uuid.UUID | None = None
    category: str | None = None
    text: str | None = None


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_memories(
    pool: asyncpg.Pool, where: ListFilter, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[asyncpg.Record]:
    """Live memories of one user, newest first, keyset-paginated on (created_at, id)."""
    params: list[Any] = [where.user_id]
    conditions = ["user_id = $1", "deleted_at IS NULL"]

    def bind(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    if where.layer == "profile":
        conditions.append("instance_id IS NULL")
    elif where.layer == "relationship":
        conditions.append("instance_id IS NOT NULL")
    if where.instance_id is not None:
        conditions.append(f"instance_id = {bind(where.instance_id)}")
    if where.category:
        conditions.append(f"category = {bind(where.category)}")
    if where.text:
        conditions.append(f"content ILIKE {bind(_like_pattern(where.text))} ESCAPE '\\'")
    if after is not None:
        conditions.append(f"(created_at, id) < ({bind(after[0])}, {bind(after[1])})")
    return list(
        await pool.fetch(
            f"""SELECT {MEMORY_COLUMNS} FROM memory.memories WHERE {" AND ".join(conditions)}
            ORDER BY created_at DESC, id DESC LIMIT {bind(limit)}""",
            *params,
        )
    )


async def soft_delete(pool: asyncpg.Pool, user_id: uuid.UUID, memory_id: uuid.UUID) -> bool:
    deleted = await pool.fetchval(
        """UPDATE memory.memories SET deleted_at = now(), updated_at = now()
           WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL RETURNING id""",
        memory_id,
        user_id,
    )
    return deleted is not None


async def export_memories(pool: asyncpg.Pool, user_id: uuid.UUID) -> AsyncIterator[asyncpg.Record]:
    """Every live memory of the user, oldest first, streamed from a server-side cursor."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(
            f"SELECT {MEMORY_COLUMNS} FROM memory.memories WHERE user_id = $1 AND deleted_at IS NULL "
            "ORDER BY created_at, id",
            user_id,
            prefetch=200,
        ):
            yield row


async def import_memories(
    pool: asyncpg.Pool, user_id: uuid.UUID, memories: Sequence[NewMemory], model: str, merge_threshold: float
) -> WriteResult:
    async with pool.acquire() as conn, conn.transaction():
        await lock_user(conn, user_id)
        return await write_memories(conn, memories, model, merge_threshold)


async def delete_user_data(pool: asyncpg.Pool, user_id: uuid.UUID, instance_id: uuid.UUID | None) -> int:
    """Hard-delete what this service holds about a user (or only one persona instance of theirs:
    its relationship memories, turns, sessions and summaries). Returns the memories deleted."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_user(conn, user_id)
        if instance_id is None:
            deleted = await conn.execute("DELETE FROM memory.memories WHERE user_id = $1", user_id)
            for table in (*BRANCH_TABLES, "session_summaries", "distillations", "sessions", "ingested_turns"):
                await conn.execute(f"DELETE FROM memory.{table} WHERE user_id = $1", user_id)
        else:
            deleted = await conn.execute(
                "DELETE FROM memory.memories WHERE user_id = $1 AND instance_id = $2", user_id, instance_id
            )
            sessions = "(SELECT session_id FROM memory.sessions WHERE user_id = $1 AND instance_id = $2)"
            for table in ("hidden_messages", "session_summaries", "distillations"):
                await conn.execute(
                    f"DELETE FROM memory.{table} WHERE user_id = $1 AND session_id IN {sessions}", user_id, instance_id
                )
            for table in ("sessions", "ingested_turns"):
                await conn.execute(
                    f"DELETE FROM memory.{table} WHERE user_id = $1 AND instance_id = $2", user_id, instance_id
                )
        return int(deleted.split()[-1])


async def purge_deleted(pool: asyncpg.Pool, before: datetime) -> int:
    """Hard-delete memories soft-deleted before `before`."""
    result = await pool.execute("DELETE FROM memory.memories WHERE deleted_at < $1", before)
    return int(result.split()[-1])


# --------------------------------------------------------------------------- branch visibility (issue 10)
#
# A memory is hidden (not recalled; memory.hidden_memories) when every one of its source messages is hidden in
# some session of its user (memory.hidden_messages, one set per session, replaced by SetHiddenMessages; the rule
# is domain.all_sources_hidden). Visibility is recomputed for the memories whose sources change visibility, and
# for every memory written (write_memories), inside the user's advisory lock. Erased messages (EraseMessages)
# are tombstoned in memory.erased_messages: memories citing only them are hard-deleted, the others lose them
# (domain.erase_effect), later writes drop them as sources, and the service's transcript copy loses their text.
#
# The set logic runs here in Python over plain indexed reads (the user's memories' sources, the user's hidden
# messages): its cost follows the user's rows and never depends on the planner's estimates for these tables,
# which change wholesale with every branch switch.

BRANCH_TABLES = ("hidden_memories", "hidden_messages", "erased_messages")

# Recall's filter on memory.memories of user $1 (an anti-join on the user's hidden memories).
_NOT_HIDDEN = "id NOT IN (SELECT memory_id FROM memory.hidden_memories WHERE user_id = $1)"


@dataclass(frozen=True)
class ErasePlan:
    """What erasing messages does: memories to delete (every source erased) and how many lose sources."""

    deleted: list[asyncpg.Record]
    updated: int


async def _user_sources(conn: asyncpg.Connection, user_id: uuid.UUID) -> dict[uuid.UUID, list[str]]:
    """The source message ids of each live memory of the user."""
    rows = await conn.fetch(
        "SELECT id, source_message_ids FROM memory.memories WHERE user_id = $1 AND deleted_at IS NULL", user_id
    )
    return {row["id"]: row["source_message_ids"] for row in rows}


async def _user_hidden_messages(conn: asyncpg.Connection, user_id: uuid.UUID) -> set[str]:
    rows = await conn.fetch("SELECT message_id FROM memory.hidden_messages WHERE user_id = $1", user_id)
    return {row["message_id"] for row in rows}


async def _apply_visibility(
    conn: asyncpg.Connection, user_id: uuid.UUID, sources: Mapping[uuid.UUID, Sequence[str]], hidden: set[str]
) -> None:
    """Make exactly those of `sources`' memories whose every source is in `hidden` the hidden ones."""
    if not sources:
        return
    rows = await conn.fetch("SELECT memory_id FROM memory.hidden_memories WHERE user_id = $1", user_id)
    currently = {row["memory_id"] for row in rows} & sources.keys()
    wanted = {memory_id for memory_id, cited in sources.items() if all_sources_hidden(cited, hidden)}
    if currently - wanted:
        await conn.execute(
            "DELETE FROM memory.hidden_memories WHERE memory_id IN (SELECT unnest($1::uuid[]))",
            list(currently - wanted),
        )
    if wanted - currently:
        await conn.execute(
            """INSERT INTO memory.hidden_memories (memory_id, user_id) SELECT unnest($1::uuid[]), $2
               ON CONFLICT DO NOTHING""",
            list(wanted - currently),
            user_id,
        )


async def refresh_visibility(conn: asyncpg.Connection, memories: Sequence[NewMemory], ids: Sequence[uuid.UUID]) -> None:
    """After a write: whether each written memory (`ids`) is hidden. Nothing to do for a user who has no hidden
    messages (then none of theirs is hidden)."""
    if not memories:
        return
    user_id = memories[0].user_id
    hidden = await _user_hidden_messages(conn, user_id)
    if not hidden:
        return
    rows = await conn.fetch(
        "SELECT id, source_message_ids FROM memory.memories WHERE id IN (SELECT unnest($1::uuid[]))", list(set(ids))
    )
    await _apply_visibility(conn, user_id, {row["id"]: row["source_message_ids"] for row in rows}, hidden)


async def without_erased_sources(conn: asyncpg.Connection, memories: Sequence[NewMemory]) -> list[NewMemory]:
    """The memories to write with erased messages dropped from their sources; one citing only erased messages
    is not written at all (a late delivery of an erased turn)."""
    cited = sorted({source for memory in memories for source in memory.source_message_ids})
    if not cited:
        return list(memories)
    rows = await conn.fetch(
        """SELECT user_id, message_id FROM memory.erased_messages
           WHERE user_id = ANY($1::uuid[]) AND message_id IN (SELECT unnest($2::text[]))""",
        list({memory.user_id for memory in memories}),
        cited,
    )
    erased = {(row["user_id"], row["message_id"]) for row in rows}
    if not erased:
        return list(memories)
    kept: list[NewMemory] = []
    for memory in memories:
        sources = tuple(s for s in memory.source_message_ids if (memory.user_id, s) not in erased)
        if sources or not memory.source_message_ids:
            kept.append(replace(memory, source_message_ids=sources))
    return kept


async def set_hidden_messages(
    pool: asyncpg.Pool, user_id: uuid.UUID, session_id: uuid.UUID, message_ids: Sequence[str]
) -> int:
    """Make `message_ids` the session's hidden set and refresh the memories citing a message whose visibility
    changed → how many live memories of the user are hidden now."""
    wanted = set(message_ids)
    async with pool.acquire() as conn, conn.transaction():
        await lock_user(conn, user_id)
        rows = await conn.fetch(
            "SELECT message_id FROM memory.hidden_messages WHERE user_id = $1 AND session_id = $2", user_id, session_id
        )
        before = {row["message_id"] for row in rows}
        if before - wanted:
            await conn.execute(
                """DELETE FROM memory.hidden_messages WHERE user_id = $1 AND session_id = $2
                   AND message_id IN (SELECT unnest($3::text[]))""",
                user_id,
                session_id,
                list(before - wanted),
            )
        if wanted - before:
            await conn.execute(
                """INSERT INTO memory.hidden_messages (user_id, session_id, message_id)
                   SELECT $1, $2, unnest($3::text[])""",
                user_id,
                session_id,
                list(wanted - before),
            )
        changed = before ^ wanted
        if changed:
            sources = await _user_sources(conn, user_id)
            affected = {memory_id: cited for memory_id, cited in sources.items() if not changed.isdisjoint(cited)}
            await _apply_visibility(conn, user_id, affected, await _user_hidden_messages(conn, user_id))
        return int(
            await conn.fetchval(
                """SELECT count(*) FROM memory.hidden_memories h JOIN memory.memories m ON m.id = h.memory_id
                   WHERE h.user_id = $1 AND m.deleted_at IS NULL""",
                user_id,
            )
        )


async def erase_messages(
    pool: asyncpg.Pool, user_id: uuid.UUID, message_ids: Sequence[str], *, dry_run: bool
) -> ErasePlan:
    """Memories of the user citing only these messages are hard-deleted (soft-deleted ones too), the others
    lose them as sources; the messages leave the hidden sets, are tombstoned and their text leaves the
    transcript copy. A dry run only reports (the live memories that would be deleted)."""
    erased = set(message_ids)
    async with pool.acquire() as conn, conn.transaction():
        await lock_user(conn, user_id)
        rows = await conn.fetch(
            "SELECT id, source_message_ids, deleted_at IS NULL AS live FROM memory.memories WHERE user_id = $1",
            user_id,
        )
        effects = {row["id"]: erase_effect(row["source_message_ids"], erased) for row in rows}
        doomed = [memory_id for memory_id, effect in effects.items() if effect == "delete"]
        stripped = {row["id"]: row["source_message_ids"] for row in rows if effects[row["id"]] == "strip"}
        deleted = await conn.fetch(
            f"""SELECT {MEMORY_COLUMNS} FROM memory.memories WHERE id IN (SELECT unnest($1::uuid[]))
                AND deleted_at IS NULL ORDER BY created_at, id""",
            doomed,
        )
        plan = ErasePlan(deleted, sum(1 for row in rows if row["live"] and row["id"] in stripped))
        if dry_run:
            return plan
        await conn.execute("DELETE FROM memory.memories WHERE id IN (SELECT unnest($1::uuid[]))", doomed)
        kept = {memory_id: [s for s in cited if s not in erased] for memory_id, cited in stripped.items()}
        await conn.executemany(
            "UPDATE memory.memories SET source_message_ids = $2, updated_at = now() WHERE id = $1", list(kept.items())
        )
        await conn.execute(
            "DELETE FROM memory.hidden_messages WHERE user_id = $1 AND message_id IN (SELECT unnest($2::text[]))",
            user_id,
            list(erased),
        )
        await _apply_visibility(conn, user_id, kept, await _user_hidden_messages(conn, user_id))
        await conn.execute(
            """INSERT INTO memory.erased_messages (user_id, message_id) SELECT $1, unnest($2::text[])
               ON CONFLICT DO NOTHING""",
            user_id,
            list(erased),
        )
        for column, text in (("user_message_id", "user_text"), ("reply_message_id", "reply_text")):
            await conn.execute(
                f"""UPDATE memory.ingested_turns SET {text} = '' WHERE user_id = $1 AND {column} IN
                    (SELECT unnest($2::text[]))""",
                user_id,
                list(erased),
            )
        return plan


# --------------------------------------------------------------------------- dreaming sweeper


async def claim_idle_sessions(
    pool: asyncpg.Pool, *, now: datetime, idle_secs: float, stale_secs: float, limit: int, token: uuid.UUID
) -> list[asyncpg.Record]:
    """Claim up to `limit` sessions idle since `now - idle_secs` with turns not yet distilled, whose
    claim is free or older than `stale_secs` (a crashed worker) — one statement, SKIP LOCKED."""
    return list(
        await pool.fetch(
            """UPDATE memory.sessions s SET claimed_at = $1, claim_token = $5
           FROM (SELECT session_id FROM memory.sessions
                 WHERE last_seq > distilled_seq
                   AND last_activity_at <= $1::timestamptz - make_interval(secs => $2)
                   AND (claimed_at IS NULL OR claimed_at <= $1::timestamptz - make_interval(secs => $3))
                 ORDER BY last_activity_at LIMIT $4
                 FOR UPDATE SKIP LOCKED) idle
           WHERE s.session_id = idle.session_id
           RETURNING s.session_id, s.user_id, s.instance_id, s.distilled_seq, s.last_seq""",
            now,
            idle_secs,
            stale_secs,
            limit,
            token,
        )
    )


async def turns_after(
    pool: asyncpg.Pool, session_id: uuid.UUID, after_seq: int, until_seq: int
) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            """SELECT seq, user_message_id, reply_message_id, user_text, reply_text, occurred_at, persona_name
           FROM memory.ingested_turns WHERE session_id = $1 AND seq > $2 AND seq <= $3
           ORDER BY occurred_at, seq""",
            session_id,
            after_seq,
            until_seq,
        )
    )


async def commit_distillation(
    pool: asyncpg.Pool,
    *,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    token: uuid.UUID,
    from_seq: int,
    to_seq: int,
    memories: Sequence[NewMemory],
    model: str,
    merge_threshold: float,
    worker: str,
) -> WriteResult | None:
    """Write the distilled memories, advance the high-water mark and release the claim — only if
    the claim is still ours (else None and nothing is written: another worker took it over)."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_user(conn, user_id)
        holder = await conn.fetchval(
            "SELECT claim_token FROM memory.sessions WHERE session_id = $1 AND distilled_seq = $2 FOR UPDATE",
            session_id,
            from_seq,
        )
        if holder != token:
            return None
        result = await write_memories(conn, memories, model, merge_threshold)
        await conn.execute(
            """UPDATE memory.sessions SET distilled_seq = $2, claimed_at = NULL, claim_token = NULL
               WHERE session_id = $1""",
            session_id,
            to_seq,
        )
        await conn.execute(
            """INSERT INTO memory.distillations (session_id, user_id, from_seq, to_seq, memory_ids, worker)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            session_id,
            user_id,
            from_seq,
            to_seq,
            list(dict.fromkeys(result.memory_ids)),
            worker,
        )
        return result


async def release_claim(pool: asyncpg.Pool, session_id: uuid.UUID, token: uuid.UUID) -> None:
    await pool.execute(
        "UPDATE memory.sessions SET claimed_at = NULL, claim_token = NULL WHERE session_id = $1 AND claim_token = $2",
        session_id,
        token,
    )


# --------------------------------------------------------------------------- rolling summaries


async def summary_state(pool: asyncpg.Pool, session_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT user_id, message_count, summarized_until FROM memory.sessions WHERE session_id = $1", session_id
    )


async def session_transcript(pool: asyncpg.Pool, session_id: uuid.UUID) -> list[tuple[str, str, str]]:
    """(message_id, role, content) of the session in order, as ingested."""
    rows = await pool.fetch(
        """SELECT user_message_id, reply_message_id, user_text, reply_text FROM memory.ingested_turns
           WHERE session_id = $1 ORDER BY occurred_at, seq""",
        session_id,
    )
    messages: list[tuple[str, str, str]] = []
    for row in rows:
        messages.append((row["user_message_id"], "user", row["user_text"]))
        if row["reply_text"]:
            messages.append((row["reply_message_id"], "assistant", row["reply_text"]))
    return messages


async def save_summary(
    pool: asyncpg.Pool,
    *,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    first_index: int,
    last_index: int,
    content: str,
    method: str,
) -> bool:
    """Store a summary of messages first..last (inclusive) unless one for that range exists."""
    async with pool.acquire() as conn, conn.transaction():
        saved = await conn.fetchval(
            """INSERT INTO memory.session_summaries (session_id, user_id, first_message_index, last_message_index,
                   content, method) VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (session_id, last_message_index) DO NOTHING RETURNING session_id""",
            session_id,
            user_id,
            first_index,
            last_index,
            content,
            method,
        )
        await conn.execute(
            "UPDATE memory.sessions SET summarized_until = greatest(summarized_until, $2) WHERE session_id = $1",
            session_id,
            last_index + 1,
        )
        return saved is not None


# --------------------------------------------------------------------------- re-embedding

_VECTOR_INDEX = "memories_embedding_idx"


async def count_memories(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM memory.memories"))


async def stale_embeddings(pool: asyncpg.Pool, model: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM memory.memories WHERE embedding_model <> $1", model))


async def prepare_reembedding(pool: asyncpg.Pool, dim: int) -> None:
    """A fresh `embedding_next vector(dim)` column that the new vectors are written to (the live
    column keeps serving until the switch)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE memory.memories DROP COLUMN IF EXISTS embedding_next")
        await conn.execute(f"ALTER TABLE memory.memories ADD COLUMN embedding_next vector({int(dim)})")


async def memories_to_reembed(conn: asyncpg.Connection | asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT id, content FROM memory.memories WHERE embedding_next IS NULL ORDER BY id LIMIT $1", limit
        )
    )


async def store_reembedded(
    conn: asyncpg.Connection | asyncpg.Pool, ids: Sequence[uuid.UUID], vectors: np.ndarray
) -> None:
    await conn.executemany(
        "UPDATE memory.memories SET embedding_next = $2 WHERE id = $1", list(zip(ids, vectors, strict=True))
    )


async def switch_embeddings(conn: asyncpg.Connection, model: str, dim: int) -> None:
    """Make `embedding_next` the live column (same HNSW index definition, rebuilt) and record the new
    model and dimension. Call inside a transaction after every row has its new vector."""
    definition = await conn.fetchval("SELECT pg_get_indexdef(($1)::regclass)", f"memory.{_VECTOR_INDEX}")
    await conn.execute("ALTER TABLE memory.memories DROP COLUMN embedding")
    await conn.execute("ALTER TABLE memory.memories RENAME COLUMN embedding_next TO embedding")
    await conn.execute("ALTER TABLE memory.memories ALTER COLUMN embedding SET NOT NULL")
    await conn.execute("UPDATE memory.memories SET embedding_model = $1 WHERE embedding_model <> $1", model)
    await conn.execute(definition)
    await conn.execute("UPDATE memory.embedding_config SET model = $1, dim = $2", model, dim)
