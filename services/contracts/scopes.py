"""The vocabularies of a turn request's scopes (gateway.md, memory.md, affinity.md): the names a client may
send, the defaults, and what a named affinity scope covers. One definition, used by the orchestrator to
refuse a bad request before anything is stored and by the owners that act on them: memory decides what
each memory scope lets into the prompt, affinity which axes' state reaches it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# -- memory_scope (its meaning: services/memory/domain.py) -------------------------------------------

MEMORY_SCOPES: tuple[str, ...] = (
    "full",
    "neutral_and_relationship",
    "relationship_only",
    "neutral_only",
    "insights_only",
    "none",
)
DEFAULT_MEMORY_SCOPE = "neutral_and_relationship"


class ScopeError(ValueError):
    """A scope value outside its vocabulary; the message lists what is allowed."""


def memory_scope_name(value: str | None) -> str:
    """The scope a request's `memory_scope` names (case-insensitive); missing or blank → the default."""
    name = (value or "").strip().casefold() or DEFAULT_MEMORY_SCOPE
    if name not in MEMORY_SCOPES:
        raise ScopeError(f"unknown memory_scope {value!r}; allowed: {', '.join(MEMORY_SCOPES)}")
    return name


# -- affinity_scope ---------------------------------------------------------------------------------

AFFINITY_AXES: tuple[str, ...] = ("warmth", "trust", "intimacy", "intrigue", "patience", "tension")
BOND_AXES: frozenset[str] = frozenset({"warmth", "intimacy", "tension"})
CHEMISTRY_AXES: frozenset[str] = frozenset({"trust", "intrigue", "patience"})
NAMED_AFFINITY_SCOPES: Mapping[str, frozenset[str]] = {
    "bond": BOND_AXES,
    "chemistry": CHEMISTRY_AXES,
    "bond_and_chemistry": frozenset(AFFINITY_AXES),
    "full": frozenset(AFFINITY_AXES),
    "none": frozenset(),
}
DEFAULT_AFFINITY_SCOPE = "bond"


class AffinityScopeError(ScopeError):
    """An `affinity_scope` value that is neither a named scope nor an axis name."""


def parse_affinity_scope(value: str | Sequence[str] | None) -> frozenset[str]:
    """Axes whose state may reach the prompt.

    None, "" or an empty list → the default `bond` axes. Otherwise a named scope (`bond`,
    `chemistry`, `bond_and_chemistry` ≡ `full`, `none`) or axis names, given as a list or a
    comma-separated string; several names give their union. `none` must stand alone.
    Names are case-insensitive. Anything else raises `AffinityScopeError`.
    """
    default = NAMED_AFFINITY_SCOPES[DEFAULT_AFFINITY_SCOPE]
    if value is None:
        return default
    raw_items = value.split(",") if isinstance(value, str) else list(value)
    allowed = f"allowed: {', '.join(NAMED_AFFINITY_SCOPES)} or axis names {', '.join(AFFINITY_AXES)}"
    names: list[str] = []
    for item in raw_items:
        if not isinstance(item, str):
            raise AffinityScopeError(f"affinity_scope entry {item!r} is not a string; {allowed}")
        name = item.strip().lower()
        if name:
            names.append(name)
    if not names:
        return default
    if "none" in names and len(names) > 1:
        raise AffinityScopeError(f"affinity_scope 'none' cannot be combined with {names!r}")
    scope: set[str] = set()
    for name in names:
        if name in NAMED_AFFINITY_SCOPES:
            scope |= NAMED_AFFINITY_SCOPES[name]
        elif name in AFFINITY_AXES:
            scope.add(name)
        else:
            raise AffinityScopeError(f"unknown affinity_scope value {name!r}; {allowed}")
    return frozenset(scope)
