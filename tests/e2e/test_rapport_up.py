"""`rapport up` as a user meets it: separate processes, a URL and a token, a streamed turn with curl-like
HTTP, reflection on every service, and Ctrl-C leaving no process behind."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.servicekit.embedded_pg import free_port

pytestmark = pytest.mark.e2e


def _read_lines(stream, sink: queue.Queue) -> None:  # type: ignore[no-untyped-def]
    for line in iter(stream.readline, ""):
        sink.put(line)
    sink.put(None)


def _wait_for_line(lines: queue.Queue, pattern: str, timeout: float, seen: list[str]) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r}; output so far:\n{''.join(seen)[-4000:]}")


def _list_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=5)
        return {service.name for response in responses for service in response.list_services_response.service}


def _serving(address: str, name: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def stop_with_ctrl_c(process: subprocess.Popen, seen: list[str]) -> None:  # type: ignore[type-arg]
    """Ctrl-C as a user would; `rapport up` must exit 0 within a minute (else it is killed and the test fails)."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, "".join(seen)[-3000:]


def test_rapport_up_serves_a_turn_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_JWT_SECRET", "OPENROUTER_API_KEY",
                                                            "LLM_BASE_URL", "LLM_API_KEY")}
    env.update({"RAPPORT_HOME": str(tmp_path / "home"), "RAPPORT_PG_FSYNC_OFF": "1", "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        token = _wait_for_line(lines, r"token:\s+(\S+)", 120, seen).group(1)
        output = "".join(seen)
        assert f"http://127.0.0.1:{port}/" in output
        addresses = dict(re.findall(r"rapport (orchestrator|affinity|memory|insight) serving on (\S+)", output))
        assert set(addresses) == {"orchestrator", "affinity", "memory", "insight"}
        for name, address in addresses.items():
            full = f"rapport.{name}.v1.{name.capitalize()}Service"
            assert full in _list_services(address)
            assert _serving(address, full)

        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            personas = client.get("/comp/personas", headers=headers).json()
            assert len(personas) == 3
            chat = client.post("/comp/chat/start", json={"persona_id": personas[0]["id"]}, headers=headers).json()
            body = {"content": "Hello there, how are you tonight?", "client_msg_id": "up-" + uuid.uuid4().hex[:24]}
            with client.stream("POST", f"/comp/chat/{chat['session_id']}/message/stream", json=body,
                               headers=headers) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                kinds = [re.search(r'"type": "(\w+)"', line).group(1) for line in response.iter_lines()
                         if line.startswith("data:")]
            assert kinds[0] == "meta" and kinds[-2:] == ["done", "final"] and "delta" in kinds
            history = client.get(f"/comp/chat/{chat['session_id']}/history", headers=headers).json()
            assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 6  # postgres, offline LLM, four services, gateway (and postgres workers)
    finally:
        stop_with_ctrl_c(process, seen)
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if p.info["cmdline"] and str(tmp_path) in " ".join(p.info["cmdline"])]
    assert leftovers == []
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
