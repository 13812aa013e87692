"""Take out / erase everything about a user, across the four services (each deletes its own schema)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from google.protobuf.json_format import MessageToDict

from rapport.affinity.v1 import affinity_pb2
from rapport.insight.v1 import insight_pb2
from rapport.memory.v1 import memory_pb2

from .peers import Peers
from .store import user_data


def _as_json(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


async def export_user_data(pool: asyncpg.Pool, peers: Peers, user_id: uuid.UUID) -> dict[str, Any]:
    chat = await user_data.export_chat(pool, user_id)
    memories = [
        _as_json(item.memory)
        async for item in peers.export_memories(memory_pb2.ExportMemoriesRequest(user_id=str(user_id)))
    ]
    profile = await peers.full_profile(
        insight_pb2.GetProfileRequest(user_id=str(user_id), mode=insight_pb2.RENDER_MODE_FULL)
    )
    snapshots = await peers.list_snapshots(insight_pb2.ListSnapshotsRequest(user_id=str(user_id), limit=366))
    affinity = []
    for session in chat["sessions"]:
        events = await peers.list_affinity_events(
            affinity_pb2.ListEventsRequest(user_id=str(user_id), session_id=session["session_id"], limit=10000)
        )
        affinity.append({"session_id": session["session_id"], "events": [_as_json(e) for e in events.events]})
    return {
        "user_id": str(user_id),
        **chat,
        "memories": memories,
        "profile": _as_json(profile.profile),
        "profile_snapshots": [_as_json(x) for x in snapshots.snapshots],
        "affinity": affinity,
    }


async def delete_user_data(pool: asyncpg.Pool, peers: Peers, user_id: uuid.UUID) -> dict[str, Any]:
    """Erase in every service; the domain services first so a failure leaves the chat (and a retry) intact."""
    await user_data.delete_pending_jobs(pool, user_id)  # they would recreate what is erased
    deleted: dict[str, Any] = await peers.delete_user_data(str(user_id))
    deleted["chat"] = await user_data.delete_chat(pool, user_id)
    return deleted
