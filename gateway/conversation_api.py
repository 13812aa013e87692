"""The conversation's event log over REST (issue 10): swipe / regenerate, select an alternative, rewind and
branch, surgical delete with its impact preview, and the log itself. Same auth, ownership and error
contract as every `/comp` route; the orchestrator decides everything."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field

from rapport.affinity.v1 import affinity_pb2
from rapport.orchestrator.v1 import orchestrator_pb2 as orch_pb2

from .deps import TURN_STREAM_TIMEOUT, User, clients, relay_frames, require_json

MessageId = Annotated[str, PathParam(max_length=40)]


class RegenerateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    client_msg_id: str = Field(min_length=26, max_length=36, pattern=r"^[\x21-\x7e]+$")
    tier: str = ""
    memory_scope: str = ""


class BranchBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    from_message_id: str | None = Field(default=None, max_length=40)  # none: from the start (a new first message)
    client_request_id: str = Field(default="", max_length=64)


def affinity_state_json(state: affinity_pb2.AffinityState) -> dict[str, Any] | None:
    if not state.session_id:
        return None
    v = state.vector
    vector = {"warmth": v.warmth, "trust": v.trust, "intimacy": v.intimacy, "intrigue": v.intrigue,
              "patience": v.patience, "tension": v.tension}  # fmt: skip
    return {
        **{axis: round(value, 4) for axis, value in vector.items()},
        "bond": round(state.bond, 4),
        "chemistry": round(state.chemistry, 4),
        "label": state.label,
        "ghost_streak": state.ghost_streak,
        "total_ghosts": state.total_ghosts,
    }


def conversation_router() -> APIRouter:
    router = APIRouter(prefix="/comp/chat/{session_id}", tags=["conversation"])

    @router.post(
        "/messages/{message_id}/regenerate",
        dependencies=[Depends(require_json)],
        response_description="Server-sent events, like `message/stream`: a new alternative reply.",
    )
    async def regenerate(
        request: Request, session_id: uuid.UUID, message_id: MessageId, body: RegenerateBody, user: User
    ) -> Response:
        """A new alternative reply to a user message (give the user message or one of its replies). The
        earlier replies are kept as alternatives; post-process runs once per user message."""
        call = clients(request).orchestrator.RegenerateMessage(
            orch_pb2.RegenerateMessageRequest(
                user_id=str(user),
                session_id=str(session_id),
                message_id=message_id,
                client_msg_id=body.client_msg_id,
                tier=body.tier,
                memory_scope=body.memory_scope,
            ),
            timeout=TURN_STREAM_TIMEOUT,
        )
        return await relay_frames(call, lambda item: item.frame)

    @router.post("/messages/{message_id}/select")
    async def select(request: Request, session_id: uuid.UUID, message_id: MessageId, user: User) -> dict[str, Any]:
        """Make an alternative reply current (in an earlier exchange: on a new branch, the old one kept)."""
        reply = await clients(request).orchestrator.SelectAlternative(
            orch_pb2.SelectAlternativeRequest(user_id=str(user), session_id=str(session_id), message_id=message_id)
        )
        return {"branch_id": reply.branch_id, "branched": reply.branched}

    @router.post("/branches", dependencies=[Depends(require_json)])
    async def create_branch(request: Request, session_id: uuid.UUID, body: BranchBody, user: User) -> dict[str, Any]:
        """Rewind: a new branch continuing from a message (none: from the very start), made active; the next
        `message/stream` continues from it. The old branch stays whole. `client_request_id` makes a retry return
        the same branch."""
        reply = await clients(request).orchestrator.CreateBranch(
            orch_pb2.CreateBranchRequest(
                user_id=str(user),
                session_id=str(session_id),
                from_message_id=body.from_message_id or "",
                client_request_id=body.client_request_id,
            )
        )
        return {"branch_id": reply.branch_id}

    @router.get("/branches")
    async def list_branches(request: Request, session_id: uuid.UUID, user: User) -> dict[str, Any]:
        reply = await clients(request).orchestrator.ListBranches(
            orch_pb2.ListBranchesRequest(user_id=str(user), session_id=str(session_id))
        )
        return {
            "branches": [
                {
                    "branch_id": b.branch_id,
                    "head_message_id": b.head_message_id or None,
                    "forked_from_message_id": b.forked_from_message_id or None,
                    "created_at": b.created_at.ToDatetime().isoformat() + "Z",
                    "active": b.active,
                    "message_count": b.message_count,
                    "preview": b.preview,
                }
                for b in reply.branches
            ]
        }

    @router.post("/branches/{branch_id}/activate")
    async def activate(request: Request, session_id: uuid.UUID, branch_id: uuid.UUID, user: User) -> dict[str, Any]:
        """Make a branch active: the history, affinity, memories and profile follow it."""
        reply = await clients(request).orchestrator.ActivateBranch(
            orch_pb2.ActivateBranchRequest(user_id=str(user), session_id=str(session_id), branch_id=str(branch_id))
        )
        return {"branch_id": reply.branch_id}

    @router.delete("/messages/{message_id}")
    async def delete_message(
        request: Request,
        session_id: uuid.UUID,
        message_id: MessageId,
        user: User,
        dry_run: Annotated[bool, Query()] = False,
    ) -> dict[str, Any]:
        """A surgical delete. With `dry_run=true`, only its impact: the messages that leave the active branch,
        the memories and profile fields whose only sources they are, the affinity vector before and after.
        Without, the same answer, and the delete applied: the text erased everywhere (its place kept)."""
        reply = await clients(request).orchestrator.DeleteMessage(
            orch_pb2.DeleteMessageRequest(
                user_id=str(user), session_id=str(session_id), message_id=message_id, dry_run=dry_run
            )
        )
        return {
            "dry_run": reply.dry_run,
            "erased_message_ids": list(reply.erased_message_ids),
            "leaving_active_branch": list(reply.leaving_active_branch),
            "memories": [
                {"id": m.id, "layer": m.layer, "category": m.category, "content": m.content} for m in reply.memories
            ],
            "profile_fields": list(reply.profile_fields),
            "affinity_before": affinity_state_json(reply.affinity_before),
            "affinity_after": affinity_state_json(reply.affinity_after),
            "unavailable": list(reply.unavailable),
        }

    @router.get("/events")
    async def events(
        request: Request,
        session_id: uuid.UUID,
        user: User,
        cursor: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """The conversation's event log, oldest first; pass `next_cursor` back for the next page."""
        reply = await clients(request).orchestrator.ListEvents(
            orch_pb2.ListEventsRequest(user_id=str(user), session_id=str(session_id), after_seq=cursor, limit=limit)
        )
        return {
            "events": [
                {
                    "seq": e.seq,
                    "id": e.id,
                    "kind": e.kind,
                    "actor": e.actor,
                    "message_id": e.message_id or None,
                    "branch_id": e.branch_id or None,
                    "data": MessageToDict(e.data),
                    "created_at": e.created_at.ToDatetime().isoformat() + "Z",
                }
                for e in reply.events
            ],
            "next_cursor": reply.next_after_seq or None,
        }

    return router
