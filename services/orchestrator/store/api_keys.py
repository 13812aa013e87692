"""API keys of the OpenAI-compatible endpoint (one user each) and service keys of the public gRPC API (any
user, within their scopes): only a SHA-256 of each key is stored, with a short prefix."""

from __future__ import annotations

import uuid
from typing import Any

from .rows import ApiKeyInfo, Conn, ServiceKeyInfo, row_to, rows_to

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


# ---- service keys -----------------------------------------------------------------------------------

_SERVICE_COLUMNS = "id, service, scopes, prefix, created_at, last_used_at, revoked_at"


def _service_key(row: Any) -> ServiceKeyInfo | None:
    if row is None:
        return None
    return ServiceKeyInfo(**{**dict(row), "scopes": tuple(row["scopes"])})


async def insert_service_key(
    conn: Conn, service: str, scopes: tuple[str, ...], prefix: str, key_hash: str
) -> ServiceKeyInfo:
    row = await conn.fetchrow(
        f"""INSERT INTO chat.service_keys (service, scopes, prefix, key_hash) VALUES ($1, $2, $3, $4)
            RETURNING {_SERVICE_COLUMNS}""",
        service,
        list(scopes),
        prefix,
        key_hash,
    )
    info = _service_key(row)
    assert info is not None
    return info


async def list_service_keys(conn: Conn, service: str | None = None) -> list[ServiceKeyInfo]:
    """Every service key (or those of one service), oldest first; revoked ones included."""
    rows = await conn.fetch(
        f"""SELECT {_SERVICE_COLUMNS} FROM chat.service_keys WHERE $1::text IS NULL OR service = $1
            ORDER BY created_at, id""",
        service,
    )
    return [info for row in rows if (info := _service_key(row)) is not None]


async def revoke_service_key(conn: Conn, key_id: uuid.UUID) -> ServiceKeyInfo | None:
    """Idempotent: the first revocation time is kept."""
    row = await conn.fetchrow(
        f"""UPDATE chat.service_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
            RETURNING {_SERVICE_COLUMNS}""",
        key_id,
    )
    return _service_key(row)


async def use_service_key(conn: Conn, key_hash: str) -> ServiceKeyInfo | None:
    """The unrevoked service key with this hash, noting its use; None when there is none."""
    row = await conn.fetchrow(
        f"""UPDATE chat.service_keys SET last_used_at = now() WHERE key_hash = $1 AND revoked_at IS NULL
            RETURNING {_SERVICE_COLUMNS}""",
        key_hash,
    )
    return _service_key(row)
