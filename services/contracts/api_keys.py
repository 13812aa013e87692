"""The format of a Rapport API key (`rk_` + 32 url-safe random characters), shared by the orchestrator,
which mints and verifies keys, and the gateway, which tells a key from a JWT."""

from __future__ import annotations

KEY_PREFIX = "rk_"


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)
