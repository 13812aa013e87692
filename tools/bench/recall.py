"""`rapport bench recall`: Recall latency and index quality with 10k, 100k and 1M memories.

Bulk memories are random unit vectors (plus short random texts for the full-text index) spread over
many users; `--query-users` users own `--per-user` memories each (40 % profile, 60 % relationship
over 3 persona instances), everyone else owns 100. Rows are loaded with COPY into the real schema
(the memory migrations) with the secondary indexes dropped, then the indexes are rebuilt exactly as
the migration defines them. Sizes grow in place (10k → 100k → 1M).

For each size:
- Recall p50/p95: the service's own search path (`server.recall_memories`: both layers in parallel on
  two pooled connections, vector ⊕ full text, RRF, selection) for a random query user, instance and
  query vector — the query embedding itself is excluded. Measured for both vector strategies:
  `exact` (the user's rows of the layer, btree, sorted by distance) and `hnsw` (the HNSW index with
  pgvector's iterative scan, relaxed order).
- recall@10 of the HNSW index against exact search (ground truth computed in numpy from the same
  vectors): filtered to the query user's layer (what Recall asks), and unfiltered over all rows.

Uses its own embedded Postgres in a temporary folder, or `--database-url` (a scratch database is
created on that server and dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from services.memory import domain, store
from services.memory.server import MemorySettings, recall_memories
from services.servicekit.config import Env
from services.servicekit.db import apply_migrations, create_pool
from services.servicekit.embedded_pg import EmbeddedPostgres
from tools.bench.recall_texts import memory_texts, question
from tools.bench.turn import merge_section

log = logging.getLogger("rapport.memory.bench")

SECTION_TITLE = "## Memory recall"
GOAL_P95_MS = 10.0
GOAL_RECALL = 0.95
BACKGROUND_PER_USER = 100
INSTANCES_PER_USER = 3
BENCH_MODEL = "bench/random-unit-vectors"
STRATEGIES = ("exact", "hnsw")  # MEMORY_VECTOR_SEARCH; exact is the default
K = 10
WORDS = (
    "morning",
    "coffee",
    "river",
    "bridge",
    "sister",
    "brother",
    "mother",
    "father",
    "garden",
    "dog",
    "cat",
    "bicycle",
    "marathon",
    "guitar",
    "piano",
    "novel",
    "poem",
    "movie",
    "series",
    "holiday",
    "beach",
    "mountain",
    "lake",
    "forest",
    "city",
    "village",
    "hospital",
    "school",
    "office",
    "meeting",
    "deadline",
    "promotion",
    "birthday",
    "wedding",
    "dinner",
    "lunch",
    "recipe",
    "pasta",
    "curry",
    "bakery",
    "market",
    "train",
    "flight",
    "airport",
    "hotel",
    "museum",
    "concert",
    "festival",
    "football",
    "tennis",
    "swimming",
    "yoga",
    "painting",
    "photo",
    "camera",
    "phone",
    "laptop",
    "game",
    "chess",
    "puzzle",
    "storm",
    "rain",
    "snow",
    "sunset",
    "stars",
    "moon",
    "planet",
    "ocean",
    "island",
    "boat",
    "harbor",
    "lighthouse",
    "library",
    "book",
    "teacher",
    "student",
    "doctor",
    "nurse",
    "engineer",
    "artist",
    "chef",
    "farmer",
    "pilot",
    "friend",
    "neighbor",
    "roommate",
    "partner",
    "anniversary",
    "promise",
    "secret",
    "joke",
    "memory",
    "dream",
    "fear",
    "hope",
    "plan",
    "trip",
    "weekend",
    "summer",
    "winter",
    "autumn",
    "spring",
)


@dataclass
class SizeResult:
    size: int
    users: int
    load_s: float
    index_s: float
    latency: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # strategy → (p50, p95, mean) ms
    recall: dict[int, IndexRecall] = field(default_factory=dict)  # ef_search → recall@10


# --------------------------------------------------------------------------- data


@dataclass
class Owner:
    user_id: uuid.UUID
    instances: tuple[uuid.UUID, ...]
    count: int


@dataclass
class Dataset:
    """Every loaded row's owner and vector (kept in memory for the exact ground truth)."""

    dim: int
    vectors: list[np.ndarray] = field(default_factory=list)
    ids: list[uuid.UUID] = field(default_factory=list)  # row → memory id
    user_of_row: list[np.ndarray] = field(default_factory=list)  # row → owner index
    instance_of_row: list[np.ndarray] = field(default_factory=list)  # row → instance index (−1 = profile)
    owners: list[Owner] = field(default_factory=list)
    query_owners: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.vectors)


# 10,000 words (pairs of WORDS) drawn with Zipf-like frequencies, so some words are common and most rare.
VOCABULARY = np.array([a + b for a in WORDS for b in WORDS])
_WORD_WEIGHTS = 1.0 / np.arange(1, len(VOCABULARY) + 1)
_WORD_WEIGHTS /= _WORD_WEIGHTS.sum()


def random_words(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.choice(VOCABULARY, size=shape, p=_WORD_WEIGHTS)


@dataclass
class VectorSource:
    """Random unit vectors: `uniform` on the sphere, or `low-rank` — Gaussian in a random
    `rank`-dimensional subspace plus a little isotropic noise, then normalized. Text embeddings have a
    low intrinsic dimension; uniform high-dimensional vectors are the (unrealistic) worst case for an
    approximate index, because every point is almost equally far from every other."""

    kind: str
    dim: int
    rng: np.random.Generator
    rank: int = 24
    noise: float = 0.05
    basis: np.ndarray | None = None

    def sample(self, count: int) -> np.ndarray:
        if self.kind == "uniform":
            matrix = self.rng.standard_normal((count, self.dim), dtype=np.float32)
        else:
            if self.basis is None:
                self.basis = self.rng.standard_normal((self.rank, self.dim), dtype=np.float32)
            latent = self.rng.standard_normal((count, self.rank), dtype=np.float32)
            noise = self.rng.standard_normal((count, self.dim), dtype=np.float32)
            matrix = latent @ self.basis / np.sqrt(self.rank) + self.noise * noise
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def plan_owners(data: Dataset, target: int, query_users: int, per_user: int) -> list[tuple[int, int]]:
    """New owners (index, rows) so the dataset reaches `target` rows: query users first, then
    background users of BACKGROUND_PER_USER rows."""
    planned: list[tuple[int, int]] = []
    missing = target - data.size
    while missing > 0:
        wants_query = len(data.query_owners) < query_users
        count = min(missing, per_user if wants_query else BACKGROUND_PER_USER)
        owner = Owner(uuid.uuid4(), tuple(uuid.uuid4() for _ in range(INSTANCES_PER_USER)), count)
        data.owners.append(owner)
        index = len(data.owners) - 1
        if wants_query and count == per_user:
            data.query_owners.append(index)
        planned.append((index, count))
        missing -= count
    return planned


async def load_rows(
    pool: asyncpg.Pool,
    data: Dataset,
    planned: list[tuple[int, int]],
    source: VectorSource,
    texts: str = "realistic",
    chunk: int = 20_000,
) -> None:
    """COPY the planned owners' rows in chunks (vectors random; texts realistic sentences, or random words)."""
    columns = [
        "id",
        "user_id",
        "instance_id",
        "content",
        "category",
        "importance",
        "embedding",
        "embedding_model",
        "occurred_at",
    ]
    now = datetime.now(UTC)
    # Interleaved owners: a user's memories are written over time among everyone else's, so they are
    # scattered over the table's pages as in production.
    owner_rows = source.rng.permutation(
        np.concatenate([np.full(count, index, dtype=np.int32) for index, count in planned])
    )
    for start in range(0, len(owner_rows), chunk):
        owners = owner_rows[start : start + chunk]
        rng = source.rng
        vectors = source.sample(len(owners))
        instances = np.where(rng.random(len(owners)) < 0.4, -1, rng.integers(0, INSTANCES_PER_USER, len(owners)))
        contents = (
            memory_texts(rng, len(owners))
            if texts == "realistic"
            else [" ".join(t) for t in random_words(rng, (len(owners), 8))]
        )
        categories = rng.integers(0, len(domain.CATEGORIES), len(owners))
        ages = rng.integers(0, 365 * 86_400, len(owners))
        ids = [uuid.uuid4() for _ in range(len(owners))]
        records = [
            (
                memory_id,
                data.owners[o].user_id,
                None if i < 0 else data.owners[o].instances[i],
                t,
                domain.CATEGORIES[c],
                0.5,
                v,
                BENCH_MODEL,
                now - timedelta(seconds=int(a)),
            )
            for memory_id, o, i, t, c, v, a in zip(
                ids, owners, instances, contents, categories, vectors, ages, strict=True
            )
        ]
        async with pool.acquire() as conn:
            await conn.copy_records_to_table("memories", schema_name="memory", columns=columns, records=records)
        data.vectors.append(vectors)
        data.ids.extend(ids)
        data.user_of_row.append(owners)
        data.instance_of_row.append(instances)


async def drop_secondary_indexes(pool: asyncpg.Pool) -> list[str]:
    """Drop memory.memories' indexes except the primary key; returns their definitions."""
    rows = await pool.fetch(
        """SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS definition
           FROM pg_index WHERE indrelid = 'memory.memories'::regclass AND NOT indisprimary"""
    )
    for row in rows:
        await pool.execute(f"DROP INDEX {row['name']}")
    return [row["definition"] for row in rows]


async def create_indexes(pool: asyncpg.Pool, definitions: Sequence[str], maintenance_work_mem: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
        await conn.execute("SET max_parallel_maintenance_workers = 2")
        for definition in definitions:
            await conn.execute(definition)
        await conn.execute("ANALYZE memory.memories")
        await conn.execute("RESET maintenance_work_mem; RESET max_parallel_maintenance_workers")  # pooled: no leftovers


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Query:
    owner: int
    instance: int  # the persona instance the relationship layer is searched for
    vector: np.ndarray
    text: str


def make_queries(data: Dataset, count: int, source: VectorSource, texts: str = "realistic") -> list[Query]:
    rng = source.rng
    return [
        Query(
            owner=int(rng.choice(data.query_owners)),
            instance=int(rng.integers(0, INSTANCES_PER_USER)),
            vector=source.sample(1)[0],
            text=question(rng) if texts == "realistic" else " ".join(random_words(rng, (4,))),
        )
        for _ in range(count)
    ]


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def time_recall(
    pool: asyncpg.Pool, data: Dataset, queries: Sequence[Query], settings: MemorySettings, warmup: int
) -> tuple[float, float, float]:
    scope = domain.parse_memory_scope("full")
    latencies = []
    for index, query in enumerate(queries):
        owner = data.owners[query.owner]
        started = time.perf_counter()
        await recall_memories(
            pool,
            settings,
            user_id=owner.user_id,
            instance_id=owner.instances[query.instance],
            vector=query.vector,
            text=query.text,
            scope=scope,
        )
        if index >= warmup:
            latencies.append((time.perf_counter() - started) * 1000)
    return percentile(latencies, 50), percentile(latencies, 95), float(np.mean(latencies))


PLAIN_TOP_K = """SELECT id, content FROM memory.memories WHERE user_id = $1 AND deleted_at IS NULL
    ORDER BY embedding <=> $2 LIMIT $3"""


async def time_plain_top_k(
    pool: asyncpg.Pool, data: Dataset, queries: Sequence[Query], warmup: int
) -> tuple[float, float, float]:
    """The same queries as a plain pgvector top-k over the user's rows (what a vector-only memory store such
    as Mem0's pgvector backend runs): one statement, no full text, no fusion — the floor to compare with."""
    latencies = []
    for index, query in enumerate(queries):
        started = time.perf_counter()
        async with pool.acquire() as conn:
            await conn.fetch(PLAIN_TOP_K, data.owners[query.owner].user_id, query.vector, K)
        if index >= warmup:
            latencies.append((time.perf_counter() - started) * 1000)
    return percentile(latencies, 50), percentile(latencies, 95), float(np.mean(latencies))


@dataclass(frozen=True)
class IndexRecall:
    filtered: float  # recall@10 inside one user's layer (iterative index scan)
    unfiltered: float  # recall@10 over every row
    short: int  # filtered searches that returned fewer than k rows


@dataclass(frozen=True)
class GroundTruth:
    """The loaded rows as arrays, for exact top-k in numpy."""

    vectors: np.ndarray
    users: np.ndarray
    instances: np.ndarray
    ids: list[uuid.UUID]

    @classmethod
    def of(cls, data: Dataset) -> GroundTruth:
        return cls(
            np.concatenate(data.vectors),
            np.concatenate(data.user_of_row),
            np.concatenate(data.instance_of_row),
            data.ids,
        )

    def top(self, query: Query, layer_instance: int | None, k: int = K) -> set[uuid.UUID]:
        """Ids of the k nearest rows: of all rows (layer_instance None), else of the query user's
        rows of that layer (−1 = profile)."""
        distances = 1.0 - self.vectors @ query.vector
        if layer_instance is not None:
            mask = (self.users == query.owner) & (self.instances == layer_instance)
            distances = np.where(mask, distances, np.inf)
        top = np.argpartition(distances, k)[:k]
        return {self.ids[int(i)] for i in top if np.isfinite(distances[i])}


async def index_recall(
    pool: asyncpg.Pool, data: Dataset, queries: Sequence[Query], ef_values: Sequence[int], global_queries: int
) -> dict[int, IndexRecall]:
    """recall@10 of HNSW against exact search at each ef_search: filtered to the query user's layer
    (alternately profile and one persona's relationship layer — what Recall asks) and unfiltered."""
    truth = GroundTruth.of(data)
    cases = []
    for index, query in enumerate(queries):
        owner = data.owners[query.owner]
        layer_instance = -1 if index % 2 == 0 else query.instance
        instance_id = None if layer_instance < 0 else owner.instances[layer_instance]
        cases.append(
            (
                query,
                owner.user_id,
                instance_id,
                truth.top(query, layer_instance),
                truth.top(query, None) if index < global_queries else None,
            )
        )
    results = {}
    for ef in ef_values:
        found = expected = found_global = expected_global = short = 0
        for query, user_id, instance_id, truth_filtered, truth_global in cases:
            rows = await store.search_layer(
                pool,
                user_id=user_id,
                instance_id=instance_id,
                vector=query.vector,
                text=None,
                limit=K,
                vector_search="hnsw",
                ef_search=ef,
            )
            short += len(rows) < len(truth_filtered)
            found += len({r["id"] for r in rows} & truth_filtered)
            expected += len(truth_filtered)
            if truth_global is not None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef)}")
                    rows = await conn.fetch(
                        "SELECT id FROM memory.memories WHERE deleted_at IS NULL ORDER BY embedding <=> $1 LIMIT $2",
                        query.vector,
                        K,
                    )
                found_global += len({r["id"] for r in rows} & truth_global)
                expected_global += len(truth_global)
        results[ef] = IndexRecall(found / max(1, expected), found_global / max(1, expected_global), short)
    return results


# --------------------------------------------------------------------------- database


class BenchDatabase:
    """A scratch database: its own embedded Postgres (temp folder), or one created on --database-url."""

    def __init__(self, admin_url: str | None) -> None:
        self.admin_url = admin_url
        self.name = f"rapport_bench_recall_{os.getpid()}"
        self.home: Path | None = None
        self.server: Any = None

    async def __aenter__(self) -> str:
        if self.admin_url is None:
            self.home = Path(tempfile.mkdtemp(prefix="rapport-bench-recall-"))
            os.environ.setdefault("RAPPORT_PG_FSYNC_OFF", "1")
            self.server = EmbeddedPostgres(self.home)
            self.server.start()
            self.admin_url = self.server.dsn("postgres")
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await admin.close()
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{self.name}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.admin_url is not None
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()
        if self.server is not None:
            self.server.stop()
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)


async def run(args: argparse.Namespace) -> tuple[list[SizeResult], dict[str, str]]:
    source = VectorSource(args.vectors, args.dim, np.random.default_rng(args.seed))
    data = Dataset(dim=args.dim)
    results: list[SizeResult] = []
    async with BenchDatabase(args.database_url) as dsn:
        await apply_migrations(dsn, ["memory"], {"memory": {"EMBEDDING_DIM": args.dim, "EMBEDDING_MODEL": BENCH_MODEL}})
        pool = await create_pool(dsn, min_size=2, max_size=4, command_timeout=3600)
        try:
            versions = {
                "postgres": await pool.fetchval("SHOW server_version"),
                "pgvector": await pool.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'"),
                "shared_buffers": await pool.fetchval("SHOW shared_buffers"),
            }
            base = MemorySettings.from_env(Env({}))
            for size in sorted(args.sizes):
                planned = plan_owners(data, size, args.query_users, args.per_user)
                print(f"[{size:,}] loading {size - data.size:,} rows …", flush=True)
                definitions = await drop_secondary_indexes(pool)
                started = time.perf_counter()
                await load_rows(pool, data, planned, source, args.texts)
                load_s = time.perf_counter() - started
                print(f"[{size:,}] loaded in {load_s:.1f} s; building indexes …", flush=True)
                started = time.perf_counter()
                await create_indexes(pool, definitions, args.maintenance_work_mem)
                index_s = time.perf_counter() - started
                print(f"[{size:,}] indexes in {index_s:.1f} s; measuring …", flush=True)
                result = SizeResult(size=data.size, users=len(data.owners), load_s=load_s, index_s=index_s)
                queries = make_queries(data, args.queries + args.warmup, source, args.texts)
                for strategy in STRATEGIES:
                    settings = dataclasses.replace(base, vector_search=strategy)
                    result.latency[strategy] = await time_recall(pool, data, queries, settings, args.warmup)
                result.latency["plain"] = await time_plain_top_k(pool, data, queries, args.warmup)
                result.recall = await index_recall(
                    pool,
                    data,
                    queries[: args.recall_queries],
                    sorted({*args.ef_search, base.ef_search}),
                    args.global_queries,
                )
                results.append(result)
                print(render_table([result]), flush=True)
        finally:
            await pool.close()
    return results, versions


# --------------------------------------------------------------------------- report


def render_table(results: Sequence[SizeResult]) -> str:
    """Latency per size and vector strategy, then HNSW recall@10 per ef_search (filtered / unfiltered)."""
    lines = [
        "| memories | users | COPY (s) | index build (s) | "
        + " | ".join(f"Recall, {strategy}: p50 / p95 (ms)" for strategy in STRATEGIES)
        + " | plain pgvector top-10: p50 / p95 (ms) | Recall (exact) ÷ plain: p50 / p95 |",
        "|---:|---:|---:|---:|" + "---:|" * (len(STRATEGIES) + 2),
    ]
    for r in results:
        exact, plain = r.latency["exact"], r.latency["plain"]
        cells = [f"{r.latency[strategy][0]:.2f} / {r.latency[strategy][1]:.2f}" for strategy in STRATEGIES]
        lines.append(
            f"| {r.size:,} | {r.users:,} | {r.load_s:.1f} | {r.index_s:.1f} | {' | '.join(cells)} "
            f"| {plain[0]:.2f} / {plain[1]:.2f} | {exact[0] / plain[0]:.2f}× / {exact[1] / plain[1]:.2f}× |"
        )
    efs = sorted({ef for r in results for ef in r.recall})
    lines += [
        "",
        "| memories | " + " | ".join(f"recall@10, ef_search {ef}: filtered / unfiltered" for ef in efs) + " |",
        "|---:|" + "---:|" * len(efs),
    ]
    for r in results:
        cells = [
            f"{r.recall[ef].filtered:.3f} / {r.recall[ef].unfiltered:.3f}"
            + (f" ({r.recall[ef].short} short)" if r.recall[ef].short else "")
            for ef in efs
        ]
        lines.append(f"| {r.size:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_lines() -> list[str]:
    cpu = next(
        (
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    memory = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.rstrip()
    return [f"- `nproc`: {os.cpu_count()}", f"- CPU (/proc/cpuinfo): {cpu}", "- `free -h`:", "", "```", memory, "```"]


def render_section(
    results: Sequence[SizeResult], versions: dict[str, str], args: argparse.Namespace, seconds: float, when: datetime
) -> str:
    largest = max(results, key=lambda r: r.size)
    exact_p95, hnsw_p50 = largest.latency["exact"][1], largest.latency["hnsw"][0]
    ef = MemorySettings.from_env(Env({})).ef_search
    index = largest.recall[ef]
    latency_verdict = (
        f"Recall p95 {exact_p95:.2f} ms at {largest.size:,} memories "
        f"(goal ≤ {GOAL_P95_MS:.0f} ms: {'met' if exact_p95 <= GOAL_P95_MS else 'not met'})"
    )
    recall_verdict = (
        f"HNSW recall@10 at ef_search {ef}: {index.unfiltered:.3f} over all rows, {index.filtered:.3f} "
        f"inside one user's layer (goal ≥ {GOAL_RECALL}: "
        f"{'met' if min(index.unfiltered, index.filtered) >= GOAL_RECALL else 'not met'})"
    )
    sizes = ",".join(str(r.size) for r in results)
    return "\n".join(
        [
            SECTION_TITLE,
            "",
            (
                f"Measured by `rapport bench recall` on {when:%Y-%m-%d %H:%M} UTC in {seconds:.0f} s: PostgreSQL "
                f"{versions['postgres']} (embedded unless DATABASE_URL was set, shared_buffers {versions['shared_buffers']}), "
                f"pgvector {versions['pgvector']}, {args.dim}-d vectors, HNSW m = 16, ef_construction = 64."
            ),
            "",
            "Machine:",
            "",
            *machine_lines(),
            f"- 5-minute load average: {versions['load']} (a shared machine: other work moves the figures)",
            "",
            "What is measured:",
            "",
            (
                f"- Data: `{args.vectors}` random unit vectors (`low-rank`: Gaussian in a random 24-d subspace plus noise, "
                "like text embeddings; `uniform` is the index's worst case) and "
                + (
                    "realistic memory sentences and questions (`tools/bench/recall_texts.py`: people, places, "
                    "activities, foods, times, in the shapes the service stores and users ask)"
                    if args.texts == "realistic"
                    else "8 random words per memory (Zipf-like frequencies)"
                )
                + f", loaded with COPY, users interleaved over the table. {args.query_users} query users own "
                f"{args.per_user} memories each (40 % profile, 60 % relationship over {INSTANCES_PER_USER} personas); "
                f"every other user owns {BACKGROUND_PER_USER}."
            ),
            (
                f"- Recall latency: `server.recall_memories` — the Recall path minus the query embedding: profile and "
                "relationship searched in parallel on two pooled connections, vector ⊕ full text fused by RRF, selection "
                f"and pruning — for {args.queries} random queries after {args.warmup} warm-up ones. *exact* (the default, "
                "`MEMORY_VECTOR_SEARCH=exact`): cosine distance over the user's rows of the layer (btree) and a sort; "
                "*hnsw*: the HNSW index with `hnsw.iterative_scan = relaxed_order`. *plain pgvector top-10*: the same "
                "queries as one `ORDER BY embedding <=> $2 LIMIT 10` over the user's rows (what a vector-only store "
                "runs), in the same run."
            ),
            (
                f"- recall@10: the HNSW top 10 against the exact top 10 (numpy over the same vectors), filtered to one "
                f"user's layer ({args.recall_queries} queries, iterative scan; *short* = fewer than 10 rows returned) and "
                f"over all rows ({args.global_queries} queries)."
            ),
            "",
            render_table(results),
            "",
            f"Result: {latency_verdict}; {recall_verdict}.",
            "",
            (
                "Why Recall uses exact search: a user's layer holds hundreds of rows, so a btree lookup plus a sort "
                "costs the same at any table size and is exact, while an HNSW walk with a filter this selective must "
                f"visit thousands of tuples to find ten of the user's (hnsw p50 {hnsw_p50:.0f} ms at {largest.size:,} "
                "above). The HNSW index stays for whole-table searches (`MEMORY_VECTOR_SEARCH=hnsw`). The full-text "
                "half reads a (user_id, content_tsv) GIN index: only the user's rows containing a word of the question "
                "are read and ranked."
            ),
            "",
            (
                "Reproduce (about a quarter of an hour with 1M on 2 cores, most of it the HNSW build; "
                "`--sizes 10k,100k` takes two minutes):"
            ),
            "",
            "```",
            f"rapport bench recall --sizes {sizes} --queries {args.queries} --vectors {args.vectors} "
            f"--texts {args.texts} --per-user {args.per_user} --query-users {args.query_users}",
            "```",
            "",
        ]
    )


def write_section(path: Path, section: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else None
    path.write_text(merge_section(existing, section, SECTION_TITLE))


def _sizes(text: str) -> list[int]:
    multipliers = {"k": 1_000, "m": 1_000_000}
    sizes = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        try:
            sizes.append(int(float(part[:-1]) * multipliers[part[-1]]) if part[-1] in multipliers else int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected sizes such as 10k,100k,1m, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rapport bench recall", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[10_000, 100_000, 1_000_000],
        help="memory counts, comma-separated, k/m suffixes allowed (default 10k,100k,1m)",
    )
    parser.add_argument("--queries", type=int, default=300, help="measured Recall calls per strategy (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured calls first (default 30)")
    parser.add_argument("--recall-queries", type=int, default=200, help="queries for filtered recall@10 (default 200)")
    parser.add_argument(
        "--global-queries", type=int, default=100, help="queries for unfiltered recall@10 (default 100)"
    )
    parser.add_argument("--per-user", type=int, default=1000, help="memories of each query user (default 1000)")
    parser.add_argument("--query-users", type=int, default=20, help="users the queries come from (default 20)")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension (default 384, the local embedder's)")
    parser.add_argument(
        "--texts",
        choices=("realistic", "random"),
        default="realistic",
        help="memory texts and questions: sentences and questions as users write them, or random words "
        "(default realistic)",
    )
    parser.add_argument(
        "--vectors",
        choices=("low-rank", "uniform"),
        default="low-rank",
        help="random unit vectors from a low-rank model (like text embeddings) or uniform on the "
        "sphere (an index's worst case) (default low-rank)",
    )
    parser.add_argument("--maintenance-work-mem", default="4GB", help="for the index builds (default 4GB)")
    parser.add_argument(
        "--ef-search",
        type=_sizes,
        default=[40, 100, 200],
        help="hnsw.ef_search values for recall@10 (default 40,100,200)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="a Postgres server to use (a scratch database is created); default: DATABASE_URL, "
        "else an embedded Postgres in a temporary folder",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/benchmarks.md"),
        help="Markdown file whose 'Memory recall' section is (re)written",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.queries < 1 or args.warmup < 0 or args.per_user < 1 or args.query_users < 1 or args.dim < 1:
        parser.error("--queries, --per-user, --query-users and --dim must be positive, --warmup not negative")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[1]
    results, versions = asyncio.run(run(args))
    versions["load"] = f"{load_before:.1f} before, {os.getloadavg()[1]:.1f} after"
    section = render_section(results, versions, args, time.perf_counter() - started, datetime.now(UTC))
    print(render_table(results))
    if not args.no_write:
        write_section(args.out, section)
        print(f"wrote the '{SECTION_TITLE[3:]}' section of {args.out}")
    return 0
