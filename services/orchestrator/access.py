"""Who may call the orchestrator, for whom: the guard of the public gRPC API (docs/grpc.md).

Every call carries one credential in its metadata:

- `x-rapport-internal-token`: Rapport's own processes (the gateway, which has authenticated the user
  itself); the request's `user_id` is taken as given.
- `authorization: Bearer <JWT>`: an end user, verified exactly as the gateway verifies it
  (servicekit/identity.py); the call acts for the token's subject.
- `authorization: Bearer rsk_…`: a backend's service key (api_keys.py), which may act for any user,
  named in `x-rapport-user`, within its scopes.

For the last two, the request's `user_id` must be empty (it is then filled in) or the acting user's
(PERMISSION_DENIED otherwise), so a caller can never read or change another user's data: the ownership
checks of the servicer compare sessions with that user. Each RPC needs a scope (`REQUIRED_SCOPE`), and
calls are rate limited per service key and per acting user; the per-user turn cap (live_turns.py)
applies as on every path.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.servicekit.config import ConfigError, Env
from services.servicekit.grpc_errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from services.servicekit.grpc_security import ACTING_USER_KEY, INTERNAL_TOKEN_KEY, InternalToken
from services.servicekit.identity import AuthError, TokenVerifier, auth_mode, verifier_from_env
from services.servicekit.rate_limits import TokenBuckets
from services.servicekit.ttl_cache import TtlCache

from . import api_keys
from .store.rows import ServiceKeyInfo

CHAT, DATA = "chat", "data"
# The scope each RPC of rapport.orchestrator.v1.OrchestratorService needs; None = Rapport's own processes
# only. Every RPC must be listed (tests/unit/test_orchestrator_access.py): a new one is refused until it is.
REQUIRED_SCOPE: dict[str, str | None] = {
    "ListPersonas": CHAT,
    "StartChat": CHAT,
    "ListSessions": CHAT,
    "GetHistory": CHAT,
    "SendMessage": CHAT,
    "ApplyGift": CHAT,
    "ListGifts": CHAT,
    "ExplainMessage": CHAT,
    "ChatCompletion": CHAT,
    "RegenerateMessage": CHAT,
    "SelectAlternative": CHAT,
    "CreateBranch": CHAT,
    "ListBranches": CHAT,
    "ActivateBranch": CHAT,
    "DeleteMessage": CHAT,
    "ListEvents": CHAT,
    "ExportUserData": DATA,
    "DeleteUserData": DATA,
    "VerifyApiKey": None,  # the gateway's check of an API key: not for backends
}
END_USER_SCOPES = frozenset({CHAT, DATA})  # a user acting for themselves


@dataclass(frozen=True)
class Caller:
    """Who a public call is from and whom it acts for."""

    user_id: uuid.UUID
    scopes: frozenset[str]
    service_key: ServiceKeyInfo | None = None  # None: the user's own token

    @property
    def label(self) -> str:
        if self.service_key is None:
            return "this token"
        return f"service key {self.service_key.prefix}… ({self.service_key.service})"


def _denied(message: str) -> PermissionDenied:
    return PermissionDenied(message, user_message="You don't have access to that.")


def _unauthenticated(message: str) -> Unauthenticated:
    return Unauthenticated(message, user_message="Please sign in again.")


@dataclass
class PublicApiGuard:
    """The orchestrator's CallGuard (servicekit/grpc_security.py)."""

    pool: asyncpg.Pool
    internal: InternalToken
    verifier: TokenVerifier | None  # None: no identity provider configured, end-user tokens are refused
    key_cache: TtlCache[ServiceKeyInfo]
    per_key: TokenBuckets
    per_user: TokenBuckets

    @classmethod
    def from_env(cls, pool: asyncpg.Pool, internal: InternalToken, env: Env) -> PublicApiGuard:
        verifier = None
        if _identity_configured(env):
            verifier, _ = verifier_from_env(env)
        key_rate = env.float("GRPC_RATE_PER_SERVICE_KEY", 100.0, 0.0, 100_000.0)
        user_rate = env.float("GRPC_RATE_PER_USER", 20.0, 0.0, 100_000.0)
        return cls(
            pool=pool,
            internal=internal,
            verifier=verifier,
            key_cache=TtlCache(ttl=env.float("API_KEY_CACHE_SECS", 30.0, 0.0, 300.0)),
            per_key=TokenBuckets(rate=key_rate, burst=max(1.0, 2 * key_rate)),
            per_user=TokenBuckets(rate=user_rate, burst=max(1.0, 2 * user_rate)),
        )

    async def admit(self, method: str, metadata: Mapping[str, str], request: Any | None) -> Any | None:
        rpc = method.rpartition("/")[2]
        if INTERNAL_TOKEN_KEY in metadata:
            if not self.internal.matches(metadata[INTERNAL_TOKEN_KEY]):
                raise _unauthenticated(f"{rpc}: the internal credential is not valid")
            return request
        caller = await self.authenticate(rpc, metadata)
        if rpc not in REQUIRED_SCOPE:
            raise _denied(f"{rpc} is not part of the public API")
        scope = REQUIRED_SCOPE[rpc]
        if scope is None:
            raise _denied(f"{rpc} is internal: only Rapport's own services may call it")
        if scope not in caller.scopes:
            raise _denied(f"{rpc} needs the {scope!r} scope, which {caller.label} does not have")
        self.limit(caller)
        return bind_user(request, caller.user_id)

    async def authenticate(self, rpc: str, metadata: Mapping[str, str]) -> Caller:
        """The caller of a public call (UNAUTHENTICATED without valid credentials)."""
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthenticated(
                f"{rpc}: no credentials; send `authorization: Bearer <user JWT or service key>` in the metadata"
            )
        acting = metadata.get(ACTING_USER_KEY)
        if api_keys.looks_like_service_key(token):
            key = await self.service_key(token)
            if key is None:
                raise _unauthenticated(f"{rpc}: unknown or revoked service key")
            if not acting:
                raise InvalidArgument(
                    f"{ACTING_USER_KEY}: a service key acts for a user; name the user's UUID in the metadata",
                    field=ACTING_USER_KEY,
                )
            return Caller(_acting_user(acting), frozenset(key.scopes), key)
        if self.verifier is None:
            raise _unauthenticated(f"{rpc}: end-user tokens are not accepted here (no identity provider is configured)")
        try:
            user_id = self.verifier.verify(token)
        except AuthError as error:
            raise _unauthenticated(f"{rpc}: {error}") from None
        if acting and _acting_user(acting) != user_id:
            raise _denied(f"{ACTING_USER_KEY} is not the token's user: a user's token acts only for that user")
        return Caller(user_id, END_USER_SCOPES)

    async def service_key(self, token: str) -> ServiceKeyInfo | None:
        """The key's record, from the cache (at most API_KEY_CACHE_SECS old) or the database."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        known, key = self.key_cache.get(digest)
        if not known:
            key = await api_keys.verify_service_key(self.pool, token)
            self.key_cache.put(digest, key)
        return key

    def limit(self, caller: Caller) -> None:
        """RESOURCE_EXHAUSTED (with the wait in RetryInfo) past the rate of the service key or of the user."""
        waits = [self.per_user.take(str(caller.user_id))]
        if caller.service_key is not None:
            waits.append(self.per_key.take(str(caller.service_key.id)))
        wait = max(waits)
        if wait > 0:
            error = ResourceExhausted(
                f"rate limit: too many calls for {'this user' if wait == waits[0] else caller.label}; "
                f"retry in {wait:.1f} s",
                user_message="Too many requests at once. Please wait a moment.",
            )
            error.retry_after = wait
            raise error


def _identity_configured(env: Env) -> bool:
    """Whether an identity provider is configured (a malformed setting still stops the process)."""
    try:
        auth_mode(env)
    except ConfigError as error:
        if error.variable != "SUPABASE_JWT_SECRET":
            raise
        return False  # none: the public API takes service keys (and the internal token) only
    return True


def _acting_user(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{ACTING_USER_KEY} must be a user UUID", field=ACTING_USER_KEY) from None


def bind_user(request: Any, user_id: uuid.UUID) -> Any:
    """The request acting for `user_id`: an empty `user_id` is filled in; another user's is refused."""
    if request is None or "user_id" not in request.DESCRIPTOR.fields_by_name:
        return request
    if not request.user_id:
        request.user_id = str(user_id)
    elif request.user_id.strip().lower() != str(user_id):
        raise _denied("user_id is not the caller's user: a call acts only for the user its credentials name")
    return request
