"""Affinity gRPC server (foundation cut: vector rows, idempotent turn events, ghost bookkeeping).

The complete domain (EMA, evaluators, decay, ghost rules) lands with the affinity issue.
"""
from __future__ import annotations

import grpc

from rapport.affinity.v1 import affinity_pb2 as pb
from rapport.affinity.v1 import affinity_pb2_grpc as pb_grpc
from services.servicekit.grpc_errors import NotFound, PermissionDenied, maps_errors, parse_uuid
from services.servicekit.service import ServiceContext, ServiceParts

START = {"warmth": 0.3, "trust": 0.2, "intimacy": 0.0, "intrigue": 0.5, "patience": 0.5, "tension": 0.1}
AXES = tuple(START)


def _state(row) -> pb.AffinityState:  # type: ignore[no-untyped-def]
    state = pb.AffinityState(
        session_id=str(row["session_id"]),
        vector=pb.AffinityVector(**{axis: row[axis] for axis in AXES}),
        ghost_streak=row["ghost_streak"], total_ghosts=row["total_ghosts"], is_demo=row["is_demo"],
        label="stranger",
    )
    state.updated_at.FromDatetime(row["updated_at"])
    if row["last_ghost_at"]:
        state.last_ghost_at.FromDatetime(row["last_ghost_at"])
    return state


class AffinityServicer(pb_grpc.AffinityServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.pool = ctx.pool

    async def _owned_row(self, user_id: str, session_id: str):  # type: ignore[no-untyped-def]
        row = await self.pool.fetchrow("SELECT * FROM affinity.vectors WHERE session_id = $1",
                                       parse_uuid(session_id, "session_id"))
        if row is None:
            raise NotFound("no affinity state for this session")
        if str(row["user_id"]) != str(parse_uuid(user_id, "user_id")):
            raise PermissionDenied("session belongs to another user")
        return row

    @maps_errors
    async def OpenSession(self, request: pb.OpenSessionRequest, context: grpc.aio.ServicerContext) -> pb.OpenSessionResponse:
        row = await self.pool.fetchrow(
            f"""INSERT INTO affinity.vectors (session_id, user_id, instance_id, is_demo, {", ".join(AXES)})
                VALUES ($1, $2, $3, $4, {", ".join(f"${i}" for i in range(5, 11))})
                ON CONFLICT (session_id) DO UPDATE SET session_id = EXCLUDED.session_id RETURNING *""",
            parse_uuid(request.session_id, "session_id"), parse_uuid(request.user_id, "user_id"),
            parse_uuid(request.instance_id, "instance_id"), request.is_demo, *START.values(),
        )
        return pb.OpenSessionResponse(state=_state(row), continued=False)

    @maps_errors
    async def GetState(self, request: pb.GetStateRequest, context: grpc.aio.ServicerContext) -> pb.GetStateResponse:
        row = await self._owned_row(request.user_id, request.session_id)
        return pb.GetStateResponse(state=_state(row))

    @maps_errors
    async def DecideGhost(self, request: pb.DecideGhostRequest, context: grpc.aio.ServicerContext) -> pb.DecideGhostResponse:
        row = await self._owned_row(request.user_id, request.session_id)
        return pb.DecideGhostResponse(ghost=False, rule="too_few_messages", reason="foundation: never ghosts",
                                      state=_state(row))

    @maps_errors
    async def RecordReply(self, request: pb.RecordReplyRequest, context: grpc.aio.ServicerContext) -> pb.RecordReplyResponse:
        await self._owned_row(request.user_id, request.session_id)
        row = await self.pool.fetchrow(
            "UPDATE affinity.vectors SET ghost_streak = 0 WHERE session_id = $1 RETURNING *",
            parse_uuid(request.session_id, "session_id"))
        return pb.RecordReplyResponse(state=_state(row))

    @maps_errors
    async def ApplyTurn(self, request: pb.ApplyTurnRequest, context: grpc.aio.ServicerContext) -> pb.ApplyTurnResponse:
        session_id = parse_uuid(request.session_id, "session_id")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM affinity.vectors WHERE session_id = $1 FOR UPDATE", session_id)
            if row is None:
                raise NotFound("no affinity state for this session")
            snapshot = {axis: row[axis] for axis in AXES}
            inserted = await conn.fetchval(
                """INSERT INTO affinity.events (session_id, user_id, kind, turn_id, reason, skipped, state_before, state_after)
                   VALUES ($1, $2, 'message', $3, 'foundation: no evaluator yet', true, $4, $4)
                   ON CONFLICT (session_id, kind, turn_id) WHERE turn_id IS NOT NULL DO NOTHING RETURNING id""",
                session_id, row["user_id"], request.turn_id, snapshot)
        return pb.ApplyTurnResponse(state=_state(row), applied=inserted is not None)

    @maps_errors
    async def DeleteUserData(self, request: pb.DeleteUserDataRequest, context: grpc.aio.ServicerContext) -> pb.DeleteUserDataResponse:
        result = await self.pool.execute("DELETE FROM affinity.vectors WHERE user_id = $1",
                                         parse_uuid(request.user_id, "user_id"))
        return pb.DeleteUserDataResponse(deleted=int(result.split()[-1]))


async def build(ctx: ServiceContext) -> ServiceParts:
    servicer = AffinityServicer(ctx)
    return ServiceParts(
        register=[lambda server: pb_grpc.add_AffinityServiceServicer_to_server(servicer, server)],
        service_names=[pb.DESCRIPTOR.services_by_name["AffinityService"].full_name],
    )
