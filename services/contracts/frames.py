"""The turn's frames: one type, `SendMessageResponse`, built once by the orchestrator, sent as is over
gRPC, and rendered once as the JSON clients see on SSE (`to_json`), which is also the form the turn's
frame log is stored in for replay (`from_json` reads it back).

JSON shapes (gateway.md): meta {message_id, action_type, model?, continues_from?}, delta {message_id,
content}, done {message_id, truncated, usage, generation_id, ghost_fallback?}, final {prompt_injected,
tier, retries, degraded, trace_id}, error {code, retryable, message, user_message} — each with `type`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from google.protobuf.json_format import MessageToDict

from rapport.orchestrator.v1 import orchestrator_pb2 as pb

Frame: TypeAlias = pb.SendMessageResponse
FRAME_TYPES = ("meta", "delta", "done", "final", "error")


def meta(message_id: str, action_type: str, model: str = "", continues_from: str = "") -> Frame:
    return Frame(
        meta=pb.MetaFrame(message_id=message_id, action_type=action_type, model=model, continues_from=continues_from)
    )


def delta(message_id: str, content: str) -> Frame:
    return Frame(delta=pb.DeltaFrame(message_id=message_id, content=content))


def done(
    message_id: str,
    *,
    truncated: bool = False,
    usage: Mapping[str, Any] | None = None,
    generation_id: str = "",
    ghost_fallback: bool = False,
) -> Frame:
    frame = pb.DoneFrame(
        message_id=message_id, truncated=truncated, generation_id=generation_id, ghost_fallback=ghost_fallback
    )
    frame.usage.update(dict(usage or {}))
    return Frame(done=frame)


def final(*, prompt_injected: Sequence[str], tier: str, retries: int, degraded: Sequence[str], trace_id: str) -> Frame:
    return Frame(
        final=pb.FinalFrame(
            prompt_injected=list(prompt_injected),
            tier=tier,
            retries=retries,
            degraded=list(degraded),
            trace_id=trace_id,
        )
    )


def error(code: str, message: str, user_message: str, retryable: bool) -> Frame:
    return Frame(error=pb.ErrorFrame(code=code, retryable=retryable, message=message, user_message=user_message))


def kind(frame: Frame) -> str:
    """meta, delta, done, final or error."""
    which = frame.WhichOneof("frame")
    if which is None:
        raise ValueError("empty frame")
    return which


def to_json(frame: Frame) -> dict[str, Any]:
    """The JSON frame clients see (field names as in the spec)."""
    which = kind(frame)
    if which == "meta":
        m = frame.meta
        out: dict[str, Any] = {"type": "meta", "message_id": m.message_id, "action_type": m.action_type}
        if m.model:
            out["model"] = m.model
        if m.continues_from:
            out["continues_from"] = m.continues_from
        return out
    if which == "delta":
        return {"type": "delta", "message_id": frame.delta.message_id, "content": frame.delta.content}
    if which == "done":
        d = frame.done
        out = {
            "type": "done",
            "message_id": d.message_id,
            "truncated": d.truncated,
            "usage": _ints(MessageToDict(d.usage)) if d.HasField("usage") else {},
            "generation_id": d.generation_id,
        }
        if d.ghost_fallback:
            out["ghost_fallback"] = True
        return out
    if which == "final":
        f = frame.final
        return {
            "type": "final",
            "prompt_injected": list(f.prompt_injected),
            "tier": f.tier,
            "retries": f.retries,
            "degraded": list(f.degraded),
            "trace_id": f.trace_id,
        }
    e = frame.error
    return {
        "type": "error",
        "code": e.code,
        "retryable": e.retryable,
        "message": e.message,
        "user_message": e.user_message,
    }


def from_json(value: Mapping[str, Any]) -> Frame:
    """A stored JSON frame back as the frame type (replay)."""
    which = value["type"]
    fields = {k: v for k, v in value.items() if k != "type"}
    if which == "meta":
        return meta(**fields)
    if which == "delta":
        return delta(**fields)
    if which == "done":
        return done(**fields)
    if which == "final":
        return final(**fields)
    if which == "error":
        return error(fields["code"], fields["message"], fields["user_message"], fields["retryable"])
    raise ValueError(f"unknown frame type {which!r}")


def _ints(value: Any) -> Any:
    """Struct stores numbers as doubles; give whole numbers back as ints (token counts)."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
