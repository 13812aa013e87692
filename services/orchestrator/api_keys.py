"""Per-user API keys for the OpenAI-compatible API (`rapport keys create|list|revoke`).

A key is `rk_` + 32 random url-safe characters (192 bits), shown once. Only its SHA-256 is stored (a
slow password hash buys nothing for a high-entropy secret), with a short prefix for listings. The
gateway asks `VerifyApiKey` and caches the answer briefly, so a revoke takes effect within that TTL.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

import asyncpg

from services.contracts.api_keys import KEY_PREFIX, looks_like_api_key

from .store import api_keys as key_store
from .store.rows import ApiKeyInfo

KEY_RANDOM_BYTES = 24  # → 32 url-safe characters
DISPLAY_CHARS = 8  # `rk_` + the first 8 characters identify a key in a listing
MAX_NAME_CHARS = 100
MAX_KEY_CHARS = 200  # longer than any key: not looked up

__all__ = ["ApiKeyInfo", "create_api_key", "key_hash", "list_api_keys", "revoke_api_key", "verify_api_key"]


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_api_key(pool: asyncpg.Pool, user_id: uuid.UUID, name: str = "") -> tuple[str, ApiKeyInfo]:
    """A new key for the user → (the key, shown only now; what is stored about it)."""
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"name: at most {MAX_NAME_CHARS} characters")
    key = new_api_key()
    info = await key_store.insert_api_key(pool, user_id, name, key[: len(KEY_PREFIX) + DISPLAY_CHARS], key_hash(key))
    return key, info


async def list_api_keys(pool: asyncpg.Pool, user_id: uuid.UUID) -> list[ApiKeyInfo]:
    return await key_store.list_api_keys(pool, user_id)


async def revoke_api_key(pool: asyncpg.Pool, key_id: uuid.UUID) -> ApiKeyInfo | None:
    """Revoke a key (idempotent: the first revocation time is kept); None when there is no such key."""
    return await key_store.revoke_api_key(pool, key_id)


async def verify_api_key(pool: asyncpg.Pool, key: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(user id, key id) of a valid, unrevoked key — and note its use; None otherwise."""
    if not looks_like_api_key(key) or len(key) > MAX_KEY_CHARS:
        return None
    return await key_store.use_api_key(pool, key_hash(key))
