"""Administrative operations on a Rapport database and installation.

What `rapport migrate`, `seed-personas`, `import-card`, `keys`, `outbox` and `token` do
(services/cli.py parses the arguments and prints), and what `rapport up` (services/local_stack.py)
runs before it starts the services. Both import this module; it imports neither.
`python -m services.admin` checks an installation (the Docker build runs it).
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from services.orchestrator import api_keys
from services.orchestrator.outbox import list_jobs, outbox_counts, retry_dead_jobs
from services.orchestrator.persona_catalog import EXAMPLE_PERSONAS_DIR, load_card, load_persona_dir, upsert_specs
from services.servicekit import registry
from services.servicekit.config import Env, rapport_home
from services.servicekit.db import apply_migrations, create_pool, load_migrations
from services.servicekit.embedded_pg import running_dsn
from services.servicekit.identity import DEFAULT_MAX_TOKEN_LIFETIME, LocalIdentity, max_token_lifetime, mint_token


def database_url(env: Env) -> str:
    return env.required("DATABASE_URL", "a postgresql:// URL (rapport up starts an embedded one when it is unset)")


@asynccontextmanager
async def _admin_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


# ---- migrations -------------------------------------------------------------------------------


def migration_params() -> dict[str, dict[str, object]]:
    """The `{{NAME}}` values of each service's migrations, from the function its registry entry names
    (memory: the dimension and model of the configured embedder; no model weights are loaded)."""
    params: dict[str, dict[str, object]] = {}
    for spec in registry.SERVICES:
        if spec.migration_params:
            module, _, function = spec.migration_params.partition(":")
            params[spec.name] = getattr(importlib.import_module(module), function)()
    return params


async def migrate(dsn: str, services: list[str] | None = None) -> list[str]:
    """Apply the pending migrations of `services` (default: every registered one, in registry order)."""
    return await apply_migrations(dsn, services or list(registry.service_names()), migration_params())


# ---- personas, cards, tokens ------------------------------------------------------------------


async def seed_personas(dsn: str, folder: Path) -> list[tuple[str, bool]]:
    """Upsert the personas of a folder of TOML files by name: (name, created) for each."""
    specs = load_persona_dir(folder)
    async with _admin_pool(dsn) as pool:
        return await upsert_specs(pool, specs, source="toml")


async def import_card(dsn: str, path: Path) -> tuple[str, bool]:
    """Import a SillyTavern character card (V2/V3, JSON or PNG): (name, created)."""
    spec = load_card(path)
    async with _admin_pool(dsn) as pool:
        return (await upsert_specs(pool, [spec], source="card"))[0]


def token_for(env: Env, user: str | None) -> str:
    """A bearer token the gateway accepts: signed with SUPABASE_JWT_SECRET when set, else the local identity's."""
    ttl = max_token_lifetime(env) or DEFAULT_MAX_TOKEN_LIFETIME
    secret = env.str("SUPABASE_JWT_SECRET")
    if secret:
        user_id = uuid.UUID(user) if user else uuid.uuid4()
        return mint_token(secret, user_id, ttl_seconds=ttl, audience=env.str("JWT_AUDIENCE"))
    identity = LocalIdentity.load_or_create(rapport_home(env))
    if user and uuid.UUID(user) != identity.user_id:
        return mint_token(identity.secret, uuid.UUID(user), ttl_seconds=ttl)
    return mint_token(identity.secret, identity.user_id, ttl_seconds=ttl)


def db_url(env: Env) -> str:
    """`rapport db url`: DATABASE_URL, else the DSN of the running embedded database (password included)."""
    return env.str("DATABASE_URL") or running_dsn(rapport_home(env))


# ---- API keys and the post-process queue: the lines `rapport keys` / `rapport outbox` print ----------


async def create_key(dsn: str, user: str, name: str) -> list[str]:
    async with _admin_pool(dsn) as pool:
        key, info = await api_keys.create_api_key(pool, uuid.UUID(user), name)
    return [key, f"id {info.id} ({info.prefix}…): shown once, store it now"]


async def list_keys(dsn: str, user: str) -> list[str]:
    async with _admin_pool(dsn) as pool:
        keys = await api_keys.list_api_keys(pool, uuid.UUID(user))
    return [
        f"{k.id}  {k.prefix}…  {k.name or '-'}  created {k.created_at:%Y-%m-%d %H:%M}  "
        f"last used {f'{k.last_used_at:%Y-%m-%d %H:%M}' if k.last_used_at else 'never'}"
        f"{'  REVOKED' if k.revoked_at else ''}"
        for k in keys
    ] or ["no keys"]


async def revoke_key(dsn: str, key_id: str) -> list[str]:
    """Revoke an API key or a service key by id."""
    async with _admin_pool(dsn) as pool:
        revoked = await api_keys.revoke_api_key(pool, uuid.UUID(key_id)) or await api_keys.revoke_service_key(
            pool, uuid.UUID(key_id)
        )
    if revoked is None:
        raise ValueError(f"no API key or service key with id {key_id}")
    return [f"revoked {revoked.id} ({revoked.prefix}…)"]


async def create_service_key(dsn: str, service: str, scopes: str) -> list[str]:
    async with _admin_pool(dsn) as pool:
        key, info = await api_keys.create_service_key(pool, service, api_keys.parse_scopes(scopes))
    return [key, f"id {info.id} ({info.prefix}…) for {info.service}, scopes {','.join(info.scopes)}: shown once"]


async def list_service_keys(dsn: str, service: str | None) -> list[str]:
    async with _admin_pool(dsn) as pool:
        keys = await api_keys.list_service_keys(pool, service or None)
    return [
        f"{k.id}  {k.prefix}…  {k.service}  scopes {','.join(k.scopes)}  created {k.created_at:%Y-%m-%d %H:%M}  "
        f"last used {f'{k.last_used_at:%Y-%m-%d %H:%M}' if k.last_used_at else 'never'}"
        f"{'  REVOKED' if k.revoked_at else ''}"
        for k in keys
    ] or ["no service keys"]


async def outbox_report(dsn: str, retry_dead: bool) -> list[str]:
    """Counts per status and the dead jobs; or, with `retry_dead`, queue the dead jobs again."""
    async with _admin_pool(dsn) as pool:
        if retry_dead:
            return [f"queued {await retry_dead_jobs(pool)} dead jobs again"]
        counts = await outbox_counts(pool)
        lines = ["  ".join(f"{status}: {counts.get(status, 0)}" for status in ("pending", "done", "dead"))]
        lines += [
            f"dead #{row.id} {row.target} turn {row.turn_id} after {row.attempts} attempts "
            f"({row.created_at:%Y-%m-%d %H:%M}): {row.last_error}"
            for row in await list_jobs(pool, "dead")
        ]
        return lines


# ---- the installation ---------------------------------------------------------------------------


def check_installation() -> list[str]:
    """Import every process's module and read every service's migrations and the example personas, from
    wherever Rapport is installed: what the Docker build and a fresh `pip install .` are checked with.
    Raises on the first thing missing; returns one line per part found."""
    lines = []
    params = migration_params()
    for spec in registry.SERVICES:
        importlib.import_module(spec.server_module)
        migrations = load_migrations(spec.name, params.get(spec.name))
        lines.append(f"{spec.name}: {spec.server_module}, {len(migrations)} migrations")
    for module in ("gateway.server", "services.cli", "services.offline_llm.server"):
        importlib.import_module(module)
        lines.append(f"{module}: imported")
    page = importlib.import_module("gateway.app").STATIC_DIR / "index.html"
    if not page.is_file():
        raise FileNotFoundError(f"the gateway's web page is missing: {page}")
    lines.append(f"web page: {page}")
    personas = load_persona_dir(EXAMPLE_PERSONAS_DIR)
    if not personas:
        raise FileNotFoundError(f"no example personas in {EXAMPLE_PERSONAS_DIR}")
    lines.append(f"example personas: {', '.join(spec.name for spec in personas)}")
    return lines


if __name__ == "__main__":
    print("\n".join(check_installation()))
