"""What the resilience tests check after faults: every turn ended in a definite state, answered once, and
post-processed exactly once — counted in the orchestrator's outbox and in each peer's own records.

For each turn of the given users:
- its status is `done` or `failed` (never left `running`);
- a done turn has exactly one assistant message (a reply or a ghost), a failed turn none;
- a done reply has exactly one outbox job per peer (affinity, memory, insight), each `done`, with one `effects`
  event per job in the conversation's log (two would mean the job was delivered and recorded twice);
- each peer applied it once: one affinity event (`message`, or `ghost` for a ghost), one row in
  `memory.ingested_turns`, one in `insight.extracted_turns` (a ghost has no memory or insight work).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import asyncpg

PEERS = ("affinity", "memory", "insight")
JSON_COLUMNS = frozenset({"jobs", "effects", "affinity"})  # jsonb: text on a connection without a codec


@dataclass
class PostProcessAudit:
    turns: int = 0  # turns audited
    done: int = 0
    failed: int = 0
    replies: int = 0  # done turns answered with a reply (post-processed by the three peers)
    ghosts: int = 0
    jobs_done: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def post_processed_once(self) -> int:
        """Replies whose three jobs were each delivered and applied exactly once."""
        return self.replies - len({p.split(":")[0] for p in self.problems})


async def audit_post_process(db: asyncpg.Connection, user_ids: list[uuid.UUID]) -> PostProcessAudit:
    rows = await db.fetch(
        """SELECT t.id, t.status, t.session_id,
                  (SELECT array_agg(m.kind) FROM chat.messages m
                    WHERE m.turn_id = t.id AND m.role = 'assistant') AS answers,
                  (SELECT coalesce(jsonb_object_agg(o.target, o.status), '{}') FROM chat.outbox o
                    WHERE o.turn_id = t.id AND o.call = 'post_process') AS jobs,
                  (SELECT count(*) FROM chat.outbox o WHERE o.turn_id = t.id AND o.call = 'post_process') AS job_rows,
                  (SELECT coalesce(jsonb_object_agg(e.target, e.n), '{}') FROM (
                      SELECT ev.data->>'target' AS target, count(*) AS n FROM chat.events ev
                       WHERE ev.session_id = t.session_id AND ev.kind = 'effects' AND ev.data->>'turn_id' = t.id
                       GROUP BY 1) e) AS effects,
                  (SELECT coalesce(jsonb_object_agg(a.kind, a.n), '{}') FROM (
                      SELECT ae.kind, count(*) AS n FROM affinity.events ae
                       WHERE ae.session_id = t.session_id AND ae.turn_id = t.id GROUP BY 1) a) AS affinity,
                  (SELECT count(*) FROM memory.ingested_turns mi WHERE mi.turn_id = t.id) AS memory,
                  (SELECT count(*) FROM insight.extracted_turns ie WHERE ie.turn_id = t.id) AS insight
             FROM chat.turns t WHERE t.user_id = ANY($1::uuid[]) ORDER BY t.started_at""",
        user_ids,
    )
    audit = PostProcessAudit(turns=len(rows))
    for record in rows:
        row = {key: json.loads(value) if key in JSON_COLUMNS else value for key, value in record.items()}
        turn, answers = row["id"], list(row["answers"] or [])
        if row["status"] == "failed":
            audit.failed += 1
            if answers:
                audit.problems.append(f"{turn}: failed, yet answered {answers}")
            continue
        if row["status"] != "done":
            audit.problems.append(f"{turn}: still {row['status']}")
            continue
        audit.done += 1
        if len(answers) != 1:
            audit.problems.append(f"{turn}: {len(answers)} answers {answers}, not one")
            continue
        if answers == ["ghost"]:
            audit.ghosts += 1
            if dict(row["affinity"]) != {"ghost": 1}:
                audit.problems.append(f"{turn}: ghost recorded in affinity as {dict(row['affinity'])}")
            continue
        audit.replies += 1
        jobs, effects = dict(row["jobs"]), dict(row["effects"])
        audit.jobs_done += sum(status == "done" for status in jobs.values())
        if row["job_rows"] != len(PEERS) or jobs != {peer: "done" for peer in PEERS}:
            audit.problems.append(f"{turn}: outbox jobs {jobs} ({row['job_rows']} rows), not one done per peer")
        if effects != {peer: 1 for peer in PEERS}:
            audit.problems.append(f"{turn}: effects recorded {effects}, not once per peer")
        applied = {"affinity": dict(row["affinity"]).get("message", 0), "memory": row["memory"],
                   "insight": row["insight"]}
        if applied != {peer: 1 for peer in PEERS}:
            audit.problems.append(f"{turn}: applied by the peers {applied}, not once each")
    return audit


async def outbox_settled(db: asyncpg.Connection, user_ids: list[uuid.UUID]) -> bool:
    """No post-process job of these users waits any more (each is done or dead)."""
    waiting = await db.fetchval(
        "SELECT count(*) FROM chat.outbox WHERE user_id = ANY($1::uuid[]) AND status = 'pending'", user_ids
    )
    running = await db.fetchval(
        "SELECT count(*) FROM chat.turns WHERE user_id = ANY($1::uuid[]) AND status = 'running'", user_ids
    )
    return waiting == 0 and running == 0
