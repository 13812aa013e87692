"""`rapport chat`: a terminal client that streams a conversation through the gateway (REST + SSE)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from typing import Any, TextIO

import httpx


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
    payload = {"content": content, "client_msg_id": "cli-" + uuid.uuid4().hex[:28]}
    with client.stream("POST", f"/comp/chat/{session_id}/message/stream", json=payload) as response:
        if response.status_code >= 400:
            response.read()
            _check(response)
        for line in response.iter_lines():
            if line.startswith("data:"):
                yield json.loads(line[5:].strip())


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
        while True:
            out.write("you> ")
            out.flush()
            line = stdin.readline()
            if not line or not line.strip():
                return 0
            out.write(f"{name}> ")
            for frame in stream_frames(client, chat["session_id"], line.strip()):
                kind = frame["type"]
                if kind == "delta":
                    out.write(frame["content"])
                    out.flush()
                elif kind == "meta" and frame["action_type"] == "ghost":
                    out.write("… (no reply)")
                elif kind == "done" and frame.get("truncated"):
                    out.write(" [cut; continuing with another model] ")
                elif kind == "final" and frame["degraded"]:
                    out.write(f"\n  (without: {', '.join(frame['degraded'])})")
                elif kind == "error":
                    out.write(f"\n  error: {frame['user_message']}")
            out.write("\n")
            out.flush()
