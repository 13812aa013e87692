"""`rapport chat`: a terminal client that streams a conversation through the gateway (REST + SSE).

The screen holds only the conversation: `you> ` prompts and `<persona>> ` replies, each reply's
text written as its deltas arrive, a ghost shown as "(seen, no reply)", and a note under a reply
naming the model that answered whenever it changes (the offline responder said to be one).
Library logs go to stderr and `rapport chat` keeps them at WARNING unless `--verbose`.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import httpx

from services.offline_llm.responder import OFFLINE_MODEL_ID

GHOST_TEXT = "(seen, no reply)"
CUT_TEXT = " [cut; continuing with another model] "
OFFLINE_NOTE = "the offline responder, not a language model: set OPENROUTER_API_KEY or LLM_BASE_URL for real replies"


class ChatError(Exception):
    pass


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
            raise ChatError(f"{response.status_code} {body.get('code')}: {body.get('user_message') or body}")
        except ValueError:
            raise ChatError(f"{response.status_code}: {response.text[:200]}") from None
    return response.json()


def stream_frames(client: httpx.Client, session_id: str, content: str) -> Iterator[dict[str, Any]]:
    """The SSE frames of one turn, each yielded as soon as its line arrives."""
    payload = {"content": content, "client_msg_id": "cli-" + uuid.uuid4().hex[:28]}
    with client.stream("POST", f"/comp/chat/{session_id}/message/stream", json=payload) as response:
        if response.status_code >= 400:
            response.read()
            _check(response)
        for line in response.iter_lines():
            if line.startswith("data:"):
                yield json.loads(line[5:].strip())


def model_note(models: list[str]) -> str:
    """ "(answered by …)" for the models of one reply, in order (more than one when a cut reply was
    continued by a fallback)."""
    named = [f"{OFFLINE_MODEL_ID}, {OFFLINE_NOTE}" if model == OFFLINE_MODEL_ID else model for model in models]
    return f"(answered by {', then '.join(named)})"


class ReplyWriter:
    """Writes the replies of one conversation to `out` as their frames arrive."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.models_shown: list[str] = []

    def write_reply(self, persona_name: str, frames: Iterable[dict[str, Any]]) -> None:
        """`<name>> ` then each delta at once; a ghost (the persona chose not to answer, or the model
        returned nothing) as GHOST_TEXT; then the notes: the model when it changed, services that
        were unavailable, an error."""
        self._write(f"{persona_name}> ")
        models: list[str] = []
        notes: list[str] = []
        said_something = ghost = False
        for frame in frames:
            kind = frame["type"]
            if kind == "meta":
                ghost = frame.get("action_type") == "ghost"
                if frame.get("model") and frame["model"] not in models:
                    models.append(frame["model"])
            elif kind == "delta":
                self._write(frame["content"])
                said_something = said_something or bool(frame["content"].strip())
            elif kind == "done" and frame.get("truncated"):
                self._write(CUT_TEXT)
            elif kind == "done":
                ghost = ghost or bool(frame.get("ghost_fallback")) or not said_something
            elif kind == "final" and frame.get("degraded"):
                notes.append(f"(without: {', '.join(frame['degraded'])})")
            elif kind == "error":
                notes.append(f"error: {frame.get('user_message') or frame.get('message')}")
        if ghost and not said_something:
            self._write(GHOST_TEXT)
        self._write("\n")
        if models and models != self.models_shown[-1:]:
            notes.insert(0, model_note(models))
            self.models_shown = models
        for note in notes:
            self._write(f"  {note}\n")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def run_chat(
    base_url: str,
    token: str,
    persona: str | None,
    *,
    new: bool = False,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=httpx.Timeout(30, read=330)) as client:
        personas = _check(client.get("/comp/personas"))
        if not personas:
            raise ChatError("no personas: run `rapport seed-personas DIR`")
        chosen = next(
            (
                p
                for p in personas
                if persona is None or p["name"].casefold() == persona.casefold() or p["id"] == persona
            ),
            None,
        )
        if chosen is None:
            raise ChatError(f"no persona {persona!r}; choose one of: {', '.join(p['name'] for p in personas)}")
        chat = _check(client.post("/comp/chat/start", json={"persona_id": chosen["id"], "force_new": new}))
        name = chat["persona_name"]
        print(
            f"{'New chat' if chat['is_new'] else 'Resuming your chat'} with {name}. Empty line or Ctrl-D to quit.",
            file=out,
            flush=True,
        )
        writer = ReplyWriter(out)
        try:
            while True:
                out.write("you> ")
                out.flush()
                line = stdin.readline()
                if not line or not line.strip():
                    return 0
                writer.write_reply(name, stream_frames(client, chat["session_id"], line.strip()))
        except KeyboardInterrupt:  # Ctrl-C quits too (a reply being written still finishes on the server)
            out.write("\n")
            return 0
