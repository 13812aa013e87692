"""Everything Rapport needs on one machine, as separate processes: what `rapport up` runs and what
`rapport bench turn` measures.

`LocalStack.start()` brings up, in order: the embedded PostgreSQL (unless `DATABASE_URL` is set),
migrations and the example personas, the offline LLM responder (unless a provider is configured),
every service of the registry (`python -m services.cli serve <name>`, waiting until each reports
SERVING) — the orchestrator, whose gRPC API backends call, on `grpc_port` (default 50051), the others on
free ports — and the gateway (waiting for `/readyz`). The services call each other with the internal
token of `$RAPPORT_HOME/internal-token` (generated once) and serve reflection (`GRPC_REFLECTION`).

`replicas=N` runs N processes of each gRPC service, each on its own port; callers dial the list of their
addresses (`ipv4:127.0.0.1:P1,127.0.0.1:P2`) and balance calls over them with `round_robin`, as they do over
the pods of a headless Service in Kubernetes (servicekit/grpc_runtime.py `open_channel`).

`supervise()`, called every few tenths of a second (`rapport up` does), keeps the stack up: a child that
exited is started again with the same environment (same port) after a backoff (`restart_delay`, doubling
with each recent exit, at most `RESTART_DELAY_CAP`), and a PostgreSQL that died is restarted on its port.
A process that exits `CRASH_LOOP_EXITS` times within `CRASH_LOOP_WINDOW` seconds is in a crash loop:
`supervise()` raises `CrashLoop` and the stack is stopped. Every exit and restart is logged (warnings reach
the screen of `rapport up`).

`stop()` sends SIGTERM to every child, waits, kills what is left, and stops Postgres last: no process
outlives the stack. As a context manager it starts on enter and stops on exit (also when start-up fails
half-way).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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

log = logging.getLogger("rapport.up")

SERVICES_TIMEOUT = 90.0
GATEWAY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
OFFLINE_LLM_NOTE = "set OPENROUTER_API_KEY or LLM_BASE_URL for a real model"
DEFAULT_GRPC_PORT = registry.service("orchestrator").default_port  # the public gRPC API
RESTART_DELAY = 1.0  # before the first restart of a child that exited; doubles with each recent exit
RESTART_DELAY_CAP = 30.0
CRASH_LOOP_EXITS = 5  # exits of one process within CRASH_LOOP_WINDOW seconds stop the stack
CRASH_LOOP_WINDOW = 120.0
POSTGRES = "postgres"  # the embedded server's name among the supervised processes


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


def address_list(addresses: list[str]) -> str:
    """The gRPC target of one or more loopback addresses: `127.0.0.1:P`, or `ipv4:127.0.0.1:P1,127.0.0.1:P2`
    (every address is dialled, calls balanced over them)."""
    return addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)


class CrashLoop(RuntimeError):
    """A process of the stack keeps exiting: `CRASH_LOOP_EXITS` times within `CRASH_LOOP_WINDOW` seconds."""


@dataclass
class Child:
    """One supervised process: what it runs (`rapport serve <service>` with `extra_env`), its current process,
    its recent exits and, after an exit, when it is started again."""

    name: str  # its log file's name: the service, `-2`, `-3`… for further replicas
    service: str  # what `rapport serve` runs
    extra_env: dict[str, str]
    process: subprocess.Popen[bytes]
    exits: deque[float] = field(default_factory=deque)  # monotonic times, within the crash-loop window
    restart_at: float | None = None  # set while it waits to be started again


class LocalStack:
    """Postgres, offline LLM, the registered services and the gateway as child processes of this one.

    `env` is the environment the children start from (default: this process's); `port` the
    gateway's port (default: a free one, chosen at start); `grpc_port` the public gRPC API's (the
    orchestrator's first replica; default: a free one; `ORCHESTRATOR_ADDR` wins when set); `replicas` the
    number of processes of each gRPC service; `log_dir` sends each child's output to `<name>.log` there
    instead of this process's stdout/stderr; `announce` receives the progress lines `rapport up` prints;
    `restart_delay` is the wait before a crashed child is started again (doubling with each recent exit).
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        grpc_port: int | None = None,
        replicas: int = 1,
        log_dir: Path | None = None,
        announce: Callable[[str], None] = _silent,
        restart_delay: float = RESTART_DELAY,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.env: dict[str, str] = dict(os.environ if env is None else env)
        self.port = port  # None: a free port, chosen just before the gateway starts (no time for a clash)
        self.grpc_port = grpc_port
        self.replicas = replicas
        self.log_dir = log_dir
        self.announce = announce
        self.restart_delay = restart_delay
        self.supervised: dict[str, Child] = {}
        self.addresses: dict[str, str] = {}  # what callers dial, per service (a list when replicated)
        self.replica_addresses: dict[str, list[str]] = {}  # where each replica listens, per service
        self.postgres: EmbeddedPostgres | None = None
        self._postgres_exits: deque[float] = deque()
        self._postgres_restart_at: float | None = None
        self._stopping = False
        self._logs: dict[str, IO[bytes]] = {}  # each child's open log file, by name

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
    def children(self) -> dict[str, subprocess.Popen[bytes]]:
        """The current process of every child, by name."""
        return {name: child.process for name, child in self.supervised.items()}

    @property
    def pids(self) -> dict[str, int]:
        """Process id of every child by name, and of the Postgres server ("postgres") when embedded."""
        pids = {name: process.pid for name, process in self.children.items()}
        if self.postgres is not None and self.postgres.process is not None:
            pids[POSTGRES] = self.postgres.process.pid
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
            self.spawn("offline-llm", {"BIND_ADDR": f"127.0.0.1:{llm_port}"})
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
            first = Env(self.env).address(spec.address_var) or f"127.0.0.1:{port}"
            self.replica_addresses[spec.name] = [first] + [f"127.0.0.1:{free_port()}" for _ in range(self.replicas - 1)]
            self.addresses[spec.name] = address_list(self.replica_addresses[spec.name])
            self.env[spec.address_var] = self.addresses[spec.name]
        if not port_free(self.replica_addresses["orchestrator"][0]):
            raise RuntimeError(
                f"{self.replica_addresses['orchestrator'][0]} (the gRPC API) is in use: pass --grpc-port or set "
                "RAPPORT_GRPC_PORT"
            )
        tls = GrpcTls.from_env(Env(self.env))  # the health checks speak TLS when the services do
        for spec in registry.SERVICES:
            for replica, address in enumerate(self.replica_addresses[spec.name], start=1):
                self.spawn(
                    spec.name,
                    {
                        "BIND_ADDR": address,
                        "OTEL_SERVICE_NAME": self.env.get("OTEL_SERVICE_NAME") or spec.telemetry_name,
                    },
                    name=spec.name if replica == 1 else f"{spec.name}-{replica}",
                )
        every_replica = [address for addresses in self.replica_addresses.values() for address in addresses]
        self._wait_until(
            lambda: all(grpc_serving(address, tls=tls) for address in every_replica),
            "every service to report SERVING",
            SERVICES_TIMEOUT * self.replicas,
        )
        for name in registry.service_names():
            copies = f" ({self.replicas} replicas)" if self.replicas > 1 else ""
            self.announce(f"rapport {name}{copies} serving on {self.addresses[name]}")
        self.port = self.port or free_port()
        self.spawn(registry.GATEWAY, {"BIND_ADDR": f"127.0.0.1:{self.port}", "OTEL_SERVICE_NAME": "rapport-gateway"})
        self._wait_until(lambda: http_ready(f"{self.gateway_url}/readyz"), "the gateway", GATEWAY_TIMEOUT)
        self.announce(f"rapport gateway serving on {self.gateway_url}")
        return self

    def spawn(self, service: str, extra_env: dict[str, str], *, name: str | None = None) -> Child:
        """Start `python -m services.cli serve <service>` with the stack's environment plus `extra_env`, as the
        supervised child `name` (default: the service's name)."""
        child = Child(name or service, service, extra_env, self._popen(name or service, service, extra_env))
        self.supervised[child.name] = child
        return child

    def _popen(self, name: str, service: str, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
        output: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if name in self._logs:  # a restart: the same file, appended to
                self._logs.pop(name).close()
            output = self._logs[name] = open(self.log_dir / f"{name}.log", "ab")
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", service],
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

    # -- supervise ------------------------------------------------------------------------

    def supervise(self) -> None:
        """One round of supervision: note children (and PostgreSQL) that exited, start again those whose
        backoff is over. Raises CrashLoop when a process exited too often (the caller then stops the stack)."""
        if self._stopping:
            return
        now = time.monotonic()
        self._supervise_postgres(now)
        for child in self.supervised.values():
            code = child.process.poll()
            if code is not None and child.restart_at is None:
                delay = self._note_exit(child.name, child.exits, now)
                child.restart_at = now + delay
                log.warning(
                    "%s exited with code %d; restarting it in %.1f s%s",
                    child.name,
                    code,
                    delay,
                    self._log_hint(child.name),
                )
            if child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                child.process = self._popen(child.name, child.service, child.extra_env)
                log.warning("%s restarted (pid %d)", child.name, child.process.pid)

    def _supervise_postgres(self, now: float) -> None:
        if self.postgres is None:
            return
        code = self.postgres.exit_code()
        if code is not None and self._postgres_restart_at is None:
            delay = self._note_exit(POSTGRES, self._postgres_exits, now)
            self._postgres_restart_at = now + delay
            log.warning(
                "PostgreSQL exited with code %d; restarting it in %.1f s (log: %s)",
                code,
                delay,
                self.postgres.home / "postgres.log",
            )
        if self._postgres_restart_at is not None and now >= self._postgres_restart_at:
            self._postgres_restart_at = None
            try:
                self.postgres.restart()
            except RuntimeError as error:  # counted as one more exit on the next round
                log.warning("PostgreSQL did not start again: %s", error)
                return
            log.warning("PostgreSQL restarted on port %d (pid %d)", self.postgres.port, self.pids[POSTGRES])

    def _note_exit(self, name: str, exits: deque[float], now: float) -> float:
        """Record an exit; the delay before the restart, or CrashLoop when there were too many lately."""
        exits.append(now)
        while exits and now - exits[0] > CRASH_LOOP_WINDOW:
            exits.popleft()
        if len(exits) >= CRASH_LOOP_EXITS:
            raise CrashLoop(
                f"{name} exited {len(exits)} times within {CRASH_LOOP_WINDOW:.0f} s (a crash loop); "
                f"stopping{self._log_hint(name)}"
            )
        return float(min(RESTART_DELAY_CAP, self.restart_delay * 2.0 ** (len(exits) - 1)))

    def _log_hint(self, name: str) -> str:
        return f" (log: {self.log_dir / name}.log)" if self.log_dir is not None else ""

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every child, wait (then kill what is left), stop Postgres last. Idempotent."""
        self._stopping = True
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
        for log_file in self._logs.values():
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
