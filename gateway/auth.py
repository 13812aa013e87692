"""Bearer-token authentication of the gateway: the verification itself is shared with the orchestrator's
public gRPC API and lives in services/servicekit/identity.py; these are its names as the gateway (and
its tests) import them."""

from __future__ import annotations

from services.servicekit.identity import (
    DEFAULT_MAX_TOKEN_LIFETIME,
    LEEWAY_SECONDS,
    AuthError,
    JwksVerifier,
    LocalIdentity,
    SecretVerifier,
    TokenVerifier,
    auth_mode,
    decode_claims,
    max_token_lifetime,
    mint_token,
    verifier_from_env,
)

__all__ = [
    "DEFAULT_MAX_TOKEN_LIFETIME",
    "LEEWAY_SECONDS",
    "AuthError",
    "JwksVerifier",
    "LocalIdentity",
    "SecretVerifier",
    "TokenVerifier",
    "auth_mode",
    "decode_claims",
    "max_token_lifetime",
    "mint_token",
    "verifier_from_env",
]
