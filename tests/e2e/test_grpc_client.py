"""A backend against `rapport up` (issue 14): the printed gRPC address, a service key from `rapport keys create
--service`, and examples/grpc_client.py streaming a whole turn, reading the history and the explain data;
the printed local token works on the gRPC API as on the REST one."""
from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from rapport.orchestrator.v1 import orchestrator_pb2 as pb
from rapport.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc
from services.servicekit.embedded_pg import free_port
from tests.e2e.test_rapport_up import stop_with_ctrl_c

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


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


def _rapport(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_example_client_streams_a_turn_against_rapport_up(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_JWT_SECRET", "OPENROUTER_API_KEY",
                                                            "LLM_BASE_URL", "LLM_API_KEY")}
    env.update({"RAPPORT_HOME": str(tmp_path / "home"), "RAPPORT_PG_FSYNC_OFF": "1", "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--port", str(port),
                                "--grpc-port", str(grpc_port)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        address = _wait_for_line(lines, r"gRPC API:\s+(\S+)", 120, seen).group(1)
        assert address == f"127.0.0.1:{grpc_port}"
        token = re.search(r"token:\s+(\S+)", "".join(seen)).group(1)  # type: ignore[union-attr]
        database = {**env, "DATABASE_URL": _rapport(env, "db", "url").strip()}
        created = _rapport(database, "keys", "create", "--service", "e2e-backend", "--scope", "chat").splitlines()
        key = created[0]
        assert key.startswith("rsk_") and "scopes chat" in created[1]
        assert "e2e-backend" in _rapport(database, "keys", "list", "--service")

        user = str(uuid.uuid4())
        client = subprocess.run([sys.executable, str(ROOT / "examples" / "grpc_client.py"), "--address", address,
                                 "--key", key, "--user", user, "--persona", "Kai", "Hi Kai! I just moved to Lisbon."],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                env={"PATH": env["PATH"], "PYTHONPATH": str(ROOT / "protos")})
        assert client.returncode == 0, client.stdout + client.stderr
        out = client.stdout
        assert re.search(r"^\[meta\] reply by \S+", out, re.MULTILINE), out
        assert re.search(r"^Kai> \S.+$", out, re.MULTILINE), out
        assert out.index("[meta]") < out.index("[done]") < out.index("[final]") < out.index("history: 2 messages")
        assert "  user: Hi Kai! I just moved to Lisbon." in out and re.search(r"^explain: reply ", out, re.MULTILINE)

        # Without credentials: refused, naming what is missing; the local token is a user's JWT here too.
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListSessions(pb.ListSessionsRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            mine = stub.ListSessions(pb.ListSessionsRequest(), metadata=[("authorization", f"Bearer {token}")],
                                     timeout=10)
            assert list(mine.sessions) == []  # the backend's user is not the local user
            theirs = stub.ListSessions(pb.ListSessionsRequest(), timeout=10,
                                       metadata=[("authorization", f"Bearer {key}"), ("x-rapport-user", user)])
            assert [s.persona_name for s in theirs.sessions] == ["Kai"]
    finally:
        stop_with_ctrl_c(process, seen)
