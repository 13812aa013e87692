"""Validation of a SendMessage request before anything is persisted (orchestrator.md "The turn").

Every rule failure raises `TurnRequestError` carrying the request `field` and a message that is
safe to show to the user; the server maps it to INVALID_ARGUMENT (HTTP 400).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.contracts.scopes import (
    AFFINITY_AXES,
    DEFAULT_AFFINITY_SCOPE,
    MEMORY_SCOPES,
    NAMED_AFFINITY_SCOPES,
    ScopeError,
    memory_scope_name,
    parse_affinity_scope,
)

MAX_CONTENT_CHARS = 4096
CLIENT_MSG_ID_CHARS = (26, 36)  # a ULID is 26 characters, a UUID 36
MAX_PROMPT_TRAITS = 8
MAX_TRAIT_TEXT_CHARS = 2000
TRAIT_TAG_RE = re.compile(r"^[a-z0-9_]{1,32}$")
CLIENT_MSG_ID_RE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no whitespace

AUDIT_KEYS = frozenset({"user", "session_id", "metadata"})


class TurnRequestError(ValueError):
    """An invalid SendMessage field; `field` names it, the message is user-safe."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class PromptTrait:
    """A per-request system-prompt injection; `text` is opaque to the engine."""

    tag: str
    text: str


@dataclass(frozen=True)
class TurnRequest:
    """A validated SendMessage request."""

    content: str
    client_msg_id: str
    tier: str | None
    prompt_traits: tuple[PromptTrait, ...]
    memory_scope: str
    affinity_scope: str | tuple[str, ...]  # a named scope, or explicit axis names
    audit: Mapping[str, Any] | None = None

    @property
    def affinity_axes(self) -> tuple[str, ...]:
        """Axes whose values may reach the prompt (all six are always stored and updated)."""
        if isinstance(self.affinity_scope, str):
            axes = parse_affinity_scope(self.affinity_scope)
            return tuple(axis for axis in AFFINITY_AXES if axis in axes)
        return self.affinity_scope


def _validate_content(content: Any) -> str:
    text = content.strip() if isinstance(content, str) else ""
    if not 1 <= len(text) <= MAX_CONTENT_CHARS:
        raise TurnRequestError("content", f"the message must be 1–{MAX_CONTENT_CHARS} characters")
    return text


def _validate_client_msg_id(value: Any) -> str:
    lo, hi = CLIENT_MSG_ID_CHARS
    if not isinstance(value, str) or not lo <= len(value) <= hi or not CLIENT_MSG_ID_RE.match(value):
        raise TurnRequestError(
            "client_msg_id", f"required: {lo}–{hi} printable ASCII characters without spaces (e.g. a ULID)"
        )
    return value


def _validate_tier(tier: Any, known_tiers: Collection[str]) -> str | None:
    if tier is None or tier == "":
        return None
    if not isinstance(tier, str) or tier not in known_tiers:
        raise TurnRequestError("tier", f"unknown tier {tier!r}")
    return tier


def _trait_part(trait: Any, name: str) -> Any:
    return trait.get(name) if isinstance(trait, Mapping) else getattr(trait, name, None)


def _validate_traits(traits: Iterable[Any] | None) -> tuple[PromptTrait, ...]:
    items = list(traits or ())
    if len(items) > MAX_PROMPT_TRAITS:
        raise TurnRequestError("prompt_traits", f"at most {MAX_PROMPT_TRAITS} traits per message")
    seen: set[str] = set()
    validated = []
    for index, trait in enumerate(items):
        tag, text = _trait_part(trait, "tag"), _trait_part(trait, "text")
        field = f"prompt_traits[{index}]"
        if not isinstance(tag, str) or not TRAIT_TAG_RE.match(tag):
            raise TurnRequestError(f"{field}.tag", "a tag is 1–32 characters of a–z, 0–9 and _")
        if tag in seen:
            raise TurnRequestError(f"{field}.tag", f"duplicate tag {tag!r}")
        if not isinstance(text, str) or not 1 <= len(text.strip()) <= MAX_TRAIT_TEXT_CHARS:
            raise TurnRequestError(f"{field}.text", f"a trait text is 1–{MAX_TRAIT_TEXT_CHARS} characters")
        seen.add(tag)
        validated.append(PromptTrait(tag=tag, text=text.strip()))
    return tuple(validated)


def _validate_memory_scope(scope: Any) -> str:
    if scope is not None and not isinstance(scope, str):
        raise TurnRequestError("memory_scope", f"expected one of {', '.join(MEMORY_SCOPES)}")
    try:
        return memory_scope_name(scope)
    except ScopeError:
        raise TurnRequestError("memory_scope", f"expected one of {', '.join(MEMORY_SCOPES)}") from None


def _validate_affinity_scope(scope: Any) -> str | tuple[str, ...]:
    """A named scope, or a non-empty list of axis names (deduplicated, in order); the names are the contract's."""
    if scope is None or scope == "":
        return DEFAULT_AFFINITY_SCOPE
    if isinstance(scope, str):
        if scope not in NAMED_AFFINITY_SCOPES:
            raise TurnRequestError(
                "affinity_scope", f"expected one of {', '.join(NAMED_AFFINITY_SCOPES)} or a list of axis names"
            )
        return scope
    axes = list(scope) if isinstance(scope, Sequence) else None
    if not axes:
        raise TurnRequestError("affinity_scope", 'a list must name at least one axis (use "none" for no axes)')
    for axis in axes:
        if axis not in AFFINITY_AXES:
            raise TurnRequestError("affinity_scope", f"unknown axis {axis!r} (axes: {', '.join(AFFINITY_AXES)})")
    return tuple(dict.fromkeys(axes))


def _validate_audit(audit: Any) -> Mapping[str, Any] | None:
    if audit is None:
        return None
    if not isinstance(audit, Mapping) or not set(audit) <= AUDIT_KEYS:
        raise TurnRequestError("audit", "expected an object with user, session_id, metadata")
    for key in ("user", "session_id"):
        if audit.get(key) is not None and not isinstance(audit[key], str):
            raise TurnRequestError(f"audit.{key}", "expected a string")
    if audit.get("metadata") is not None and not isinstance(audit["metadata"], Mapping):
        raise TurnRequestError("audit.metadata", "expected an object")
    return audit


def validate_turn_request(
    *,
    content: Any,
    client_msg_id: Any,
    known_tiers: Collection[str],
    tier: Any = None,
    prompt_traits: Iterable[Any] | None = None,
    memory_scope: Any = None,
    affinity_scope: Any = None,
    audit: Any = None,
) -> TurnRequest:
    """Validate every SendMessage field (traits as mappings or objects with .tag/.text)."""
    return TurnRequest(
        content=_validate_content(content),
        client_msg_id=_validate_client_msg_id(client_msg_id),
        tier=_validate_tier(tier, known_tiers),
        prompt_traits=_validate_traits(prompt_traits),
        memory_scope=_validate_memory_scope(memory_scope),
        affinity_scope=_validate_affinity_scope(affinity_scope),
        audit=_validate_audit(audit),
    )


def kept_traits(traits: Iterable[PromptTrait], allow_traits: Collection[str] | None) -> list[PromptTrait]:
    """Traits the resolved tier allows (None = all allowed); their tags go to `final.prompt_injected`."""
    return [trait for trait in traits if allow_traits is None or trait.tag in allow_traits]
