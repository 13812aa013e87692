"""`rapport chat`: the terminal client streams a conversation through the real gateway."""
from __future__ import annotations

import asyncio
import io
import uuid

import pytest

from services.chat_client import ChatError, run_chat
from tests.stack import Stack


async def test_terminal_chat_streams_replies_and_resumes(stack: Stack, db) -> None:
    user = uuid.uuid4()
    out = io.StringIO()
    code = await asyncio.to_thread(run_chat, stack.url, stack.token(user), "kai",
                                   stdin=io.StringIO("Hi Kai, I live in Sydney too!\n\n"), out=out)
    assert code == 0
    transcript = out.getvalue()
    assert transcript.startswith("New chat with Kai.")
    stored = await db.fetchval("SELECT content FROM chat.messages WHERE role = 'assistant'")
    assert f"Kai> {stored}" in transcript
    again = io.StringIO()
    await asyncio.to_thread(run_chat, stack.url, stack.token(user), "Kai", stdin=io.StringIO(""), out=again)
    assert again.getvalue().startswith("Resuming your chat with Kai.")


async def test_terminal_chat_names_the_personas_when_one_is_unknown(stack: Stack) -> None:
    with pytest.raises(ChatError, match="Elena"):
        await asyncio.to_thread(run_chat, stack.url, stack.token(uuid.uuid4()), "nobody", stdin=io.StringIO(""),
                                out=io.StringIO())
