"""TLS on Rapport's gRPC servers (issue 14): with a certificate, a CA and the internal token a service speaks
mTLS only (no plaintext, no caller without a client certificate of the CA), serves health in plaintext on
GRPC_HEALTH_BIND_ADDR for probes, and refuses to serve plaintext on a non-loopback address unless allowed.
Certificates are made here with `cryptography` (a throwaway CA)."""
from __future__ import annotations

import datetime
import ipaddress
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rapport.affinity.v1 import affinity_pb2 as pb
from rapport.affinity.v1 import affinity_pb2_grpc as pb_grpc
from services.servicekit.config import ConfigError, Env
from services.servicekit.embedded_pg import free_port
from services.servicekit.service import start_service
from tests.stack import INTERNAL_ENV, INTERNAL_METADATA


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, and a certificate for 127.0.0.1 signed by it (server and client use); PEM files in `folder`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test-ca")).issuer_name(_name("test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("affinity")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca": folder / "ca.crt", "cert": folder / "tls.crt", "key": folder / "tls.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


async def test_a_service_with_a_certificate_and_a_ca_speaks_mtls_only(database_url: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    health_port = free_port()
    service = await start_service("affinity", Env({
        "DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0", "SHUTDOWN_GRACE_SECS": "1", **INTERNAL_ENV,
        "GRPC_TLS_CERT_FILE": str(pki["cert"]), "GRPC_TLS_KEY_FILE": str(pki["key"]),
        "GRPC_TLS_CA_FILE": str(pki["ca"]), "GRPC_HEALTH_BIND_ADDR": f"127.0.0.1:{health_port}"}), pool_size=2)
    request = pb.GetStateRequest(user_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()))
    ca, cert, key = (pki[name].read_bytes() for name in ("ca", "cert", "key"))
    try:
        mutual = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        async with grpc.aio.secure_channel(service.address, mutual) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:  # a valid session id of nobody: NOT_FOUND …
                await pb_grpc.AffinityServiceStub(channel).GetState(request, metadata=INTERNAL_METADATA, timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # … which means the call was let in
            with pytest.raises(grpc.aio.AioRpcError) as caught:  # TLS does not replace the internal token
                await pb_grpc.AffinityServiceStub(channel).GetState(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        server_only = grpc.ssl_channel_credentials(root_certificates=ca)  # no client certificate
        async with grpc.aio.secure_channel(service.address, server_only) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.AffinityServiceStub(channel).GetState(request, metadata=INTERNAL_METADATA, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(service.address) as channel:  # plaintext: no handshake at all
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.AffinityServiceStub(channel).GetState(request, metadata=INTERNAL_METADATA, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:  # the probes' port
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="rapport.affinity.v1.AffinityService"),
                                       timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:  # health only: the API is not served there
                await pb_grpc.AffinityServiceStub(channel).GetState(request, metadata=INTERNAL_METADATA, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await service.stop(grace=0.5)


async def test_plaintext_on_a_non_loopback_address_is_refused_unless_allowed(database_url: str) -> None:
    base = {"DATABASE_URL": database_url, "BIND_ADDR": "0.0.0.0:0", "SHUTDOWN_GRACE_SECS": "1", **INTERNAL_ENV}
    with pytest.raises(ConfigError) as refused:
        await start_service("affinity", Env(base), pool_size=1)
    assert refused.value.variable == "GRPC_TLS_CERT_FILE" and "GRPC_ALLOW_PLAINTEXT" in str(refused.value)
    allowed = await start_service("affinity", Env({**base, "GRPC_ALLOW_PLAINTEXT": "true"}), pool_size=1)
    await allowed.stop(grace=0.5)
    with pytest.raises(ConfigError) as missing:  # and no service starts without the internal token
        await start_service("affinity", Env({"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0"}),
                            pool_size=1)
    assert missing.value.variable == "RAPPORT_INTERNAL_TOKEN"
