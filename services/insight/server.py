"""Insight gRPC server (foundation cut: profile rows, idempotent extraction runs).

Field extraction, merge, training level, queries and snapshots land with the insight issue.
"""
from __future__ import annotations

import grpc

from rapport.insight.v1 import insight_pb2 as pb
from rapport.insight.v1 import insight_pb2_grpc as pb_grpc
from services.servicekit.grpc_errors import maps_errors, parse_uuid
from services.servicekit.service import ServiceContext, ServiceParts


class InsightServicer(pb_grpc.InsightServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.pool = ctx.pool

    @maps_errors
    async def GetProfile(self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext) -> pb.GetProfileResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        row = await self.pool.fetchrow("SELECT * FROM insight.profiles WHERE user_id = $1", user_id)
        profile = pb.Profile(user_id=str(user_id))
        if row is not None:
            profile.insights.update({k: v.get("value") for k, v in row["insights"].items()})
            profile.training_level = float(row["training_level"])
            profile.updated_at.FromDatetime(row["updated_at"])
        return pb.GetProfileResponse(profile=profile)

    @maps_errors
    async def ExtractTurn(self, request: pb.ExtractTurnRequest, context: grpc.aio.ServicerContext) -> pb.ExtractTurnResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        inserted = await self.pool.fetchval(
            """INSERT INTO insight.extraction_events (user_id, turn_id, stage, status, payload, model)
               VALUES ($1, $2, 'rules', 'empty', '{}', 'rules') ON CONFLICT DO NOTHING RETURNING id""",
            user_id, request.turn_id)
        return pb.ExtractTurnResponse(applied=inserted is not None)

    @maps_errors
    async def DeleteUserData(self, request: pb.DeleteUserDataRequest, context: grpc.aio.ServicerContext) -> pb.DeleteUserDataResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        result = await self.pool.execute("DELETE FROM insight.profiles WHERE user_id = $1", user_id)
        await self.pool.execute("DELETE FROM insight.extraction_events WHERE user_id = $1", user_id)
        return pb.DeleteUserDataResponse(deleted=int(result.split()[-1]))


async def build(ctx: ServiceContext) -> ServiceParts:
    servicer = InsightServicer(ctx)
    return ServiceParts(
        register=[lambda server: pb_grpc.add_InsightServiceServicer_to_server(servicer, server)],
        service_names=[pb.DESCRIPTOR.services_by_name["InsightService"].full_name],
    )
