"""Hardening at the edges (issue 13): request bodies bounded while they stream, JSON depth bounded, no
internal address in an error, and one user's pathological message never stalling another user's reads."""
from __future__ import annotations

import asyncio
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from rapport.affinity.v1 import affinity_pb2 as affinity_pb
from rapport.affinity.v1 import affinity_pb2_grpc as affinity_grpc
from rapport.insight.v1 import insight_pb2 as insight_pb
from rapport.insight.v1 import insight_pb2_grpc as insight_grpc

from gateway.request_limits import MAX_BODY_BYTES, MAX_JSON_DEPTH, MAX_TRANSCRIPT_BYTES
from services.insight import server as insight_server
from services.insight.server import extract_with_rules
from services.servicekit.config import Env
from services.servicekit.service import start_service
from tests.stack import INTERNAL_ENV, Stack, internal_channel, new_client_msg_id

CHUNK = 64 * 1024


async def _read_http_status(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status code and the response (head and a Content-Length body) of one HTTP/1.1 answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return int(head.split()[1]), head + await reader.readexactly(length)


async def _send_chunked(url: str, path: str, total_bytes: int, headers: dict[str, str]) -> tuple[int, bytes, int]:
    """POST `total_bytes` of JSON-looking body as chunked transfer encoding (no Content-Length), stopping
    as soon as the server answers. Returns (status, response bytes, bytes of body sent before the answer)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
            "Transfer-Encoding: chunked", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    writer.write("\r\n".join(head).encode())
    answer = asyncio.create_task(_read_http_status(reader))
    sent = 0
    chunk = b"[" + b"1," * (CHUNK // 2 - 1) + b"1"
    try:
        while sent < total_bytes and not answer.done():
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            sent += len(chunk)
        if not answer.done():
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server closed the connection after answering
    status, response = await asyncio.wait_for(answer, timeout=30)
    writer.close()
    return status, response, sent


# --- request bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/comp/chat/start", "/v1/chat/completions"])
async def test_a_huge_chunked_body_is_refused_with_413_before_it_is_read(stack: Stack, path: str) -> None:
    total = 64 * 1024 * 1024  # 64 MB announced by nobody: chunked, no Content-Length, no auth
    tracemalloc.start()  # the gateway runs in this process: measure what it holds while the body streams
    try:
        status, response, sent = await _send_chunked(stack.url, path, total, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413, response[:500]
    body = response.split(b"\r\n\r\n", 1)[1]
    limit = MAX_TRANSCRIPT_BYTES if path.startswith("/v1/") else MAX_BODY_BYTES
    if path.startswith("/v1/"):
        assert b'"error"' in body and b'"too_large"' in body and b'"invalid_request_error"' in body
    else:
        assert b'"code":"too_large"' in body and b'"user_message"' in body
    # The answer came while the client was still sending (what was sent beyond the limit sat in socket
    # buffers), and the gateway held about the limit, never the body.
    assert sent < limit + 16 * 1024 * 1024 < total
    assert peak < limit + 8 * 1024 * 1024, peak


async def test_a_chunked_body_under_the_limit_still_reaches_the_route(stack: Stack) -> None:
    user = uuid.uuid4()
    personas = await stack.personas(user)

    async def body() -> Any:
        yield b'{"persona_id": '
        yield f'"{personas[0]["id"]}"'.encode()
        yield b"}"

    response = await stack.client.post("/comp/chat/start", content=body(),
                                       headers={**stack.headers(user), "content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["persona_name"] == personas[0]["name"]


async def test_a_declared_content_length_over_the_limit_is_refused_without_reading(stack: Stack) -> None:
    host, port = stack.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /comp/chat/start HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {200 * 1024 * 1024}\r\n\r\n".encode())
    await writer.drain()  # not one byte of the body is sent
    status, response = await asyncio.wait_for(_read_http_status(reader), timeout=10)
    writer.close()
    assert status == 413 and b"too_large" in response


# --- JSON depth ----------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [50, 100, 150])
async def test_deeply_nested_json_is_400_on_every_route(stack: Stack, depth: int) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    session = chat["session_id"]
    headers = {**stack.headers(user), "content-type": "application/json"}
    comp_bodies = {
        "/comp/chat/start": f'{{"persona_id": "{chat["persona_id"]}", "x": {nested(depth)}}}',
        f"/comp/chat/{session}/event/gift": f'{{"deltas": {{"warmth": 0.1}}, "metadata": {nested(depth)}}}',
        f"/comp/chat/{session}/message/stream":
            f'{{"content": "hi there", "client_msg_id": "{new_client_msg_id()}", '
            f'"audit": {{"metadata": {nested(depth)}}}}}',
    }
    answers = {path: await stack.client.post(path, content=body.encode(), headers=headers)
               for path, body in comp_bodies.items()}
    assert {path: r.status_code for path, r in answers.items()} == {path: 400 for path in comp_bodies}, \
        {path: r.text[:200] for path, r in answers.items()}
    for response in answers.values():
        assert response.json()["code"] == "invalid_payload"
        assert str(MAX_JSON_DEPTH) in response.json()["message"]
    v1_body = ('{"model": "Elena", "messages": [{"role": "user", "content": "hi"}], '
               f'"metadata": {nested(depth)}, "tools": [{{"type": "function", "function": {nested(depth)}}}]}}')
    response = await stack.client.post("/v1/chat/completions", content=v1_body.encode(), headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_payload" and error["type"] == "invalid_request_error"


async def test_json_at_the_depth_limit_is_accepted(stack: Stack) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    # the gift body is depth 1, its metadata adds MAX_JSON_DEPTH - 1 levels: exactly the limit
    body = f'{{"deltas": {{"warmth": 0.01}}, "metadata": {nested(MAX_JSON_DEPTH - 2)}}}'
    response = await stack.client.post(f"/comp/chat/{chat['session_id']}/event/gift", content=body.encode(),
                                       headers={**stack.headers(user), "content-type": "application/json"})
    assert response.status_code != 400 or "deeper" not in response.text, response.text
    assert response.status_code < 500, response.text


# --- no internal address in an error ---------------------------------------------------------------


async def test_an_unreachable_peer_is_503_without_its_address(stack: Stack) -> None:
    user = uuid.uuid4()
    address = stack.address("memory")
    await stack.services["memory"].stop(grace=0.1)
    del stack.services["memory"]
    response = await stack.client.get(f"/comp/user/{user}/memories", headers=stack.headers(user))
    assert response.status_code == 503, response.text
    host, port = address.rsplit(":", 1)
    assert port not in response.text and "ipv4" not in response.text and host not in response.text
    assert response.json()["code"] == "unavailable" and response.headers["retry-after"]
    ready = await stack.client.get("/readyz")
    assert ready.status_code == 503 and port not in ready.text and host not in ready.text
    assert ready.json()["peers"]["memory"] == "NOT_SERVING"


# --- one user's message never stalls another user's reads --------------------------------------------

READ_BOUND_SECONDS = 0.25  # a few milliseconds on an idle machine; a wide margin for a busy CI runner


async def read_latencies(read: Callable[[], Awaitable[object]], work: list[asyncio.Task[Any]]) -> list[float]:
    """How long each of a series of reads took while `work` ran (at least five reads)."""
    latencies: list[float] = []
    while not all(task.done() for task in work) or len(latencies) < 5:
        started = time.perf_counter()
        await read()
        latencies.append(time.perf_counter() - started)
    print(f"reads during the work (ms): n={len(latencies)} "  # shown with -s (docs/reliability.md)
          f"p50={sorted(latencies)[len(latencies) // 2] * 1000:.1f} max={max(latencies) * 1000:.1f}")
    return latencies


async def test_a_pathological_message_does_not_stall_another_users_affinity_reads(database_url: str) -> None:
    service = await start_service("affinity", Env({"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0", **INTERNAL_ENV,
                                                   "SHUTDOWN_GRACE_SECS": "1"}), pool_size=5)
    channel = internal_channel(service.address)
    stub = affinity_grpc.AffinityServiceStub(channel)
    try:
        sessions = {}
        for who in ("attacker", "bystander"):
            user_id, session_id = str(uuid.uuid4()), str(uuid.uuid4())
            await stub.OpenSession(affinity_pb.OpenSessionRequest(user_id=user_id, session_id=session_id,
                                                                  instance_id=str(uuid.uuid4())))
            sessions[who] = (user_id, session_id)
        read = affinity_pb.GetStateRequest(user_id=sessions["bystander"][0], session_id=sessions["bystander"][1])
        await stub.GetState(read)  # warm the channel and the pool
        attacker_user, attacker_session = sessions["attacker"]

        async def apply(turn_id: str, text: str) -> affinity_pb.ApplyTurnResponse:
            return await stub.ApplyTurn(affinity_pb.ApplyTurnRequest(
                turn_id=turn_id, user_id=attacker_user, session_id=attacker_session, persona_name="Mara",
                user_text=text, reply_text="Oh?"))

        turns = [asyncio.create_task(apply(f"t-{i}", emoji * 4096)) for i, emoji in enumerate("😀😡🙂")]
        latencies = await read_latencies(lambda: stub.GetState(read), turns)
        assert all(turn.result().applied for turn in turns)
        assert max(latencies) < READ_BOUND_SECONDS, sorted(latencies)[-5:]
    finally:
        await channel.close()
        await service.stop(grace=0.5)


async def test_rule_extraction_runs_off_the_event_loop(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing is too noisy on a shared runner for the ~80 ms a 16,000-character extraction costs, so this
    asserts the property itself: the rules run on a thread with no event loop (docs/reliability.md has
    the figures: another user's GetProfile p50 77 ms → 12 ms during such extractions)."""
    ran_on_a_loop: list[bool] = []

    def observed(user_text: str, message_id: str) -> insight_server.ExtractionRun:
        try:
            asyncio.get_running_loop()
            ran_on_a_loop.append(True)
        except RuntimeError:
            ran_on_a_loop.append(False)
        return extract_with_rules(user_text, message_id)

    monkeypatch.setattr(insight_server, "extract_with_rules", observed)
    service = await start_service("insight", Env({"DATABASE_URL": database_url, "BIND_ADDR": "127.0.0.1:0", **INTERNAL_ENV,
                                                  "SNAPSHOT_DISABLED": "1", "SHUTDOWN_GRACE_SECS": "1"}), pool_size=5)
    channel = internal_channel(service.address)
    try:
        reply = await insight_grpc.InsightServiceStub(channel).ExtractTurn(insight_pb.ExtractTurnRequest(
            turn_id="t-1", user_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()), user_message_id="m-1",
            user_text=("I Live In Lisbon And I Work As A Nurse " * 420)[:16_000], reply_text="Oh?",
            persona_name="Mara"))
        assert reply.applied and set(reply.updated_fields) >= {"city"}
        assert ran_on_a_loop == [False]
    finally:
        await channel.close()
        await service.stop(grace=0.5)
