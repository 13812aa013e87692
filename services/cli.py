"""The `rapport` command line: up, serve, migrate, seed-personas, import-card, token."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
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
    from gateway.auth import LocalIdentity, mint_token

    secret = env.str("SUPABASE_JWT_SECRET")
    if secret:
        user_id = uuid.UUID(user) if user else uuid.uuid4()
        return mint_token(secret, user_id, audience=env.str("JWT_AUDIENCE"))
    identity = LocalIdentity.load_or_create(rapport_home(env))
    if user and uuid.UUID(user) != identity.user_id:
        return mint_token(identity.secret, uuid.UUID(user))
    return mint_token(identity.secret, identity.user_id)


def database_url(env: Env) -> str:
    return env.required("DATABASE_URL", "a postgresql:// URL (rapport up starts an embedded one when it is unset)")


# ---- up ---------------------------------------------------------------------------------

class Stack:
    """The processes of `rapport up`: embedded Postgres, offline LLM, four services, the gateway."""

    def __init__(self, env: dict[str, str], port: int, host: str) -> None:
        self.env = env
        self.port = port
        self.host = host
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.postgres = None

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
        env = {**self.env, **extra_env}
        process = subprocess.Popen([sys.executable, "-m", "services.cli", *args], env=env)
        self.children[name] = process
        return process

    def stop(self) -> None:
        for process in self.children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.children.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self.postgres is not None:
            self.postgres.stop()


def _wait_until(check, what: str, timeout: float, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in stack.children.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode} during start-up")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def up(args: argparse.Namespace) -> int:
    from services.servicekit.embedded_pg import EmbeddedPostgres, free_port
    from services.servicekit.grpc_runtime import peer_serving
    from services.servicekit.llm import OFFLINE_MODEL_ID, llm_endpoint_from_env

    env_map = dict(os.environ)
    env = Env(env_map)
    home = rapport_home(env)
    home.mkdir(parents=True, exist_ok=True)
    env_map["RAPPORT_HOME"] = str(home)
    stack = Stack(env_map, args.port, "127.0.0.1")
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        if not env.str("DATABASE_URL"):
            print(f"starting embedded PostgreSQL (data in {home / 'pgdata'}) …", flush=True)
            stack.postgres = EmbeddedPostgres(home)
            stack.postgres.start()
            env_map["DATABASE_URL"] = stack.postgres.dsn()
        dsn = env_map["DATABASE_URL"]
        applied = asyncio.run(migrate(dsn))
        print(f"migrations: {len(applied)} applied" if applied else "migrations: up to date", flush=True)
        from services.orchestrator.persona_catalog import EXAMPLE_PERSONAS_DIR

        seeded = asyncio.run(seed_personas(dsn, EXAMPLE_PERSONAS_DIR))
        print(f"personas: {', '.join(name for name, _ in seeded)}", flush=True)
        if not env.str("SUPABASE_JWT_SECRET") and not env.str("SUPABASE_URL") and not env.str("SUPABASE_JWKS_URL"):
            env_map["AUTH_MODE"] = "local"
            # Single-user local mode: the web page shows the live relationship meters.
            env_map.setdefault("EXPOSE_AFFINITY_DEBUG", "true")
        if llm_endpoint_from_env(Env(env_map)) is None:
            llm_port = free_port()
            stack.spawn("offline-llm", ["serve", "offline-llm"], {"BIND_ADDR": f"127.0.0.1:{llm_port}"})
            env_map.update({"LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1", "LLM_API_KEY": "offline",
                            "LLM_OFFLINE": "1", "LLM_MODEL": OFFLINE_MODEL_ID})
            print(f"LLM: offline responder ({OFFLINE_MODEL_ID}) — set OPENROUTER_API_KEY or LLM_BASE_URL for a real model",
                  flush=True)
        addresses = {}
        for name in SERVICE_NAMES:
            var = f"{name.upper()}_ADDR"
            addresses[name] = env_map.get(var) or f"127.0.0.1:{free_port()}"
            env_map[var] = addresses[name]
        for name in SERVICE_NAMES:
            stack.spawn(name, ["serve", name], {"BIND_ADDR": addresses[name],
                                                "OTEL_SERVICE_NAME": env_map.get("OTEL_SERVICE_NAME") or f"rapport-{name}"})

        def all_serving() -> bool:
            async def check() -> bool:
                results = await asyncio.gather(*(peer_serving(addr) for addr in addresses.values()))
                return all(results)
            return asyncio.run(check())

        _wait_until(all_serving, "the four services to report SERVING", 90, stack)
        stack.spawn("gateway", ["serve", "gateway"], {"BIND_ADDR": f"127.0.0.1:{args.port}",
                                                      "OTEL_SERVICE_NAME": "rapport-gateway"})

        def gateway_up() -> bool:
            import httpx

            try:
                return httpx.get(f"http://127.0.0.1:{args.port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_until(gateway_up, "the gateway", 60, stack)
        token = token_for(Env(env_map), None)
        url = f"http://127.0.0.1:{args.port}/"
        print("\nRapport is running.", flush=True)
        print(f"  web page:  {url}", flush=True)
        print(f"  API docs:  {url}docs", flush=True)
        print(f"  token:     {token}", flush=True)
        print(f"  try:       curl -H 'Authorization: Bearer <token>' {url}comp/personas", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while not stop_requested:
            for name, process in stack.children.items():
                if process.poll() is not None:
                    print(f"{name} exited with code {process.returncode}; stopping", file=sys.stderr, flush=True)
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
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="rapport", description="Rapport: a self-hosted engine for AI companions.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start everything locally (embedded Postgres unless DATABASE_URL is set)")
    p_up.add_argument("--port", type=int, default=int(os.environ.get("RAPPORT_PORT", "8080")))
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
