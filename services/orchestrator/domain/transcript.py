"""The OpenAI-compatible chat (gateway.md "OpenAI-compatible API"): what a request is, which
conversation it belongs to, what of it the prompt keeps as sent, and how the client's whole transcript
is reconciled with the stored one.

Pure: no I/O. An OpenAI-style client (SillyTavern) sends the whole transcript on every request.

- **Chat and the rest** (`split_transcript`): the *chat* is the user and assistant messages with text
  (what is stored and reconciled). Everything else is kept for the prompt as the client sent it
  (`ClientPrompt`): the messages before the first chat message (the character's text, example dialogue
  — messages named `example_user` / `example_assistant` —, `[Start a new Chat]`-style markers), and
  later system messages (an author's note, a post-history instruction) and tool messages (an assistant
  message's `tool_calls`, the tool results), each placed by how many chat messages follow it.
- **Utility calls** are answered without storing anything (`utility_reason`): an explicit
  `X-Rapport-Utility: 1`; a request whose last chat message is the character's (nothing to answer:
  a summary or impersonation prompt after the reply, "continue"); a connection test, recognised only by
  its known shapes (`is_connection_test`: SillyTavern's test message — a lone user "Hi" —, or a probe
  asking for at most one token). Anything else is a turn: a plain app's first message is never lost.
- **Conversation key** (`conversation_key`): `X-Chat-Id`, else the `user` field, else a fingerprint
  of the first system message (the character) + the first user message.
- **Reconciliation** (`plan_reconciliation` for one branch, `plan_over_branches` for a conversation):
  the client's chat messages are aligned with a stored branch (the client may have trimmed its oldest
  messages to fit its context, so the alignment may start anywhere in the branch; the cheapest
  alignment wins) and give one of: new turn (the branch == transcript minus the last user message),
  regenerate (that user message is already answered: a swipe — a new alternative reply, the earlier
  ones kept), resume (it is stored but not answered yet: a repeat while it is generating, or after a
  failure), or — when the client's transcript diverges from the branch — a new branch from the last
  message they share, with the client's differing messages imported, then a new turn. Nothing stored
  is ever removed: what the client no longer sends stays on the branch it was on.
- **Ghosts**: a ghost is delivered as an empty assistant message; stored ghosts and empty assistant
  messages of the client are left out of the comparison (a client may keep or drop them).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

SYSTEM_ROLES = frozenset({"system", "developer"})
CHAT_ROLES = frozenset({"user", "assistant"})
TOOL_ROLE = "tool"
MESSAGE_ROLES = SYSTEM_ROLES | CHAT_ROLES | {TOOL_ROLE}
EXAMPLE_NAME_PREFIX = "example_"  # SillyTavern names example dialogue `example_user` / `example_assistant`
MAX_MESSAGES = 5000
MAX_CONVERSATION_NAME_CHARS = 200
# Connection tests, by their exact known shapes: SillyTavern's "Test Message" is a lone user "Hi"; a probe
# asking for at most one token cannot be a chat turn.
PROBE_TEXTS = frozenset({"Hi"})
PROBE_MAX_TOKENS = 1
CLIENT_MSG_ID_PREFIX = "oa-"
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")
# The end of the character's text in the leading system messages: example dialogue or a chat-start marker.
_CHAT_MARKER = re.compile(r"^\s*\[(?:start a new (?:group )?chat|example chat)\b", re.IGNORECASE)
_NAME = r"([A-Z][\w'’-]*(?: [A-Z][\w'’-]*){0,3})"
# How a character's text names the character (the first match wins, in this order).
_CHARACTER_NAMING = (
    re.compile(rf"\bWrite {_NAME}'s next (?:reply|response|message)"),
    re.compile(rf"\[Write the next reply only as {_NAME}\]"),
    re.compile(rf"\b[Yy]our name is {_NAME}"),
    re.compile(rf"\b(?:[Rr]ole-?play as|[Pp]lay(?:ing)? the (?:role|part) of) {_NAME}"),
    re.compile(rf"^\[?{_NAME}'s (?:[Pp]ersona|[Pp]ersonality|[Dd]escription)\b", re.MULTILINE),
    re.compile(rf"^(?:[Nn]ame|[Cc]haracter|[Cc]har):\s*{_NAME}\s*$", re.MULTILINE),
    re.compile(rf"\bYou are {_NAME}(?=[,.;:!(]| \(|\s*$| who\b| and\b)", re.MULTILINE),
)

Handling = Literal["new_turn", "regenerate", "resume"]


class TranscriptError(ValueError):
    """An invalid chat-completion request field; `field` names it, the message is user-safe."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class ClientMessage:
    role: str  # system | developer | user | assistant | tool
    content: str
    name: str = ""  # OpenAI's `name` (the speaker)
    tool_calls_json: str = ""  # an assistant message's `tool_calls` (a JSON array), "" = none
    tool_call_id: str = ""  # a tool message: the call it answers

    @property
    def is_example(self) -> bool:
        """Example dialogue (SillyTavern's `example_user` / `example_assistant`), not part of the chat."""
        return self.name.startswith(EXAMPLE_NAME_PREFIX)

    @property
    def is_chat(self) -> bool:
        """A user or assistant message of the conversation: stored, reconciled, answered. Empty assistant
        messages (delivered ghosts), example dialogue and tool-call messages are not."""
        if self.role not in CHAT_ROLES or self.is_example or self.tool_calls_json:
            return False
        return self.role == "user" or bool(self.content.strip())

    def for_model(self) -> dict[str, object]:
        """The message as the model receives it: roles and names as sent (`developer` as `system`)."""
        message: dict[str, object] = {"role": "system" if self.role in SYSTEM_ROLES else self.role}
        message["content"] = self.content if self.content or not self.tool_calls_json else None
        if self.name:
            message["name"] = self.name
        if self.tool_calls_json:
            message["tool_calls"] = json.loads(self.tool_calls_json)
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass(frozen=True)
class StoredMessage:
    """A stored user/assistant message of the session, oldest first; `ghost` = a ghosted turn's marker."""

    id: str
    role: str
    content: str
    ghost: bool = False


@dataclass(frozen=True)
class ClientPrompt:
    """What of a request the prompt keeps as the client sent it, beside the stored conversation.

    `leading`: the messages before the first chat message (the character's text, example dialogue,
    chat-start markers); `inserts`: the later non-chat messages (system and tool messages, example
    dialogue), each with how many chat messages follow it in the request (0 = after the last one: a
    post-history instruction, a tool exchange), in the client's order. `character_name` is how the
    client names its character ("" = not known).
    """

    leading: tuple[ClientMessage, ...] = ()
    inserts: tuple[tuple[int, ClientMessage], ...] = ()
    character_name: str = ""

    @property
    def character_mode(self) -> bool:
        """The client sent its own character (a system message before the chat): the character is the
        speaker, and the persona supplies only its relationship with the user."""
        return any(m.role in SYSTEM_ROLES and not m.is_example and m.content.strip() for m in self.leading)

    @property
    def character_end(self) -> int:
        """Where the character's text ends among `leading`: at the first example-dialogue message or
        chat-start marker (`[Start a new Chat]`, `[Example Chat]`), else after the last leading message."""
        return next(
            (i for i, m in enumerate(self.leading) if m.is_example or _CHAT_MARKER.match(m.content)),
            len(self.leading),
        )


@dataclass(frozen=True)
class ClientTranscript:
    """A request's messages split into what the engine uses."""

    system_prompt: str  # every system message, in order, joined by a blank line ("" = none)
    character_prompt: str  # the first system message before any chat message ("" = none)
    chat: tuple[ClientMessage, ...]  # the chat messages (`ClientMessage.is_chat`)
    trailing_system: bool  # a system message comes after the last chat message
    post_history: str = ""  # the system text after the last chat message (a post-history instruction)
    ends_with_assistant: bool = False  # the last chat message is the character's, even an empty one (a ghost)
    prompt: ClientPrompt = field(default_factory=ClientPrompt)  # what the prompt keeps as sent


@dataclass(frozen=True)
class TranscriptPlan:
    """How the client's transcript meets one stored branch, then which turn to run.

    new_turn: the branch up to `diverges_at` (exclusive; all of it when None) is the client's, then come
    `imports` (the client's own messages, taken over), then `user_message` is answered as a new turn —
    when `diverges_at` is set or there are imports, on a new branch forked from the last shared message
    (`fork_after`; None = from the very start). regenerate: `user_message_id` is answered again (a new
    alternative). resume: `user_message_id` is stored and not answered yet — follow (or retry) its turn.
    `left_behind` counts the branch's chat messages the client no longer sends (they stay where they are).
    """

    handling: Handling
    position: int  # index of the answered user message among the branch's chat messages (ghosts not counted)
    user_message: str
    user_message_id: str | None = None  # regenerate / resume
    diverges_at: str | None = None  # new_turn: the first stored message the client's transcript differs from
    left_behind: int = 0  # stored chat messages after the alignment (ghosts not counted)
    imports: tuple[ClientMessage, ...] = ()
    fork_after: str | None = None  # new_turn on a new branch: the last stored message shared with the client
    anchor: str | None = None  # the stored message the answered user message follows (None = the start)

    @property
    def cost(self) -> int:
        return self.left_behind + len(self.imports)

    @property
    def forks(self) -> bool:
        """A new branch is needed: the client's transcript leaves the stored branch."""
        return self.handling == "new_turn" and (self.diverges_at is not None or bool(self.imports))


def normalized(text: str) -> str:
    """Content as compared: whitespace runs collapsed, ends trimmed (clients re-format whitespace)."""
    return " ".join(text.split())


# ---- the request --------------------------------------------------------------------------------


def _conversation_name(value: str, field: str) -> str:
    value = value.strip()
    if value and (len(value) > MAX_CONVERSATION_NAME_CHARS or not _PRINTABLE.match(value)):
        raise TranscriptError(field, f"at most {MAX_CONVERSATION_NAME_CHARS} printable ASCII characters")
    return value


def validate_completion_request(
    model: str, messages: Sequence[ClientMessage], chat_id: str, client_user: str
) -> tuple[str, str, str]:
    """Check the request's fields before anything is read or written → (model, chat_id, client_user)."""
    if not model.strip():
        raise TranscriptError("model", "required: a persona name or id")
    if not messages:
        raise TranscriptError("messages", "at least one message is required")
    if len(messages) > MAX_MESSAGES:
        raise TranscriptError("messages", f"at most {MAX_MESSAGES} messages")
    calls: set[str] = set()  # the ids of the tool calls a tool message may answer
    for index, message in enumerate(messages):
        if message.role not in MESSAGE_ROLES:
            raise TranscriptError(f"messages[{index}].role", f"expected one of {', '.join(sorted(MESSAGE_ROLES))}")
        if message.role == TOOL_ROLE:
            if message.tool_call_id not in calls:
                raise TranscriptError(
                    f"messages[{index}].role",
                    "a tool message must answer a tool call of the assistant message before it (tool_call_id)",
                )
            continue
        calls = _tool_call_ids(message, index) if message.role == "assistant" else set()
    return model.strip(), _conversation_name(chat_id, "chat_id"), _conversation_name(client_user, "user")


def _tool_call_ids(message: ClientMessage, index: int) -> set[str]:
    if not message.tool_calls_json:
        return set()
    try:
        calls = json.loads(message.tool_calls_json)
    except ValueError:
        calls = None
    if not isinstance(calls, list) or not all(isinstance(call, dict) and call.get("id") for call in calls):
        raise TranscriptError(f"messages[{index}].tool_calls", "a list of tool calls, each with an id")
    return {str(call["id"]) for call in calls}


def _in_chat(message: ClientMessage) -> bool:
    """A chat message, or an empty assistant message (a delivered ghost: in the chat's place, not stored)."""
    return message.is_chat or (message.role == "assistant" and not message.is_example and not message.tool_calls_json)


def split_transcript(messages: Sequence[ClientMessage]) -> ClientTranscript:
    """System text, the character's prompt, the chat messages and what the prompt keeps as sent."""
    system = [m.content.strip() for m in messages if m.role in SYSTEM_ROLES and m.content.strip()]
    character = ""
    for message in messages:
        if _in_chat(message):
            break
        if message.role in SYSTEM_ROLES and message.content.strip():
            character = message.content.strip()
            break
    chat = tuple(ClientMessage(m.role, m.content) for m in messages if m.is_chat)
    last_chat = max((i for i, m in enumerate(messages) if _in_chat(m)), default=-1)
    after = [m.content.strip() for m in messages[last_chat + 1 :] if m.role in SYSTEM_ROLES and m.content.strip()]
    trailing = bool(after) and last_chat >= 0
    return ClientTranscript(
        "\n\n".join(system),
        character,
        chat,
        trailing,
        post_history="\n\n".join(after) if trailing else "",
        ends_with_assistant=last_chat >= 0 and messages[last_chat].role == "assistant",
        prompt=client_prompt(messages),
    )


def client_prompt(messages: Sequence[ClientMessage]) -> ClientPrompt:
    """The request's non-chat messages, placed: those before the first chat message, then the others with
    how many chat messages follow each. Empty system messages are left out."""

    def kept(message: ClientMessage) -> bool:
        return not _in_chat(message) and (message.role not in SYSTEM_ROLES or bool(message.content.strip()))

    first_chat = next((i for i, m in enumerate(messages) if m.is_chat), len(messages))
    leading = tuple(m for m in messages[:first_chat] if kept(m))
    inserts: list[tuple[int, ClientMessage]] = []
    following = 0
    for message in reversed(messages[first_chat:]):
        if message.is_chat:
            following += 1
        elif kept(message):
            inserts.append((following, message))
    return ClientPrompt(leading, tuple(reversed(inserts)), character_name(messages))


def character_name(messages: Sequence[ClientMessage]) -> str:
    """How the client names its character: the `name` of its chat replies, else what the system text says
    ("Write Seraphina's next reply…", "You are Elena, …", "Name: Kai"), else ""."""
    named = next((m.name for m in messages if m.is_chat and m.role == "assistant" and m.name), "")
    if named:
        return named
    text = "\n".join(m.content for m in messages if m.role in SYSTEM_ROLES and not m.is_example)
    for pattern in _CHARACTER_NAMING:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return ""


def utility_reason(
    transcript: ClientTranscript, *, marked: bool, named: bool, max_tokens: int | None = None
) -> str | None:
    """Why this request is the client's own utility call (not part of the chat), or None for a chat turn.

    `marked`: the X-Rapport-Utility header; `named`: the client named the conversation (X-Chat-Id or
    `user`), which rules out SillyTavern's test message; `max_tokens`: the reply length asked for.
    """
    if marked:
        return "header"
    if not transcript.chat or transcript.chat[-1].role != "user" or transcript.ends_with_assistant:
        # Summaries and impersonation add their instruction after the character's reply; "continue"
        # ends with the reply itself. Either way there is no user message for the character to answer.
        return "instruction_after_reply" if transcript.trailing_system and transcript.chat else "no_user_message"
    if is_connection_test(transcript, named=named, max_tokens=max_tokens):
        return "probe"
    return None


def is_connection_test(transcript: ClientTranscript, *, named: bool, max_tokens: int | None) -> bool:
    """Only the known shapes: a probe asking for at most one token; SillyTavern's "Test Message" (a lone
    user "Hi": no other message, no conversation named)."""
    if max_tokens is not None and max_tokens <= PROBE_MAX_TOKENS:
        return True
    lone = len(transcript.chat) == 1 and not transcript.prompt.leading and not transcript.prompt.inserts
    return not named and lone and transcript.chat[0].content.strip() in PROBE_TEXTS


def instruction_after_answer(transcript: ClientTranscript, usual_post_history: str | None) -> bool:
    """The client's last user message is already answered (or ghosted) and a system instruction follows it
    that is not the conversation's usual post-history instruction: a summary or impersonation request, a
    utility call — not a swipe."""
    return bool(transcript.post_history) and normalized(transcript.post_history) != normalized(usual_post_history or "")


def conversation_key(chat_id: str, client_user: str, transcript: ClientTranscript) -> str:
    """The conversation a request belongs to, stored on its session (unique per persona instance)."""
    if chat_id:
        return f"chat:{chat_id}"
    if client_user:
        return f"user:{client_user}"
    first_user = next((m.content for m in transcript.chat if m.role == "user"), "")
    digest = hashlib.sha256(f"{normalized(transcript.character_prompt)}\x00{normalized(first_user)}".encode())
    return f"fingerprint:{digest.hexdigest()[:32]}"


def derived_client_msg_id(conversation: str, anchor: int | str, content: str, generation: int = 0) -> str:
    """The turn's idempotency key: the same request (conversation, where in it — the message the user
    message follows —, content) → the same key; `generation` counts earlier replies to that user message
    (a regenerate gets a new key)."""
    digest = hashlib.sha256(f"{conversation}\x00{anchor}\x00{normalized(content)}\x00{generation}".encode())
    return CLIENT_MSG_ID_PREFIX + digest.hexdigest()[:32]


# ---- reconciliation -------------------------------------------------------------------------------


def _key(message: ClientMessage | StoredMessage) -> tuple[str, str]:
    return message.role, normalized(message.content)


def _common_prefix(stored: Sequence[tuple[str, str]], offset: int, chat: Sequence[tuple[str, str]]) -> int:
    """How many client messages equal the stored ones from `offset` on."""
    length = 0
    while length < len(chat) and offset + length < len(stored) and stored[offset + length] == chat[length]:
        length += 1
    return length


def _answered_by_ghost(stored: Sequence[StoredMessage], user_message_id: str) -> bool:
    """The stored message right after this user message is a ghost (the persona chose not to answer)."""
    index = next(i for i, m in enumerate(stored) if m.id == user_message_id)
    following = stored[index + 1 : index + 2]
    return bool(following) and following[0].ghost


def _plan_at(
    stored: Sequence[StoredMessage],
    visible: Sequence[StoredMessage],
    matched: int,
    chat: Sequence[ClientMessage],
    offset: int,
) -> TranscriptPlan:
    """The plan when the client's first chat message is the stored chat message at `offset` and the
    first `matched` client messages equal the stored ones from there."""
    last = len(chat) - 1
    user_message = chat[last].content
    position = offset + last
    if matched == len(chat):  # the user message is stored already
        user_id = visible[position].id
        later = len(visible) - position - 1
        answered = later > 0 or _answered_by_ghost(stored, user_id)
        anchor = visible[position - 1].id if position > 0 else None
        return TranscriptPlan(
            "regenerate" if answered else "resume",
            position,
            user_message,
            user_message_id=user_id,
            left_behind=later,
            anchor=anchor,
        )
    cut = offset + matched
    shared = visible[cut - 1].id if cut > 0 else None
    imports = tuple(chat[matched:last])
    diverges_at = visible[cut].id if cut < len(visible) else None
    forks = diverges_at is not None or bool(imports)
    return TranscriptPlan(
        "new_turn",
        position,
        user_message,
        diverges_at=diverges_at,
        left_behind=len(visible) - cut,
        imports=imports,
        fork_after=shared if forks else None,
        anchor=None if forks else (stored[-1].id if stored else None),
    )


def plan_reconciliation(stored: Sequence[StoredMessage], chat: Sequence[ClientMessage]) -> TranscriptPlan:
    """Match the client's chat messages (ending with the user message to answer) to one stored branch.

    Alignments tried: the client's transcript starting at the branch's first message, and at every
    stored message equal to the client's first message (the client trimmed older ones). The one
    that leaves behind + imports the fewest messages wins; on a tie, the later alignment.
    """
    if not chat or chat[-1].role != "user":
        raise ValueError("the client's transcript must end with a user message")
    visible = [m for m in stored if not m.ghost]
    stored_keys = [_key(m) for m in visible]
    chat_keys = [_key(m) for m in chat]
    offsets = [0] + [i for i in range(1, len(visible)) if stored_keys[i] == chat_keys[0]]
    plans = [
        (_plan_at(stored, visible, _common_prefix(stored_keys, offset, chat_keys), chat, offset), offset)
        for offset in offsets
    ]
    return min(plans, key=lambda item: (item[0].cost, -item[1]))[0]


def plan_over_branches(
    branches: Sequence[tuple[str, Sequence[StoredMessage]]], active: str, chat: Sequence[ClientMessage]
) -> tuple[str, TranscriptPlan]:
    """The branch the client's transcript is (the cheapest plan; on a tie the active branch, then the
    newest), and the plan on it → (branch id, plan). Every branch is a candidate: a client going back to
    an earlier chat finds its branch again, whole."""
    if not branches:
        raise ValueError("a conversation has at least one branch")
    planned = [(branch_id, plan_reconciliation(path, chat), index) for index, (branch_id, path) in enumerate(branches)]
    branch_id, plan, _ = min(planned, key=lambda item: (item[1].cost, item[0] != active, -item[2]))
    return branch_id, plan
