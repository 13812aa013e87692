"""The OpenAI-compatible chat (gateway.md "OpenAI-compatible API"): what a request is, which
conversation it belongs to, and how the client's whole transcript is reconciled with the stored one.

Pure: no I/O. An OpenAI-style client (SillyTavern) sends the whole transcript on every request.

- **Utility calls** are answered without storing anything (`utility_reason`): an explicit
  `X-Rapport-Utility: 1`; a request whose last chat message is the character's (nothing to answer:
  a summary or impersonation prompt after the reply, "continue"); a connection test (no system
  prompt, one short user message, no conversation named by the client).
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
    post_history: str = ""  # the system text after the last chat message (a post-history instruction)
    ends_with_assistant: bool = False  # the last chat message is the character's, even an empty one (a ghost)


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
    after = [m.content.strip() for m in messages[last_chat + 1 :] if m.role in SYSTEM_ROLES and m.content.strip()]
    trailing = bool(after) and last_chat >= 0
    return ClientTranscript(
        "\n\n".join(system),
        character,
        chat,
        trailing,
        post_history="\n\n".join(after) if trailing else "",
        ends_with_assistant=last_chat >= 0 and messages[last_chat].role == "assistant",
    )


def utility_reason(transcript: ClientTranscript, *, marked: bool, named: bool) -> str | None:
    """Why this request is the client's own utility call (not part of the chat), or None for a chat turn.

    `marked`: the X-Rapport-Utility header; `named`: the client named the conversation (X-Chat-Id or
    `user`), which rules out the connection-test guess.
    """
    if marked:
        return "header"
    if not transcript.chat or transcript.chat[-1].role != "user" or transcript.ends_with_assistant:
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
