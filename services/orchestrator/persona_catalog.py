"""Loading personas into the catalog: TOML folders (`rapport seed-personas`) and SillyTavern cards
(`rapport import-card`). Idempotent upsert by name."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from . import store
from .domain.cards import parse_character_card
from .domain.personas import PersonaSpec, parse_persona_toml

EXAMPLE_PERSONAS_DIR = Path(__file__).resolve().parent / "personas"


def art_metadata(spec: PersonaSpec) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "gender": spec.gender, "timezone": spec.timezone, "age": spec.age, "mbti": spec.mbti,
        "backstory": spec.backstory, "speech_style": spec.speech_style, "quirks": list(spec.quirks),
        "topics": list(spec.topics), "appearance": spec.appearance, "first_mes": spec.first_mes,
        "mes_example": spec.mes_example, "creator_notes": spec.creator_notes,
    }
    if spec.extensions:
        meta["extensions"] = dict(spec.extensions)
    return {key: value for key, value in meta.items() if value not in (None, "", [], {})}


def load_persona_dir(folder: Path) -> list[PersonaSpec]:
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise ValueError(f"no persona .toml files in {folder}")
    return [parse_persona_toml(path.read_text(), str(path)) for path in files]


async def upsert_specs(pool: asyncpg.Pool, specs: list[PersonaSpec], source: str) -> list[tuple[str, bool]]:
    results = []
    for spec in specs:
        _, created = await store.upsert_persona(
            pool, name=spec.name, system_prompt=spec.system_prompt, tip_personality=spec.tip_personality or "",
            art_metadata=art_metadata(spec), card=dict(spec.card) if spec.card else None, source=source)
        results.append((spec.name, created))
    return results


def load_card(path: Path) -> PersonaSpec:
    return parse_character_card(path.read_bytes())
