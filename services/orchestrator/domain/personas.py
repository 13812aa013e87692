"""Persona definitions from TOML (orchestrator.md "Personas").

A persona file has `name` and `system_prompt` (required), `tip_personality`, and an
`[art_metadata]` table: gender, timezone (IANA), age, mbti, backstory, speech_style, quirks[],
topics[], appearance. Errors name the file and the key. Character cards (cards.py) produce the
same `PersonaSpec`, with their card-only fields filled in.
"""

from __future__ import annotations

import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

MBTI_RE = re.compile(r"^[EI][NS][TF][JP](-[AT])?$")
MIN_PERSONA_AGE = 18  # companions may become romantic (affinity labels): personas are adults
MAX_PERSONA_AGE = 1000


class PersonaError(ValueError):
    """An invalid persona definition; the message names the source file and the key."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        super().__init__(f"{source}: {key}: {message}")


@dataclass(frozen=True)
class PersonaSpec:
    """A persona as defined by its author (TOML file or character card)."""

    name: str
    system_prompt: str
    tip_personality: str | None = None
    gender: str | None = None
    timezone: str | None = None
    age: int | None = None
    mbti: str | None = None
    backstory: str | None = None
    speech_style: str | None = None
    quirks: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    appearance: str | None = None
    # Character-card fields (cards.py); empty for TOML personas.
    first_mes: str | None = None
    mes_example: str | None = None
    creator_notes: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    card: Mapping[str, Any] | None = None

    def art_metadata(self) -> dict[str, Any]:
        """The persisted `art_metadata` document: every set field beyond name/prompt/tip."""
        document: dict[str, Any] = {
            "gender": self.gender,
            "timezone": self.timezone,
            "age": self.age,
            "mbti": self.mbti,
            "backstory": self.backstory,
            "speech_style": self.speech_style,
            "quirks": list(self.quirks),
            "topics": list(self.topics),
            "appearance": self.appearance,
            "first_mes": self.first_mes,
            "mes_example": self.mes_example,
            "creator_notes": self.creator_notes,
            "extensions": dict(self.extensions),
            "card": dict(self.card) if self.card is not None else None,
        }
        return {key: value for key, value in document.items() if value not in (None, [], {})}


def is_iana_timezone(name: str) -> bool:
    """True for a zone name the bundled tz database knows (e.g. Europe/Lisbon)."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _text(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PersonaError(source, key, "expected a non-empty string")
    return value.strip()


def _texts(source: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise PersonaError(source, key, "expected a list of strings")
    return tuple(_text(source, f"{key}[{index}]", item) for index, item in enumerate(value))


def _timezone(source: str, key: str, value: Any) -> str:
    name = _text(source, key, value)
    if not is_iana_timezone(name):
        raise PersonaError(source, key, f"unknown IANA timezone {name!r} (e.g. Europe/Lisbon)")
    return name


def _age(source: str, key: str, value: Any) -> int:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int or not MIN_PERSONA_AGE <= value <= MAX_PERSONA_AGE:
        raise PersonaError(source, key, f"expected an integer from {MIN_PERSONA_AGE} (personas are adults)")
    return int(value)


def _mbti(source: str, key: str, value: Any) -> str:
    code = _text(source, key, value).upper()
    if not MBTI_RE.match(code):
        raise PersonaError(source, key, "expected a 4-letter MBTI type such as INTJ or ENFP-A")
    return code


_ART_METADATA_KEYS = {
    "gender": _text,
    "timezone": _timezone,
    "age": _age,
    "mbti": _mbti,
    "backstory": _text,
    "speech_style": _text,
    "quirks": _texts,
    "topics": _texts,
    "appearance": _text,
}
_TOP_LEVEL_KEYS = ("name", "system_prompt", "tip_personality", "art_metadata")


def parse_persona_toml(text: str, source: str) -> PersonaSpec:
    """Parse one persona file; `source` (the file name) prefixes every error message."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PersonaError(source, "toml", f"invalid TOML: {error}") from None
    for key in raw:
        if key not in _TOP_LEVEL_KEYS:
            raise PersonaError(source, key, f"unknown key (expected one of {', '.join(_TOP_LEVEL_KEYS)})")
    for required in ("name", "system_prompt"):
        if required not in raw:
            raise PersonaError(source, required, "required")
    art = raw.get("art_metadata", {})
    if not isinstance(art, dict):
        raise PersonaError(source, "art_metadata", "expected a table")
    metadata: dict[str, Any] = {}
    for key, value in art.items():
        if key not in _ART_METADATA_KEYS:
            allowed = ", ".join(_ART_METADATA_KEYS)
            raise PersonaError(source, f"art_metadata.{key}", f"unknown key (expected one of {allowed})")
        metadata[key] = _ART_METADATA_KEYS[key](source, f"art_metadata.{key}", value)
    tip = raw.get("tip_personality")
    return PersonaSpec(
        name=_text(source, "name", raw["name"]),
        system_prompt=_text(source, "system_prompt", raw["system_prompt"]),
        tip_personality=_text(source, "tip_personality", tip) if tip is not None else None,
        **metadata,
    )
