"""The rooms are enforced (issue 9): every service keeps a pure `domain` (no I/O, directly or through what
it imports), and no service, nor the gateway, reaches into another service's internals — they share only
`services.servicekit` (the kit), `services.contracts` (the cross-process contracts) and the generated stubs.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
# Libraries that do I/O (or are the generated gRPC stubs): never in a domain, not even through an import.
IO_MODULES = frozenset(
    {
        "asyncpg", "grpc", "grpc_health", "grpc_reflection", "httpx", "openai", "voyageai", "socket", "ssl",
        "urllib.request", "http.client", "requests", "aiohttp", "psycopg", "subprocess", "asyncio.subprocess",
        "uvicorn", "fastapi", "starlette", "rapport", "pgvector.asyncpg", "opentelemetry.instrumentation",
    }
)  # fmt: skip
SHARED = ("services.servicekit", "services.contracts")
# What composes the whole system (one process starting them all, the command line) may import every service.
COMPOSITION_ROOTS = frozenset({"services.cli", "services.local_stack", "services.admin", "services.chat_client"})
# The offline LLM responder stands in for a provider: the orchestrator may start it in-process.
PROVIDERS = ("services.offline_llm",)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for folder in (SERVICES, ROOT / "gateway"):
        for path in folder.rglob("*.py"):
            found[module_name(path)] = path
    return found


MODULES = project_modules()


def imports_of(name: str) -> set[str]:
    """Absolute names of everything a module imports (relative imports resolved)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def internal(name: str) -> str | None:
    """The project module an import name refers to (longest match), or None for a library."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def io_reached(start: str) -> dict[str, list[str]]:
    """I/O libraries reached from a module through project imports → the import chain that reaches each."""
    reached: dict[str, list[str]] = {}
    seen = {start}
    queue = [(start, [start])]
    while queue:
        current, chain = queue.pop()
        for name in imports_of(current):
            target = internal(name)
            if target is not None:
                if target not in seen:
                    seen.add(target)
                    queue.append((target, [*chain, target]))
                continue
            for io in IO_MODULES:
                if name == io or name.startswith(io + "."):
                    reached.setdefault(io, [*chain, name])
    return reached


def domain_modules() -> list[str]:
    return sorted(
        name
        for name in MODULES
        if name.startswith("services.") and (".domain." in f"{name}." or name.endswith(".domain"))
    )


def service_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] == "gateway":
        return "gateway"
    if len(parts) > 1 and parts[0] == "services" and f"services.{parts[1]}" not in SHARED:
        return parts[1]
    return None


@pytest.mark.parametrize("name", domain_modules())
def test_a_domain_does_no_io(name: str) -> None:
    reached = io_reached(name)
    assert not reached, f"{name} reaches I/O: " + "; ".join(" → ".join(chain) for chain in reached.values())


def test_every_service_has_a_domain() -> None:
    services = {service_of(name) for name in domain_modules()}
    assert {"affinity", "memory", "insight", "orchestrator"} <= services


@pytest.mark.parametrize("name", sorted(n for n in MODULES if service_of(n) and n not in COMPOSITION_ROOTS))
def test_no_service_reaches_into_another(name: str) -> None:
    own = service_of(name)
    foreign = sorted(
        {
            target
            for target in (internal(i) for i in imports_of(name))
            if target is not None
            and service_of(target) not in (None, own)
            and not target.startswith(PROVIDERS)
            and target not in COMPOSITION_ROOTS
        }
    )
    assert not foreign, f"{name} imports another service's internals: {foreign}"


def test_the_rule_catches_an_io_import_in_a_domain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a domain module that imports asyncpg (directly or through a helper) is refused."""
    fake = tmp_path / "services" / "fake" / "domain.py"
    helper = tmp_path / "services" / "fake" / "helpers.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from . import helpers\n")
    helper.write_text("import asyncpg\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setitem(MODULES, "services.fake.domain", fake)
    monkeypatch.setitem(MODULES, "services.fake.helpers", helper)
    assert io_reached("services.fake.domain") == {
        "asyncpg": ["services.fake.domain", "services.fake.helpers", "asyncpg"]
    }
