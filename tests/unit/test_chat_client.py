"""`rapport chat` writes a reply as its frames arrive: deltas at once, a ghost as "(seen, no reply)",
the answering model named when it changes (the offline responder said to be one)."""
from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from services.chat_client import GHOST_TEXT, OFFLINE_NOTE, ReplyWriter
from services.offline_llm.responder import OFFLINE_MODEL_ID


def meta(model: str | None = OFFLINE_MODEL_ID, action: str = "reply") -> dict[str, Any]:
    return {"type": "meta", "message_id": "m1", "action_type": action, "model": model}


def delta(text: str) -> dict[str, Any]:
    return {"type": "delta", "message_id": "m1", "content": text}


def done(**fields: Any) -> dict[str, Any]:
    return {"type": "done", "message_id": "m1", "truncated": False, "usage": {}, **fields}


FINAL = {"type": "final", "degraded": [], "trace_id": "t"}


def reply(*deltas: str, model: str | None = OFFLINE_MODEL_ID) -> list[dict[str, Any]]:
    return [meta(model), *map(delta, deltas), done(), FINAL]


def test_a_reply_names_the_offline_responder_once() -> None:
    out = io.StringIO()
    writer = ReplyWriter(out)
    writer.write_reply("Kai", reply("Hi, ", "tell me more."))
    writer.write_reply("Kai", reply("Go on."))
    assert out.getvalue() == (f"Kai> Hi, tell me more.\n  (answered by {OFFLINE_MODEL_ID}, {OFFLINE_NOTE})\n"
                              "Kai> Go on.\n")
    assert "offline responder" in OFFLINE_NOTE


def test_a_model_change_is_named_and_a_cut_reply_names_both_models() -> None:
    out = io.StringIO()
    writer = ReplyWriter(out)
    writer.write_reply("Elena", reply("Clear skies.", model="openai/gpt-4o"))
    writer.write_reply("Elena", [meta("model-a"), delta("The moon "), done(truncated=True),
                                 meta("model-b"), delta("is up."), done(), FINAL])
    assert out.getvalue() == ("Elena> Clear skies.\n  (answered by openai/gpt-4o)\n"
                              "Elena> The moon  [cut; continuing with another model] is up.\n"
                              "  (answered by model-a, then model-b)\n")


def test_a_ghost_is_seen_no_reply() -> None:
    out = io.StringIO()
    writer = ReplyWriter(out)
    writer.write_reply("Kai", [meta(None, action="ghost"), done(), FINAL])
    writer.write_reply("Kai", [meta(), done(ghost_fallback=True), FINAL])  # the model returned nothing
    assert out.getvalue() == (f"Kai> {GHOST_TEXT}\n"
                              f"Kai> {GHOST_TEXT}\n  (answered by {OFFLINE_MODEL_ID}, {OFFLINE_NOTE})\n")
    assert GHOST_TEXT == "(seen, no reply)"


def test_degraded_services_and_errors_are_notes_under_the_reply() -> None:
    out = io.StringIO()
    writer = ReplyWriter(out)
    writer.write_reply("Kai", [meta(), delta("Hi."), done(), {**FINAL, "degraded": ["memory"]}])
    writer.write_reply("Kai", [meta(), {"type": "error", "code": "timeout", "user_message": "Try again."}])
    assert out.getvalue().splitlines()[2:] == ["  (without: memory)", "Kai> ", "  error: Try again."]


def test_each_delta_is_on_screen_before_the_next_frame_arrives() -> None:
    out = io.StringIO()
    on_screen: list[str] = []

    def frames() -> Iterator[dict[str, Any]]:
        yield meta()
        for word in ("One ", "two ", "three."):
            yield delta(word)
            on_screen.append(out.getvalue())  # runs when the writer asks for the next frame
        yield done()
        yield FINAL

    ReplyWriter(out).write_reply("Kai", frames())
    assert on_screen == ["Kai> One ", "Kai> One two ", "Kai> One two three."]
