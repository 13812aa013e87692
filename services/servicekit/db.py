"""The one database pool factory and the migrations runner.

Every service owns one schema and keeps its SQL migrations in `services/<name>/migrations/NNN_name.sql`
(the folder its registry entry names).
`rapport migrate` applies them in order, once each, recorded in `public.rapport_migrations`, under an
advisory lock so two migrators never race.

Every pooled connection runs with server-side timeouts (`DbTimeouts`): a statement that waits for a row
or advisory lock longer than `DB_LOCK_TIMEOUT_SECS` (10) fails with PostgreSQL's `lock_not_available`,
and one that runs longer than `DB_STATEMENT_TIMEOUT_SECS` (30) with `query_canceled` — a clear error in
bounded time, where a locked row used to leave a client waiting with no byte. 0 disables either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import asyncpg
from pgvector.asyncpg import register_vector

from . import registry
from .config import Env

log = logging.getLogger("rapport.db")

MIGRATION_LOCK_KEY = 0x52415050  # "RAPP"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    has_vector = await conn.fetchval("SELECT 1 FROM pg_type WHERE typname = 'vector'")
    if has_vector:
        await register_vector(conn)


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection released without asyncpg's reset query (one round trip saved per use).

    asyncpg still ends any open transaction and drops listeners on release; our pooled connections hold
    no other session state: settings are `SET LOCAL`, advisory locks are transaction-scoped, and LISTEN
    runs on dedicated connections.
    """

    def get_reset_query(self) -> str:
        return ""


@dataclass(frozen=True)
class DbTimeouts:
    """How long PostgreSQL lets one statement of a pooled connection run, and wait for a lock (seconds;
    0 = no limit)."""

    statement_secs: float = 30.0
    lock_secs: float = 10.0

    @classmethod
    def from_env(cls, env: Env | None = None) -> DbTimeouts:
        env = env or Env()
        return cls(
            statement_secs=env.float("DB_STATEMENT_TIMEOUT_SECS", cls.statement_secs, 0),
            lock_secs=env.float("DB_LOCK_TIMEOUT_SECS", cls.lock_secs, 0),
        )

    def server_settings(self) -> dict[str, str]:
        return {
            "statement_timeout": str(round(self.statement_secs * 1000)),
            "lock_timeout": str(round(self.lock_secs * 1000)),
        }


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float | None = None,
    timeouts: DbTimeouts | None = None,
) -> asyncpg.Pool:
    """An asyncpg pool with JSON codecs and pgvector registered on every connection, and the server-side
    timeouts (`timeouts`, default from the environment; `command_timeout` overrides the statement one)."""
    timeouts = timeouts or DbTimeouts.from_env()
    if command_timeout is not None:
        timeouts = replace(timeouts, statement_secs=command_timeout)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # The client's own deadline comes a little after the server's, so PostgreSQL's error is the one seen.
        command_timeout=timeouts.statement_secs + 1.0 if timeouts.statement_secs else None,
        server_settings=timeouts.server_settings(),
        connection_class=PooledConnection,
    )
    assert pool is not None
    return pool


@dataclass(frozen=True)
class Migration:
    service: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(service: str, params: Mapping[str, object] | None = None) -> list[Migration]:
    """The ordered migrations of a registered service; `{{NAME}}` placeholders are filled from params."""
    folder = registry.service(service).migrations_dir
    paths = sorted(folder.glob("*.sql"))
    if not paths:
        raise FileNotFoundError(f"service {service!r} has no migrations: expected {folder}/001_<name>.sql")
    migrations: list[Migration] = []
    for path in paths:
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must look like 001_name.sql: {path}")
        sql = path.read_text()
        for key, value in (params or {}).items():
            sql = sql.replace("{{" + key + "}}", str(value))
        leftover = re.search(r"\{\{([A-Z_]+)\}\}", sql)
        if leftover:
            raise ValueError(f"migration {path.name} needs parameter {leftover.group(1)}")
        migrations.append(Migration(service, int(match.group(1)), path.stem, sql))
    return migrations


async def apply_migrations(
    dsn: str, services: list[str], params: Mapping[str, Mapping[str, object]] | None = None
) -> list[str]:
    """Apply pending migrations of the given services; idempotent. Returns what was applied."""
    applied: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS public.rapport_migrations (
                       service text NOT NULL,
                       version int NOT NULL,
                       name text NOT NULL,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (service, version))"""
            )
            for service in services:
                done = {
                    r["version"]: r["checksum"]
                    for r in await conn.fetch(
                        "SELECT version, checksum FROM public.rapport_migrations WHERE service = $1", service
                    )
                }
                for migration in load_migrations(service, (params or {}).get(service)):
                    if migration.version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            "INSERT INTO public.rapport_migrations (service, version, name, checksum) VALUES ($1, $2, $3, $4)",
                            service,
                            migration.version,
                            migration.name,
                            migration.checksum,
                        )
                    applied.append(f"{service}/{migration.name}")
                    log.info("applied migration %s/%s", service, migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied
