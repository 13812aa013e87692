"""Bearer-token authentication (Supabase-compatible JWT; fail-closed).

One small interface, `TokenVerifier.verify(token) -> user_id`, so another identity provider can be
dropped in. Modes, in order: `SUPABASE_JWKS_URL` / `SUPABASE_URL` (RS256/ES256 by kid, keys cached and
re-fetched on an unknown kid), `SUPABASE_JWT_SECRET` (HS256), or `AUTH_MODE=local` (single-user dev
mode of `rapport up`: HS256 with a secret kept under $RAPPORT_HOME). With none, the gateway refuses
to start.
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

from services.servicekit.config import ConfigError, Env, rapport_home


class AuthError(Exception):
    """The token is missing, malformed, expired or not ours (→ 401)."""


class TokenVerifier(Protocol):
    def verify(self, token: str) -> uuid.UUID: ...


def _subject(claims: dict[str, object]) -> uuid.UUID:
    sub = claims.get("sub")
    try:
        return uuid.UUID(str(sub))
    except ValueError:
        raise AuthError("token subject must be a user UUID") from None


@dataclass
class SecretVerifier:
    """HS256 with a shared secret (`SUPABASE_JWT_SECRET`, or the local-mode secret)."""

    secret: str
    audience: str | None = None

    def verify(self, token: str) -> uuid.UUID:
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                audience=self.audience,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
                leeway=5,
            )
        except jwt.PyJWTError as error:
            raise AuthError(f"invalid token: {error}") from None
        return _subject(claims)


@dataclass
class JwksVerifier:
    """RS256/ES256 tokens checked against a JWKS; PyJWKClient caches keys and re-fetches on an unknown kid."""

    jwks_url: str
    audience: str | None = None

    def __post_init__(self) -> None:
        self.client = jwt.PyJWKClient(self.jwks_url, cache_keys=True, lifespan=3600)

    def verify(self, token: str) -> uuid.UUID:
        try:
            key = self.client.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256", "ES256"],
                audience=self.audience,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
                leeway=5,
            )
        except (jwt.PyJWTError, jwt.PyJWKClientError) as error:
            raise AuthError(f"invalid token: {error}") from None
        return _subject(claims)


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
    secret: str, user_id: uuid.UUID, *, ttl_seconds: int = 30 * 24 * 3600, audience: str | None = None
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": str(user_id), "iat": now, "exp": now + ttl_seconds, "role": "authenticated"}
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def verifier_from_env(env: Env | None = None) -> tuple[TokenVerifier, str]:
    """The configured verifier and a name for the mode; refuses to start without one (fail-closed)."""
    env = env or Env()
    audience = env.str("JWT_AUDIENCE")
    jwks = env.str("SUPABASE_JWKS_URL")
    if not jwks and env.str("SUPABASE_URL"):
        jwks = (env.str("SUPABASE_URL") or "").rstrip("/") + "/auth/v1/.well-known/jwks.json"
    if jwks:
        return JwksVerifier(jwks, audience), "jwks"
    secret = env.str("SUPABASE_JWT_SECRET")
    if secret:
        return SecretVerifier(secret, audience), "hs256"
    if env.choice("AUTH_MODE", ("local", "jwt"), "jwt") == "local":
        identity = LocalIdentity.load_or_create(rapport_home(env))
        return SecretVerifier(identity.secret), "local"
    raise ConfigError(
        "SUPABASE_JWT_SECRET",
        "set (or SUPABASE_URL / SUPABASE_JWKS_URL, or AUTH_MODE=local for "
        "single-user local use): the gateway does not start without authentication",
    )
