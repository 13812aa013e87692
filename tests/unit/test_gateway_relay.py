"""The gateway's relay of a turn's frames to SSE: deltas that queued while the client was slow go out as one,
and nothing ever waits for a later frame (gates, not sleeps, decide what has arrived)."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from gateway.deps import frame_events
from services.contracts import frames


class GatedCall:
    """A stand-in for the gRPC stream: `read()` returns the next frame once its gate is open."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.gates = [asyncio.Event() for _ in items]
        self.handed = 0
        self.all_read = asyncio.Event()
        self.cancelled = False

    def open(self, upto: int) -> None:
        for gate in self.gates[:upto]:
            gate.set()

    async def read(self) -> Any:
        if self.handed == len(self.items):
            self.all_read.set()
            return grpc.aio.EOF
        await self.gates[self.handed].wait()
        self.handed += 1
        return self.items[self.handed - 1]

    def cancel(self) -> None:
        self.cancelled = True


def data(event: dict[str, str]) -> dict[str, Any]:
    return json.loads(event["data"])


async def test_deltas_queued_while_the_client_was_slow_go_out_as_one() -> None:
    items = [frames.delta("m1", piece) for piece in ("Hel", "lo ", "the", "re")] + [frames.done("m1")]
    call = GatedCall(items)
    events = frame_events(frames.meta("m1", "reply", "model"), call, lambda item: item)
    assert data(await anext(events))["type"] == "meta"
    call.open(len(items))
    await asyncio.wait_for(call.all_read.wait(), 5)  # the slow client comes back after everything arrived
    merged = data(await anext(events))
    assert merged == {"type": "delta", "message_id": "m1", "content": "Hello there"}
    assert data(await anext(events))["type"] == "done"
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    assert call.cancelled


async def test_the_first_delta_never_waits_for_the_next() -> None:
    items = [frames.delta("m1", "Hi"), frames.delta("m1", " you"), frames.done("m1")]
    call = GatedCall(items)
    events = frame_events(frames.meta("m1", "reply"), call, lambda item: item)
    await anext(events)
    call.open(1)  # only the first delta has come from the LLM
    assert data(await asyncio.wait_for(anext(events), 5)) == {"type": "delta", "message_id": "m1", "content": "Hi"}
    call.open(3)
    assert data(await asyncio.wait_for(anext(events), 5))["content"] == " you"
    assert data(await asyncio.wait_for(anext(events), 5))["type"] == "done"
    await events.aclose()


async def test_deltas_of_different_messages_are_never_merged() -> None:
    items = [frames.delta("m1", "a"), frames.done("m1", truncated=True), frames.meta("m2", "reply"),
             frames.delta("m2", "b"), frames.delta("m2", "c")]
    call = GatedCall(items)
    events = frame_events(frames.meta("m1", "reply"), call, lambda item: item)
    await anext(events)
    call.open(len(items))
    await asyncio.wait_for(call.all_read.wait(), 5)
    rest = [data(event) async for event in events]
    assert [(f["type"], f.get("content")) for f in rest] == [
        ("delta", "a"), ("done", None), ("meta", None), ("delta", "bc")]
