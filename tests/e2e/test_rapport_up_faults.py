"""Faults injected into a running `rapport up --replicas 2`, as an operator would meet them: each service
SIGKILLed mid-conversation (one orchestrator replica with a turn in flight), PostgreSQL SIGKILLed with turns in
flight, then a bounded 64-session load. `rapport up` restarts what died; clients retry with the same
`client_msg_id`; at the end every turn is in a definite state, answered once, and post-processed exactly once.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from services.servicekit.embedded_pg import free_port
from services.servicekit.identity import LocalIdentity, mint_token
from tests.e2e.test_rapport_up import _read_lines, _wait_for_line, stop_with_ctrl_c
from tests.integration.post_process_audit import audit_post_process, outbox_settled
from tests.stack import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.resilience]

RETRY_FOR = 90.0  # how long a client keeps retrying one message across a fault
LOAD_SESSIONS = 64
LOAD_TURNS = 2


@dataclass
class Client:
    """Users of the stack behind its gateway, each retrying a message (same client_msg_id) until answered."""

    http: httpx.AsyncClient
    secret: str
    persona_id: str = ""
    retries: list[str] = field(default_factory=list)  # why an attempt had to be retried (the faults' traces)
    answered: int = 0  # messages answered (each must be one done turn)
    phase: str = "start"  # the fault being injected, for the retries' record

    def headers(self, user: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.secret, user, ttl_seconds=3600)}"}

    async def start_chat(self, user: uuid.UUID) -> str:
        response = await self.http.post("/comp/chat/start", json={"persona_id": self.persona_id},
                                        headers=self.headers(user))
        assert response.status_code == 200, response.text
        return str(response.json()["session_id"])

    async def attempt(self, user: uuid.UUID, session: str, text: str, msg_id: str,
                      on_meta: asyncio.Event | None = None) -> dict | None:
        """One attempt: the final frame, or None when the attempt met a fault (noted in `retries`)."""
        try:
            async with self.http.stream("POST", f"/comp/chat/{session}/message/stream",
                                        json={"content": text, "client_msg_id": msg_id},
                                        headers=self.headers(user)) as response:
                if response.status_code != 200:
                    self.retries.append(f"{self.phase}: HTTP {response.status_code}")
                    return None
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    frame = json.loads(line[5:])
                    if frame["type"] == "meta" and on_meta is not None:
                        on_meta.set()
                    if frame["type"] == "error":
                        self.retries.append(f"{self.phase}: error frame {frame.get('code')}")
                        return None
                    if frame["type"] == "final":
                        return frame
        except httpx.HTTPError as error:
            self.retries.append(f"{self.phase}: {type(error).__name__}")
            return None
        self.retries.append(f"{self.phase}: stream ended without a final frame")
        return None

    async def send(self, user: uuid.UUID, session: str, text: str, on_meta: asyncio.Event | None = None) -> dict:
        """Send a message and retry it as a client would (same id, a short pause) until it is answered."""
        msg_id = "f-" + uuid.uuid4().hex[:24]
        deadline = time.monotonic() + RETRY_FOR
        while time.monotonic() < deadline:
            final = await self.attempt(user, session, text, msg_id, on_meta)
            if final is not None:
                self.answered += 1
                return final
            await asyncio.sleep(0.5)  # the client's retry spacing, not a wait for a result
        raise AssertionError(f"{text!r} not answered within {RETRY_FOR:.0f} s; retries: {self.retries[-5:]}")


def _service_processes(up: psutil.Process, name: str) -> list[psutil.Process]:
    return [child for child in up.children(recursive=True)
            if child.cmdline()[-2:] == ["serve", name]]


def _postmaster_pid(home: Path) -> int:
    return int((home / "pgdata" / "postmaster.pid").read_text().splitlines()[0])


@pytest.mark.timeout(600)
async def test_rapport_up_outlives_a_killed_process_of_each_kind_and_a_postgres_crash(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_JWT_SECRET", "OPENROUTER_API_KEY",
                                                            "LLM_BASE_URL", "LLM_API_KEY")}
    env.update({"RAPPORT_HOME": str(home), "RAPPORT_PG_FSYNC_OFF": "1", "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--port", str(port), "--grpc-port",
                                str(free_port()), "--replicas", "2"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    db: asyncpg.Connection | None = None
    try:
        began = time.monotonic()
        _wait_for_line(lines, r"token:\s+\S+", 240, seen)
        print(f"\nrapport up --replicas 2 ready in {time.monotonic() - began:.1f} s", end="")
        up = psutil.Process(process.pid)
        dsn = subprocess.run([sys.executable, "-m", "services.cli", "db", "url"], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            client = Client(http, LocalIdentity.load_or_create(home).secret)
            user = uuid.uuid4()
            client.persona_id = (await http.get("/comp/personas", headers=client.headers(user))).json()[0]["id"]
            users = [user]
            session = await client.start_chat(user)
            assert (await client.send(user, session, "Hi! I live in Porto."))["degraded"] == []

            # Each kind of process SIGKILLed while a turn is being answered; the turn is retried until answered.
            phase_began = time.monotonic()

            def phase(name: str) -> None:
                nonlocal phase_began
                print(f"\n{client.phase}: {time.monotonic() - phase_began:.1f} s", end="")
                client.phase, phase_began = name, time.monotonic()

            for name in ("orchestrator", "memory", "affinity", "insight", "gateway"):
                phase(f"{name} killed")
                victims = _service_processes(up, name)
                assert len(victims) == (1 if name == "gateway" else 2), (name, victims)
                streaming = asyncio.Event()
                turn = asyncio.create_task(client.send(user, session, f"Tell me something, {name}.", streaming))
                await asyncio.wait_for(streaming.wait(), 30)
                victims[0].send_signal(signal.SIGKILL)
                await turn
                await asyncio.to_thread(_wait_for_line, lines, rf"\b{name}(-\d+)? restarted", 60, seen)

                async def whole_again() -> bool:  # the restarted process is used again: no degraded turn
                    return (await client.send(user, session, f"All well, {name}?"))["degraded"] == []

                await wait_for(whole_again, timeout=30, interval=0.2)

            # PostgreSQL SIGKILLed with eight turns in flight: each ends answered once (after retries).
            phase("postgres killed")
            others = [uuid.uuid4() for _ in range(8)]
            users += others
            sessions = [await client.start_chat(other) for other in others]
            started = [asyncio.Event() for _ in others]
            turns = [asyncio.create_task(client.send(other, chat, "I work night shifts as an ER nurse.", event))
                     for other, chat, event in zip(others, sessions, started)]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 30)
            os.kill(_postmaster_pid(home), signal.SIGKILL)
            await asyncio.gather(*turns)
            await asyncio.to_thread(_wait_for_line, lines, r"PostgreSQL restarted", 60, seen)

            # A bounded load: 64 sessions × 2 turns at once, no error.
            phase("load")
            load_users = [uuid.uuid4() for _ in range(LOAD_SESSIONS)]
            users += load_users
            load_sessions = await asyncio.gather(*(client.start_chat(u) for u in load_users))
            retries_before = len(client.retries)

            async def converse(load_user: uuid.UUID, chat: str) -> None:
                for number in range(LOAD_TURNS):
                    await client.send(load_user, chat, f"Message {number}: my favourite band plays jazz.")

            await asyncio.gather(*(converse(u, s) for u, s in zip(load_users, load_sessions)))
            assert client.retries[retries_before:] == []  # under load alone, nothing had to be retried
            phase("end")
            print(f"\nfaults: {len(client.retries)} attempts retried ({sorted(set(client.retries))})")

        db = await asyncpg.connect(dsn)
        began = time.monotonic()
        await wait_for(lambda: outbox_settled(db, users), timeout=120, interval=0.2)
        print(f"post-process settled {time.monotonic() - began:.1f} s after the last reply")
        audit = await audit_post_process(db, users)
        assert audit.problems == []
        assert client.answered >= 1 + 5 * 2 + len(others) + LOAD_SESSIONS * LOAD_TURNS
        assert audit.done == client.answered and audit.replies + audit.ghosts == client.answered
        assert await db.fetchval("SELECT count(*) FROM chat.outbox WHERE status = 'dead'") == 0
    finally:
        if db is not None:
            await db.close()
        stop_with_ctrl_c(process, seen)
