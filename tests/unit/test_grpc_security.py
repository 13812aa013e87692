"""The pieces of gRPC access control that need no server (issue 14): the internal token, the plaintext
rule, TLS settings, the orchestrator's scope table, binding a request to the caller's user, the token
buckets and the expiring cache."""
from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest

from gateway.errors import GRPC_TO_HTTP
from rapport.orchestrator.v1 import orchestrator_pb2 as pb
from services.orchestrator.access import REQUIRED_SCOPE, bind_user
from services.orchestrator.api_keys import parse_scopes
from services.servicekit.config import ConfigError, Env
from services.servicekit.grpc_errors import ERROR_CODES, PermissionDenied
from services.servicekit.grpc_security import GrpcTls, InternalToken, ServerSecurity, ensure_internal_token, is_loopback
from services.servicekit.rate_limits import TokenBuckets
from services.servicekit.ttl_cache import TtlCache

TOKEN = "t" * 40


def test_the_internal_token_comes_from_the_environment_or_a_file_and_is_required(tmp_path: Path) -> None:
    assert InternalToken.from_env(Env({"RAPPORT_INTERNAL_TOKEN": TOKEN})).value == TOKEN
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert InternalToken.from_env(Env({"RAPPORT_INTERNAL_TOKEN_FILE": str(tmp_path / "token")})).value == TOKEN
    with pytest.raises(ConfigError, match="RAPPORT_INTERNAL_TOKEN must be set"):
        InternalToken.from_env(Env({}))
    with pytest.raises(ConfigError, match="RAPPORT_INTERNAL_TOKEN_FILE must be a readable file"):
        InternalToken.from_env(Env({"RAPPORT_INTERNAL_TOKEN_FILE": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match="at least 32 characters"):
        InternalToken.from_env(Env({"RAPPORT_INTERNAL_TOKEN": "short"}))
    token = InternalToken(TOKEN)
    assert token.matches(TOKEN) and not token.matches(TOKEN[:-1] + "u") and not token.matches(None)


def test_rapport_up_generates_the_internal_token_once_privately(tmp_path: Path) -> None:
    first = ensure_internal_token(tmp_path)
    assert len(first) >= 32 and ensure_internal_token(tmp_path) == first
    assert (tmp_path / "internal-token").stat().st_mode & 0o777 == 0o600


def test_plaintext_is_served_only_on_loopback_unless_allowed() -> None:
    assert is_loopback("127.0.0.1:50051") and is_loopback("[::1]:50051") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:50051") and not is_loopback("orchestrator:50051")
    security = ServerSecurity.from_env(Env({"RAPPORT_INTERNAL_TOKEN": TOKEN}))
    assert security.reflection is False  # reflection only when GRPC_REFLECTION=true
    security.check_bind("127.0.0.1:0", None)
    with pytest.raises(ConfigError, match="GRPC_TLS_CERT_FILE must be set with GRPC_TLS_KEY_FILE"):
        security.check_bind("0.0.0.0:50051", None)
    allowed = ServerSecurity.from_env(Env({"RAPPORT_INTERNAL_TOKEN": TOKEN, "GRPC_ALLOW_PLAINTEXT": "true",
                                          "GRPC_REFLECTION": "true"}))
    allowed.check_bind("0.0.0.0:50051", None)
    assert allowed.reflection is True


def test_tls_settings_need_the_certificate_and_key_together(tmp_path: Path) -> None:
    assert GrpcTls.from_env(Env({})).server_credentials(require_client_cert=True) is None
    assert GrpcTls.from_env(Env({})).channel_credentials() is None
    (tmp_path / "cert.pem").write_text("x")
    with pytest.raises(ConfigError, match="GRPC_TLS_KEY_FILE must be set together"):
        GrpcTls.from_env(Env({"GRPC_TLS_CERT_FILE": str(tmp_path / "cert.pem")}))
    with pytest.raises(ConfigError, match="GRPC_TLS_CA_FILE must be a readable PEM file"):
        GrpcTls.from_env(Env({"GRPC_TLS_CA_FILE": str(tmp_path / "nope.pem")}))


def test_every_orchestrator_rpc_has_a_scope_and_only_export_and_delete_need_data() -> None:
    rpcs = {method.name for method in pb.DESCRIPTOR.services_by_name["OrchestratorService"].methods}
    assert set(REQUIRED_SCOPE) == rpcs, "classify every RPC in services/orchestrator/access.py"
    assert {rpc for rpc, scope in REQUIRED_SCOPE.items() if scope == "data"} == {"ExportUserData", "DeleteUserData"}
    assert {rpc for rpc, scope in REQUIRED_SCOPE.items() if scope is None} == {"VerifyApiKey"}


def test_a_request_is_bound_to_the_callers_user() -> None:
    user = uuid.uuid4()
    assert bind_user(pb.GetHistoryRequest(session_id="s"), user).user_id == str(user)
    assert bind_user(pb.GetHistoryRequest(user_id=str(user).upper()), user).user_id == str(user).upper()
    with pytest.raises(PermissionDenied):
        bind_user(pb.GetHistoryRequest(user_id=str(uuid.uuid4())), user)
    assert bind_user(pb.VerifyApiKeyRequest(key="k"), user).key == "k"  # no user_id field: unchanged


def test_service_key_scopes_are_parsed_strictly() -> None:
    assert parse_scopes("chat, DATA,chat") == ("chat", "data")
    for bad in ("", "chat,admin", " , "):
        with pytest.raises(ValueError, match="allowed: chat, data"):
            parse_scopes(bad)


def test_error_codes_are_the_http_contracts() -> None:
    assert {code: http_code for code, (_, http_code) in GRPC_TO_HTTP.items()} == ERROR_CODES
    assert ERROR_CODES[grpc.StatusCode.UNAUTHENTICATED] == "unauthorized"
    assert ERROR_CODES[grpc.StatusCode.PERMISSION_DENIED] == "forbidden"


def test_token_buckets_allow_a_burst_then_the_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=4.0, clock=lambda: now[0])
    assert [buckets.take("k") for _ in range(4)] == [0.0] * 4
    assert buckets.take("k") == pytest.approx(0.5)
    assert buckets.take("other") == 0.0  # buckets are per key
    now[0] += 0.5
    assert buckets.take("k") == 0.0
    assert TokenBuckets(rate=0.0, burst=0.0).take("k") == 0.0  # 0 = unlimited


def test_the_cache_forgets_answers_after_their_ttl() -> None:
    now = [0.0]
    cache: TtlCache[str] = TtlCache(ttl=30.0, negative_ttl=5.0, max_entries=2, clock=lambda: now[0])
    cache.put("a", "yes")
    cache.put("b", None)
    assert cache.get("a") == (True, "yes") and cache.get("b") == (True, None)
    now[0] = 6.0
    assert cache.get("b") == (False, None) and cache.get("a") == (True, "yes")
    now[0] = 31.0
    assert cache.get("a") == (False, None)
    cache.put("c", "1"), cache.put("d", "2"), cache.put("e", "3")
    assert cache.get("c") == (False, None)  # evicted: at most two entries
    assert TtlCache[str](ttl=0).get("x") == (False, None)
