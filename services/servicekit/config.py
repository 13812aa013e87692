"""Settings from the environment, validated at start-up.

One loader for every process. A bad value stops the process with a message that names the
variable and the expected form (STYLE 6: fail fast on configuration).
"""

from __future__ import annotations

import builtins
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import registry


class ConfigError(SystemExit):
    """A configuration value is missing or malformed; the message names the variable."""

    def __init__(self, variable: str, expected: str, got: str | None = None) -> None:
        self.variable = variable
        shown = "" if got is None else f" (got {got!r})"
        super().__init__(f"configuration error: {variable} must be {expected}{shown}")


class Env:
    """Typed, validated reads from an environment mapping (os.environ by default)."""

    def __init__(self, environ: Mapping[builtins.str, builtins.str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def raw(self, name: builtins.str) -> builtins.str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def str(self, name: builtins.str, default: builtins.str | None = None) -> builtins.str | None:
        value = self.raw(name)
        return default if value is None else value

    def required(self, name: builtins.str, expected: builtins.str = "set") -> builtins.str:
        value = self.raw(name)
        if value is None:
            raise ConfigError(name, expected)
        return value

    def int(
        self, name: builtins.str, default: builtins.int, lo: builtins.int | None = None, hi: builtins.int | None = None
    ) -> builtins.int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = int(value)
        except ValueError:
            raise ConfigError(name, f"an integer{_range(lo, hi)}", value) from None
        if (lo is not None and parsed < lo) or (hi is not None and parsed > hi):
            raise ConfigError(name, f"an integer{_range(lo, hi)}", value)
        return parsed

    def float(
        self,
        name: builtins.str,
        default: builtins.float,
        lo: builtins.float | None = None,
        hi: builtins.float | None = None,
    ) -> builtins.float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = float(value)
        except ValueError:
            raise ConfigError(name, f"a number{_range(lo, hi)}", value) from None
        if parsed != parsed or (lo is not None and parsed < lo) or (hi is not None and parsed > hi):
            raise ConfigError(name, f"a number{_range(lo, hi)}", value)
        return parsed

    def bool(self, name: builtins.str, default: builtins.bool = False) -> builtins.bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, "a boolean (1/0, true/false, yes/no, on/off)", value)

    def choice(self, name: builtins.str, choices: tuple[builtins.str, ...], default: builtins.str) -> builtins.str:
        value = self.raw(name)
        if value is None:
            return default
        if value not in choices:
            raise ConfigError(name, f"one of {', '.join(choices)}", value)
        return value

    def address(self, name: builtins.str, default: builtins.str | None = None) -> builtins.str | None:
        """host:port (port 0 = ephemeral): an address to listen on."""
        value = self.raw(name)
        if value is None:
            return default
        if not _is_host_port(value):
            raise ConfigError(name, "host:port, e.g. 127.0.0.1:50052", value)
        return value

    def grpc_target(self, name: builtins.str, default: builtins.str | None = None) -> builtins.str | None:
        """Where to dial a service: host:port (DNS may give several addresses, as a headless Service in
        Kubernetes does), or a list of addresses in gRPC's form, `ipv4:127.0.0.1:5001,127.0.0.1:5002` (or
        `ipv6:[::1]:5001,[::1]:5002`) — what `rapport up --replicas N` sets. Channels balance calls over every
        address (round_robin)."""
        value = self.raw(name)
        if value is None:
            return default
        listed = value.startswith(tuple(f"{scheme}:" for scheme in _ADDRESS_FAMILIES))
        if not (_is_address_list(value) if listed else _is_host_port(value)):
            raise ConfigError(name, "host:port, or a list of addresses: ipv4:127.0.0.1:50052,127.0.0.1:50062", value)
        return value


_ADDRESS_FAMILIES = {"ipv4": ipaddress.IPv4Address, "ipv6": ipaddress.IPv6Address}


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) <= 65535)


def _is_address_list(value: str) -> bool:
    """`ipv4:a:port,b:port` or `ipv6:[a]:port,[b]:port`: literal IPs of that family, each with a port."""
    scheme, _, addresses = value.partition(":")
    family = _ADDRESS_FAMILIES[scheme]
    for address in addresses.split(","):
        host, _, port = address.rpartition(":")
        if not _is_host_port(address) or int(port) == 0:
            return False
        if scheme == "ipv6":
            if not (host.startswith("[") and host.endswith("]")):
                return False
            host = host[1:-1]
        try:
            family(host)
        except ValueError:
            return False
    return True


def _range(lo: object, hi: object) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" ≥ {lo}"
    if hi is not None:
        return f" ≤ {hi}"
    return ""


@dataclass(frozen=True)
class ServiceSettings:
    """What every gRPC service process needs: where to listen, its database, its shutdown grace."""

    name: str
    bind_addr: str
    database_url: str
    grace_seconds: float

    @classmethod
    def from_env(cls, name: str, env: Env | None = None) -> ServiceSettings:
        env = env or Env()
        spec = registry.service(name)
        return cls(
            name=name,
            bind_addr=env.address("BIND_ADDR", spec.default_address) or "",
            database_url=env.required("DATABASE_URL", "a postgresql:// URL (or run `rapport up`)"),
            grace_seconds=env.float("SHUTDOWN_GRACE_SECS", 10.0, 0.0, 300.0),
        )


def peer_address(service: str, env: Env | None = None) -> str:
    """Where to reach a registered service: its address variable (one address or a list, see `Env.grpc_target`),
    else its default port on loopback."""
    env = env or Env()
    spec = registry.service(service)
    return env.grpc_target(spec.address_var, spec.default_address) or ""


def rapport_home(env: Env | None = None) -> Path:
    """$RAPPORT_HOME, or the per-user data folder (survives restarts)."""
    env = env or Env()
    configured = env.str("RAPPORT_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("rapport", appauthor=False))
