"""Take out / erase everything about a user, across the four services (each deletes its own schema)."""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf.json_format import MessageToDict

from rapport.affinity.v1 import affinity_pb2
from rapport.insight.v1 import insight_pb2
from rapport.memory.v1 import memory_pb2
from services.servicekit.grpc_runtime import call_timeout

from . import store
from .peers import Peers


async def export_user_data(pool: Any, peers: Peers, user_id: uuid.UUID) -> dict[str, Any]:
    chat = await store.export_chat(pool, user_id)
    memories = [
        MessageToDict(item.memory, preserving_proto_field_name=True)
        async for item in peers.memory.ExportMemories(
            memory_pb2.ExportMemoriesRequest(user_id=str(user_id)), timeout=call_timeout(60.0)
        )
    ]
    profile = await peers.insight.GetProfile(
        insight_pb2.GetProfileRequest(user_id=str(user_id), mode=insight_pb2.RENDER_MODE_FULL),
        timeout=call_timeout(10.0),
    )
    snapshots = await peers.insight.ListSnapshots(
        insight_pb2.ListSnapshotsRequest(user_id=str(user_id), limit=366), timeout=call_timeout(10.0)
    )
    affinity = []
    for session in chat["sessions"]:
        events = await peers.affinity.ListEvents(
            affinity_pb2.ListEventsRequest(user_id=str(user_id), session_id=session["session_id"], limit=10000),
            timeout=call_timeout(10.0),
        )
        affinity.append(
            {
                "session_id": session["session_id"],
                "events": [MessageToDict(e, preserving_proto_field_name=True) for e in events.events],
            }
        )
    return {
        "user_id": str(user_id),
        **chat,
        "memories": memories,
        "profile": MessageToDict(profile.profile, preserving_proto_field_name=True),
        "profile_snapshots": [MessageToDict(x, preserving_proto_field_name=True) for x in snapshots.snapshots],
        "affinity": affinity,
    }


async def delete_user_data(pool: Any, peers: Peers, user_id: uuid.UUID) -> dict[str, Any]:
    """Erase in every service; the domain services first so a failure leaves the chat (and a retry) intact."""
    request_user = str(user_id)
    # Pending post-process jobs would recreate what we erase: drop them first.
    await pool.execute("DELETE FROM chat.outbox WHERE status = 'pending' AND payload->>'user_id' = $1", request_user)
    affinity = await peers.affinity.DeleteUserData(
        affinity_pb2.DeleteUserDataRequest(user_id=request_user), timeout=call_timeout(30.0)
    )
    memory = await peers.memory.DeleteUserData(
        memory_pb2.DeleteUserDataRequest(user_id=request_user), timeout=call_timeout(30.0)
    )
    insight = await peers.insight.DeleteUserData(
        insight_pb2.DeleteUserDataRequest(user_id=request_user), timeout=call_timeout(30.0)
    )
    chat = await store.delete_chat(pool, user_id)
    await pool.execute("DELETE FROM chat.api_keys WHERE user_id = $1", user_id)
    return {"affinity": affinity.deleted, "memory": memory.deleted, "insight": insight.deleted, "chat": chat}
