"""The service registry (services/servicekit/registry.py) against everything that must agree with it.

Config, the command line, the local stack, the gateway and tests/stack.py read the registry; what
cannot read it is checked here: each registered service's folder, server module, migrations (and the
schema they create) and gRPC contract; its Kubernetes manifest in every overlay (Deployment, Service,
probes, peer address, the NetworkPolicy that admits exactly the registry's callers); the Dockerfile;
the packages the distribution discovers. A service folder with a server.py must be registered.

Each check returns the problems it finds, naming what is missing, so the last tests can show that a
service registered without a folder, migrations or manifest is reported (the contract is live).
"""
from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool
from setuptools.config.pyprojecttoml import read_configuration

from services.admin import migration_params
from services.servicekit import registry
from services.servicekit.db import load_migrations
from services.servicekit.registry import GATEWAY, SERVICES, ServiceSpec

from .test_deploy import (
    GATEWAY_PORT,
    GRPC_PORTS,
    OVERLAYS,
    ROOT,
    Manifests,
    dockerfile,
    egress_allowed,
    ingress_sources,
    render,
)

TARGETS = ("base", *(f"overlays/{name}" for name in OVERLAYS))
# Folders under services/ with a server.py that are not gRPC services of the registry.
NOT_GRPC_SERVICES = {"offline_llm": "the offline OpenAI-compatible HTTP responder (an LLM provider's stand-in)"}


# ---- the checks ---------------------------------------------------------------------------------

def code_problems(spec: ServiceSpec) -> list[str]:
    """The service's folder, server module, migrations and gRPC contract."""
    problems = []
    server = registry.SERVICES_DIR / spec.name / "server.py"
    if not server.is_file():
        problems.append(f"{spec.name}: no {server.relative_to(ROOT)}")
    elif not callable(getattr(importlib.import_module(spec.server_module), "build", None)):
        problems.append(f"{spec.name}: {spec.server_module} has no build(ctx) (services/servicekit/service.py)")
    problems += migration_problems(spec)
    try:
        generated_services().FindServiceByName(spec.proto_service)
    except KeyError:
        problems.append(f"{spec.name}: no gRPC service {spec.proto_service} in the generated code under protos/")
    if spec.migration_params:
        hook_module, _, function = spec.migration_params.partition(":")
        if not callable(getattr(importlib.import_module(hook_module), function, None)):
            problems.append(f"{spec.name}: migration_params {spec.migration_params} is not a function")
    return problems


def migration_problems(spec: ServiceSpec) -> list[str]:
    try:
        migrations = load_migrations(spec.name, migration_params().get(spec.name))
    except (FileNotFoundError, ValueError) as error:
        return [f"{spec.name}: {error}"]
    sql = "\n".join(migration.sql for migration in migrations)
    problems = []
    if not re.search(rf"CREATE SCHEMA IF NOT EXISTS {re.escape(spec.schema)}\s*;", sql):
        problems.append(f"{spec.name}: its migrations do not create its schema {spec.schema}")
    for table in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?([\w.]+)", sql):
        if not table.startswith(f"{spec.schema}."):
            problems.append(f"{spec.name}: table {table} is outside its schema {spec.schema}")
    return problems


def generated_services() -> descriptor_pool.DescriptorPool:
    """The descriptor pool, with every committed *_pb2 module under protos/rapport imported."""
    for path in sorted((ROOT / "protos" / "rapport").rglob("*_pb2.py")):
        importlib.import_module(".".join(path.relative_to(ROOT / "protos").with_suffix("").parts))
    return descriptor_pool.Default()


def manifest_problems(spec: ServiceSpec, manifests: Manifests, where: str) -> list[str]:
    """The service's Deployment, Service, peer address and NetworkPolicy in one rendered target."""
    name, port = spec.name, spec.default_port
    prefix = f"{where}: {name}"
    if not manifests.has("Deployment", name):
        return [f"{prefix}: no Deployment {name} (add deploy/k8s/base/{name}.yaml to the kustomization)"]
    problems = []
    container = manifests.container("Deployment", name)
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}
    expected = {
        "args": (container.get("args"), ["serve", name]),
        "BIND_ADDR": (env.get("BIND_ADDR"), f"0.0.0.0:{port}"),
        "OTEL_SERVICE_NAME": (env.get("OTEL_SERVICE_NAME"), spec.telemetry_name),
        "ports": (container.get("ports"), [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]),
        "startupProbe": (container.get("startupProbe", {}).get("grpc"), {"port": port, "service": spec.proto_service}),
        "readinessProbe": (container.get("readinessProbe", {}).get("grpc"),
                           {"port": port, "service": spec.proto_service}),
        "livenessProbe port": (container.get("livenessProbe", {}).get("grpc", {}).get("port"), port),
    }
    problems += [f"{prefix}: Deployment {what} is {got!r}, expected {want!r}"
                 for what, (got, want) in expected.items() if got != want]
    if "DATABASE_URL" not in env:
        problems.append(f"{prefix}: the Deployment sets no DATABASE_URL (it owns the schema {spec.schema})")
    if not manifests.has("Service", name):
        problems.append(f"{prefix}: no Service {name}")
    else:
        ports = manifests.get("Service", name)["spec"]["ports"]
        want_ports = [{"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP",
                       "appProtocol": "kubernetes.io/h2c"}]
        if ports != want_ports:
            problems.append(f"{prefix}: Service ports are {ports}, expected {want_ports}")
    address = manifests.config().get(spec.address_var)
    if address != f"{name}:{port}":
        problems.append(f"{prefix}: rapport-config {spec.address_var} is {address!r}, expected '{name}:{port}'"
                        " (deploy/k8s/base/config/rapport.env)")
    admitted = ingress_sources(manifests, name, port)
    label, value = registry.PUBLIC_CLIENT_LABEL
    public = {f"namespace:{ {label: value} }"} if spec.public else set()
    if admitted != set(spec.callers) | public:
        problems.append(f"{prefix}: the NetworkPolicies let {sorted(admitted)} call it, the registry says "
                        f"{sorted(set(spec.callers) | public)} (its {name}-ingress policy)")
    problems += [f"{prefix}: the NetworkPolicies keep its caller {caller} from reaching it (egress)"
                 for caller in spec.callers if manifests.has("Deployment", caller)
                 and not egress_allowed(manifests, caller, port, to=name)]
    return problems


def registered_folders(services_dir: Path, names: Iterable[str]) -> list[str]:
    """Service folders (a server.py inside) that are not registered."""
    known = set(names) | set(NOT_GRPC_SERVICES)
    return sorted(path.parent.name for path in services_dir.glob("*/server.py") if path.parent.name not in known)


# ---- the registry itself ------------------------------------------------------------------------

def test_names_ports_schemas_and_address_variables_are_distinct_and_callers_known() -> None:
    for field in ("name", "schema", "proto_service", "default_port", "address_var"):
        values = [getattr(spec, field) for spec in SERVICES]
        assert len(set(values)) == len(values), f"two services share a {field}: {values}"
    names = set(registry.service_names())
    for spec in SERVICES:
        assert set(spec.callers) <= names | {GATEWAY}, f"{spec.name}: unknown callers {spec.callers}"
        assert spec.name not in spec.callers, f"{spec.name} calls itself"
        assert spec.default_port != GATEWAY_PORT
    assert {spec.name for spec in registry.start_order()} == names  # no cycle among the callers


def test_an_unknown_service_name_is_refused_naming_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="unknown service .gossip.: the registered services are orchestrator"):
        registry.service("gossip")


# ---- code ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_each_service_has_its_server_migrations_and_grpc_contract(spec: ServiceSpec) -> None:
    assert code_problems(spec) == []


def test_every_service_folder_with_a_server_is_registered() -> None:
    unregistered = registered_folders(registry.SERVICES_DIR, registry.service_names())
    assert unregistered == [], (f"services/{unregistered[0]}/server.py exists but {unregistered[0]} is not in "
                                "services/servicekit/registry.py")


# ---- deployment ------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_each_service_has_its_manifest_and_network_policy(target: str) -> None:
    manifests = Manifests(render(target))
    problems = [problem for spec in SERVICES for problem in manifest_problems(spec, manifests, target)]
    assert problems == [], "\n".join(problems)


def test_the_deployment_tests_know_the_registered_ports() -> None:
    """tests/contracts/test_deploy.py keeps its own list of gRPC ports; it must be the registry's."""
    assert GRPC_PORTS == {spec.name: spec.default_port for spec in SERVICES}


def test_the_image_exposes_the_registered_ports_and_checks_the_installation() -> None:
    exposed = {int(port) for instruction, args in dockerfile() if instruction == "EXPOSE" for port in args.split()}
    assert exposed == {GATEWAY_PORT, *(spec.default_port for spec in SERVICES)}
    runs = [args for instruction, args in dockerfile() if instruction == "RUN"]
    assert any("python -I -m services.admin" in args for args in runs), (
        "the build must run the installation check (services/admin.py), which imports every registered service")
    copies = [shlex.split(args)[0] for instruction, args in dockerfile() if instruction == "COPY"]
    assert not any(source.startswith(("tools", "tests")) for source in copies), "tools/ and tests/ are not shipped"


def test_the_distribution_discovers_every_service_package_and_leaves_tools_out() -> None:
    setuptools = read_configuration(ROOT / "pyproject.toml", expand=True)["tool"]["setuptools"]
    packages = set(setuptools["packages"])
    on_disk = {".".join(path.parent.relative_to(ROOT).parts) for folder in ("services", "gateway")
               for path in (ROOT / folder).rglob("__init__.py")}
    assert on_disk <= packages
    assert {spec.package for spec in SERVICES} <= packages
    assert {"rapport", *(f"rapport.{name}.v1" for name in registry.service_names())} <= packages
    assert not any(package.split(".")[0] in ("tools", "tests") for package in packages)
    assert setuptools["package-dir"]["rapport"] == "protos/rapport"


# ---- the contract is live ----------------------------------------------------------------------------

UNBUILT = ServiceSpec(name="unbuilt", schema="unbuilt", proto_service="rapport.unbuilt.v1.UnbuiltService",
                      default_port=50055, callers=("orchestrator",))


def test_a_service_registered_without_folder_migrations_contract_or_manifest_is_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "SERVICES", (*SERVICES, UNBUILT))
    migrations = registry.SERVICES_DIR / "unbuilt" / "migrations"
    assert code_problems(UNBUILT) == [
        "unbuilt: no services/unbuilt/server.py",
        f"unbuilt: service 'unbuilt' has no migrations: expected {migrations}/001_<name>.sql",
        "unbuilt: no gRPC service rapport.unbuilt.v1.UnbuiltService in the generated code under protos/"]
    assert manifest_problems(UNBUILT, Manifests(render("base")), "base") == [
        "base: unbuilt: no Deployment unbuilt (add deploy/k8s/base/unbuilt.yaml to the kustomization)"]


def test_a_wrong_schema_proto_service_or_port_is_reported() -> None:
    wrong = replace(registry.service("memory"), schema="recall", proto_service="rapport.memory.v1.RecallService",
                    default_port=50059)
    problems = "\n".join([*code_problems(wrong), *manifest_problems(wrong, Manifests(render("base")), "base")])
    for expected in ("do not create its schema recall", "table memory.memories is outside its schema recall",
                     "no gRPC service rapport.memory.v1.RecallService",
                     "BIND_ADDR is '0.0.0.0:50053', expected '0.0.0.0:50059'",
                     "startupProbe is {'port': 50053, 'service': 'rapport.memory.v1.MemoryService'}",
                     "MEMORY_ADDR is 'memory:50053', expected 'memory:50059'"):
        assert expected in problems, expected


def test_a_network_policy_that_disagrees_with_the_callers_is_reported() -> None:
    manifests = Manifests(render("base"))
    fewer = replace(registry.service("memory"), callers=("orchestrator",))
    assert manifest_problems(fewer, manifests, "base") == [
        "base: memory: the NetworkPolicies let ['gateway', 'orchestrator'] call it, the registry says "
        "['orchestrator'] (its memory-ingress policy)"]
    more = replace(registry.service("orchestrator"), callers=(GATEWAY, "memory"))
    public = "\"namespace:{'rapport.dev/client': 'true'}\""  # issue 14: its API is public
    assert manifest_problems(more, manifests, "base") == [
        f"base: orchestrator: the NetworkPolicies let ['gateway', {public}] call it, the registry says "
        f"['gateway', 'memory', {public}] (its orchestrator-ingress policy)"]


def test_an_unregistered_service_folder_is_reported(tmp_path: Path) -> None:
    for name in ("memory", "unbuilt", "offline_llm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "server.py").write_text("")
    (tmp_path / "notes").mkdir()  # no server.py: not a service
    assert registered_folders(tmp_path, ["memory"]) == ["unbuilt"]
