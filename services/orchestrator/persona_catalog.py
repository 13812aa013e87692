"""Loading personas into the catalog: TOML folders (`rapport seed-personas`) and SillyTavern cards
(`rapport import-card`). Idempotent upsert by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from .domain.cards import parse_character_card
from .domain.personas import PersonaSpec, parse_persona_toml
from .store import catalog
from .store.rows import PersonaRow

EXAMPLE_PERSONAS_DIR = Path(__file__).resolve().parent / "personas"


def art_metadata(spec: PersonaSpec) -> dict[str, Any]:
    """What is stored as the persona's art metadata (the raw card has its own column)."""
    return {key: value for key, value in spec.art_metadata().items() if key != "card"}


def persona_spec(row: PersonaRow) -> PersonaSpec:
    """The stored persona row back as the domain's PersonaSpec (for prompt assembly)."""
    meta = dict(row.art_metadata or {})
    return PersonaSpec(
        name=row.name,
        system_prompt=row.system_prompt,
        tip_personality=row.tip_personality or None,
        gender=meta.get("gender"),
        timezone=meta.get("timezone"),
        age=meta.get("age"),
        mbti=meta.get("mbti"),
        backstory=meta.get("backstory"),
        speech_style=meta.get("speech_style"),
        quirks=tuple(meta.get("quirks", ())),
        topics=tuple(meta.get("topics", ())),
        appearance=meta.get("appearance"),
        first_mes=meta.get("first_mes"),
        mes_example=meta.get("mes_example"),
        creator_notes=meta.get("creator_notes"),
        extensions=meta.get("extensions") or {},
        card=row.card,
    )


def load_persona_dir(folder: Path) -> list[PersonaSpec]:
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise ValueError(f"no persona .toml files in {folder}")
    return [parse_persona_toml(path.read_text(), str(path)) for path in files]


async def upsert_specs(pool: asyncpg.Pool, specs: list[PersonaSpec], source: str) -> list[tuple[str, bool]]:
    results = []
    for spec in specs:
        _, created = await catalog.upsert_persona(
            pool,
            name=spec.name,
            system_prompt=spec.system_prompt,
            tip_personality=spec.tip_personality or "",
            art_metadata=art_metadata(spec),
            card=dict(spec.card) if spec.card else None,
            source=source,
        )
        results.append((spec.name, created))
    return results


def load_card(path: Path) -> PersonaSpec:
    return parse_character_card(path.read_bytes())
