"""The orchestrator's peers — affinity, memory, insight — and the policy of every call it makes to them.

| policy         | timeout | when it fails                                                                    |
|----------------|---------|----------------------------------------------------------------------------------|
| `READ`         | 2 s     | the turn goes on without the answer and lists the peer in `final.degraded`      |
| `MUST_SUCCEED` | 5 s     | the error reaches the caller: the turn fails explicitly (e.g. a ghost unrecorded) |
| `MANAGE`       | 10–60 s | the error reaches the caller (sessions, gifts, export, delete)                   |
| `POST_PROCESS` | 60 s    | the outbox retries the job with backoff                                          |

Writes after the reply, and the state that follows a change of branch, never happen here directly:
they are outbox jobs (`outbox_call`).
Every call's deadline is also capped by the time left on the call being served (servicekit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from rapport.affinity.v1 import affinity_pb2, affinity_pb2_grpc
from rapport.insight.v1 import insight_pb2, insight_pb2_grpc
from rapport.memory.v1 import memory_pb2, memory_pb2_grpc
from services.servicekit.config import Env
from services.servicekit.grpc_runtime import call_timeout, open_peer_channel
from services.servicekit.telemetry import meter

log = logging.getLogger("rapport.peers")

R = TypeVar("R")


@dataclass(frozen=True)
class CallPolicy:
    name: str
    timeout: float
    degrade: bool = False  # True: a failure is reported as degradation, not raised
    wait_for_ready: bool = False  # True: wait (within the timeout) for a peer that is reconnecting


READ = CallPolicy("read", 2.0, degrade=True)  # a slow memory/insight must not hold the reply hostage
MUST_SUCCEED = CallPolicy("must_succeed", 5.0)
MANAGE = CallPolicy("manage", 10.0)
MANAGE_BULK = CallPolicy("manage_bulk", 60.0)
POST_PROCESS = CallPolicy("post_process", 60.0)  # LLM-backed extraction may take a while

READ_SECONDS = meter("rapport.orchestrator").create_histogram(
    "rapport.turn.read.duration", unit="s", description="affinity / memory recall / insight reads"
)


@dataclass
class ReadReport:
    """What the turn's reads left behind: peers that did not answer, and how long each read took."""

    degraded: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


class Peers:
    def __init__(self, channels: dict[str, grpc.aio.Channel]) -> None:
        self.channels = channels
        self.affinity = affinity_pb2_grpc.AffinityServiceStub(channels["affinity"])
        self.memory = memory_pb2_grpc.MemoryServiceStub(channels["memory"])
        self.insight = insight_pb2_grpc.InsightServiceStub(channels["insight"])

    @classmethod
    def connect(cls, env: Env) -> Peers:
        return cls({name: open_peer_channel(name, env) for name in ("affinity", "memory", "insight")})

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()

    # -- the one way to call --------------------------------------------------------------------

    @staticmethod
    async def _call(rpc: Callable[..., Awaitable[R]], request: Message, policy: CallPolicy) -> R:
        return await rpc(request, timeout=call_timeout(policy.timeout), wait_for_ready=policy.wait_for_ready)

    async def _read(
        self, peer: str, label: str, rpc: Callable[..., Awaitable[R]], request: Message, report: ReadReport
    ) -> R | None:
        """A READ: the answer, or None with the peer reported degraded (INVALID_ARGUMENT is the caller's error)."""
        started = time.monotonic()
        try:
            return await self._call(rpc, request, READ)
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise
            log.warning("%s unavailable for this turn: %s", peer, _describe(error))
            if peer not in report.degraded:
                report.degraded.append(peer)
            return None
        finally:
            elapsed = time.monotonic() - started
            report.timings_ms[label] = round(elapsed * 1000, 2)
            READ_SECONDS.record(elapsed, {"read": label})

    # -- the turn's reads (READ) ----------------------------------------------------------------

    async def turn_state(
        self, request: affinity_pb2.ReadTurnStateRequest, report: ReadReport
    ) -> affinity_pb2.ReadTurnStateResponse | None:
        return await self._read("affinity", "affinity", self.affinity.ReadTurnState, request, report)

    async def recall(self, request: memory_pb2.RecallRequest, report: ReadReport) -> memory_pb2.RecallResponse | None:
        return await self._read("memory", "memory_recall", self.memory.Recall, request, report)

    async def profile(
        self, request: insight_pb2.GetProfileRequest, report: ReadReport
    ) -> insight_pb2.GetProfileResponse | None:
        return await self._read("insight", "insight_profile", self.insight.GetProfile, request, report)

    # -- writes on the turn path that must succeed (MUST_SUCCEED) ---------------------------------

    async def record_ghost(self, request: affinity_pb2.RecordGhostRequest) -> affinity_pb2.RecordGhostResponse:
        return await self._call(self.affinity.RecordGhost, request, MUST_SUCCEED)

    async def open_session(self, request: affinity_pb2.OpenSessionRequest) -> affinity_pb2.OpenSessionResponse:
        return await self._call(self.affinity.OpenSession, request, MUST_SUCCEED)

    # -- management (MANAGE): errors reach the caller ----------------------------------------------

    async def apply_gift(self, request: affinity_pb2.ApplyGiftRequest) -> affinity_pb2.ApplyGiftResponse:
        return await self._call(self.affinity.ApplyGift, request, MUST_SUCCEED)

    async def list_gifts(self, request: affinity_pb2.ListGiftsRequest) -> affinity_pb2.ListGiftsResponse:
        return await self._call(self.affinity.ListGifts, request, MUST_SUCCEED)

    async def list_affinity_events(self, request: affinity_pb2.ListEventsRequest) -> affinity_pb2.ListEventsResponse:
        return await self._call(self.affinity.ListEvents, request, MANAGE)

    async def full_profile(self, request: insight_pb2.GetProfileRequest) -> insight_pb2.GetProfileResponse:
        return await self._call(self.insight.GetProfile, request, MANAGE)

    async def list_snapshots(self, request: insight_pb2.ListSnapshotsRequest) -> insight_pb2.ListSnapshotsResponse:
        return await self._call(self.insight.ListSnapshots, request, MANAGE)

    def export_memories(self, request: memory_pb2.ExportMemoriesRequest) -> AsyncIterator[Any]:
        return self.memory.ExportMemories(request, timeout=call_timeout(MANAGE_BULK.timeout))  # type: ignore[no-any-return]

    async def delete_user_data(self, user_id: str) -> dict[str, int]:
        """Erase the user in affinity, memory and insight → rows deleted per service."""
        affinity = await self._call(
            self.affinity.DeleteUserData, affinity_pb2.DeleteUserDataRequest(user_id=user_id), MANAGE_BULK
        )
        memory = await self._call(
            self.memory.DeleteUserData, memory_pb2.DeleteUserDataRequest(user_id=user_id), MANAGE_BULK
        )
        insight = await self._call(
            self.insight.DeleteUserData, insight_pb2.DeleteUserDataRequest(user_id=user_id), MANAGE_BULK
        )
        return {"affinity": affinity.deleted, "memory": memory.deleted, "insight": insight.deleted}

    # -- outbox deliveries (POST_PROCESS): after the reply, and when the active branch changes ----------

    def outbox_call(self, target: str, call: str) -> tuple[Callable[[Message], Awaitable[Any]], type[Message]]:
        """The peer RPC an outbox job of (`target`, `call`) is delivered to, and the job's request type."""
        table: dict[tuple[str, str], tuple[Callable[..., Awaitable[Any]], type[Message]]] = {
            ("affinity", "post_process"): (self.affinity.ApplyTurn, affinity_pb2.ApplyTurnRequest),
            ("memory", "post_process"): (self.memory.IngestTurn, memory_pb2.IngestTurnRequest),
            ("insight", "post_process"): (self.insight.ExtractTurn, insight_pb2.ExtractTurnRequest),
            ("affinity", "project_branch"): (self.affinity.ProjectBranch, affinity_pb2.ProjectBranchRequest),
            ("memory", "hide_messages"): (self.memory.SetHiddenMessages, memory_pb2.SetHiddenMessagesRequest),
            ("insight", "hide_messages"): (self.insight.SetHiddenMessages, insight_pb2.SetHiddenMessagesRequest),
            ("memory", "erase_messages"): (self.memory.EraseMessages, memory_pb2.EraseMessagesRequest),
            ("insight", "erase_messages"): (self.insight.EraseMessages, insight_pb2.EraseMessagesRequest),
        }
        rpc, request_type = table[(target, call)]

        async def deliver(request: Message) -> Any:
            return await self._call(rpc, request, POST_PROCESS)

        return deliver, request_type

    # -- previews (MANAGE): what a surgical delete would change -------------------------------------------

    async def preview_memory_erase(self, request: memory_pb2.EraseMessagesRequest) -> memory_pb2.EraseMessagesResponse:
        return await self._call(self.memory.EraseMessages, request, MANAGE)

    async def preview_insight_erase(
        self, request: insight_pb2.EraseMessagesRequest
    ) -> insight_pb2.EraseMessagesResponse:
        return await self._call(self.insight.EraseMessages, request, MANAGE)

    async def preview_projection(
        self, request: affinity_pb2.ProjectBranchRequest
    ) -> affinity_pb2.ProjectBranchResponse:
        return await self._call(self.affinity.ProjectBranch, request, MANAGE)


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"
