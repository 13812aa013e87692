"""End-user bearer tokens (Supabase-compatible JWT; fail-closed): verified the same way by the gateway
(REST, SSE, /v1) and by the orchestrator's public gRPC API (docs/grpc.md).

One small interface, `TokenVerifier.verify(token) -> user_id`, so another identity provider can be
dropped in. Modes, in order: `SUPABASE_JWKS_URL` / `SUPABASE_URL` (RS256/ES256 by kid, keys cached and
re-fetched on an unknown kid), `SUPABASE_JWT_SECRET` (HS256), or `AUTH_MODE=local` (single-user dev
mode of `rapport up`: HS256 with a secret kept under $RAPPORT_HOME). With none, the gateway refuses
to start (the orchestrator then accepts no end-user token, only service keys).

Every mode applies the same maximum lifetime (`JWT_MAX_LIFETIME_SECS`, default 24 h; 0 = none): a token
must carry `iat`, may not be issued for longer than the maximum (`exp - iat`), and is refused once it is
older than the maximum — so a token with `exp` in the year 3000 is refused, not trusted for ever.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import jwt

from .config import ConfigError, Env, rapport_home

DEFAULT_MAX_TOKEN_LIFETIME = 24 * 3600
LEEWAY_SECONDS = 5


class AuthError(Exception):
    """The token is missing, malformed, expired or not ours (→ 401, gRPC UNAUTHENTICATED)."""


class TokenVerifier(Protocol):
    def verify(self, token: str) -> uuid.UUID: ...


def _subject(claims: dict[str, object]) -> uuid.UUID:
    sub = claims.get("sub")
    try:
        return uuid.UUID(str(sub))
    except ValueError:
        raise AuthError("token subject must be a user UUID") from None


def decode_claims(
    token: str, key: object, algorithms: list[str], audience: str | None, max_lifetime: int | None
) -> dict[str, object]:
    """The verified claims of `token` (signature, `exp`, `sub`, audience and the maximum lifetime)."""
    required = ["exp", "sub", "iat"] if max_lifetime else ["exp", "sub"]
    try:
        claims: dict[str, object] = jwt.decode(
            token,
            key,  # type: ignore[arg-type]
            algorithms=algorithms,
            audience=audience,
            options={"require": required, "verify_aud": audience is not None},
            leeway=LEEWAY_SECONDS,
        )
    except jwt.PyJWTError as error:
        raise AuthError(f"invalid token: {error}") from None
    if max_lifetime:
        issued = float(claims["iat"])  # type: ignore[arg-type]
        if float(claims["exp"]) - issued > max_lifetime + LEEWAY_SECONDS:  # type: ignore[arg-type]
            raise AuthError(f"invalid token: issued for longer than the maximum lifetime ({max_lifetime} s)")
        if time.time() - issued > max_lifetime + LEEWAY_SECONDS:
            raise AuthError(f"invalid token: older than the maximum lifetime ({max_lifetime} s)")
    return claims


@dataclass
class SecretVerifier:
    """HS256 with a shared secret (`SUPABASE_JWT_SECRET`, or the local-mode secret)."""

    secret: str
    audience: str | None = None
    max_lifetime: int | None = DEFAULT_MAX_TOKEN_LIFETIME

    def verify(self, token: str) -> uuid.UUID:
        return _subject(decode_claims(token, self.secret, ["HS256"], self.audience, self.max_lifetime))


@dataclass
class JwksVerifier:
    """RS256/ES256 tokens checked against a JWKS; PyJWKClient caches keys and re-fetches on an unknown kid."""

    jwks_url: str
    audience: str | None = None
    max_lifetime: int | None = DEFAULT_MAX_TOKEN_LIFETIME

    def __post_init__(self) -> None:
        self.client = jwt.PyJWKClient(self.jwks_url, cache_keys=True, lifespan=3600)

    def verify(self, token: str) -> uuid.UUID:
        try:
            key = self.client.get_signing_key_from_jwt(token)
        except (jwt.PyJWTError, jwt.PyJWKClientError) as error:
            raise AuthError(f"invalid token: {error}") from None
        return _subject(decode_claims(token, key.key, ["RS256", "ES256"], self.audience, self.max_lifetime))


@dataclass(frozen=True)
class LocalIdentity:
    """The single local user of `rapport up` and the secret its tokens are signed with."""

    user_id: uuid.UUID
    secret: str

    @classmethod
    def load_or_create(cls, home: Path) -> LocalIdentity:
        path = home / "local-auth.json"
        if path.exists():
            data = json.loads(path.read_text())
            return cls(uuid.UUID(data["user_id"]), data["secret"])
        home.mkdir(parents=True, exist_ok=True)
        identity = cls(uuid.uuid4(), secrets.token_urlsafe(48))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"user_id": str(identity.user_id), "secret": identity.secret}))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
        return identity


def mint_token(
    secret: str, user_id: uuid.UUID, *, ttl_seconds: int = DEFAULT_MAX_TOKEN_LIFETIME, audience: str | None = None
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": str(user_id), "iat": now, "exp": now + ttl_seconds, "role": "authenticated"}
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def max_token_lifetime(env: Env) -> int | None:
    """`JWT_MAX_LIFETIME_SECS` (default 24 h); None when set to 0 (no maximum)."""
    return env.int("JWT_MAX_LIFETIME_SECS", DEFAULT_MAX_TOKEN_LIFETIME, 0) or None


def auth_mode(env: Env) -> str:
    """How tokens are verified: `jwks`, `hs256` (SUPABASE_JWT_SECRET) or `local`; refuses to start
    without one (fail-closed)."""
    if env.str("SUPABASE_JWKS_URL") or env.str("SUPABASE_URL"):
        return "jwks"
    if env.str("SUPABASE_JWT_SECRET"):
        return "hs256"
    if env.choice("AUTH_MODE", ("local", "jwt"), "jwt") == "local":
        return "local"
    raise ConfigError(
        "SUPABASE_JWT_SECRET",
        "set (or SUPABASE_URL / SUPABASE_JWKS_URL, or AUTH_MODE=local for "
        "single-user local use): the gateway does not start without authentication",
    )


def verifier_from_env(env: Env | None = None) -> tuple[TokenVerifier, str]:
    """The configured verifier and the name of its mode (`auth_mode`)."""
    env = env or Env()
    mode = auth_mode(env)
    audience = env.str("JWT_AUDIENCE")
    lifetime = max_token_lifetime(env)
    if mode == "jwks":
        jwks = (
            env.str("SUPABASE_JWKS_URL")
            or (env.str("SUPABASE_URL") or "").rstrip("/") + "/auth/v1/.well-known/jwks.json"
        )
        return JwksVerifier(jwks, audience, lifetime), mode
    if mode == "hs256":
        return SecretVerifier(env.required("SUPABASE_JWT_SECRET"), audience, lifetime), mode
    identity = LocalIdentity.load_or_create(rapport_home(env))
    return SecretVerifier(identity.secret, None, lifetime), mode
