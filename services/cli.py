"""The `rapport` command line: up, serve, migrate, seed-personas, import-card, token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from services.servicekit.config import SERVICE_NAMES, ConfigError, Env, rapport_home

log = logging.getLogger("rapport.cli")

MIGRATION_ORDER = ["orchestrator", "affinity", "memory", "insight"]


def migration_params() -> dict[str, dict[str, object]]:
    from services.memory.server import migration_params as memory_params

    return {"memory": memory_params()}


# ---- migrate / seed / cards / token -------------------------------------------------------------


async def migrate(dsn: str, services: list[str] | None = None) -> list[str]:
    from services.servicekit.db import apply_migrations

    return await apply_migrations(dsn, services or MIGRATION_ORDER, migration_params())


async def seed_personas(dsn: str, folder: Path) -> list[tuple[str, bool]]:
    from services.orchestrator.persona_catalog import load_persona_dir, upsert_specs
    from services.servicekit.db import create_pool

    specs = load_persona_dir(folder)
    pool = await create_pool(dsn, max_size=2)
    try:
        return await upsert_specs(pool, specs, source="toml")
    finally:
        await pool.close()


async def import_card(dsn: str, path: Path) -> tuple[str, bool]:
    from services.orchestrator.persona_catalog import load_card, upsert_specs
    from services.servicekit.db import create_pool

    spec = load_card(path)
    pool = await create_pool(dsn, max_size=2)
    try:
        return (await upsert_specs(pool, [spec], source="card"))[0]
    finally:
        await pool.close()


def token_for(env: Env, user: str | None) -> str:
    from gateway.auth import DEFAULT_MAX_TOKEN_LIFETIME, LocalIdentity, max_token_lifetime, mint_token

    ttl = max_token_lifetime(env) or DEFAULT_MAX_TOKEN_LIFETIME
    secret = env.str("SUPABASE_JWT_SECRET")
    if secret:
        user_id = uuid.UUID(user) if user else uuid.uuid4()
        return mint_token(secret, user_id, ttl_seconds=ttl, audience=env.str("JWT_AUDIENCE"))
    identity = LocalIdentity.load_or_create(rapport_home(env))
    if user and uuid.UUID(user) != identity.user_id:
        return mint_token(identity.secret, uuid.UUID(user), ttl_seconds=ttl)
    return mint_token(identity.secret, identity.user_id, ttl_seconds=ttl)


async def manage_keys(dsn: str, args: argparse.Namespace) -> list[str]:
    """`rapport keys create|list|revoke`: the lines to print."""
    from services.orchestrator import api_keys
    from services.servicekit.db import create_pool

    pool = await create_pool(dsn, max_size=2)
    try:
        if args.keys_command == "create":
            key, info = await api_keys.create_api_key(pool, uuid.UUID(args.user), args.name or "")
            return [key, f"id {info.id} ({info.prefix}…): shown once, store it now"]
        if args.keys_command == "list":
            return [
                f"{k.id}  {k.prefix}…  {k.name or '-'}  created {k.created_at:%Y-%m-%d %H:%M}  "
                f"last used {f'{k.last_used_at:%Y-%m-%d %H:%M}' if k.last_used_at else 'never'}"
                f"{'  REVOKED' if k.revoked_at else ''}"
                for k in await api_keys.list_api_keys(pool, uuid.UUID(args.user))
            ] or ["no keys"]
        revoked = await api_keys.revoke_api_key(pool, uuid.UUID(args.id))
        if revoked is None:
            raise ValueError(f"no API key with id {args.id}")
        return [f"revoked {revoked.id} ({revoked.prefix}…)"]
    finally:
        await pool.close()


async def outbox_report(dsn: str, retry_dead: bool) -> list[str]:
    from services.orchestrator.outbox import list_jobs, outbox_counts, retry_dead_jobs
    from services.servicekit.db import create_pool

    pool = await create_pool(dsn, max_size=2)
    try:
        if retry_dead:
            return [f"queued {await retry_dead_jobs(pool)} dead jobs again"]
        counts = await outbox_counts(pool)
        lines = ["  ".join(f"{status}: {counts.get(status, 0)}" for status in ("pending", "done", "dead"))]
        lines += [
            f"dead #{row['id']} {row['target']} turn {row['turn_id']} after {row['attempts']} attempts "
            f"({row['created_at']:%Y-%m-%d %H:%M}): {row['last_error']}"
            for row in await list_jobs(pool, "dead")
        ]
        return lines
    finally:
        await pool.close()


def database_url(env: Env) -> str:
    return env.required("DATABASE_URL", "a postgresql:// URL (rapport up starts an embedded one when it is unset)")


def db_url(env: Env) -> str:
    """`rapport db url`: DATABASE_URL, else the DSN of the running embedded database (password included)."""
    from services.servicekit.embedded_pg import running_dsn

    return env.str("DATABASE_URL") or running_dsn(rapport_home(env))


# ---- up ---------------------------------------------------------------------------------


def up(args: argparse.Namespace) -> int:
    """Start the local stack, print where it is, wait for Ctrl-C (or a child exiting), stop it."""
    from gateway.auth import auth_mode
    from services.local_stack import LocalStack

    port = args.port if args.port is not None else Env().int("RAPPORT_PORT", 8080, 1, 65535)
    stack = LocalStack(dict(os.environ), port=port, announce=lambda line: print(line, flush=True))
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        stack.start()
        url = f"{stack.gateway_url}/"
        print("\nRapport is running.", flush=True)
        # Only the local mode's token is printed, never one signed with a real secret (`rapport token` mints one).
        token = stack.token() if auth_mode(Env(stack.env)) == "local" else None
        print(f"  web page:  {url}{f'#token={token}' if token else ''}", flush=True)
        print(f"  API docs:  {url}docs", flush=True)
        print(f"  token:     {token or 'none printed with a real JWT secret: ask `rapport token`'}", flush=True)
        print(f"  try:       curl -H 'Authorization: Bearer <token>' {url}comp/personas", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while not stop_requested:
            for name, code in stack.exited_children().items():
                print(f"{name} exited with code {code}; stopping", file=sys.stderr, flush=True)
                stop_requested = True
            time.sleep(0.2)
        return 0
    except (RuntimeError, ConfigError) as error:
        print(f"rapport up: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("stopping …", flush=True)
        stack.stop()
        print("stopped.", flush=True)


# ---- serve ------------------------------------------------------------------------------


def serve(name: str) -> int:
    if name in SERVICE_NAMES:
        from services.servicekit.service import serve_forever

        asyncio.run(serve_forever(name))
        return 0
    if name == "gateway":
        from gateway.server import serve_gateway_forever

        asyncio.run(serve_gateway_forever())
        return 0
    if name == "offline-llm":
        from services.offline_llm.server import run_offline_llm_server

        bind = Env().address("BIND_ADDR", "127.0.0.1:8090") or ""
        host, _, port = bind.rpartition(":")
        run_offline_llm_server(host, int(port))
        return 0
    raise SystemExit(f"unknown service {name!r}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    parser = argparse.ArgumentParser(prog="rapport", description="Rapport: a self-hosted engine for AI companions.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start everything locally (embedded Postgres unless DATABASE_URL is set)")
    p_up.add_argument(
        "--port", type=int, default=None, help="gateway port on 127.0.0.1 (default: $RAPPORT_PORT or 8080)"
    )
    p_serve = sub.add_parser("serve", help="run one process (what a container runs)")
    p_serve.add_argument("service", choices=[*SERVICE_NAMES, "gateway", "offline-llm"])
    p_migrate = sub.add_parser("migrate", help="apply SQL migrations (idempotent)")
    p_migrate.add_argument("--service", action="append", choices=MIGRATION_ORDER)
    p_seed = sub.add_parser("seed-personas", help="upsert the personas of a folder of TOML files")
    p_seed.add_argument("dir", type=Path)
    p_card = sub.add_parser("import-card", help="import a SillyTavern character card (V2/V3, JSON or PNG)")
    p_card.add_argument("file", type=Path)
    p_token = sub.add_parser("token", help="print a bearer token for the local user (or --user)")
    p_token.add_argument("--user")
    p_keys = sub.add_parser("keys", help="API keys for the OpenAI-compatible API (/v1)")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)
    p_keys_create = keys_sub.add_parser("create", help="issue a key for a user (printed once)")
    p_keys_create.add_argument("--user", required=True, help="the user's UUID")
    p_keys_create.add_argument("--name", help="a label to recognise the key by")
    keys_sub.add_parser("list", help="a user's keys").add_argument("--user", required=True, help="the user's UUID")
    keys_sub.add_parser("revoke", help="revoke a key").add_argument("id", help="the key's id (from `keys list`)")
    p_chat = sub.add_parser("chat", help="chat in the terminal through the gateway (streams replies)")
    p_chat.add_argument("--persona", help="persona name or id (default: the first)")
    p_chat.add_argument("--url", default=os.environ.get("RAPPORT_URL", "http://127.0.0.1:8080"))
    p_chat.add_argument(
        "--token",
        default=os.environ.get("RAPPORT_TOKEN"),
        help="bearer token (default: the local user's, as `rapport token` prints)",
    )
    p_chat.add_argument("--new", action="store_true", help="start a new session instead of resuming")
    p_db = sub.add_parser("db", help="the database")
    db_sub = p_db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("url", help="print the DSN (DATABASE_URL, or the embedded database while `rapport up` runs)")
    p_outbox = sub.add_parser("outbox", help="post-process queue: counts, and the dead jobs (or --retry-dead)")
    p_outbox.add_argument("--retry-dead", action="store_true", help="queue the dead jobs again")
    p_memory = sub.add_parser("memory", help="memory maintenance")
    memory_sub = p_memory.add_subparsers(dest="memory_command", required=True)
    memory_sub.add_parser("reembed", help="re-embed every memory with the configured embedder (with progress)")
    p_bench = sub.add_parser("bench", help="benchmarks; figures go to docs/benchmarks.md")
    p_bench.add_argument("which", choices=["recall", "turn"])
    p_bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the benchmark (see --help)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up(args)
        if args.command == "serve":
            return serve(args.service)
        env = Env()
        if args.command == "chat":
            import httpx

            from services.chat_client import ChatError, run_chat

            try:
                return run_chat(args.url.rstrip("/"), args.token or token_for(env, None), args.persona, new=args.new)
            except (ChatError, OSError, httpx.HTTPError) as error:
                print(f"rapport chat: {error}", file=sys.stderr)
                return 1
        if args.command == "db":
            try:
                print(db_url(env))
            except RuntimeError as error:
                print(f"rapport db url: {error}", file=sys.stderr)
                return 1
            return 0
        if args.command == "outbox":
            for line in asyncio.run(outbox_report(database_url(env), args.retry_dead)):
                print(line)
            return 0
        if args.command == "memory":
            from services.memory.reembed import main as reembed_main

            return reembed_main(env)
        if args.command == "bench":
            import importlib

            module = importlib.import_module(f"services.{'memory' if args.which == 'recall' else 'orchestrator'}.bench")
            return module.main(args.bench_args)  # type: ignore[no-any-return]
        if args.command == "migrate":
            applied = asyncio.run(migrate(database_url(env), args.service))
            print("\n".join(applied) if applied else "up to date")
            return 0
        if args.command == "seed-personas":
            for name, created in asyncio.run(seed_personas(database_url(env), args.dir)):
                print(f"{'created' if created else 'updated'} {name}")
            return 0
        if args.command == "import-card":
            name, created = asyncio.run(import_card(database_url(env), args.file))
            print(f"{'created' if created else 'updated'} {name}")
            return 0
        if args.command == "keys":
            print("\n".join(asyncio.run(manage_keys(database_url(env), args))))
            return 0
        if args.command == "token":
            print(token_for(env, args.user))
            return 0
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"rapport {args.command}: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
