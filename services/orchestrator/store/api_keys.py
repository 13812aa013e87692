"""API keys of the OpenAI-compatible endpoint: only a SHA-256 of each key is stored, with a short prefix."""

from __future__ import annotations

import uuid

from .rows import ApiKeyInfo, Conn, row_to, rows_to

_COLUMNS = "id, user_id, name, prefix, created_at, last_used_at, revoked_at"


async def insert_api_key(conn: Conn, user_id: uuid.UUID, name: str, prefix: str, key_hash: str) -> ApiKeyInfo:
    row = await conn.fetchrow(
        f"""INSERT INTO chat.api_keys (user_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4)
            RETURNING {_COLUMNS}""",
        user_id,
        name,
        prefix,
        key_hash,
    )
    return row_to(ApiKeyInfo, row)  # type: ignore[no-any-return]


async def list_api_keys(conn: Conn, user_id: uuid.UUID) -> list[ApiKeyInfo]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM chat.api_keys WHERE user_id = $1 ORDER BY created_at, id", user_id)
    return rows_to(ApiKeyInfo, rows)


async def revoke_api_key(conn: Conn, key_id: uuid.UUID) -> ApiKeyInfo | None:
    """Idempotent: the first revocation time is kept."""
    row = await conn.fetchrow(
        f"UPDATE chat.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {_COLUMNS}",
        key_id,
    )
    return row_to(ApiKeyInfo, row)  # type: ignore[no-any-return]


async def use_api_key(conn: Conn, key_hash: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(user id, key id) of the unrevoked key with this hash, noting its use; None when there is none."""
    row = await conn.fetchrow(
        "UPDATE chat.api_keys SET last_used_at = now() WHERE key_hash = $1 AND revoked_at IS NULL "
        "RETURNING user_id, id",
        key_hash,
    )
    return (row["user_id"], row["id"]) if row else None
