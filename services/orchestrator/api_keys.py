"""Per-user API keys for the OpenAI-compatible API (`rapport keys create|list|revoke`).

A key is `rk_` + 32 random url-safe characters (192 bits), shown once. Only its SHA-256 is stored (a
slow password hash buys nothing for a high-entropy secret), with a short prefix for listings. The
gateway asks `VerifyApiKey` and caches the answer briefly, so a revoke takes effect within that TTL.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

KEY_PREFIX = "rk_"
KEY_RANDOM_BYTES = 24  # → 32 url-safe characters
DISPLAY_CHARS = 8  # `rk_` + the first 8 characters identify a key in a listing
MAX_NAME_CHARS = 100


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


@dataclass(frozen=True)
class ApiKeyInfo:
    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


async def create_api_key(pool: asyncpg.Pool, user_id: uuid.UUID, name: str = "") -> tuple[str, ApiKeyInfo]:
    """A new key for the user → (the key, shown only now; what is stored about it)."""
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"name: at most {MAX_NAME_CHARS} characters")
    key = new_api_key()
    row = await pool.fetchrow(
        """INSERT INTO chat.api_keys (user_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4)
           RETURNING id, user_id, name, prefix, created_at, last_used_at, revoked_at""",
        user_id,
        name,
        key[: len(KEY_PREFIX) + DISPLAY_CHARS],
        key_hash(key),
    )
    return key, ApiKeyInfo(**dict(row))


async def list_api_keys(pool: asyncpg.Pool, user_id: uuid.UUID) -> list[ApiKeyInfo]:
    rows = await pool.fetch(
        """SELECT id, user_id, name, prefix, created_at, last_used_at, revoked_at FROM chat.api_keys
           WHERE user_id = $1 ORDER BY created_at, id""",
        user_id,
    )
    return [ApiKeyInfo(**dict(row)) for row in rows]


async def revoke_api_key(pool: asyncpg.Pool, key_id: uuid.UUID) -> ApiKeyInfo | None:
    """Revoke a key (idempotent: the first revocation time is kept); None when there is no such key."""
    row = await pool.fetchrow(
        """UPDATE chat.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
           RETURNING id, user_id, name, prefix, created_at, last_used_at, revoked_at""",
        key_id,
    )
    return ApiKeyInfo(**dict(row)) if row else None


async def verify_api_key(pool: asyncpg.Pool, key: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(user id, key id) of a valid, unrevoked key — and note its use; None otherwise."""
    if not looks_like_api_key(key):
        return None
    row = await pool.fetchrow(
        """UPDATE chat.api_keys SET last_used_at = now() WHERE key_hash = $1 AND revoked_at IS NULL
           RETURNING user_id, id""",
        key_hash(key),
    )
    return (row["user_id"], row["id"]) if row else None
