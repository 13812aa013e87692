"""`rapport chat` through the real gateway: a reply is on screen while the model is still writing it,
and an empty completion shows as "(seen, no reply)"."""
from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from services.chat_client import GHOST_TEXT, run_chat
from services.offline_llm.server import LlmScript, ScriptedResponse, build_llm_app, serve_llm
from tests.stack import Stack, start_stack

DEADLINE = 20.0


@dataclass
class Scripted:
    stack: Stack
    script: LlmScript


@pytest.fixture
async def scripted(database_url: str, spans) -> AsyncIterator[Scripted]:  # type: ignore[no-untyped-def]
    script = LlmScript()
    llm = await serve_llm(build_llm_app("script", script))
    stack = await start_stack(database_url, per_service_env={"orchestrator": {
        "LLM_BASE_URL": llm.base_url, "LLM_API_KEY": "x", "LLM_MODEL": "reef-model"}})
    try:
        yield Scripted(stack, script)
    finally:
        script.release_stalls()
        await stack.stop()
        await llm.stop()


async def until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(poll(), DEADLINE)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_the_first_words_are_on_screen_while_the_model_is_still_writing(scripted: Scripted) -> None:
    scripted.script.add(ScriptedResponse(kind="stall", text="Seadragons hide in the kelp.", after_chunks=2,
                                         stall_mid_stream=True))
    out = io.StringIO()
    chat = asyncio.create_task(asyncio.to_thread(
        run_chat, scripted.stack.url, scripted.stack.token(uuid.uuid4()), "Kai",
        stdin=io.StringIO("Tell me about the reef.\n\n"), out=out))
    await until(lambda: "Kai> Seadragons hide " in out.getvalue(), "the first two words on screen")
    assert "kelp" not in out.getvalue() and not chat.done()  # the model has not written the rest yet
    scripted.script.release_stalls()
    assert await asyncio.wait_for(chat, DEADLINE) == 0
    assert "Kai> Seadragons hide in the kelp.\n  (answered by reef-model)\n" in out.getvalue()


async def test_an_empty_completion_is_seen_no_reply(scripted: Scripted) -> None:
    scripted.script.add(ScriptedResponse(kind="empty"))
    out = io.StringIO()
    code = await asyncio.to_thread(run_chat, scripted.stack.url, scripted.stack.token(uuid.uuid4()), "Kai",
                                   stdin=io.StringIO("Hello?\n\n"), out=out)
    assert code == 0
    assert f"Kai> {GHOST_TEXT}\n" in out.getvalue()
