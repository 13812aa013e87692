"""The gRPC services of Rapport, in one list: the one place that says which services exist.

Each entry names a service and everything the rest of the code needs to find, start, migrate, reach
and fence it: its Postgres schema, its migrations, its gRPC service name, its default port, the
environment variable that holds its address, the module that builds its server, and which processes
may call it (the NetworkPolicy). Configuration, the command line, the local stack, the gateway and
the tests read this list; the Dockerfile and the Kubernetes manifests are checked against it by
`tests/contracts/test_registry.py`. A fifth service is a folder under `services/`, one entry here
and one manifest under `deploy/k8s/base/`.

The order of `SERVICES` is the order migrations are applied in. No I/O here: importing this module
is cheap, so anything may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVICES_DIR = Path(__file__).resolve().parent.parent
PUBLIC_CLIENT_LABEL = ("rapport.dev/client", "true")  # a namespace whose backends may call the public API
GATEWAY = "gateway"  # the HTTP process in front of the services; a caller, not a gRPC service


class UnknownService(ValueError):
    """A name that is not in the registry."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown service {name!r}: the registered services are {', '.join(service_names())}")


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service. Paths and names that follow from `name` by convention are properties."""

    name: str
    schema: str  # the Postgres schema it owns (no other service reads or writes it)
    proto_service: str  # full gRPC service name: health checks, reflection, Kubernetes probes
    default_port: int  # where it listens and is looked for when BIND_ADDR / its address variable is unset
    callers: tuple[str, ...]  # the processes allowed to call it (gateway or service names)
    # "module:function" returning the values of the `{{NAME}}` placeholders of its migrations
    migration_params: str | None = None
    # Its API is public: backends outside Rapport call it too, authenticated per call (docs/grpc.md); in
    # Kubernetes, pods of namespaces labelled PUBLIC_CLIENT_LABEL.
    public: bool = False

    @property
    def package(self) -> str:
        return f"services.{self.name}"

    @property
    def server_module(self) -> str:
        """The module whose `async def build(ctx) -> ServiceParts` makes the service (servicekit.service)."""
        return f"{self.package}.server"

    @property
    def migrations_dir(self) -> Path:
        return SERVICES_DIR / self.name / "migrations"

    @property
    def address_var(self) -> str:
        """The environment variable with the host:port its callers dial (and `rapport up` sets)."""
        return f"{self.name.upper()}_ADDR"

    @property
    def default_address(self) -> str:
        return f"127.0.0.1:{self.default_port}"

    @property
    def telemetry_name(self) -> str:
        """OTEL_SERVICE_NAME of its process."""
        return f"rapport-{self.name}"


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        name="orchestrator",
        schema="chat",
        proto_service="rapport.orchestrator.v1.OrchestratorService",
        default_port=50051,
        callers=(GATEWAY,),
        public=True,
    ),
    ServiceSpec(
        name="affinity",
        schema="affinity",
        proto_service="rapport.affinity.v1.AffinityService",
        default_port=50052,
        callers=("orchestrator", GATEWAY),  # the gateway reads the affinity view and watches it live
    ),
    ServiceSpec(
        name="memory",
        schema="memory",
        proto_service="rapport.memory.v1.MemoryService",
        default_port=50053,
        callers=("orchestrator", GATEWAY),  # the gateway lists and deletes memories
        migration_params="services.memory.server:migration_params",
    ),
    ServiceSpec(
        name="insight",
        schema="insight",
        proto_service="rapport.insight.v1.InsightService",
        default_port=50054,
        callers=("orchestrator", GATEWAY),  # the gateway reads the profile
    ),
)


def service_names() -> tuple[str, ...]:
    return tuple(spec.name for spec in SERVICES)


def service(name: str) -> ServiceSpec:
    """The entry of `name`; UnknownService (a ValueError naming the registered ones) otherwise."""
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise UnknownService(name)


def called_by(caller: str) -> tuple[ServiceSpec, ...]:
    """The services `caller` (a service name or GATEWAY) may call, in registry order."""
    return tuple(spec for spec in SERVICES if caller in spec.callers)


def start_order() -> tuple[ServiceSpec, ...]:
    """Every service after the services it calls (so their addresses are known when it starts)."""
    ordered: list[ServiceSpec] = []
    pending = list(SERVICES)
    while pending:
        ready = [spec for spec in pending if all(callee in ordered for callee in called_by(spec.name))]
        if not ready:
            raise ValueError(f"the services call each other in a cycle: {', '.join(s.name for s in pending)}")
        ordered += ready
        pending = [spec for spec in pending if spec not in ready]
    return tuple(ordered)
