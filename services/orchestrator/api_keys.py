"""Keys (`rapport keys create|list|revoke`): per-user API keys for the OpenAI-compatible API, and service
keys for the public gRPC API (docs/grpc.md).

An API key is `rk_` + 32 random url-safe characters (192 bits), a service key `rsk_` + 32; either is
shown once. Only its SHA-256 is stored (a slow password hash buys nothing for a high-entropy secret),
with a short prefix for listings. The gateway asks `VerifyApiKey`, the orchestrator's public API checks
service keys itself; both cache the answer for `API_KEY_CACHE_SECS`, so a revoke takes effect within it.

A service key names the backend it was issued to and its scopes: `chat` (personas, sessions, turns,
history, gifts, branches, explanations) and `data` (a user's export and deletion).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

import asyncpg

from services.contracts.api_keys import KEY_PREFIX, looks_like_api_key

from .store import api_keys as key_store
from .store.rows import ApiKeyInfo, ServiceKeyInfo

SERVICE_KEY_PREFIX = "rsk_"
SCOPES = ("chat", "data")
MAX_SERVICE_NAME_CHARS = 100
KEY_RANDOM_BYTES = 24  # → 32 url-safe characters
DISPLAY_CHARS = 8  # `rk_` + the first 8 characters identify a key in a listing
MAX_NAME_CHARS = 100
MAX_KEY_CHARS = 200  # longer than any key: not looked up

__all__ = [
    "ApiKeyInfo",
    "ServiceKeyInfo",
    "create_api_key",
    "create_service_key",
    "key_hash",
    "list_api_keys",
    "list_service_keys",
    "revoke_api_key",
    "revoke_service_key",
    "verify_api_key",
    "verify_service_key",
]


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


# ---- service keys -----------------------------------------------------------------------------------


def looks_like_service_key(token: str) -> bool:
    return token.startswith(SERVICE_KEY_PREFIX)


def parse_scopes(text: str) -> tuple[str, ...]:
    """`chat,data` → ("chat", "data"); ValueError naming the allowed scopes otherwise."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in SCOPES]
    if unknown or not names:
        raise ValueError(f"scope: {', '.join(unknown) or 'none given'}; allowed: {', '.join(SCOPES)} (comma-separated)")
    return names


async def create_service_key(pool: asyncpg.Pool, service: str, scopes: tuple[str, ...]) -> tuple[str, ServiceKeyInfo]:
    """A new key for a backend → (the key, shown only now; what is stored about it)."""
    service = service.strip()
    if not service or len(service) > MAX_SERVICE_NAME_CHARS:
        raise ValueError(f"service: a name of 1..{MAX_SERVICE_NAME_CHARS} characters")
    scopes = parse_scopes(",".join(scopes))
    key = SERVICE_KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
    info = await key_store.insert_service_key(
        pool, service, scopes, key[: len(SERVICE_KEY_PREFIX) + DISPLAY_CHARS], key_hash(key)
    )
    return key, info


async def list_service_keys(pool: asyncpg.Pool, service: str | None = None) -> list[ServiceKeyInfo]:
    return await key_store.list_service_keys(pool, service)


async def revoke_service_key(pool: asyncpg.Pool, key_id: uuid.UUID) -> ServiceKeyInfo | None:
    """Revoke a service key (idempotent); None when there is no such key."""
    return await key_store.revoke_service_key(pool, key_id)


async def verify_service_key(pool: asyncpg.Pool, key: str) -> ServiceKeyInfo | None:
    """The valid, unrevoked service key — and note its use; None otherwise."""
    if not looks_like_service_key(key) or len(key) > MAX_KEY_CHARS:
        return None
    return await key_store.use_service_key(pool, key_hash(key))
