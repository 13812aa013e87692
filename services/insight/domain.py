"""Pure domain of the insight service: the structured user profile (spec: insight.md).

A profile is what the store keeps as JSONB, one entry per populated field::

    {field: {"value": str | list[str] | dict, "sources": [message ids],
             "updated_at": iso8601, "confidence": float, ("evidence": str, mbti_guess only)}}

Nothing here does I/O or reads a clock; `now` is passed in.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal

ProfileValue = str | list[str] | dict[str, Any]
Profile = dict[str, dict[str, Any]]


class FieldKind(StrEnum):
    TEXT = "text"
    LIST = "list"
    OBJECT = "object"


FIELD_KINDS: Mapping[str, FieldKind] = MappingProxyType(
    {
        "city": FieldKind.TEXT,
        "occupation": FieldKind.TEXT,
        "interests": FieldKind.LIST,
        "mbti_guess": FieldKind.TEXT,
        "love_values": FieldKind.TEXT,
        "emotional_needs": FieldKind.TEXT,
        "life_rhythm": FieldKind.TEXT,
        "personality_traits": FieldKind.LIST,
        "matching_preferences": FieldKind.OBJECT,
        "location": FieldKind.TEXT,
        "hometown": FieldKind.TEXT,
        "nationality": FieldKind.TEXT,
    }
)
FIELDS: tuple[str, ...] = tuple(FIELD_KINDS)  # canonical order (rendering, prompts)

# spec: insight.md, "weight in training_level"; the weighted fields sum to exactly 1.
FIELD_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "city": 0.05,
        "occupation": 0.05,
        "interests": 0.10,
        "mbti_guess": 0.15,
        "love_values": 0.15,
        "emotional_needs": 0.15,
        "life_rhythm": 0.10,
        "personality_traits": 0.15,
        "matching_preferences": 0.10,
        "location": 0.0,
        "hometown": 0.0,
        "nationality": 0.0,
    }
)

MBTI_TYPES: frozenset[str] = frozenset(a + b + c + d for a in "EI" for b in "SN" for c in "TF" for d in "JP")
PREFERRED_GENDERS: tuple[str, ...] = ("female", "male", "nonbinary", "any")
MATCHING_KEYS: tuple[str, ...] = ("preferred_gender", "age_range", "deal_breakers")
AGE_MIN, AGE_MAX = 18, 120  # matchmaking is for adults

MAX_LIST_ITEMS = 20  # interests, personality_traits, deal_breakers: keep the most recent
MAX_SOURCES = 20  # provenance message ids per field: keep the most recent
MAX_TEXT_CHARS = 300
MAX_ITEM_CHARS = 100

RenderMode = Literal["full", "neutral"]
NEUTRAL_OMITTED: frozenset[str] = frozenset({"love_values", "interests", "emotional_needs"})
FIELD_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "city": "City",
        "occupation": "Occupation",
        "interests": "Interests",
        "mbti_guess": "MBTI (guess)",
        "love_values": "Relationship values",
        "emotional_needs": "Emotional needs",
        "life_rhythm": "Daily rhythm",
        "personality_traits": "Personality",
        "matching_preferences": "Partner preferences",
        "location": "Location",
        "hometown": "Hometown",
        "nationality": "Nationality",
    }
)


# ---------------------------------------------------------------------------
# values: cleaning and validation (shared by merge and the LLM validator)


def _clean_text(value: object, limit: int) -> tuple[str | None, str | None]:
    if not isinstance(value, str):
        return None, f"expected a string, got {type(value).__name__}"
    text = " ".join(value.split())
    if len(text) > limit:
        return None, f"longer than {limit} characters"
    return (text or None), None


def _clean_list(value: object) -> tuple[list[str] | None, str | None]:
    if not isinstance(value, (list, tuple)):
        return None, f"expected a list of strings, got {type(value).__name__}"
    items: list[str] = []
    for raw in value:
        item, error = _clean_text(raw, MAX_ITEM_CHARS)
        if error:
            return None, f"list item: {error}"
        if item:
            items.append(item)
    return (union_items([], items) or None), None


def _clean_age_range(value: object) -> tuple[list[int] | None, str | None]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return None, "age_range must be [min, max] integers"
    low, high = value
    if not AGE_MIN <= low <= high <= AGE_MAX:
        return None, f"age_range must satisfy {AGE_MIN} <= min <= max <= {AGE_MAX}"
    return [low, high], None


def _clean_matching(value: object) -> tuple[dict[str, Any] | None, str | None]:
    if not isinstance(value, Mapping):
        return None, f"expected an object, got {type(value).__name__}"
    unknown = sorted(set(value) - set(MATCHING_KEYS))
    if unknown:
        return None, f"unknown keys {unknown}; allowed {list(MATCHING_KEYS)}"
    clean: dict[str, Any] = {}
    if value.get("preferred_gender") not in (None, ""):
        gender = value["preferred_gender"]
        if not isinstance(gender, str) or gender.strip().casefold() not in PREFERRED_GENDERS:
            return None, f"preferred_gender must be one of {list(PREFERRED_GENDERS)}"
        clean["preferred_gender"] = gender.strip().casefold()
    if value.get("age_range") is not None:
        ages, error = _clean_age_range(value["age_range"])
        if error:
            return None, error
        clean["age_range"] = ages
    if value.get("deal_breakers") is not None:
        breakers, error = _clean_list(value["deal_breakers"])
        if error:
            return None, f"deal_breakers: {error}"
        if breakers:
            clean["deal_breakers"] = breakers
    return (clean or None), None


def clean_field_value(field: str, value: object) -> tuple[ProfileValue | None, str | None]:
    """Validate and tidy one field value: `(clean, None)`, `(None, None)` if empty, `(None, error)`.

    Strings are whitespace-collapsed, lists deduplicated case-insensitively, mbti_guess must be one
    of the 16 types (a trailing -A/-T identity suffix is dropped), matching_preferences only has
    preferred_gender, age_range [min, max] and deal_breakers.
    """
    kind = FIELD_KINDS.get(field)
    if kind is None:
        return None, f"unknown field {field!r}"
    if kind is FieldKind.LIST:
        return _clean_list(value)
    if kind is FieldKind.OBJECT:
        return _clean_matching(value)
    text, error = _clean_text(value, MAX_TEXT_CHARS)
    if field == "mbti_guess" and text:
        text = re.sub(r"-[AT]$", "", text.upper())
        if text not in MBTI_TYPES:
            return None, f"mbti_guess must be one of the 16 types, got {value!r}"
    return text, error


def _is_populated(value: object) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple)):
        return len(value) > 0
    if isinstance(value, Mapping):
        return any(_is_populated(v) for v in value.values())
    return False


def profile_values(profile: Mapping[str, Any]) -> dict[str, ProfileValue]:
    """`{field: value}` for the known fields that are populated, in canonical order."""
    values: dict[str, ProfileValue] = {}
    for field in FIELDS:
        entry = profile.get(field)
        if isinstance(entry, Mapping) and _is_populated(entry.get("value")):
            values[field] = entry["value"]
    return values


def training_level(profile: Mapping[str, Any]) -> float:
    """Sum of the weights of the populated fields, rounded to 3 decimals, in [0, 1] (spec: insight.md)."""
    total = math.fsum(FIELD_WEIGHTS[field] for field in profile_values(profile))
    return min(1.0, max(0.0, round(total, 3)))


# ---------------------------------------------------------------------------
# merge


@dataclass(frozen=True)
class FieldUpdate:
    """One proposed value for one field, from the extractor or the stage-2 LLM."""

    field: str
    value: Any  # str | Sequence[str] | Mapping (matching_preferences)
    confidence: float
    source_message_ids: tuple[str, ...]
    correction: bool = False  # the user corrected the field: replace regardless of confidence
    evidence: str | None = None  # mbti_guess only


def union_items(
    old: Sequence[str],
    new: Sequence[str],
    *,
    key: Callable[[str], str] = str.casefold,
    cap: int = MAX_LIST_ITEMS,
) -> list[str]:
    """Ordered union, oldest first: an item mentioned again keeps its first spelling but moves to
    the end (most recent); beyond `cap` the oldest items are dropped."""
    first_spelling: dict[str, str] = {}
    for item in [*old, *new]:
        first_spelling.setdefault(key(item), item)
    new_keys = list(dict.fromkeys(key(item) for item in new))
    kept = [k for k in dict.fromkeys(key(item) for item in old) if k not in set(new_keys)]
    return [first_spelling[k] for k in kept + new_keys][-cap:] if cap > 0 else []


def _union_sources(old: Sequence[str], new: Sequence[str]) -> list[str]:
    return union_items(old, new, key=lambda s: s, cap=MAX_SOURCES)


def _merge_text(old: Mapping[str, Any], update: FieldUpdate, value: str) -> dict[str, Any] | None:
    """Scalars: a confirmation (same value, any case) raises confidence and adds sources; a different
    value replaces only with confidence >= the old one, or as a correction."""
    old_value = old.get("value")
    old_confidence = float(old.get("confidence", 0.0))
    entry: dict[str, Any]
    if isinstance(old_value, str) and old_value.casefold() == value.casefold() and not update.correction:
        entry = {
            "value": old_value,
            "sources": _union_sources(old.get("sources", []), update.source_message_ids),
            "confidence": max(old_confidence, update.confidence),
        }
        evidence = update.evidence or old.get("evidence")
    elif not _is_populated(old_value) or update.correction or update.confidence >= old_confidence:
        entry = {
            "value": value,
            "sources": _union_sources([], update.source_message_ids),
            "confidence": update.confidence,
        }
        evidence = update.evidence
    else:
        return None
    if update.field == "mbti_guess" and evidence:
        entry["evidence"] = evidence
    return entry


def _merge_list(old: Mapping[str, Any], update: FieldUpdate, value: list[str]) -> dict[str, Any]:
    """Arrays: unioned and capped, sources accumulate; a correction replaces the whole list."""
    if update.correction or not _is_populated(old.get("value")):
        return {
            "value": value,
            "sources": _union_sources([], update.source_message_ids),
            "confidence": update.confidence,
        }
    return {
        "value": union_items(old["value"], value),
        "sources": _union_sources(old.get("sources", []), update.source_message_ids),
        "confidence": max(float(old.get("confidence", 0.0)), update.confidence),
    }


def _merge_object(old: Mapping[str, Any], update: FieldUpdate, value: dict[str, Any]) -> dict[str, Any]:
    """matching_preferences: key by key. deal_breakers are unioned (replaced on a correction); the
    scalar keys follow the scalar rule against the entry's confidence; sources accumulate."""
    old_value = dict(old.get("value") or {})
    old_confidence = float(old.get("confidence", 0.0))
    merged = dict(old_value)
    for key, new in value.items():
        if key == "deal_breakers" and not update.correction:
            merged[key] = union_items(old_value.get(key, []), new)
        elif key not in old_value or update.correction or update.confidence >= old_confidence:
            merged[key] = new
    return {
        "value": merged,
        "sources": _union_sources(old.get("sources", []), update.source_message_ids),
        "confidence": update.confidence if update.correction else max(old_confidence, update.confidence),
    }


def merge_profile(current: Mapping[str, Any], updates: Sequence[FieldUpdate], now: datetime) -> Profile:
    """Apply updates in order and return a new profile (spec: insight.md, Merge).

    Invalid or empty values are ignored (an mbti_guess outside the 16 types, an unknown field).
    `updated_at` is set to `now` only on entries whose content changed.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    stamp = now.isoformat()
    profile: Profile = {field: dict(entry) for field, entry in current.items() if isinstance(entry, Mapping)}
    for update in updates:
        value, error = clean_field_value(update.field, update.value)
        if error or value is None:
            continue
        old: Mapping[str, Any] = profile.get(update.field) or {}
        kind = FIELD_KINDS[update.field]
        if kind is FieldKind.TEXT:
            entry = _merge_text(old, update, value)  # type: ignore[arg-type]
        elif kind is FieldKind.LIST:
            entry = _merge_list(old, update, value)  # type: ignore[arg-type]
        else:
            entry = _merge_object(old, update, value)  # type: ignore[arg-type]
        if entry is None:
            continue
        unchanged = {k: v for k, v in old.items() if k != "updated_at"} == entry
        entry["updated_at"] = old.get("updated_at", stamp) if unchanged else stamp
        profile[update.field] = entry
    return profile


# ---------------------------------------------------------------------------
# prompt rendering


def _render_value(field: str, value: ProfileValue) -> str:
    if field == "matching_preferences" and isinstance(value, Mapping):
        parts = []
        if value.get("preferred_gender"):
            parts.append(f"prefers {value['preferred_gender']}")
        if value.get("age_range"):
            low, high = value["age_range"]
            parts.append(f"age {low}-{high}")
        if value.get("deal_breakers"):
            parts.append("deal breakers: " + ", ".join(value["deal_breakers"]))
        text = "; ".join(parts)
    elif isinstance(value, (list, tuple)):
        text = ", ".join(value)
    else:
        text = str(value)
    text = " ".join(text.split())  # one line per field: a value can never open a new prompt section
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def render_profile(profile: Mapping[str, Any], mode: RenderMode = "full") -> str:
    """Lines for the prompt's `[user_profile]` section, one `- Label: value` per populated field.

    `neutral` omits love_values, interests and emotional_needs (spec: insight.md, GetProfile).
    An empty profile renders as "".
    """
    if mode not in ("full", "neutral"):
        raise ValueError(f"render mode must be 'full' or 'neutral', got {mode!r}")
    return "\n".join(
        f"- {FIELD_LABELS[field]}: {_render_value(field, value)}"
        for field, value in profile_values(profile).items()
        if not (mode == "neutral" and field in NEUTRAL_OMITTED)
    )


# ---------------------------------------------------------------------------
# QueryProfiles


def normalize_term(text: str) -> str:
    """Form used in the indexed columns and in queries: NFKC, casefolded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class InvalidQuery(ValueError):
    """A QueryProfiles filter is malformed; `field` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _query_term(field: str, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidQuery(field, f"{name} must be a string")
    term = normalize_term(value)
    if not term or len(term) > MAX_ITEM_CHARS:
        raise InvalidQuery(field, f"{name} must be 1-{MAX_ITEM_CHARS} characters")
    return term


@dataclass(frozen=True)
class ProfileQuery:
    """Filter for QueryProfiles: every given condition must hold (AND); `interests_all` means the
    profile has each of these interests."""

    city: str | None = None
    occupation: str | None = None
    interests_all: tuple[str, ...] = ()
    mbti: str | None = None
    min_training_level: float | None = None
    limit: int = 50

    MAX_LIMIT = 200
    MAX_INTERESTS = 10

    def validate(self) -> ProfileQuery:
        """Raise InvalidQuery (a ValueError naming the field) on bad input; return the normalised
        query (terms via `normalize_term`, MBTI upper-case, interests deduplicated)."""
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= self.MAX_LIMIT:
            raise InvalidQuery("limit", f"limit must be an integer in 1..{self.MAX_LIMIT}")
        level = self.min_training_level
        if level is not None and (
            isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= level <= 1.0
        ):
            raise InvalidQuery("min_training_level", "min_training_level must be a number in [0, 1]")
        if not isinstance(self.interests_all, (tuple, list)) or len(self.interests_all) > self.MAX_INTERESTS:
            raise InvalidQuery("interests_all", f"interests_all must be a list of at most {self.MAX_INTERESTS} terms")
        mbti = None
        if self.mbti is not None:
            if not isinstance(self.mbti, str) or self.mbti.strip().upper() not in MBTI_TYPES:
                raise InvalidQuery("mbti", "mbti must be one of the 16 types")
            mbti = self.mbti.strip().upper()
        return replace(
            self,
            city=None if self.city is None else _query_term("city", "city", self.city),
            occupation=None if self.occupation is None else _query_term("occupation", "occupation", self.occupation),
            interests_all=tuple(dict.fromkeys(_query_term("interests_all", "interest", i) for i in self.interests_all)),
            mbti=mbti,
            min_training_level=None if level is None else float(level),
        )


def queryable_columns(profile: Mapping[str, Any]) -> dict[str, Any]:
    """Values for the store's indexed columns, normalised exactly like `ProfileQuery.validate`."""
    values = profile_values(profile)
    city, occupation = values.get("city"), values.get("occupation")
    return {
        "city": normalize_term(city) if isinstance(city, str) else None,
        "occupation": normalize_term(occupation) if isinstance(occupation, str) else None,
        "interests": [normalize_term(i) for i in values.get("interests", [])],
        "mbti": values.get("mbti_guess"),
        "training_level": training_level(profile),
    }


# ---------------------------------------------------------------------------
# the active branch (issue 10): provenance decides what a branch sees


def field_sources(entry: Mapping[str, Any]) -> list[str]:
    sources = entry.get("sources") if isinstance(entry, Mapping) else None
    return [str(source) for source in sources] if isinstance(sources, list) else []


def profile_sources(profile: Mapping[str, Any]) -> set[str]:
    """Every message id the profile's fields cite."""
    return {source for entry in profile.values() for source in field_sources(entry)}


def hidden_fields(profile: Mapping[str, Any], hidden_messages: Set[str]) -> list[str]:
    """The fields whose every source message is hidden (off the active branch); a field without sources never is."""
    return [
        name
        for name, entry in profile.items()
        if (sources := field_sources(entry)) and all(source in hidden_messages for source in sources)
    ]


def visible_profile(profile: Mapping[str, Any], hidden_messages: Set[str]) -> Profile:
    """The profile without its hidden fields: what GetProfile, its rendering and QueryProfiles see."""
    hidden = set(hidden_fields(profile, hidden_messages))
    return {name: dict(entry) for name, entry in profile.items() if name not in hidden}


@dataclass(frozen=True)
class ProfileErasure:
    """A profile after erasing messages: fields whose every source was erased are removed, the others that
    cited one lose it (their values stay: a value is not split by message)."""

    profile: Profile
    removed: list[str]
    updated: list[str]


def erase_sources(profile: Mapping[str, Any], erased: Set[str]) -> ProfileErasure:
    kept: Profile = {}
    removed: list[str] = []
    updated: list[str] = []
    for name, entry in profile.items():
        sources = field_sources(entry)
        remaining = [source for source in sources if source not in erased]
        if sources and not remaining:
            removed.append(name)
            continue
        kept[name] = dict(entry)
        if len(remaining) < len(sources):
            kept[name]["sources"] = remaining
            updated.append(name)
    return ProfileErasure(kept, removed, updated)


def without_erased_sources(updates: Sequence[FieldUpdate], erased: Set[str]) -> list[FieldUpdate]:
    """Proposed updates with erased messages dropped from their sources; one citing only erased messages is
    dropped (a late extraction of an erased turn)."""
    kept: list[FieldUpdate] = []
    for update in updates:
        sources = tuple(source for source in update.source_message_ids if source not in erased)
        if sources or not update.source_message_ids:
            kept.append(replace(update, source_message_ids=sources))
    return kept


# ---------------------------------------------------------------------------
# LLM extraction (task insight_extraction): prompts and strict validation

MAX_FACTS = 20
MAX_FACT_CHARS = 300

FIELD_GUIDE: Mapping[str, str] = MappingProxyType(
    {
        "city": 'text: the city the user lives in now, e.g. "Lisbon"',
        "occupation": 'text: their job, e.g. "nurse"',
        "interests": 'list of short noun phrases, only NEW items, e.g. ["hiking", "jazz"]',
        "mbti_guess": "text: one of " + ", ".join(sorted(MBTI_TYPES)) + '; may add "evidence": short quote',
        "love_values": "text: what they value in a relationship",
        "emotional_needs": "text: what they need emotionally from others",
        "life_rhythm": 'text: their daily rhythm, e.g. "night owl"',
        "personality_traits": 'list of adjectives, only NEW items, e.g. ["shy", "curious"]',
        "matching_preferences": (
            'object with any of "preferred_gender" (' + "|".join(PREFERRED_GENDERS) + "), "
            f'"age_range" [min, max] integers {AGE_MIN}-{AGE_MAX}, "deal_breakers" list of short phrases'
        ),
        "location": "text: country or wider region they live in",
        "hometown": "text: where they are from",
        "nationality": 'text: nationality adjective, e.g. "Portuguese"',
    }
)

FACTS_SYSTEM_PROMPT = """\
You extract facts about the USER from one exchange between the user and {persona}, an AI companion.
Rules:
- Only facts the user states about themselves: where they live or come from, their work, interests,
  personality, daily rhythm, what they value or need in relationships, what they want in a partner.
- Never record anything about {persona}. Never record facts about other people ("my sister lives in
  Rome" says nothing about where the user lives).
- Ignore questions, hypotheticals and jokes. Do not guess.
- Each fact is one short sentence starting with "The user".
Answer with JSON only: {{"facts": ["The user ..."]}}, or {{"facts": []}} if there is nothing."""

FIELDS_SYSTEM_PROMPT = """\
You map facts about a user onto their structured profile.
Fields (include only fields the facts clearly support):
{guide}
Each included field is {{"value": ..., "confidence": number 0-1}}. Add "correction": true only when the
user corrects or changes a value the current profile already has. For list fields give only new items.
Answer with JSON only: {{"fields": {{"<field>": {{"value": ..., "confidence": ...}}}}}}, or {{"fields": {{}}}}."""


def build_fact_messages(
    user_text: str, assistant_text: str, persona_name: str = "the companion"
) -> list[dict[str, str]]:
    """Stage 1 chat messages: one exchange -> short facts about the USER only."""
    return [
        {"role": "system", "content": FACTS_SYSTEM_PROMPT.format(persona=persona_name)},
        {
            "role": "user",
            "content": f"<exchange>\nUser: {user_text}\n{persona_name}: {assistant_text}\n</exchange>",
        },
    ]


def build_field_messages(facts: Sequence[str], profile: Mapping[str, Any]) -> list[dict[str, str]]:
    """Stage 2 chat messages: facts + the current profile -> `{"fields": {...}}` JSON."""
    guide = "\n".join(f"- {field}: {FIELD_GUIDE[field]}" for field in FIELDS)
    current = json.dumps(profile_values(profile), ensure_ascii=False)
    listed = "\n".join(f"- {fact}" for fact in facts)
    return [
        {"role": "system", "content": FIELDS_SYSTEM_PROMPT.format(guide=guide)},
        {"role": "user", "content": f"Current profile: {current}\n\nFacts:\n{listed}"},
    ]


def _load_json(text: str) -> tuple[Any, str | None]:
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1)
    try:
        return json.loads(body), None
    except (json.JSONDecodeError, ValueError) as exc:
        return None, f"not valid JSON: {exc}"


def parse_facts(text: str) -> tuple[list[str], str | None]:
    """Parse stage 1 output `{"facts": [str, ...]}` (code fences tolerated). `([], error)` on bad
    output; at most MAX_FACTS facts are kept."""
    payload, error = _load_json(text)
    if error:
        return [], error
    if not isinstance(payload, dict) or set(payload) != {"facts"} or not isinstance(payload["facts"], list):
        return [], 'expected {"facts": [string, ...]}'
    facts: list[str] = []
    for raw in payload["facts"]:
        fact, error = _clean_text(raw, MAX_FACT_CHARS)
        if error:
            return [], f"fact: {error}"
        if fact:
            facts.append(fact)
    return facts[:MAX_FACTS], None


def _validate_field_spec(field: str, spec: object, sources: tuple[str, ...]) -> tuple[FieldUpdate | None, str | None]:
    if field not in FIELD_KINDS:
        return None, f"unknown field {field!r}"
    if not isinstance(spec, dict):
        return None, f"{field}: expected an object with value and confidence"
    allowed = {"value", "confidence", "correction"} | ({"evidence"} if field == "mbti_guess" else set())
    if set(spec) - allowed or "value" not in spec or "confidence" not in spec:
        return None, f"{field}: keys must be {sorted(allowed)} with value and confidence required"
    confidence = spec["confidence"]
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 <= confidence <= 1.0:
        return None, f"{field}: confidence must be a number in [0, 1]"
    if not isinstance(spec.get("correction", False), bool):
        return None, f"{field}: correction must be a boolean"
    evidence = spec.get("evidence")
    if evidence is not None and not isinstance(evidence, str):
        return None, f"{field}: evidence must be a string"
    value, error = clean_field_value(field, spec["value"])
    if error:
        return None, f"{field}: {error}"
    if value is None:
        return None, None  # empty value: the model had nothing to say, not an error
    return FieldUpdate(field, value, float(confidence), sources, spec.get("correction", False), evidence), None


def validate_llm_fields(
    payload: object, source_message_ids: Sequence[str] = ()
) -> tuple[list[FieldUpdate], str | None]:
    """Strictly validate stage 2 output `{"fields": {field: {"value", "confidence"[, "correction"]
    [, "evidence"]}}}`. Any unknown field, wrong type or invalid MBTI -> `([], error)`: the run is
    recorded as parse_error and nothing is merged. Empty values are skipped."""
    if not isinstance(payload, dict) or set(payload) != {"fields"} or not isinstance(payload["fields"], dict):
        return [], 'expected {"fields": {...}}'
    sources = tuple(source_message_ids)
    updates: list[FieldUpdate] = []
    errors: list[str] = []
    for field, spec in payload["fields"].items():
        update, error = _validate_field_spec(str(field), spec, sources)
        if error:
            errors.append(error)
        elif update:
            updates.append(update)
    return ([], "; ".join(errors)) if errors else (updates, None)


def parse_fields(text: str, source_message_ids: Sequence[str] = ()) -> tuple[list[FieldUpdate], str | None]:
    """Parse stage 2 raw text (code fences tolerated), then `validate_llm_fields`."""
    payload, error = _load_json(text)
    if error:
        return [], error
    return validate_llm_fields(payload, source_message_ids)
