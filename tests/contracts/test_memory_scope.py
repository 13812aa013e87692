"""memory_scope has one definition (services/memory/domain.py); the proto's MemoryScope and
InsightsMode enums name exactly the same values, so a caller can never send or expect another."""
from __future__ import annotations

from rapport.memory.v1 import memory_pb2 as pb

from services.memory import domain


def _names(enum: object, prefix: str) -> list[str]:
    return [name.lower().removeprefix(prefix) for name in enum.keys()  # type: ignore[attr-defined]
            if not name.endswith("_UNSPECIFIED")]


def test_the_memory_domain_scopes_are_the_proto_memory_scope_names() -> None:
    assert list(domain.MEMORY_SCOPES) == _names(pb.MemoryScope, "memory_scope_")
    assert domain.DEFAULT_MEMORY_SCOPE in domain.MEMORY_SCOPES
    for name in domain.MEMORY_SCOPES:
        assert domain.parse_memory_scope(name).name == name


def test_every_scope_answers_an_insights_mode_the_proto_names() -> None:
    assert list(domain.INSIGHTS_MODES) == _names(pb.InsightsMode, "insights_mode_")
    assert {domain.parse_memory_scope(name).insights for name in domain.MEMORY_SCOPES} <= set(domain.INSIGHTS_MODES)
