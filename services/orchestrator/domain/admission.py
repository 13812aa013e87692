"""Admission of a turn request by its `client_msg_id` (orchestrator.md "Idempotency"): what to do with a
request, given the turn already stored under that id (if any) and whether it is generating here."""

from __future__ import annotations

from typing import Literal

Admission = Literal["start", "replay", "attach", "in_progress", "restart"]


def admit(stored_status: str | None, live_here: bool) -> Admission:
    """
    - no turn yet → `start` it;
    - a finished turn → `replay` its frames (a retry never answers twice);
    - a running turn generating in this process → `attach` to its frames as they come;
    - a running turn generating elsewhere (another replica, or lost) → `in_progress` (the caller answers 409);
    - a failed turn → `restart`: generate it again under the same id.
    """
    if stored_status is None:
        return "start"
    if stored_status == "done":
        return "replay"
    if stored_status == "running":
        return "attach" if live_here else "in_progress"
    return "restart"
