"""Turn frames: the same on gRPC (SendMessageResponse) and, as JSON, on SSE and in the replay log."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from rapport.orchestrator.v1 import orchestrator_pb2 as pb

FRAME_TYPES = ("meta", "delta", "done", "final", "error")


def meta(message_id: str, action_type: str, model: str = "", continues_from: str = "") -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "meta", "message_id": message_id, "action_type": action_type}
    if model:
        frame["model"] = model
    if continues_from:
        frame["continues_from"] = continues_from
    return frame


def delta(message_id: str, content: str) -> dict[str, Any]:
    return {"type": "delta", "message_id": message_id, "content": content}


def done(
    message_id: str,
    *,
    truncated: bool = False,
    usage: dict[str, Any] | None = None,
    generation_id: str = "",
    ghost_fallback: bool = False,
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "done",
        "message_id": message_id,
        "truncated": truncated,
        "usage": usage or {},
        "generation_id": generation_id,
    }
    if ghost_fallback:
        frame["ghost_fallback"] = True
    return frame


def final(*, prompt_injected: list[str], tier: str, retries: int, degraded: list[str], trace_id: str) -> dict[str, Any]:
    return {
        "type": "final",
        "prompt_injected": prompt_injected,
        "tier": tier,
        "retries": retries,
        "degraded": degraded,
        "trace_id": trace_id,
    }


def error(code: str, message: str, user_message: str, retryable: bool) -> dict[str, Any]:
    return {"type": "error", "code": code, "retryable": retryable, "message": message, "user_message": user_message}


def to_proto(frame: dict[str, Any]) -> pb.SendMessageResponse:
    kind = frame["type"]
    fields = {k: v for k, v in frame.items() if k != "type"}
    if kind == "meta":
        return pb.SendMessageResponse(meta=pb.MetaFrame(**fields))
    if kind == "delta":
        return pb.SendMessageResponse(delta=pb.DeltaFrame(**fields))
    if kind == "done":
        usage = fields.pop("usage", {}) or {}
        msg = pb.DoneFrame(**fields)
        msg.usage.update(usage)
        return pb.SendMessageResponse(done=msg)
    if kind == "final":
        return pb.SendMessageResponse(final=pb.FinalFrame(**fields))
    if kind == "error":
        return pb.SendMessageResponse(error=pb.ErrorFrame(**fields))
    raise ValueError(f"unknown frame type {kind!r}")


def to_dict(response: pb.SendMessageResponse) -> dict[str, Any]:
    """Proto frame → the JSON frame clients see (field names as in the spec)."""
    kind = response.WhichOneof("frame")
    if kind is None:
        raise ValueError("empty frame")
    msg = getattr(response, kind)
    if kind == "meta":
        return meta(msg.message_id, msg.action_type, msg.model, msg.continues_from)
    if kind == "delta":
        return delta(msg.message_id, msg.content)
    if kind == "done":
        usage = MessageToDict(msg.usage) if msg.HasField("usage") else {}
        return done(
            msg.message_id,
            truncated=msg.truncated,
            usage=_ints(usage),
            generation_id=msg.generation_id,
            ghost_fallback=msg.ghost_fallback,
        )
    if kind == "final":
        return final(
            prompt_injected=list(msg.prompt_injected),
            tier=msg.tier,
            retries=msg.retries,
            degraded=list(msg.degraded),
            trace_id=msg.trace_id,
        )
    return error(msg.code, msg.message, msg.user_message, msg.retryable)


def _ints(value: Any) -> Any:
    """Struct stores numbers as doubles; give whole numbers back as ints (token counts)."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
