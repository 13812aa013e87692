"""What each memory_scope lets into the prompt (the one definition, memory.md "Recall")."""
from __future__ import annotations

import pytest

from services.memory.domain import parse_memory_scope


@pytest.mark.parametrize(("name", "profile", "relationship", "insights"), [
    ("full", True, True, "full"),
    ("neutral_and_relationship", True, True, "neutral"),
    ("relationship_only", False, True, "off"),
    ("neutral_only", False, False, "neutral"),  # neutral insights only: no memories of either layer
    ("insights_only", False, False, "full"),
    ("none", False, False, "off"),
])
def test_each_scope_lets_through_its_layers_and_insights(name: str, profile: bool, relationship: bool,
                                                         insights: str) -> None:
    scope = parse_memory_scope(name)
    assert (scope.include_profile, scope.include_relationship, scope.insights) == (profile, relationship, insights)
    assert scope.recalls_memories is (profile or relationship)
