"""The turn's frames: one type, `SendMessageResponse`, built once by the orchestrator, sent as is over
gRPC, and rendered once as the JSON clients see on SSE (`to_json`), which is also the form the turn's
frame log is stored in for replay (`from_json` reads it back).

JSON shapes (gateway.md): meta {message_id, action_type, model?, continues_from?, prompt_trimmed?},
delta {message_id, content, tool_calls?}, done {message_id, truncated, usage, generation_id, ghost_fallback?,
finish_reason?}, final {prompt_injected, tier, retries, degraded, trace_id}, error {code, retryable, message,
user_message, param?} — each with `type`. Optional keys appear only when set: `prompt_trimmed` {section:
tokens} (what the prompt budget cut), `tool_calls` [{index, id?, type?, name?, arguments?}] (pieces of the
model's tool calls), `finish_reason` (stop, length, tool_calls), `param` (the request parameter an
`unsupported_parameter` error is about).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from google.protobuf.json_format import MessageToDict

from rapport.orchestrator.v1 import orchestrator_pb2 as pb

Frame: TypeAlias = pb.SendMessageResponse
FRAME_TYPES = ("meta", "delta", "done", "final", "error")


def meta(
    message_id: str,
    action_type: str,
    model: str = "",
    continues_from: str = "",
    prompt_trimmed: Mapping[str, int] | None = None,
) -> Frame:
    trims = [pb.PromptTrim(section=name, tokens=tokens) for name, tokens in (prompt_trimmed or {}).items()]
    return Frame(
        meta=pb.MetaFrame(
            message_id=message_id,
            action_type=action_type,
            model=model,
            continues_from=continues_from,
            prompt_trimmed=trims,
        )
    )


TOOL_CALL_FIELDS = ("index", "id", "type", "name", "arguments")


def delta(message_id: str, content: str, tool_calls: Sequence[Mapping[str, Any]] = ()) -> Frame:
    calls = [pb.ToolCallDelta(**{k: v for k, v in call.items() if k in TOOL_CALL_FIELDS}) for call in tool_calls]
    return Frame(delta=pb.DeltaFrame(message_id=message_id, content=content, tool_calls=calls))


def done(
    message_id: str,
    *,
    truncated: bool = False,
    usage: Mapping[str, Any] | None = None,
    generation_id: str = "",
    ghost_fallback: bool = False,
    finish_reason: str = "",
) -> Frame:
    frame = pb.DoneFrame(
        message_id=message_id,
        truncated=truncated,
        generation_id=generation_id,
        ghost_fallback=ghost_fallback,
        finish_reason=finish_reason,
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


def error(code: str, message: str, user_message: str, retryable: bool, param: str = "") -> Frame:
    return Frame(
        error=pb.ErrorFrame(code=code, retryable=retryable, message=message, user_message=user_message, param=param)
    )


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
        if m.prompt_trimmed:
            out["prompt_trimmed"] = {trim.section: trim.tokens for trim in m.prompt_trimmed}
        return out
    if which == "delta":
        out = {"type": "delta", "message_id": frame.delta.message_id, "content": frame.delta.content}
        if frame.delta.tool_calls:
            out["tool_calls"] = [_tool_call_json(call) for call in frame.delta.tool_calls]
        return out
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
        if d.finish_reason:
            out["finish_reason"] = d.finish_reason
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
    out = {
        "type": "error",
        "code": e.code,
        "retryable": e.retryable,
        "message": e.message,
        "user_message": e.user_message,
    }
    if e.param:
        out["param"] = e.param
    return out


def _tool_call_json(call: pb.ToolCallDelta) -> dict[str, Any]:
    """A tool-call piece: its index, and of the other fields those it carries."""
    out: dict[str, Any] = {"index": call.index}
    for name in TOOL_CALL_FIELDS[1:]:
        if getattr(call, name):
            out[name] = getattr(call, name)
    return out


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
        return error(
            fields["code"], fields["message"], fields["user_message"], fields["retryable"], fields.get("param", "")
        )
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
