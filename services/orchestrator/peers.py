"""Channels and stubs to the three domain services, plus the post-process call table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict, ParseDict

from rapport.affinity.v1 import affinity_pb2, affinity_pb2_grpc
from rapport.insight.v1 import insight_pb2, insight_pb2_grpc
from rapport.memory.v1 import memory_pb2, memory_pb2_grpc
from services.servicekit.config import Env, peer_address
from services.servicekit.grpc_runtime import open_channel


@dataclass
class Peers:
    affinity: affinity_pb2_grpc.AffinityServiceStub
    memory: memory_pb2_grpc.MemoryServiceStub
    insight: insight_pb2_grpc.InsightServiceStub
    channels: list[grpc.aio.Channel]

    @classmethod
    def connect(cls, env: Env) -> Peers:
        channels = {name: open_channel(peer_address(name, env)) for name in ("affinity", "memory", "insight")}
        return cls(
            affinity=affinity_pb2_grpc.AffinityServiceStub(channels["affinity"]),
            memory=memory_pb2_grpc.MemoryServiceStub(channels["memory"]),
            insight=insight_pb2_grpc.InsightServiceStub(channels["insight"]),
            channels=list(channels.values()),
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    # Post-process: target name → (RPC, request type). Payloads are the request as a dict.
    def post_process_call(self, target: str) -> tuple[Any, type]:
        table = {
            "affinity": (self.affinity.ApplyTurn, affinity_pb2.ApplyTurnRequest),
            "memory": (self.memory.IngestTurn, memory_pb2.IngestTurnRequest),
            "insight": (self.insight.ExtractTurn, insight_pb2.ExtractTurnRequest),
        }
        return table[target]


def request_to_payload(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def payload_to_request(payload: dict[str, Any], request_type: type) -> Any:
    return ParseDict(payload, request_type(), ignore_unknown_fields=True)
