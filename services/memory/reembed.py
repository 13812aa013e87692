"""`rapport memory reembed`: re-embed every memory with the configured embedder.

Run it after changing the embedder (the memory service refuses to start until then). The new vectors
go to a scratch column in batches, with progress, while the old column stays intact — a crash
leaves the old embeddings working and a re-run starts over. The switch (new column live, HNSW index
rebuilt, `memory.embedding_config` updated to the new model and dimension) is one transaction;
memories written meanwhile are embedded inside it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.memory import store
from services.memory.embedders import Embedder
from services.memory.server import configured_embedder
from services.servicekit.config import Env
from services.servicekit.db import create_pool

BATCH = 128


@dataclass(frozen=True)
class ReembedReport:
    previous: tuple[str, int]
    current: tuple[str, int]
    reembedded: int
    seconds: float


async def reembed(dsn: str, embedder: Embedder, progress: Callable[[str], None], batch: int = BATCH) -> ReembedReport:
    started = time.monotonic()
    pool = await create_pool(dsn, min_size=1, max_size=2, command_timeout=3600)
    try:
        previous = await store.embedding_config(pool)
        target = (embedder.model, embedder.dim)
        if previous == target and await store.stale_embeddings(pool, embedder.model) == 0:
            progress(f"memories are already embedded with {embedder.model} ({embedder.dim}-d); nothing to do")
            return ReembedReport(previous, target, 0, time.monotonic() - started)
        total = await store.count_memories(pool)
        progress(
            f"re-embedding {total} memories: {previous[0]} ({previous[1]}-d) → {embedder.model} ({embedder.dim}-d)"
        )
        await store.prepare_reembedding(pool, embedder.dim)
        done = 0
        while rows := await store.memories_to_reembed(pool, batch):
            vectors = await embedder.embed([row["content"] for row in rows], "document")
            await store.store_reembedded(pool, [row["id"] for row in rows], vectors)
            done += len(rows)
            progress(f"  {done}/{max(total, done)} ({100 * done / max(total, done, 1):.0f}%)")
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE memory.memories IN SHARE ROW EXCLUSIVE MODE")
            while late := await store.memories_to_reembed(conn, batch):  # written while we were working
                vectors = await embedder.embed([row["content"] for row in late], "document")
                await store.store_reembedded(conn, [row["id"] for row in late], vectors)
                done += len(late)
            progress("switching to the new vectors and rebuilding the vector index …")
            await store.switch_embeddings(conn, embedder.model, embedder.dim)
        seconds = time.monotonic() - started
        progress(f"done: {done} memories re-embedded with {embedder.model} ({embedder.dim}-d) in {seconds:.1f} s")
        return ReembedReport(previous, target, done, seconds)
    finally:
        await pool.close()


def main(env: Env) -> int:
    dsn = env.required("DATABASE_URL", "a postgresql:// URL")
    embedder = configured_embedder(env.environ)
    asyncio.run(reembed(dsn, embedder, lambda line: print(line, file=sys.stdout, flush=True)))
    return 0
