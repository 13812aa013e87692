"""The Kubernetes side of the gRPC access rules (issue 14), offline: the internal token is a Secret mounted by
every Rapport process, reflection is off, the public gRPC API has its Service; the optional components
(the base admits namespaces labelled rapport.dev/client=true to the public API and nothing else; mtls:
cert-manager certificates, TLS on every hop, probes on a plaintext health port) render on top of each
overlay and validate strictly, with cert-manager resources checked by shape."""
from __future__ import annotations

import os
import posixpath
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from .test_deploy import (
    DEPLOY,
    GRPC_PORTS,
    OVERLAYS,
    SCHEMA_VERSIONS,
    Manifests,
    egress_allowed,
    env_value,
    ingress_sources,
    kubectl,
    render,
    secret_data,
)

PROCESSES = ("gateway", *GRPC_PORTS)
CLIENT_NAMESPACE = "namespace:{'rapport.dev/client': 'true'}"
CERT_MANAGER = "cert-manager.io/v1"


def mounts_of(manifests: Manifests, name: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """(mounts by path, volumes by name) of a Deployment's container."""
    container = manifests.container("Deployment", name)
    volumes = manifests.get("Deployment", name)["spec"]["template"]["spec"]["volumes"]
    return ({m["mountPath"]: m for m in container["volumeMounts"]}, {v["name"]: v for v in volumes})


@pytest.fixture(scope="module", params=("base", *(f"overlays/{name}" for name in OVERLAYS)))
def target(request: pytest.FixtureRequest) -> Manifests:
    return Manifests(render(request.param))


def test_every_process_mounts_the_internal_token_and_reflection_is_off(target: Manifests) -> None:
    config = target.config()
    token_file = config["RAPPORT_INTERNAL_TOKEN_FILE"]
    assert config.get("GRPC_REFLECTION", "false") != "true", "reflection stays off in the manifests"
    secret_names = set()
    for name in PROCESSES:
        mounts, volumes = mounts_of(target, name)
        mount = mounts[posixpath.dirname(token_file)]
        assert mount["readOnly"] is True, name
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"].startswith("rapport-internal"), name
        secret_names.add(secret["secretName"])
    assert len(secret_names) == 1, "one internal token for every process"
    if target.has("StatefulSet", "postgres"):  # dev generates it (a fake, long enough)
        token = secret_data(target, "rapport-internal")["token"]
        assert len(token) >= 32 and "dev-only" in token


def test_the_public_grpc_api_has_its_service_and_the_orchestrator_verifies_user_tokens(target: Manifests) -> None:
    service = target.get("Service", "rapport-grpc")["spec"]
    assert service["selector"] == target.get("Service", "orchestrator")["spec"]["selector"]
    assert service["ports"] == [{"name": "grpc", "port": GRPC_PORTS["orchestrator"], "targetPort": "grpc",
                                 "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}]
    ref = env_value(target.container("Deployment", "orchestrator"), "SUPABASE_JWT_SECRET")["valueFrom"]["secretKeyRef"]
    assert ref["name"].startswith("rapport-secrets") and ref["key"] == "SUPABASE_JWT_SECRET" and ref["optional"]
    assert "rapport-internal" in (DEPLOY / "README.md").read_text()


def render_with_components(overlay: str, tmp_path: Path, *components: str) -> Manifests:
    """An overlay plus components, as an operator's own kustomization adds them."""
    root = os.path.relpath(DEPLOY / "k8s", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "rapport",
        "resources": [f"{root}/overlays/{overlay}"], "components": [f"{root}/components/{c}" for c in components]}))
    result = subprocess.run([kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    return Manifests(tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_components_render_and_validate_on_each_overlay(overlay: str, tmp_path: Path) -> None:
    manifests = render_with_components(overlay, tmp_path, "mtls")
    failures, shaped = [], []
    for doc in manifests.docs:
        if doc["apiVersion"] == CERT_MANAGER:
            assert doc["kind"] in ("Issuer", "Certificate") and doc["metadata"]["namespace"] == "rapport"
            shaped.append(doc)
            continue
        if doc["apiVersion"] == "postgresql.cnpg.io/v1":
            continue
        try:
            kubernetes_validate.validate(doc, SCHEMA_VERSIONS[-1], strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message}")
    assert not failures, "\n".join(failures)
    certificates = {doc["spec"]["secretName"]: doc for doc in shaped if doc["kind"] == "Certificate"}
    assert certificates["rapport-ca"]["spec"]["isCA"] is True
    issuers = {doc["metadata"]["name"] for doc in shaped if doc["kind"] == "Issuer"}
    assert {doc["spec"]["issuerRef"]["name"] for doc in certificates.values()} <= issuers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_labelled_namespaces_reach_the_public_api_and_nothing_else(overlay: str, tmp_path: Path) -> None:
    manifests = Manifests(render(f"overlays/{overlay}"))  # the shipped overlay: only labelled namespaces
    assert ingress_sources(manifests, "orchestrator", GRPC_PORTS["orchestrator"]) == {"gateway", CLIENT_NAMESPACE}
    for peer in ("affinity", "memory", "insight"):
        assert ingress_sources(manifests, peer, GRPC_PORTS[peer]) == {"orchestrator", "gateway"}, peer
    assert CLIENT_NAMESPACE not in ingress_sources(manifests, "orchestrator", GRPC_PORTS["orchestrator"] + 1000)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mtls_gives_every_process_its_certificate_and_keeps_probes_on_a_plaintext_health_port(
        overlay: str, tmp_path: Path) -> None:
    manifests = render_with_components(overlay, tmp_path, "mtls")
    config = manifests.config()
    assert config["GRPC_ALLOW_PLAINTEXT"] == "false"
    certificates = {doc["spec"]["secretName"]: doc["spec"] for doc in manifests.of_kind("Certificate")}
    for name in PROCESSES:
        mounts, volumes = mounts_of(manifests, name)
        for variable in ("GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE", "GRPC_TLS_CA_FILE"):
            mount = mounts[posixpath.dirname(config[variable])]
            secret = volumes[mount["name"]]["secret"]["secretName"]
            assert secret == f"{name}-tls" and mount["readOnly"] is True, (name, variable)
        assert name in certificates[f"{name}-tls"]["dnsNames"]
        if name == "gateway":
            continue
        container = manifests.container("Deployment", name)
        health = int(env_value(container, "GRPC_HEALTH_BIND_ADDR")["value"].rpartition(":")[2])
        assert {"name": "grpc-health", "containerPort": health, "protocol": "TCP"} in container["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == health, (name, probe)
        assert container["startupProbe"]["grpc"]["service"].startswith(f"rapport.{name}.v1.")
    assert "rapport-grpc" in certificates["orchestrator-tls"]["dnsNames"]
    assert egress_allowed(manifests, "gateway", GRPC_PORTS["orchestrator"], to="orchestrator")
