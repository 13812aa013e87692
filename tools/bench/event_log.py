"""`rapport bench event-log`: what the conversation's event log costs (issue 10).

Real services in this process on loopback gRPC (orchestrator, affinity, memory, insight), a scratch
embedded PostgreSQL. A session of `--turns` turns is written through the orchestrator's own store
functions (the user message, the reply, their events and branch heads) with each turn's affinity event
applied by the real `Affinity.ApplyTurn`; then a branch is made half-way and the two branches are
activated in turn through the real `Orchestrator.ActivateBranch`. Figures:

- added cost per turn of writing events: the two `append_event` statements (user message, reply) of a
  turn, timed inside the turn's transactions, p50 / p95;
- branch switch: the `ActivateBranch` call (tree read, event, recount, the peers' jobs queued), and the
  whole switch until affinity's projection over the branch is delivered and written (outbox → ProjectBranch),
  p50 / p95, for the long branch (`--turns`) and the short one (half).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc

from rapport.affinity.v1 import affinity_pb2, affinity_pb2_grpc
from rapport.orchestrator.v1 import orchestrator_pb2 as pb
from rapport.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc
from services import admin
from services.orchestrator.persona_catalog import EXAMPLE_PERSONAS_DIR
from services.orchestrator.store import conversations, new_message_id, turns
from services.orchestrator.store.rows import AssistantMessage
from services.servicekit.config import Env
from services.servicekit.embedded_pg import EmbeddedPostgres
from services.servicekit.grpc_runtime import outbound_interceptors
from services.servicekit.service import RunningService, start_service

SECTION_TITLE = "## The conversation's event log (`rapport bench event-log`)"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def write_turns(
    pool: asyncpg.Pool, affinity: affinity_pb2_grpc.AffinityServiceStub, session: uuid.UUID, user: uuid.UUID, count: int
) -> list[float]:
    """`count` turns on the session's active branch → the ms the events of each turn took to write."""
    event_ms: list[float] = []
    for index in range(count):
        turn_id, message_id, _ = await turns.begin_turn(
            pool,
            session_id=session,
            user_id=user,
            client_msg_id=f"bench-{index:06d}-{uuid.uuid4().hex[:16]}",
            content=f"Message {index}: today I walked by the river and thought of you.",
        )
        reply = AssistantMessage(id=new_message_id(), content=f"Reply {index}: that sounds lovely.")
        await turns.finish_turn(
            pool,
            turn_id=turn_id,
            session_id=session,
            user_id=user,
            assistant=reply,
            jobs=[],
            trace_context={},
            frames=[],
            explain={},
            usage={},
            cost=0.0,
        )
        async with pool.acquire() as conn:  # the same two statements, timed alone, then rolled back
            transaction = conn.transaction()
            await transaction.start()
            started = time.perf_counter()
            for kind, mid in (("user_message", message_id), ("reply", reply.id)):
                await conversations.append_event(
                    conn,
                    session_id=session,
                    user_id=user,
                    kind=kind,
                    actor="system",
                    message_id=mid,
                    data={"parent_id": None, "bench": True},
                )
            event_ms.append((time.perf_counter() - started) * 1000)
            await transaction.rollback()
        request = affinity_pb2.ApplyTurnRequest(
            turn_id=turn_id,
            user_id=str(user),
            session_id=str(session),
            persona_name="Elena",
            user_text="today I walked by the river",
            reply_text="that sounds lovely",
        )
        request.user_message_at.FromDatetime(datetime.now(UTC))
        await affinity.ApplyTurn(request)
    return event_ms


async def run(turn_count: int, switches: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="rapport-bench-events-"))
    os.environ.setdefault("RAPPORT_PG_FSYNC_OFF", "1")
    server = EmbeddedPostgres(home)
    server.start()
    running: list[RunningService] = []
    try:
        admin_conn = await asyncpg.connect(server.dsn("postgres"))
        await admin_conn.execute('CREATE DATABASE "bench"')
        await admin_conn.close()
        url = server.dsn("bench")
        await admin.migrate(url)
        await admin.seed_personas(url, EXAMPLE_PERSONAS_DIR)
        base = {
            "DATABASE_URL": url,
            "BIND_ADDR": "127.0.0.1:0",
            "DREAMING_DISABLED": "1",
            "SNAPSHOT_DISABLED": "1",
            "SHUTDOWN_GRACE_SECS": "1",
            "RAPPORT_INTERNAL_TOKEN": secrets.token_urlsafe(48),  # the bench calls the services as Rapport does
        }
        internal = outbound_interceptors(None, (("x-rapport-internal-token", base["RAPPORT_INTERNAL_TOKEN"]),))
        for name in ("affinity", "memory", "insight"):
            running.append(await start_service(name, Env(base), pool_size=4))
        peers = {f"{s.name.upper()}_ADDR": s.address for s in running}
        orchestrator = await start_service("orchestrator", Env({**base, **peers}), pool_size=8)
        running.append(orchestrator)
        user = uuid.uuid4()
        async with (
            grpc.aio.insecure_channel(orchestrator.address, interceptors=internal) as channel,
            grpc.aio.insecure_channel(peers["AFFINITY_ADDR"], interceptors=internal) as affinity_channel,
        ):
            stub = pb_grpc.OrchestratorServiceStub(channel)
            affinity = affinity_pb2_grpc.AffinityServiceStub(affinity_channel)
            personas = await stub.ListPersonas(pb.ListPersonasRequest(user_id=str(user)))
            chat = await stub.StartChat(pb.StartChatRequest(user_id=str(user), persona_id=personas.personas[0].id))
            session = uuid.UUID(chat.session_id)
            print(f"writing {turn_count} turns …", file=sys.stderr, flush=True)
            event_ms = await write_turns(orchestrator.pool, affinity, session, user, turn_count)
            long_branch = (await conversations.active_branch(orchestrator.pool, session)).id
            path = await conversations.path_to(
                orchestrator.pool, (await conversations.active_branch(orchestrator.pool, session)).head_id
            )
            half = path[turn_count - 1].id  # the reply of turn turn_count/2
            short = await stub.CreateBranch(
                pb.CreateBranchRequest(user_id=str(user), session_id=str(session), from_message_id=half)
            )
            await settle(orchestrator.pool)
            call_ms: dict[str, list[float]] = {"long": [], "short": []}
            switch_ms: dict[str, list[float]] = {"long": [], "short": []}
            for index in range(switches):
                which, branch = ("long", str(long_branch)) if index % 2 == 0 else ("short", short.branch_id)
                started = time.perf_counter()
                await stub.ActivateBranch(
                    pb.ActivateBranchRequest(user_id=str(user), session_id=str(session), branch_id=branch)
                )
                call_ms[which].append((time.perf_counter() - started) * 1000)
                await settle(orchestrator.pool, target="affinity")
                switch_ms[which].append((time.perf_counter() - started) * 1000)
                await settle(orchestrator.pool)
    finally:
        for service in reversed(running):
            await service.stop(grace=0.5)
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    return {
        "event_p50": statistics.median(event_ms),
        "event_p95": percentile(event_ms, 0.95),
        **{f"call_{k}_p50": statistics.median(v) for k, v in call_ms.items()},
        **{f"call_{k}_p95": percentile(v, 0.95) for k, v in call_ms.items()},
        **{f"switch_{k}_p50": statistics.median(v) for k, v in switch_ms.items()},
        **{f"switch_{k}_p95": percentile(v, 0.95) for k, v in switch_ms.items()},
    }


async def settle(pool: asyncpg.Pool, target: str | None = None) -> None:
    """Until no outbox job (of `target`) is pending — polling the queue, as an operator would."""
    while await pool.fetchval(  # noqa: ASYNC110 (polling the queue is what an operator does)
        "SELECT count(*) FROM chat.outbox WHERE status = 'pending' AND ($1::text IS NULL OR target = $1)", target
    ):
        await asyncio.sleep(0.002)


def render(figures: dict[str, float], turn_count: int, switches: int) -> str:
    load = os.getloadavg()[0]
    return "\n".join(
        [
            SECTION_TITLE,
            "",
            f"Run on {datetime.now(UTC):%Y-%m-%d} on {os.cpu_count()} cores (1-minute load average {load:.1f} at the end: "
            "anything else running moves the figures), embedded PostgreSQL with fsync off, the services in one "
            f"process on loopback gRPC. A session of {turn_count} turns; {switches} branch switches alternating between "
            f"the {turn_count}-turn branch and a {turn_count // 2}-turn branch forked half-way.",
            "",
            "| figure | p50 | p95 | goal |",
            "|---|---:|---:|---|",
            f"| events written per turn (2 appends) | {figures['event_p50']:.2f} ms | {figures['event_p95']:.2f} ms "
            "| ≤ 1 ms p50 |",
            f"| `ActivateBranch`, to the {turn_count}-turn branch | {figures['call_long_p50']:.1f} ms | "
            f"{figures['call_long_p95']:.1f} ms | |",
            f"| `ActivateBranch`, to the {turn_count // 2}-turn branch | {figures['call_short_p50']:.1f} ms | "
            f"{figures['call_short_p95']:.1f} ms | |",
            f"| switch until affinity is re-projected, {turn_count}-turn branch | {figures['switch_long_p50']:.1f} ms | "
            f"{figures['switch_long_p95']:.1f} ms | ≤ 50 ms |",
            f"| switch until affinity is re-projected, {turn_count // 2}-turn branch | "
            f"{figures['switch_short_p50']:.1f} ms | {figures['switch_short_p95']:.1f} ms | |",
            "",
            "Reproduce: `rapport bench event-log` (`--turns 1000 --switches 20`).",
            "",
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rapport bench event-log", description=__doc__)
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--write", type=Path, help="replace this benchmark's section of a benchmarks file")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.turns, args.switches))
    section = render(figures, args.turns, args.switches)
    print(section)
    if args.write:
        existing = args.write.read_text() if args.write.exists() else "# Benchmarks\n"
        start = existing.find(SECTION_TITLE)
        if start == -1:
            args.write.write_text(existing.rstrip("\n") + "\n\n" + section)
        else:
            following = existing.find("\n## ", start + len(SECTION_TITLE))
            args.write.write_text(existing[:start] + section + (existing[following:] if following != -1 else ""))
    return 0
