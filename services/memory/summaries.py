"""Rolling session summaries (spec: memory.md, Rolling summary).

Every `SUMMARIZE_AFTER_MESSAGES` messages, the part of a session older than the prompt's history
window is summarized — by the `summarization` LLM task when configured (previous summary + the
new messages), else `domain.extractive_summary` — and stored with its message range. Runs on the
write path (IngestTurn, post-process), never on the reply path; a failed LLM call falls back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import asyncpg
import openai

from services.memory import domain, store
from services.servicekit.config import Env
from services.servicekit.tasks import TaskLlm

log = logging.getLogger("rapport.memory.summaries")

SUMMARY_MAX_CHARS = 1200
SUMMARY_INSTRUCTIONS = (
    "You keep the running summary of a conversation between a user and a companion persona. "
    "Rewrite the summary so it covers the previous summary and the new messages: concrete facts the user "
    "shared, events, feelings, plans and questions still open. Third person ('User …', 'the persona …'), "
    "at most 150 words, plain text, no preamble."
)


def history_window(env: Env) -> int:
    """MEMORY_HISTORY_WINDOW: the messages the prompt carries verbatim (the orchestrator's history)."""
    return env.int("MEMORY_HISTORY_WINDOW", 20, 0, 10_000)


@dataclass(frozen=True)
class SummarySettings:
    summarize_after: int  # SUMMARIZE_AFTER_MESSAGES
    history_window: int  # MEMORY_HISTORY_WINDOW: messages the prompt already carries verbatim
    llm_timeout: float

    @classmethod
    def from_env(cls, env: Env) -> SummarySettings:
        return cls(
            summarize_after=env.int("SUMMARIZE_AFTER_MESSAGES", 20, 1, 10_000),
            history_window=history_window(env),
            llm_timeout=env.float("MEMORY_LLM_TIMEOUT_SECS", 15.0, 0.1, 300.0),
        )


def _transcript_text(messages: list[tuple[str, str, str]]) -> str:
    labels = {"user": "User", "assistant": "Persona"}
    return "\n".join(f"{labels[role]}: {content}" for _, role, content in messages)


class SessionSummarizer:
    def __init__(self, pool: asyncpg.Pool, settings: SummarySettings, llm: TaskLlm | None) -> None:
        self.pool = pool
        self.settings = settings
        self.llm = llm

    async def summarize_if_due(self, session_id: uuid.UUID) -> bool:
        """Summarize the session's older part when a new block of messages is due; True if stored."""
        state = await store.summary_state(self.pool, session_id)
        if state is None:
            return False
        window = domain.summary_window(
            state["message_count"],
            summarize_after=self.settings.summarize_after,
            history_window=self.settings.history_window,
            summarized_until=state["summarized_until"],
        )
        if window is None:
            return False
        messages = (await store.session_transcript(self.pool, session_id))[: window.stop]
        previous = await store.latest_summary(self.pool, state["user_id"], session_id)
        content, method = await self._summarize(messages, previous, state["summarized_until"])
        if not content.strip():
            return False
        return await store.save_summary(
            self.pool,
            session_id=session_id,
            user_id=state["user_id"],
            first_index=0,
            last_index=len(messages) - 1,
            content=content,
            method=method,
        )

    async def _summarize(
        self, messages: list[tuple[str, str, str]], previous: asyncpg.Record | None, summarized_until: int
    ) -> tuple[str, str]:
        if self.llm is not None:
            new_part = messages[summarized_until if previous is not None else 0 :]
            prompt = (
                f"Previous summary:\n{previous['content'] if previous is not None else '(none)'}\n\n"
                f"New messages:\n{_transcript_text(new_part)}"
            )
            try:
                text, _, _ = await asyncio.wait_for(
                    self.llm.complete(
                        [{"role": "system", "content": SUMMARY_INSTRUCTIONS}, {"role": "user", "content": prompt}]
                    ),
                    self.settings.llm_timeout,
                )
                if text.strip():
                    return text.strip()[: SUMMARY_MAX_CHARS * 2], "llm"
                log.warning("summarization model returned nothing; using the extractive summary")
            except (openai.APIError, TimeoutError) as error:
                log.warning("summarization model failed (%s); using the extractive summary", error)
        pairs = [(role, content) for _, role, content in messages]
        return domain.extractive_summary(pairs, max_chars=SUMMARY_MAX_CHARS), "extractive"
