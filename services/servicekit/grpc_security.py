"""Who may call a Rapport gRPC server, and over what: the credentials and transport security every server
and every channel of Rapport share (docs/grpc.md).

- **The internal token**: Rapport's own processes (the gateway, the orchestrator) send it on every call
  in the `x-rapport-internal-token` metadata; affinity, memory and insight accept nothing else
  (`InternalCallersOnly`). It comes from `RAPPORT_INTERNAL_TOKEN`, or the file `RAPPORT_INTERNAL_TOKEN_FILE`
  names (a mounted Kubernetes Secret); `rapport up` generates one into `$RAPPORT_HOME/internal-token`.
  A service without one does not start (fail-closed).
- **A service with its own callers** (the orchestrator's public API) gives the server its own `CallGuard`.
- **Open to anyone**: `grpc.health.v1` (probes), and server reflection when `GRPC_REFLECTION=true` (it
  describes the API, which is public, and serves no data).
- **TLS** (`GrpcTls`): `GRPC_TLS_CERT_FILE` + `GRPC_TLS_KEY_FILE` make a server speak TLS; with
  `GRPC_TLS_CA_FILE` it asks callers for a client certificate signed by that CA (required on internal
  services: mTLS; optional on the public API), and channels verify servers against it and present the
  certificate. Plaintext is served only on a loopback address unless `GRPC_ALLOW_PLAINTEXT=true`;
  `GRPC_HEALTH_BIND_ADDR` adds a plaintext address that serves health only (for probes that cannot
  speak TLS).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from .config import ConfigError, Env
from .grpc_errors import Unauthenticated

INTERNAL_TOKEN_KEY = "x-rapport-internal-token"
ACTING_USER_KEY = "x-rapport-user"
INTERNAL_TOKEN_FILE = "internal-token"  # under $RAPPORT_HOME, written by `rapport up`
MIN_INTERNAL_TOKEN_CHARS = 32
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")


class CallGuard(Protocol):
    """Decides whether a call may be served, from its method and metadata (and its request, for calls with
    one request message): returns the request to serve, or raises a ServiceError (UNAUTHENTICATED,
    PERMISSION_DENIED, RESOURCE_EXHAUSTED …) that ends the call with its details."""

    async def admit(self, method: str, metadata: Mapping[str, str], request: Any | None) -> Any | None: ...


@dataclass(frozen=True)
class InternalToken:
    """The secret Rapport's own processes prove themselves with."""

    value: str

    def __post_init__(self) -> None:
        if len(self.value) < MIN_INTERNAL_TOKEN_CHARS:
            raise ConfigError("RAPPORT_INTERNAL_TOKEN", f"at least {MIN_INTERNAL_TOKEN_CHARS} characters")

    @classmethod
    def from_env(cls, env: Env) -> InternalToken:
        value = env.str("RAPPORT_INTERNAL_TOKEN")
        path = env.str("RAPPORT_INTERNAL_TOKEN_FILE")
        if value is None and path is not None:
            try:
                value = Path(path).read_text().strip()
            except OSError as error:
                raise ConfigError("RAPPORT_INTERNAL_TOKEN_FILE", f"a readable file ({error.strerror})", path) from None
        if not value:
            raise ConfigError(
                "RAPPORT_INTERNAL_TOKEN",
                "set (or RAPPORT_INTERNAL_TOKEN_FILE): the credential Rapport's services call each other with "
                "(`rapport up` generates one; in Kubernetes it is the Secret rapport-internal)",
            )
        return cls(value)

    def matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.value.encode())

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((INTERNAL_TOKEN_KEY, self.value),)


def ensure_internal_token(home: Path) -> str:
    """The internal token of a local installation: `$RAPPORT_HOME/internal-token` (0600), made on first use."""
    path = home / INTERNAL_TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return token


@dataclass(frozen=True)
class InternalCallersOnly:
    """The guard of affinity, memory and insight: Rapport's own processes only."""

    token: InternalToken

    async def admit(self, method: str, metadata: Mapping[str, str], request: Any | None) -> Any | None:
        presented = metadata.get(INTERNAL_TOKEN_KEY)
        if presented is None:
            raise Unauthenticated(
                f"{method} is internal: only Rapport's own services may call it (no internal credential)",
                user_message="Not allowed.",
            )
        if not self.token.matches(presented):
            raise Unauthenticated(f"{method}: the internal credential is not valid", user_message="Not allowed.")
        return request


def open_services(reflection: bool) -> frozenset[str]:
    """The gRPC services every caller may use: health (probes), and reflection when it is enabled."""
    return frozenset({HEALTH_SERVICE, *(REFLECTION_SERVICES if reflection else ())})


# ---- transport ------------------------------------------------------------------------------------


def _read(path: str, variable: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(variable, f"a readable PEM file ({error.strerror})", path) from None


@dataclass(frozen=True)
class GrpcTls:
    """PEM contents of this process's certificate, its key and the CA of Rapport's services (each optional)."""

    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None

    @classmethod
    def from_env(cls, env: Env) -> GrpcTls:
        cert_path, key_path = env.str("GRPC_TLS_CERT_FILE"), env.str("GRPC_TLS_KEY_FILE")
        if (cert_path is None) != (key_path is None):
            missing = "GRPC_TLS_KEY_FILE" if key_path is None else "GRPC_TLS_CERT_FILE"
            raise ConfigError(missing, "set together with GRPC_TLS_CERT_FILE / GRPC_TLS_KEY_FILE (PEM files)")
        ca_path = env.str("GRPC_TLS_CA_FILE")
        return cls(
            cert=_read(cert_path, "GRPC_TLS_CERT_FILE") if cert_path else None,
            key=_read(key_path, "GRPC_TLS_KEY_FILE") if key_path else None,
            ca=_read(ca_path, "GRPC_TLS_CA_FILE") if ca_path else None,
        )

    def server_credentials(self, *, require_client_cert: bool) -> grpc.ServerCredentials | None:
        """TLS for a server (None: plaintext). With a CA, client certificates signed by it are asked for:
        required when `require_client_cert` (mTLS), else verified when presented."""
        if self.cert is None or self.key is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.ca,
            require_client_auth=require_client_cert and bool(self.ca),
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS for a channel to a Rapport service, when a CA is configured (None: plaintext)."""
        if self.ca is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def is_loopback(bind_addr: str) -> bool:
    host = bind_addr.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSecurity:
    """What a gRPC server of Rapport needs to let the right callers in."""

    token: InternalToken
    tls: GrpcTls
    reflection: bool
    allow_plaintext: bool
    # A plaintext address serving only grpc.health.v1, for probes that cannot speak TLS (the kubelet's).
    health_bind_addr: str | None = None

    @classmethod
    def from_env(cls, env: Env) -> ServerSecurity:
        return cls(
            token=InternalToken.from_env(env),
            tls=GrpcTls.from_env(env),
            reflection=env.bool("GRPC_REFLECTION", False),
            allow_plaintext=env.bool("GRPC_ALLOW_PLAINTEXT", False),
            health_bind_addr=env.address("GRPC_HEALTH_BIND_ADDR"),
        )

    def check_bind(self, bind_addr: str, credentials: grpc.ServerCredentials | None) -> None:
        """Plaintext only on loopback, unless explicitly allowed."""
        if credentials is None and not self.allow_plaintext and not is_loopback(bind_addr):
            raise ConfigError(
                "GRPC_TLS_CERT_FILE",
                f"set with GRPC_TLS_KEY_FILE to serve {bind_addr} (not a loopback address) over TLS, "
                "or GRPC_ALLOW_PLAINTEXT=true to serve it in plaintext (e.g. behind a mesh or NetworkPolicies)",
            )


@dataclass(frozen=True)
class ChannelSecurity:
    """What a channel from a Rapport process to a Rapport service carries: the internal token and TLS."""

    token: InternalToken
    tls: GrpcTls

    @classmethod
    def from_env(cls, env: Env) -> ChannelSecurity:
        return cls(token=InternalToken.from_env(env), tls=GrpcTls.from_env(env))
