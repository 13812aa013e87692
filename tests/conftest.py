"""Shared fixtures: one real PostgreSQL for the whole session (embedded, or DATABASE_URL), a migrated
template database, a fresh database per test, and the real services started on ephemeral ports."""
from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.admin import migrate, seed_personas
from services.orchestrator.persona_catalog import EXAMPLE_PERSONAS_DIR
from services.servicekit.embedded_pg import free_port
from services.servicekit.telemetry import setup_telemetry

from .stack import Stack, start_stack

TEMPLATE_DB = "rapport_test_template"
SPANS = InMemorySpanExporter()
# `rapport up` serves the public gRPC API on 50051 by default; the stacks the tests start take a free port,
# so that runs side by side (and a running `rapport up`) do not collide.
os.environ.setdefault("RAPPORT_GRPC_PORT", str(free_port()))


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    query = ""
    if "?" in url.rpartition("/")[2]:
        query = "?" + url.rpartition("?")[2]
    return f"{base}/{name}{query}"


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A maintenance URL of a real PostgreSQL with pgvector."""
    configured = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    from services.servicekit.embedded_pg import EmbeddedPostgres

    os.environ.setdefault("RAPPORT_PG_FSYNC_OFF", "1")
    home = Path(tempfile.mkdtemp(prefix="rapport-test-pg-"))
    server = EmbeddedPostgres(home)
    server.start()
    try:
        yield server.dsn("postgres")
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def template_database(postgres_admin_url: str) -> str:
    """A database with every migration applied and the example personas, cloned per test."""
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    url = _with_database(postgres_admin_url, TEMPLATE_DB)
    await migrate(url)
    await seed_personas(url, EXAMPLE_PERSONAS_DIR)
    return TEMPLATE_DB


@pytest.fixture
async def database_url(postgres_admin_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test (isolated data)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()
    yield _with_database(postgres_admin_url, name)
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    setup_telemetry("tests", extra_exporter=SPANS)
    return SPANS


@pytest.fixture
async def stack(database_url: str, spans: InMemorySpanExporter) -> AsyncIterator[Stack]:
    """Affinity, memory, insight, orchestrator and the gateway, real, on ephemeral ports."""
    running = await start_stack(database_url)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test database, for assertions on what was persisted."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()
