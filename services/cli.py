"""The `rapport` command line: it parses, runs the operation and prints.

The operations live elsewhere: administration in services/admin.py, `rapport up` in
services/local_stack.py, one process in services/servicekit/service.py (a gRPC service of the
registry) or gateway/server.py, the benchmarks in tools/bench/ (a source checkout only).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from services import admin

# Two operations that moved to services/admin.py, at their old import path (tests import them from here).
from services.admin import migration_params as migration_params
from services.admin import outbox_report as outbox_report
from services.local_stack import DEFAULT_GRPC_PORT, CrashLoop, LocalStack
from services.servicekit import registry
from services.servicekit.config import ConfigError, Env, rapport_home
from services.servicekit.identity import auth_mode
from services.servicekit.service import serve_forever

CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = {
    "recall": "tools.bench.recall",
    "turn": "tools.bench.turn",
    "memory": "tools.bench.memory",
    "event-log": "tools.bench.event_log",
}
OTHER_PROCESSES = (registry.GATEWAY, "offline-llm")  # what `rapport serve` runs besides the gRPC services
SUPERVISE_SECONDS = 0.2  # how often `rapport up` checks its children


# ---- up ---------------------------------------------------------------------------------


def up(args: argparse.Namespace) -> int:
    """Start the local stack, print where it is, supervise it (a crashed process is restarted) until Ctrl-C or a
    crash loop, stop it."""
    port = args.port if args.port is not None else Env().int("RAPPORT_PORT", 8080, 1, 65535)
    grpc_port = (
        args.grpc_port if args.grpc_port is not None else Env().int("RAPPORT_GRPC_PORT", DEFAULT_GRPC_PORT, 1, 65535)
    )
    # The screen shows the progress lines; every process's own log goes to <home>/logs/<name>.log.
    if "LOG_LEVEL" not in os.environ:
        logging.getLogger().setLevel(logging.WARNING)
    logs = rapport_home(Env()) / "logs"
    stack = LocalStack(
        dict(os.environ),
        port=port,
        grpc_port=grpc_port,
        replicas=args.replicas,
        log_dir=logs,
        announce=lambda line: print(line, flush=True),
    )
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
        print(f"  gRPC API:  {stack.grpc_address} (for backends: rapport keys create --service NAME)", flush=True)
        print(f"  logs:      {logs}/", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while not stop_requested:
            stack.supervise()  # restarts what exited; CrashLoop when a process keeps exiting
            time.sleep(SUPERVISE_SECONDS)
        return 0
    except (RuntimeError, ConfigError) as error:
        where = f" (logs: {logs}/)" if isinstance(error, RuntimeError) and not isinstance(error, CrashLoop) else ""
        print(f"rapport up: {error}{where}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("stopping …", flush=True)
        stack.stop()
        print("stopped.", flush=True)


# ---- serve ------------------------------------------------------------------------------


def serve(name: str) -> int:
    if name in registry.service_names():
        asyncio.run(serve_forever(name))
        return 0
    # The HTTP processes' modules are imported only by the process that runs them (FastAPI, uvicorn).
    if name == registry.GATEWAY:
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


# ---- bench ------------------------------------------------------------------------------


def bench(which: str, argv: list[str]) -> int:
    """`rapport bench recall|turn`: the benchmarks are tools of a source checkout (tools/bench/), not
    part of the installed package; run from a checkout, they are imported from it."""
    if not (CHECKOUT_ROOT / "tools" / "bench").is_dir():
        print(
            "rapport bench: the benchmarks run from a source checkout of Rapport (tools/bench/ is not "
            "installed): clone the repository, `pip install -e .` there and run `rapport bench` again",
            file=sys.stderr,
        )
        return 2
    if str(CHECKOUT_ROOT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT_ROOT))
    module = importlib.import_module(BENCHMARKS[which])
    return int(module.main(argv))


async def manage_keys(dsn: str, args: argparse.Namespace) -> list[str]:
    """`rapport keys create|list|revoke`: the lines to print (API keys with --user, service keys with --service)."""
    if args.keys_command == "create":
        if args.service is not None:
            return await admin.create_service_key(dsn, args.service, args.scope or "chat")
        if args.scope is not None:
            raise ValueError("--scope applies to service keys (--service NAME)")
        return await admin.create_key(dsn, args.user, args.name or "")
    if args.keys_command == "list":
        if args.user is None:
            return await admin.list_service_keys(dsn, args.service)
        return await admin.list_keys(dsn, args.user)
    return await admin.revoke_key(dsn, args.id)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


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
    p_up.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help=f"port of the public gRPC API on 127.0.0.1 (default: $RAPPORT_GRPC_PORT or {DEFAULT_GRPC_PORT})",
    )
    p_up.add_argument(
        "--replicas",
        type=_positive_int,
        default=1,
        help="processes of each gRPC service, calls balanced over them (round_robin) as in Kubernetes (default 1)",
    )
    p_serve = sub.add_parser("serve", help="run one process (what a container runs)")
    p_serve.add_argument("service", choices=[*registry.service_names(), *OTHER_PROCESSES])
    p_migrate = sub.add_parser("migrate", help="apply SQL migrations (idempotent)")
    p_migrate.add_argument("--service", action="append", choices=registry.service_names())
    p_seed = sub.add_parser("seed-personas", help="upsert the personas of a folder of TOML files")
    p_seed.add_argument("dir", type=Path)
    p_card = sub.add_parser("import-card", help="import a SillyTavern character card (V2/V3, JSON or PNG)")
    p_card.add_argument("file", type=Path)
    p_token = sub.add_parser("token", help="print a bearer token for the local user (or --user)")
    p_token.add_argument("--user")
    p_keys = sub.add_parser(
        "keys",
        help="API keys for the OpenAI-compatible API (/v1, --user) and service keys for the gRPC API (--service)",
    )
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)
    p_keys_create = keys_sub.add_parser("create", help="issue a key for a user or a backend (printed once)")
    owner = p_keys_create.add_mutually_exclusive_group(required=True)
    owner.add_argument("--user", help="the user's UUID: an API key acting for that user")
    owner.add_argument("--service", help="a backend's name: a service key that may act for any user")
    p_keys_create.add_argument("--name", help="a label to recognise an API key by")
    p_keys_create.add_argument("--scope", help="a service key's scopes, comma-separated: chat, data (default chat)")
    p_keys_list = keys_sub.add_parser("list", help="a user's API keys, or the service keys")
    listed = p_keys_list.add_mutually_exclusive_group(required=True)
    listed.add_argument("--user", help="the user's UUID")
    listed.add_argument("--service", nargs="?", const="", help="service keys (of one backend, when named)")
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
    p_chat.add_argument("--verbose", action="store_true", help="also show library logs (HTTP requests) on stderr")
    p_db = sub.add_parser("db", help="the database")
    db_sub = p_db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("url", help="print the DSN (DATABASE_URL, or the embedded database while `rapport up` runs)")
    p_outbox = sub.add_parser("outbox", help="post-process queue: counts, and the dead jobs (or --retry-dead)")
    p_outbox.add_argument("--retry-dead", action="store_true", help="queue the dead jobs again")
    p_memory = sub.add_parser("memory", help="memory maintenance")
    memory_sub = p_memory.add_subparsers(dest="memory_command", required=True)
    memory_sub.add_parser("reembed", help="re-embed every memory with the configured embedder (with progress)")
    p_bench = sub.add_parser("bench", help="benchmarks; figures go to docs/benchmarks.md")
    p_bench.add_argument("which", choices=sorted(BENCHMARKS))
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

            if not args.verbose:  # only the conversation on screen
                logging.getLogger().setLevel(logging.WARNING)
            try:
                return run_chat(
                    args.url.rstrip("/"), args.token or admin.token_for(env, None), args.persona, new=args.new
                )
            except (ChatError, OSError, httpx.HTTPError) as error:
                print(f"rapport chat: {error}", file=sys.stderr)
                return 1
        if args.command == "db":
            try:
                print(admin.db_url(env))
            except RuntimeError as error:
                print(f"rapport db url: {error}", file=sys.stderr)
                return 1
            return 0
        if args.command == "outbox":
            for line in asyncio.run(admin.outbox_report(admin.database_url(env), args.retry_dead)):
                print(line)
            return 0
        if args.command == "memory":
            from services.memory.reembed import main as reembed_main

            return reembed_main(env)
        if args.command == "bench":
            return bench(args.which, args.bench_args)
        if args.command == "migrate":
            applied = asyncio.run(admin.migrate(admin.database_url(env), args.service))
            print("\n".join(applied) if applied else "up to date")
            return 0
        if args.command == "seed-personas":
            for name, created in asyncio.run(admin.seed_personas(admin.database_url(env), args.dir)):
                print(f"{'created' if created else 'updated'} {name}")
            return 0
        if args.command == "import-card":
            name, created = asyncio.run(admin.import_card(admin.database_url(env), args.file))
            print(f"{'created' if created else 'updated'} {name}")
            return 0
        if args.command == "keys":
            print("\n".join(asyncio.run(manage_keys(admin.database_url(env), args))))
            return 0
        if args.command == "token":
            print(admin.token_for(env, args.user))
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
