"""Everything Rapport needs on one machine, as separate processes: what `rapport up` runs and what
`rapport bench turn` measures.

`LocalStack.start()` brings up, in order: the embedded PostgreSQL (unless `DATABASE_URL` is set),
migrations and the example personas, the offline LLM responder (unless a provider is configured),
every service of the registry (`python -m services.cli serve <name>`, waiting until each reports
SERVING) — the orchestrator, whose gRPC API backends call, on `grpc_port` (default 50051), the others on
free ports — and the gateway (waiting for `/readyz`). The services call each other with the internal
token of `$RAPPORT_HOME/internal-token` (generated once) and serve reflection (`GRPC_REFLECTION`). `stop()` sends SIGTERM to every child, waits,
kills what is left, and stops Postgres last: no process outlives the stack. As a context manager
it starts on enter and stops on exit (also when start-up fails half-way).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.admin import migrate, seed_personas, token_for
from services.orchestrator.persona_catalog import EXAMPLE_PERSONAS_DIR
from services.servicekit import registry
from services.servicekit.config import Env, rapport_home
from services.servicekit.embedded_pg import EmbeddedPostgres, free_port
from services.servicekit.grpc_security import INTERNAL_TOKEN_FILE, GrpcTls, ensure_internal_token

SERVICES_TIMEOUT = 90.0
GATEWAY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
OFFLINE_LLM_NOTE = "set OPENROUTER_API_KEY or LLM_BASE_URL for a real model"
DEFAULT_GRPC_PORT = registry.service("orchestrator").default_port  # the public gRPC API


def _silent(line: str) -> None:
    """The default announcer: say nothing."""


def grpc_serving(address: str, timeout: float = 1.0, tls: GrpcTls | None = None) -> bool:
    """True when the gRPC health service at `address` reports SERVING (blocking; no event loop needed)."""
    credentials = tls.channel_credentials() if tls is not None else None
    with grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def port_free(address: str) -> bool:
    """Whether a TCP port on this machine can be bound (nothing listens there)."""
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
    return True


def http_ready(url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class LocalStack:
    """Postgres, offline LLM, the registered services and the gateway as child processes of this one.

    `env` is the environment the children start from (default: this process's); `port` the
    gateway's port (default: a free one, chosen at start); `grpc_port` the public gRPC API's (the
    orchestrator's; default: a free one; `ORCHESTRATOR_ADDR` wins when set); `log_dir` sends each child's output to `<name>.log` there
    instead of this process's stdout/stderr; `announce` receives the progress lines `rapport up`
    prints.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        grpc_port: int | None = None,
        log_dir: Path | None = None,
        announce: Callable[[str], None] = _silent,
    ) -> None:
        self.env: dict[str, str] = dict(os.environ if env is None else env)
        self.port = port  # None: a free port, chosen just before the gateway starts (no time for a clash)
        self.grpc_port = grpc_port
        self.log_dir = log_dir
        self.announce = announce
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.addresses: dict[str, str] = {}
        self.postgres: EmbeddedPostgres | None = None
        self._logs: list[IO[bytes]] = []

    # -- what callers use -------------------------------------------------------------------

    @property
    def home(self) -> Path:
        return rapport_home(Env(self.env))

    @property
    def gateway_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the gateway has no port until the stack is started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str:
        """The public gRPC API (the orchestrator): what backends dial."""
        return self.addresses["orchestrator"]

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]

    @property
    def llm_base_url(self) -> str:
        return self.env["LLM_BASE_URL"]

    def token(self, user: uuid.UUID | str | None = None) -> str:
        """A bearer token the gateway accepts, for `user` (default: the local user)."""
        return token_for(Env(self.env), str(user) if user is not None else None)

    @property
    def pids(self) -> dict[str, int]:
        """Process id of every child by name, and of the Postgres server ("postgres") when embedded."""
        pids = {name: process.pid for name, process in self.children.items()}
        if self.postgres is not None and self.postgres.process is not None:
            pids["postgres"] = self.postgres.process.pid
        return pids

    def exited_children(self) -> dict[str, int]:
        """Children that are no longer running, with their exit codes."""
        return {name: code for name, process in self.children.items() if (code := process.poll()) is not None}

    # -- start ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start everything and wait until it serves. Raises RuntimeError (or ConfigError) on failure;
        call `stop()` afterwards either way (the context manager does)."""
        # Imported here, not at the top: the openai client takes most of a second to import, and every
        # `rapport` command imports this module.
        from services.servicekit.llm import OFFLINE_MODEL_ID, llm_endpoint_from_env

        env = Env(self.env)
        home = rapport_home(env)
        home.mkdir(parents=True, exist_ok=True)
        self.env["RAPPORT_HOME"] = str(home)
        if not env.str("DATABASE_URL"):
            self.announce(f"starting embedded PostgreSQL (data in {home / 'pgdata'}) …")
            self.postgres = EmbeddedPostgres(home)
            self.postgres.start()
            self.env["DATABASE_URL"] = self.postgres.dsn()
        applied = asyncio.run(migrate(self.database_url))
        self.announce(f"migrations: {len(applied)} applied" if applied else "migrations: up to date")
        seeded = asyncio.run(seed_personas(self.database_url, EXAMPLE_PERSONAS_DIR))
        self.announce(f"personas: {', '.join(name for name, _ in seeded)}")
        ensure_internal_token(home)
        self.env.setdefault("RAPPORT_INTERNAL_TOKEN_FILE", str(home / INTERNAL_TOKEN_FILE))
        self.env.setdefault("GRPC_REFLECTION", "true")  # grpcurl and other tools can list the API
        if not env.str("SUPABASE_JWT_SECRET") and not env.str("SUPABASE_URL") and not env.str("SUPABASE_JWKS_URL"):
            self.env["AUTH_MODE"] = "local"
            # Single-user local mode: the web page shows the live relationship meters.
            self.env.setdefault("EXPOSE_AFFINITY_DEBUG", "true")
        if llm_endpoint_from_env(Env(self.env)) is None:
            llm_port = free_port()
            self._spawn("offline-llm", {"BIND_ADDR": f"127.0.0.1:{llm_port}"})
            self.env.update(
                {
                    "LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
                    "LLM_API_KEY": "offline",
                    "LLM_OFFLINE": "1",
                    "LLM_MODEL": OFFLINE_MODEL_ID,
                }
            )
            self.announce(f"LLM: offline responder ({OFFLINE_MODEL_ID}) — {OFFLINE_LLM_NOTE}")
        for spec in registry.SERVICES:
            port = self.grpc_port if spec.name == "orchestrator" and self.grpc_port else free_port()
            self.addresses[spec.name] = self.env.get(spec.address_var) or f"127.0.0.1:{port}"
            self.env[spec.address_var] = self.addresses[spec.name]
        if not port_free(self.grpc_address):
            raise RuntimeError(
                f"{self.grpc_address} (the gRPC API) is in use: pass --grpc-port or set RAPPORT_GRPC_PORT"
            )
        tls = GrpcTls.from_env(Env(self.env))  # the health checks speak TLS when the services do
        for spec in registry.SERVICES:
            self._spawn(
                spec.name,
                {
                    "BIND_ADDR": self.addresses[spec.name],
                    "OTEL_SERVICE_NAME": self.env.get("OTEL_SERVICE_NAME") or spec.telemetry_name,
                },
            )
        self._wait_until(
            lambda: all(grpc_serving(address, tls=tls) for address in self.addresses.values()),
            "every service to report SERVING",
            SERVICES_TIMEOUT,
        )
        for name in registry.service_names():
            self.announce(f"rapport {name} serving on {self.addresses[name]}")
        self.port = self.port or free_port()
        self._spawn("gateway", {"BIND_ADDR": f"127.0.0.1:{self.port}", "OTEL_SERVICE_NAME": "rapport-gateway"})
        self._wait_until(lambda: http_ready(f"{self.gateway_url}/readyz"), "the gateway", GATEWAY_TIMEOUT)
        self.announce(f"rapport gateway serving on {self.gateway_url}")
        return self

    def _spawn(self, name: str, extra_env: dict[str, str]) -> None:
        """`python -m services.cli serve <name>` with the stack's environment plus `extra_env`."""
        output: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{name}.log", "ab")
            self._logs.append(output)
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", name],
            env={**self.env, **extra_env},
            stdout=output,
            stderr=output,
        )

    def _wait_until(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        """Poll `check` until it holds; fail at once if a child exits meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.exited_children()
            if exited:
                name, code = next(iter(exited.items()))
                raise RuntimeError(f"{name} exited with code {code} during start-up")
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every child, wait (then kill what is left), stop Postgres last. Idempotent."""
        for process in self.children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self.children.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self.postgres is not None:
            self.postgres.stop()
        for log_file in self._logs:
            log_file.close()
        self._logs.clear()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
