"""Orchestrator replicas: what makes one live (turns and post-process claims are owned by live replicas)."""

from __future__ import annotations


def live_replica(owner: str, lease: str) -> str:
    """SQL: the replica `owner` runs and beats within the lease (both SQL expressions) — the one rule of
    liveness for turns and post-process claims alike."""
    return (
        f"EXISTS (SELECT 1 FROM chat.replicas r WHERE r.id = {owner} AND r.stopped_at IS NULL "
        f"AND r.heartbeat_at >= now() - make_interval(secs => {lease}))"
    )
