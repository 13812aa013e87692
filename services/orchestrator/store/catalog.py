"""Personas and persona instances (a user's copy of a persona: affinity and memory hang on it)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from .rows import Conn, InstanceRow, PersonaRow, row_to, rows_to

_PERSONA_COLUMNS = "id, name, system_prompt, tip_personality, art_metadata, card, source"


async def upsert_persona(
    conn: Conn,
    *,
    name: str,
    system_prompt: str,
    tip_personality: str,
    art_metadata: dict[str, Any],
    card: dict[str, Any] | None,
    source: str,
) -> tuple[uuid.UUID, bool]:
    """Idempotent upsert by name → (id, created)."""
    row = await conn.fetchrow(
        """INSERT INTO chat.personas (name, system_prompt, tip_personality, art_metadata, card, source)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (name) DO UPDATE SET system_prompt = EXCLUDED.system_prompt,
               tip_personality = EXCLUDED.tip_personality, art_metadata = EXCLUDED.art_metadata,
               card = EXCLUDED.card, source = EXCLUDED.source, updated_at = now()
           RETURNING id, (xmax = 0) AS created""",
        name,
        system_prompt,
        tip_personality,
        art_metadata,
        card,
        source,
    )
    return row["id"], row["created"]


async def list_personas(conn: Conn) -> list[PersonaRow]:
    rows = await conn.fetch(f"SELECT {_PERSONA_COLUMNS} FROM chat.personas ORDER BY name")
    return rows_to(PersonaRow, rows)


async def get_persona(conn: Conn, persona_id: uuid.UUID) -> PersonaRow | None:
    row = await conn.fetchrow(f"SELECT {_PERSONA_COLUMNS} FROM chat.personas WHERE id = $1", persona_id)
    return row_to(PersonaRow, row)  # type: ignore[no-any-return]


async def find_persona(conn: Conn, model: str) -> PersonaRow | None:
    """The persona an OpenAI `model` names: its id, or its name (case-insensitive)."""
    try:
        persona_id = uuid.UUID(model)
    except ValueError:
        row = await conn.fetchrow(
            f"SELECT {_PERSONA_COLUMNS} FROM chat.personas WHERE lower(name) = lower($1) ORDER BY name LIMIT 1", model
        )
        return row_to(PersonaRow, row)  # type: ignore[no-any-return]
    return await get_persona(conn, persona_id)


async def ensure_instance(conn: asyncpg.Connection, user_id: uuid.UUID, persona_id: uuid.UUID) -> uuid.UUID:
    return await conn.fetchval(  # type: ignore[no-any-return]
        """INSERT INTO chat.persona_instances (user_id, persona_id) VALUES ($1, $2)
           ON CONFLICT (user_id, persona_id) DO UPDATE SET user_id = EXCLUDED.user_id RETURNING id""",
        user_id,
        persona_id,
    )


async def get_instance(conn: Conn, instance_id: uuid.UUID) -> InstanceRow | None:
    row = await conn.fetchrow("SELECT id, user_id, persona_id FROM chat.persona_instances WHERE id = $1", instance_id)
    return row_to(InstanceRow, row)  # type: ignore[no-any-return]
