"""Every SQL statement of the orchestrator's schema `chat`, behind typed functions.

- `catalog`: personas and persona instances (a user's copy of a persona)
- `sessions`: sessions and their messages, history pages, the transcript the OpenAI-compatible API
  reconciles against
- `turns`: turn rows (state, frames for replay, explain), finishing a turn with its post-process jobs
  in one transaction, the judge's audit
- `outbox`: the post-process queue (claims, retries, dead jobs)
- `api_keys`: API keys of the OpenAI-compatible endpoint (hashed)
- `user_data`: a user's chat data taken out or erased

Rows come back as the frozen dataclasses of `rows`.
"""

from __future__ import annotations

from ulid import ULID

from .rows import Conn


def new_message_id() -> str:
    """Message and turn ids are ULIDs: time-ordered, so (session_id, id) is chronological."""
    return str(ULID())


__all__ = ["Conn", "new_message_id"]
