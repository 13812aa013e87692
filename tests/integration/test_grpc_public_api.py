"""Who may call what over gRPC (issue 14, architecture.md "Who may call what"): every RPC of every service
refuses a call without credentials (health excepted); affinity, memory and insight take only the internal
credential (not a user's JWT); the orchestrator's public API takes a user's JWT for that user only and a
service key for any user within its scopes, revoked within the cache window, rate limited, with
google.rpc.Status details; a streamed turn survives a cancel and an expired deadline like the SSE path.

The backend's side of each call uses only grpc and the generated stubs (`rapport.*`), as a real backend does.
"""
from __future__ import annotations

import importlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from rapport.memory.v1 import memory_pb2, memory_pb2_grpc
from rapport.orchestrator.v1 import orchestrator_pb2 as pb
from rapport.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc
from services.offline_llm.server import LlmScript, ScriptedResponse, build_llm_app, serve_llm
from services.orchestrator import api_keys
from services.servicekit import registry
from services.servicekit.db import create_pool
from tests.stack import JWT_SECRET, INTERNAL_METADATA, Stack, new_client_msg_id, start_stack, wait_for

CACHE_SECS = 1.0


@dataclass
class Api:
    """The stack, a plain channel to the orchestrator's public address, and service keys to call it with."""

    stack: Stack
    channel: grpc.aio.Channel
    stub: pb_grpc.OrchestratorServiceStub
    pool: Any
    script: LlmScript

    async def service_key(self, *scopes: str) -> tuple[str, uuid.UUID]:
        key, info = await api_keys.create_service_key(self.pool, "test-backend", scopes or ("chat",))
        return key, info.id


def as_service(key: str, user: uuid.UUID) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}"), ("x-rapport-user", str(user))]


def as_user(stack: Stack, user: uuid.UUID) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {stack.token(user)}")]


def error_info(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, dict[str, Any]]:
    """The ErrorInfo of a failed call and its other details by type name."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status details on {error.code()}: {error.details()}"
    details: dict[str, Any] = {}
    for any_detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.LocalizedMessage):
            if any_detail.Is(kind.DESCRIPTOR):
                detail = kind()
                any_detail.Unpack(detail)
                details[kind.__name__] = detail
    return details["ErrorInfo"], details


async def turn_frames(stub: pb_grpc.OrchestratorServiceStub, metadata: list[tuple[str, str]], session_id: str,
                      text: str, client_msg_id: str, timeout: float = 60) -> list[dict[str, Any]]:
    call = stub.SendMessage(pb.SendMessageRequest(session_id=session_id, content=text, client_msg_id=client_msg_id),
                            metadata=metadata, timeout=timeout)
    return [MessageToDict(frame) async for frame in call]


def reply_of(frames: list[dict[str, Any]]) -> str:
    return "".join(frame["delta"].get("content", "") for frame in frames if "delta" in frame)


@pytest.fixture
async def api(database_url: str, spans) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    script = LlmScript()
    llm = await serve_llm(build_llm_app("script", script))
    orchestrator_env = {"SUPABASE_JWT_SECRET": JWT_SECRET, "API_KEY_CACHE_SECS": str(CACHE_SECS),
                        "LLM_BASE_URL": llm.base_url, "LLM_API_KEY": "sk-test", "LLM_MODEL": "model-a"}
    stack = await start_stack(database_url, per_service_env={"orchestrator": orchestrator_env})
    pool = await create_pool(database_url, max_size=2)
    channel = grpc.aio.insecure_channel(stack.address("orchestrator"))
    try:
        yield Api(stack, channel, pb_grpc.OrchestratorServiceStub(channel), pool, script)
    finally:
        script.release_stalls()
        await channel.close()
        await pool.close()
        await stack.stop()
        await llm.stop()


def methods_of(spec: registry.ServiceSpec) -> list[Any]:
    module = importlib.import_module(f"rapport.{spec.name}.v1.{spec.name}_pb2")
    return list(module.DESCRIPTOR.services_by_name[spec.proto_service.rpartition(".")[2]].methods)


async def call_empty(channel: grpc.aio.Channel, method: Any, metadata: list[tuple[str, str]]) -> None:
    """Call `method` with an empty request (bytes on the wire: no Rapport code involved)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    empty = message_factory.GetMessageClass(method.input_type)().SerializeToString()
    if method.client_streaming:
        await channel.stream_unary(path)(iter([empty]), metadata=metadata, timeout=10)
    elif method.server_streaming:
        await channel.unary_stream(path)(empty, metadata=metadata, timeout=10).read()
    else:
        await channel.unary_unary(path)(empty, metadata=metadata, timeout=10)


async def test_every_rpc_of_every_service_refuses_a_call_without_credentials(api: Api) -> None:
    refused: dict[str, str] = {}
    for spec in registry.SERVICES:
        async with grpc.aio.insecure_channel(api.stack.address(spec.name)) as channel:
            for method in methods_of(spec):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call_empty(channel, method, [])
                refused[f"{spec.name}.{method.name}"] = caught.value.code().name
                info, details = error_info(caught.value)
                assert info.reason == "unauthorized" and info.domain == "rapport.dev"
            # Health stays open for probes; reflection is off unless GRPC_REFLECTION=true.
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=spec.proto_service), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert len(refused) == sum(len(methods_of(spec)) for spec in registry.SERVICES) > 40
    assert set(refused.values()) == {"UNAUTHENTICATED"}, refused


async def test_the_internal_services_refuse_a_users_jwt_and_a_wrong_internal_token(api: Api) -> None:
    user = uuid.uuid4()
    await api.stack.start_chat(user)  # the user exists and has a session
    for name in ("affinity", "memory", "insight"):
        spec = registry.service(name)
        async with grpc.aio.insecure_channel(api.stack.address(name)) as channel:
            for method in methods_of(spec):
                for metadata in (as_user(api.stack, user), [("x-rapport-internal-token", "x" * 48)]):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call_empty(channel, method, metadata)
                    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, method.name, metadata)
    # The user's own JWT on memory, directly, with a real request: refused, nothing returned.
    async with grpc.aio.insecure_channel(api.stack.address("memory")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await memory_pb2_grpc.MemoryServiceStub(channel).ListMemories(
                memory_pb2.ListMemoriesRequest(user_id=str(user)), metadata=as_user(api.stack, user), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # …while the internal credential is let in.
        listed = await memory_pb2_grpc.MemoryServiceStub(channel).ListMemories(
            memory_pb2.ListMemoriesRequest(user_id=str(user)), metadata=INTERNAL_METADATA, timeout=5)
        assert list(listed.memories) == []


async def test_a_users_jwt_acts_only_for_that_user(api: Api) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    chat_b = await api.stack.start_chat(b)
    api.script.add(ScriptedResponse("reply", "Your bank PIN is safe with me.", model="model-a"))
    await api.stack.send(b, chat_b["session_id"], "My bank PIN is 4921, remember it.")
    as_a = as_user(api.stack, a)

    own = await api.stub.ListSessions(pb.ListSessionsRequest(), metadata=as_a, timeout=5)
    assert list(own.sessions) == []  # A's sessions: none (B's are not listed)
    for request, rpc in ((pb.GetHistoryRequest(session_id=chat_b["session_id"]), api.stub.GetHistory),
                         (pb.GetHistoryRequest(user_id=str(b), session_id=chat_b["session_id"]), api.stub.GetHistory),
                         (pb.ListSessionsRequest(user_id=str(b)), api.stub.ListSessions),
                         (pb.ExportUserDataRequest(user_id=str(b)), api.stub.ExportUserData),
                         (pb.DeleteUserDataRequest(user_id=str(b)), api.stub.DeleteUserData),
                         (pb.ListEventsRequest(session_id=chat_b["session_id"]), api.stub.ListEvents)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc(request, metadata=as_a, timeout=5)
        assert caught.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND), rpc
        assert "4921" not in (caught.value.details() or "") and "PIN" not in (caught.value.details() or "")
        info, _ = error_info(caught.value)
        assert info.reason in ("forbidden", "not_found")
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # naming B as the acting user does not help either
        await api.stub.GetHistory(pb.GetHistoryRequest(session_id=chat_b["session_id"]),
                                  metadata=[*as_a, ("x-rapport-user", str(b))], timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # B, with B's token, reads B's history (and nothing was deleted by A's attempt).
    history = await api.stub.GetHistory(pb.GetHistoryRequest(session_id=chat_b["session_id"]),
                                        metadata=as_user(api.stack, b), timeout=5)
    assert [m.content for m in history.messages] == ["My bank PIN is 4921, remember it.",
                                                     "Your bank PIN is safe with me."]


async def test_bad_tokens_are_unauthenticated_with_the_error_contract(api: Api) -> None:
    forged = api.stack.token(uuid.uuid4())[:-4] + "AAAA"
    for metadata in ([("authorization", f"Bearer {forged}")], [("authorization", "Basic abc")],
                     [("authorization", "Bearer rsk_not-a-key-that-exists-anywhere-000")]):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub.ListPersonas(pb.ListPersonasRequest(), metadata=metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        info, details = error_info(caught.value)
        assert info.reason == "unauthorized"
        assert details["LocalizedMessage"].message == "Please sign in again."
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # the gateway's key check is not for backends
        await api.stub.VerifyApiKey(pb.VerifyApiKeyRequest(key="rk_x"), metadata=as_user(api.stack, uuid.uuid4()),
                                    timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_service_key_acts_for_any_user_within_its_scopes(api: Api, db) -> None:
    chat_key, _ = await api.service_key("chat")
    data_key, _ = await api.service_key("chat", "data")
    user = uuid.uuid4()
    personas = (await api.stub.ListPersonas(pb.ListPersonasRequest(), metadata=as_service(chat_key, user))).personas
    chat = await api.stub.StartChat(pb.StartChatRequest(persona_id=personas[0].id),
                                    metadata=as_service(chat_key, user), timeout=10)
    assert await db.fetchval("SELECT user_id FROM chat.sessions WHERE id = $1", uuid.UUID(chat.session_id)) == user

    with pytest.raises(grpc.aio.AioRpcError) as caught:  # no `data` scope: no deletion
        await api.stub.DeleteUserData(pb.DeleteUserDataRequest(), metadata=as_service(chat_key, user), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "data" in (caught.value.details() or "")
    assert error_info(caught.value)[0].reason == "forbidden"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.ExportUserData(pb.ExportUserDataRequest(), metadata=as_service(chat_key, user), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await db.fetchval("SELECT count(*) FROM chat.sessions WHERE user_id = $1", user) == 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a service key must say whom it acts for
        await api.stub.ListSessions(pb.ListSessionsRequest(), metadata=[("authorization", f"Bearer {chat_key}")])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value)[0].metadata["field"] == "x-rapport-user"
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # …and the request may not name someone else
        await api.stub.ListSessions(pb.ListSessionsRequest(user_id=str(uuid.uuid4())),
                                    metadata=as_service(chat_key, user))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    exported = await api.stub.ExportUserData(pb.ExportUserDataRequest(), metadata=as_service(data_key, user))
    assert MessageToDict(exported.data)["sessions"]
    deleted = await api.stub.DeleteUserData(pb.DeleteUserDataRequest(), metadata=as_service(data_key, user))
    assert MessageToDict(deleted.deleted)
    assert await db.fetchval("SELECT count(*) FROM chat.sessions WHERE user_id = $1", user) == 0


async def test_a_revoked_service_key_stops_working_within_the_cache_window(api: Api, db) -> None:
    key, key_id = await api.service_key("chat")
    metadata = as_service(key, uuid.uuid4())
    await api.stub.ListPersonas(pb.ListPersonasRequest(), metadata=metadata, timeout=5)
    assert await db.fetchval("SELECT last_used_at FROM chat.service_keys WHERE id = $1", key_id) is not None
    revoked_at = time.monotonic()
    assert (await api_keys.revoke_service_key(api.pool, key_id)).revoked_at is not None

    async def refused() -> grpc.aio.AioRpcError | None:
        try:
            await api.stub.ListPersonas(pb.ListPersonasRequest(), metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as error:
            return error
        return None

    error = await wait_for(refused, timeout=CACHE_SECS + 5)
    assert time.monotonic() - revoked_at <= CACHE_SECS + 1.0
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (error.details() or "")


async def test_errors_carry_error_info_with_the_http_contracts_codes(api: Api) -> None:
    key, _ = await api.service_key("chat")
    metadata = as_service(key, uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.GetHistory(pb.GetHistoryRequest(session_id=str(uuid.uuid4())), metadata=metadata, timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info, details = error_info(caught.value)
    assert (info.reason, info.domain) == ("not_found", "rapport.dev")
    assert details["LocalizedMessage"].message == "This conversation does not exist."
    assert "RetryInfo" not in details
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.GetHistory(pb.GetHistoryRequest(session_id="not-a-uuid"), metadata=metadata, timeout=5)
    info, _ = error_info(caught.value)
    assert (caught.value.code(), info.reason, info.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "invalid_payload", "session_id")


async def test_a_streamed_turn_survives_a_cancel_and_a_retry_replays_it(api: Api, db) -> None:
    key, _ = await api.service_key("chat")
    user = uuid.uuid4()
    metadata = as_service(key, user)
    personas = (await api.stub.ListPersonas(pb.ListPersonasRequest(), metadata=metadata)).personas
    chat = await api.stub.StartChat(pb.StartChatRequest(persona_id=personas[0].id), metadata=metadata)
    text = "This reply goes on word by word long after the backend has cancelled its call."
    api.script.add(ScriptedResponse("reply", text, per_chunk_delay=0.02, model="model-a"))
    client_msg_id = new_client_msg_id()
    call = api.stub.SendMessage(pb.SendMessageRequest(session_id=chat.session_id, content="Tell me a long one.",
                                                      client_msg_id=client_msg_id), metadata=metadata, timeout=60)
    async for frame in call:
        if frame.WhichOneof("frame") == "delta":
            call.cancel()  # the backend goes away after the first delta
            break

    async def finished() -> bool:
        return await db.fetchval("SELECT status FROM chat.turns WHERE client_msg_id = $1", client_msg_id) == "done"

    await wait_for(finished)
    assert await db.fetchval("SELECT content FROM chat.messages WHERE role = 'assistant'") == text
    replay = await turn_frames(api.stub, metadata, chat.session_id, "Tell me a long one.", client_msg_id)
    assert reply_of(replay) == text and "final" in replay[-1]
    assert await db.fetchval("SELECT count(*) FROM chat.messages") == 2


async def test_an_expired_deadline_stops_the_listener_not_the_turn(api: Api, db) -> None:
    key, _ = await api.service_key("chat")
    metadata = as_service(key, uuid.uuid4())
    personas = (await api.stub.ListPersonas(pb.ListPersonasRequest(), metadata=metadata)).personas
    chat = await api.stub.StartChat(pb.StartChatRequest(persona_id=personas[0].id), metadata=metadata)
    text = "A slow reply that takes longer than the caller was willing to wait for it."
    api.script.add(ScriptedResponse("reply", text, per_chunk_delay=0.05, model="model-a"))
    client_msg_id = new_client_msg_id()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await turn_frames(api.stub, metadata, chat.session_id, "Take your time.", client_msg_id, timeout=0.4)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def finished() -> bool:
        return await db.fetchval("SELECT status FROM chat.turns WHERE client_msg_id = $1", client_msg_id) == "done"

    await wait_for(finished)
    replay = await turn_frames(api.stub, metadata, chat.session_id, "Take your time.", client_msg_id)
    assert reply_of(replay) == text and "final" in replay[-1]


async def test_the_per_user_turn_cap_applies_on_grpc_with_retry_info(api: Api) -> None:
    key, _ = await api.service_key("chat")
    user = uuid.uuid4()
    metadata = as_service(key, user)
    personas = (await api.stub.ListPersonas(pb.ListPersonasRequest(), metadata=metadata)).personas
    sessions = [await api.stub.StartChat(pb.StartChatRequest(persona_id=p.id), metadata=metadata) for p in personas]
    for _ in range(3):
        api.script.add(ScriptedResponse("stall", stall_seconds=30, model="model-a"))
    calls = [api.stub.SendMessage(pb.SendMessageRequest(session_id=s.session_id, content="Hello?",
                                                        client_msg_id=new_client_msg_id()), metadata=metadata)
             for s in sessions]
    for call in calls:
        assert (await call.read()).WhichOneof("frame") == "meta"  # three turns in flight for the user
    fourth = await api.stub.StartChat(pb.StartChatRequest(persona_id=personas[0].id, force_new=True),
                                      metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await turn_frames(api.stub, metadata, fourth.session_id, "And one more?", new_client_msg_id())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, details = error_info(caught.value)
    assert info.reason == "rate_limited" and details["RetryInfo"].retry_delay.ToTimedelta().total_seconds() > 0
    api.script.release_stalls()
    for call in calls:
        call.cancel()


async def test_calls_are_rate_limited_per_user_and_per_service_key(database_url: str, spans) -> None:  # type: ignore[no-untyped-def]
    stack = await start_stack(database_url, per_service_env={"orchestrator": {
        "GRPC_RATE_PER_USER": "1", "GRPC_RATE_PER_SERVICE_KEY": "2"}})
    pool = await create_pool(database_url, max_size=2)
    try:
        key, _ = await api_keys.create_service_key(pool, "busy-backend", ("chat",))
        async with grpc.aio.insecure_channel(stack.address("orchestrator")) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            user = as_service(key, uuid.uuid4())
            outcomes = []
            for _ in range(3):  # a burst of 2 for the user, then refused
                try:
                    await stub.ListPersonas(pb.ListPersonasRequest(), metadata=user, timeout=5)
                    outcomes.append("ok")
                except grpc.aio.AioRpcError as error:
                    outcomes.append(error.code().name)
                    info, details = error_info(error)
                    assert info.reason == "rate_limited"
                    assert 0 < details["RetryInfo"].retry_delay.ToTimedelta().total_seconds() <= 1.0
            assert outcomes == ["ok", "ok", "RESOURCE_EXHAUSTED"]
            others = ["ok" if await _ok(stub, as_service(key, uuid.uuid4())) else "refused" for _ in range(4)]
            assert others.count("refused") >= 1, "the key's own bucket (burst 4) runs out across users"
    finally:
        await pool.close()
        await stack.stop()


async def _ok(stub: pb_grpc.OrchestratorServiceStub, metadata: list[tuple[str, str]]) -> bool:
    try:
        await stub.ListPersonas(pb.ListPersonasRequest(), metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return False
    return True


async def test_the_backend_flow_start_stream_history_explain_with_only_the_stubs(api: Api) -> None:
    """What examples/grpc_client.py does, asserted: a service key, a chat, a streamed turn, history, explain."""
    key, _ = await api.service_key("chat")
    metadata = as_service(key, uuid.uuid4())
    api.script.add(ScriptedResponse("reply", "Lisbon! The light there is something else.", model="model-a"))
    kai = next(p for p in (await api.stub.ListPersonas(pb.ListPersonasRequest(), metadata=metadata)).personas
               if p.name == "Kai")
    chat = await api.stub.StartChat(pb.StartChatRequest(persona_id=kai.id), metadata=metadata)
    assert chat.is_new and chat.persona_name == "Kai"
    frames = await turn_frames(api.stub, metadata, chat.session_id, "Hi! I just moved to Lisbon.",
                               new_client_msg_id())
    kinds = [next(iter(frame)) for frame in frames]
    assert kinds[0] == "meta" and kinds[-2:] == ["done", "final"] and "delta" in kinds
    assert reply_of(frames) == "Lisbon! The light there is something else."
    history = await api.stub.GetHistory(pb.GetHistoryRequest(session_id=chat.session_id), metadata=metadata)
    assert [(m.role, m.content) for m in history.messages] == [
        ("user", "Hi! I just moved to Lisbon."), ("assistant", "Lisbon! The light there is something else.")]
    explained = await api.stub.ExplainMessage(
        pb.ExplainMessageRequest(session_id=chat.session_id, message_id=frames[0]["meta"]["messageId"]),
        metadata=metadata)
    why = json.loads(json.dumps(MessageToDict(explained.explanation)))
    assert why["decision"]["action"] == "reply" and why["status"] == "done"
    assert why["trace_id"] == frames[-1]["final"]["traceId"]
