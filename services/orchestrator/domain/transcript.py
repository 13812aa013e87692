"""The OpenAI-compatible chat (gateway.md "OpenAI-compatible API"): what a request is, which
conversation it belongs to, and how the client's whole transcript is reconciled with the stored one.

Pure: no I/O. An OpenAI-style client (SillyTavern) sends the whole transcript on every request.

- **Utility calls** are answered without storing anything (`utility_reason`): an explicit
  `X-Rapport-Utility: 1`; a request whose last chat message is the character's (nothing to answer:
  a summary or impersonation prompt after the reply, "continue"); a connection test (no system
  prompt, one short user message, no conversation named by the client).
- **Conversation key** (`conversation_key`): `X-Chat-Id`, else the `user` field, else a fingerprint
  of the first system message (the character) + the first user message.
- **Reconciliation** (`plan_reconciliation`): the client's chat messages are aligned with the stored
  ones (the client may have trimmed its oldest messages to fit its context, so the alignment may start
  anywhere in the stored transcript; the cheapest alignment wins) and give one of:
  new turn (stored == transcript minus the last user message), regenerate (that user message is
  already answered: a swipe — the reply is replaced), resume (it is stored but not answered yet: a
  repeat while it is generating, or after a failure), or — after removing the stored messages that
  differ and importing the client's — a new turn (an edited or deleted message).
- **Ghosts**: a ghost is delivered as an empty assistant message; stored ghosts and empty assistant
  messages of the client are left out of the comparison (a client may keep or drop them).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SYSTEM_ROLES = frozenset({"system", "developer"})
CHAT_ROLES = frozenset({"user", "assistant"})
MESSAGE_ROLES = SYSTEM_ROLES | CHAT_ROLES
MAX_MESSAGES = 5000
MAX_CONVERSATION_NAME_CHARS = 200
PROBE_MAX_CHARS = 200  # a connection test's single user message is at most this long ("Hi")
CLIENT_MSG_ID_PREFIX = "oa-"
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")

Handling = Literal["new_turn", "regenerate", "resume"]


class TranscriptError(ValueError):
    """An invalid chat-completion request field; `field` names it, the message is user-safe."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class ClientMessage:
    role: str  # system | developer | user | assistant
    content: str


@dataclass(frozen=True)
class StoredMessage:
    """A stored user/assistant message of the session, oldest first; `ghost` = a ghosted turn's marker."""

    id: str
    role: str
    content: str
    ghost: bool = False


@dataclass(frozen=True)
class ClientTranscript:
    """A request's messages split into what the engine uses."""

    system_prompt: str  # every system message, in order, joined by a blank line ("" = none)
    character_prompt: str  # the first system message before any chat message ("" = none)
    chat: tuple[ClientMessage, ...]  # user/assistant messages; empty assistant messages (ghosts) left out
    trailing_system: bool  # a system message comes after the last chat message


@dataclass(frozen=True)
class TranscriptPlan:
    """What to do with the stored transcript so that it matches the client's, then which turn to run.

    new_turn: remove `delete_from` and every stored message after it (when set), append `imports`
    (no post-process), then answer `user_message` as a new turn. regenerate: remove every stored
    message after `user_message_id` and answer it again. resume: `user_message_id` is stored and not
    answered yet — follow (or retry) its turn.
    """

    handling: Handling
    position: int  # index of the answered user message among the stored chat messages (ghosts not counted)
    user_message: str
    user_message_id: str | None = None  # regenerate / resume
    delete_from: str | None = None  # new_turn
    deleted: int = 0  # stored chat messages removed (ghosts not counted)
    imports: tuple[ClientMessage, ...] = ()

    @property
    def cost(self) -> int:
        return self.deleted + len(self.imports)


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
    for index, message in enumerate(messages):
        if message.role not in MESSAGE_ROLES:
            raise TranscriptError(f"messages[{index}].role", f"expected one of {', '.join(sorted(MESSAGE_ROLES))}")
    return model.strip(), _conversation_name(chat_id, "chat_id"), _conversation_name(client_user, "user")


def split_transcript(messages: Sequence[ClientMessage]) -> ClientTranscript:
    """System text, the character's prompt and the chat messages of a request."""
    system = [m.content.strip() for m in messages if m.role in SYSTEM_ROLES and m.content.strip()]
    character = ""
    for message in messages:
        if message.role in CHAT_ROLES:
            break
        if message.content.strip():
            character = message.content.strip()
            break
    chat = tuple(
        ClientMessage(m.role, m.content)
        for m in messages
        if m.role in CHAT_ROLES and not (m.role == "assistant" and not m.content.strip())
    )
    last_chat = max((i for i, m in enumerate(messages) if m.role in CHAT_ROLES), default=-1)
    trailing = any(m.role in SYSTEM_ROLES and m.content.strip() for m in messages[last_chat + 1 :])
    return ClientTranscript("\n\n".join(system), character, chat, trailing and last_chat >= 0)


def utility_reason(transcript: ClientTranscript, *, marked: bool, named: bool) -> str | None:
    """Why this request is the client's own utility call (not part of the chat), or None for a chat turn.

    `marked`: the X-Rapport-Utility header; `named`: the client named the conversation (X-Chat-Id or
    `user`), which rules out the connection-test guess.
    """
    if marked:
        return "header"
    if not transcript.chat or transcript.chat[-1].role != "user":
        # Summaries and impersonation add their instruction after the character's reply; "continue"
        # ends with the reply itself. Either way there is no user message for the character to answer.
        return "instruction_after_reply" if transcript.trailing_system and transcript.chat else "no_user_message"
    if (
        not named
        and not transcript.system_prompt
        and len(transcript.chat) == 1
        and len(transcript.chat[0].content.strip()) <= PROBE_MAX_CHARS
    ):
        return "probe"
    return None


def conversation_key(chat_id: str, client_user: str, transcript: ClientTranscript) -> str:
    """The conversation a request belongs to, stored on its session (unique per persona instance)."""
    if chat_id:
        return f"chat:{chat_id}"
    if client_user:
        return f"user:{client_user}"
    first_user = next((m.content for m in transcript.chat if m.role == "user"), "")
    digest = hashlib.sha256(f"{normalized(transcript.character_prompt)}\x00{normalized(first_user)}".encode())
    return f"fingerprint:{digest.hexdigest()[:32]}"


def derived_client_msg_id(conversation: str, position: int, content: str, generation: int = 0) -> str:
    """The turn's idempotency key: the same request (conversation, position, content) → the same key;
    `generation` counts earlier replies to that user message (a regenerate gets a new key)."""
    digest = hashlib.sha256(f"{conversation}\x00{position}\x00{normalized(content)}\x00{generation}".encode())
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
        return TranscriptPlan(
            "regenerate" if answered else "resume", position, user_message, user_message_id=user_id, deleted=later
        )
    cut = offset + matched
    return TranscriptPlan(
        "new_turn",
        position,
        user_message,
        delete_from=visible[cut].id if cut < len(visible) else None,
        deleted=len(visible) - cut,
        imports=tuple(chat[matched:last]),
    )


def plan_reconciliation(stored: Sequence[StoredMessage], chat: Sequence[ClientMessage]) -> TranscriptPlan:
    """Match the client's chat messages (ending with the user message to answer) to the stored ones.

    Alignments tried: the client's transcript starting at the first stored message, and at every
    stored message equal to the client's first message (the client trimmed older ones). The one
    that removes + imports the fewest messages wins; on a tie, the later alignment.
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
