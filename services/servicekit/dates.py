"""Dates as a person says them: how a prompt places a memory in time ("on 2 May, three weeks ago").
Pure; shared by memory (which resolves and stores dates) and the orchestrator (which renders them)."""

from __future__ import annotations

from datetime import datetime

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven")


def relative_date_phrase(occurred_at: datetime, now: datetime) -> str:
    """How the prompt says when a memory happened (spec: "on 2 May, three weeks ago"): the date, and its
    distance from now in words — "today", "yesterday", "on Monday, 3 days ago" (within a week),
    "on 2 May, three weeks ago", "on 2 May 2024, a year ago". Both datetimes aware; `now` ≥ any past."""
    day, today = occurred_at.date(), now.date()
    days = (today - day).days
    if days == 0:
        return "today"
    if days == 1:
        return "yesterday"
    if days == -1:
        return "tomorrow"
    stamp = f"{day.day} {day.strftime('%B')}" + (f" {day.year}" if day.year != today.year else "")
    if days < 0:
        return f"on {stamp}, in {_count_words(-days, 'day')}" if days > -7 else f"on {stamp}"
    if days < 7:
        return f"on {day.strftime('%A')}, {_count_words(days, 'day')} ago"
    for size, unit in ((365, "year"), (30, "month"), (7, "week")):
        if days >= size:
            return f"on {stamp}, {_count_words(round(days / size), unit)} ago"
    return f"on {stamp}"


def _count_words(count: int, unit: str) -> str:
    if count == 1:
        return f"a {unit}" if unit != "day" else "a day"
    number = _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)
    return f"{number} {unit}s"
