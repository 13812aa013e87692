"""Bearer tokens: the maximum lifetime applies alike to the local mode, HS256 and JWKS (issue 13)."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth import AuthError, TokenVerifier, mint_token, verifier_from_env
from gateway.errors import without_addresses
from services.admin import token_for
from services.servicekit.config import Env

SECRET = "a-test-secret-of-reasonable-length-0123456789"
YEAR_3000 = 32503680000
DAY = 24 * 3600


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(rsa_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A real HTTP server publishing the key's JWKS."""
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    document = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


Signer = Callable[[dict[str, object]], str]


@pytest.fixture(params=["local", "hs256", "jwks"])
def mode(request: pytest.FixtureRequest, tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
         jwks_url: str) -> tuple[dict[str, str], Signer]:
    """(the environment of one auth mode, a function signing claims the way that mode's issuer does)."""
    if request.param == "local":
        env = {"AUTH_MODE": "local", "RAPPORT_HOME": str(tmp_path)}
        verifier_from_env(Env(env))  # creates the local secret
        secret = json.loads((tmp_path / "local-auth.json").read_text())["secret"]
        return env, lambda claims: jwt.encode(claims, secret, algorithm="HS256")
    if request.param == "hs256":
        return {"SUPABASE_JWT_SECRET": SECRET}, lambda claims: jwt.encode(claims, SECRET, algorithm="HS256")
    return {"SUPABASE_JWKS_URL": jwks_url}, lambda claims: jwt.encode(claims, rsa_key, algorithm="RS256",
                                                                     headers={"kid": "k1"})


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": str(uuid.uuid4()), "iat": now, "exp": now + 3600, "role": "authenticated"}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def verifier(env: dict[str, str]) -> TokenVerifier:
    return verifier_from_env(Env(env))[0]


def test_a_fresh_one_hour_token_is_accepted(mode: tuple[dict[str, str], Signer]) -> None:
    env, sign = mode
    token_claims = claims()
    assert verifier(env).verify(sign(token_claims)) == uuid.UUID(str(token_claims["sub"]))


@pytest.mark.parametrize("case, overrides", [
    ("exp in the year 3000", {"exp": YEAR_3000}),
    ("no iat", {"iat": None}),
    ("issued 25 h ago, still unexpired", {"iat": int(time.time()) - 25 * 3600}),
    ("issued for 2 days", {"exp": int(time.time()) + 2 * DAY}),
    ("iat in the future", {"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}),
])
def test_tokens_beyond_the_maximum_lifetime_are_refused(mode: tuple[dict[str, str], Signer], case: str,
                                                        overrides: dict[str, object]) -> None:
    env, sign = mode
    with pytest.raises(AuthError):
        verifier(env).verify(sign(claims(**overrides)))


def test_the_maximum_lifetime_is_configurable(mode: tuple[dict[str, str], Signer]) -> None:
    env, sign = mode
    two_hours = claims(exp=int(time.time()) + 7200)
    assert verifier(env).verify(sign(two_hours))
    with pytest.raises(AuthError, match="maximum lifetime"):
        verifier({**env, "JWT_MAX_LIFETIME_SECS": "3600"}).verify(sign(two_hours))
    unbounded = {**env, "JWT_MAX_LIFETIME_SECS": "0"}  # 0: no maximum, iat optional (the old behaviour)
    assert verifier(unbounded).verify(sign(claims(exp=YEAR_3000, iat=None)))


def test_minted_tokens_fit_the_configured_lifetime(tmp_path: Path) -> None:
    assert verifier({"SUPABASE_JWT_SECRET": SECRET}).verify(mint_token(SECRET, uuid.uuid4()))
    env = {"AUTH_MODE": "local", "RAPPORT_HOME": str(tmp_path), "JWT_MAX_LIFETIME_SECS": "600"}
    token = token_for(Env(env), None)
    assert verifier(env).verify(token)
    decoded = jwt.decode(token, options={"verify_signature": False})
    assert decoded["exp"] - decoded["iat"] == 600


def test_error_messages_lose_internal_addresses() -> None:
    grpc_text = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.1.2.3:50051: "
                 "Failed to connect to remote host: Connection refused")
    assert without_addresses(grpc_text) == ("failed to connect to all addresses; last error: UNKNOWN: <address> "
                                            "Failed to connect to remote host: Connection refused")
    for text in ("DNS resolution failed for rapport-memory.rapport.svc.cluster.local:50051",
                 "POST http://127.0.0.1:8090/v1/chat/completions failed", "ipv6:[::1]:40123 is down",
                 "unix:/run/rapport/memory.sock refused", "peer localhost:8080 reset"):
        cleaned = without_addresses(text)
        assert "<address>" in cleaned and not any(part in cleaned for part in
                                                  ("50051", "8090", "40123", "memory.sock", "8080", "127.0.0.1"))
    for text in ("the turn exceeded CHAT_GEN_TIMEOUT_SECS", "meet at 10:30", "session 3 of 5: ok"):
        assert without_addresses(text) == text
