"""A conversation as the projection of its append-only event log (roleplay.md "Event log").

Messages form a tree: each has a parent, the message before it on its path. A **branch** is a path,
named by its last message (its head); a conversation has one **active** branch, whose path (without
erased messages) is the history the persona sees. Replies to the same user message are
**alternatives** (swipes); one of them is on a given path.

Events (their `data` carries what the projection needs):

| kind                   | effect                                                                  |
|------------------------|-------------------------------------------------------------------------|
| user_message, reply, ghost, gift, imported | a message joins the tree under `parent_id`; its branch's head moves to it |
| branched               | a new branch whose head is `from_message_id` (active when `activate`)   |
| branch_activated       | that branch becomes the active one                                      |
| alternative_selected   | the branch's head moves to the chosen alternative                       |
| message_deleted        | `message_ids` are erased: they keep their place, leave every history    |
| regenerated, effects   | no change of shape (a new answer started; post-process results)         |

Pure: the store writes the same changes into its tables in the event's transaction; `project` is the
reference they are checked against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

MESSAGE_EVENTS = frozenset({"user_message", "reply", "ghost", "gift", "imported"})
EVENT_KINDS = MESSAGE_EVENTS | {
    "branched",
    "branch_activated",
    "alternative_selected",
    "message_deleted",
    "regenerated",
    "effects",
}
ACTORS = frozenset({"user", "client", "system"})


@dataclass(frozen=True)
class Event:
    kind: str
    message_id: str | None = None
    branch_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    actor: str = "user"


@dataclass(frozen=True)
class Node:
    id: str
    parent_id: str | None
    role: str  # user | assistant | event
    kind: str = "chat"  # chat | ghost | gift
    deleted: bool = False


@dataclass
class Conversation:
    nodes: dict[str, Node] = field(default_factory=dict)
    heads: dict[str, str | None] = field(default_factory=dict)  # branch id → its last message
    active: str | None = None

    # -- the tree --------------------------------------------------------------------------------

    def path(self, head: str | None) -> list[Node]:
        """Root → head (erased messages included: they keep their place)."""
        nodes: list[Node] = []
        current = head
        while current is not None:
            node = self.nodes[current]
            nodes.append(node)
            current = node.parent_id
        nodes.reverse()
        return nodes

    def active_path(self) -> list[Node]:
        return self.path(self.heads.get(self.active)) if self.active is not None else []

    def history(self) -> list[Node]:
        """The active branch as the persona sees it: its messages, erased ones left out."""
        return [node for node in self.active_path() if not node.deleted]

    def children(self, message_id: str | None) -> list[Node]:
        return sorted((n for n in self.nodes.values() if n.parent_id == message_id), key=lambda n: n.id)

    def alternatives(self, message_id: str) -> list[Node]:
        """The replies to the same message as this one (itself included), oldest first; erased ones left out."""
        node = self.nodes[message_id]
        return [n for n in self.children(node.parent_id) if n.role == node.role and not n.deleted]

    def off_active_path(self) -> list[str]:
        """Messages of the conversation that are not on the active branch (or are erased)."""
        on_path = {node.id for node in self.history()}
        return sorted(message_id for message_id in self.nodes if message_id not in on_path)


def apply(conversation: Conversation, event: Event) -> Conversation:
    """The conversation after one event (the conversation passed in is changed and returned)."""
    kind, data = event.kind, event.data
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    if kind in MESSAGE_EVENTS:
        assert event.message_id is not None and event.branch_id is not None
        conversation.nodes[event.message_id] = Node(
            event.message_id,
            data.get("parent_id"),
            str(data.get("role") or _ROLE_OF[kind]),
            str(data.get("message_kind") or _KIND_OF.get(kind, "chat")),
        )
        conversation.heads[event.branch_id] = event.message_id
        if conversation.active is None:
            conversation.active = event.branch_id
    elif kind == "branched":
        assert event.branch_id is not None
        conversation.heads[event.branch_id] = data.get("from_message_id")
        if data.get("activate", True) or conversation.active is None:
            conversation.active = event.branch_id
    elif kind == "branch_activated":
        assert event.branch_id is not None
        conversation.active = event.branch_id
    elif kind == "alternative_selected":
        assert event.branch_id is not None and event.message_id is not None
        conversation.heads[event.branch_id] = event.message_id
    elif kind == "message_deleted":
        for message_id in data.get("message_ids", ()):
            conversation.nodes[message_id] = replace(conversation.nodes[message_id], deleted=True)
    return conversation


def project(events: Iterable[Event]) -> Conversation:
    conversation = Conversation()
    for event in events:
        apply(conversation, event)
    return conversation


_ROLE_OF = {"user_message": "user", "reply": "assistant", "ghost": "assistant", "gift": "event", "imported": "user"}
_KIND_OF = {"ghost": "ghost", "gift": "gift"}


# -- what a change of branch or a delete means --------------------------------------------------------


def erased_by_deleting(conversation: Conversation, message_id: str) -> list[str]:
    """The messages a surgical delete of `message_id` erases: the message, and — for a user message —
    the replies that answered it (they answer nothing any more)."""
    node = conversation.nodes[message_id]
    erased = [message_id]
    if node.role == "user":
        erased += [child.id for child in conversation.children(message_id) if child.role == "assistant"]
    return [m for m in erased if not conversation.nodes[m].deleted]


def leaving_active_history(conversation: Conversation, erased: Sequence[str]) -> list[str]:
    """Of the erased messages, those the active history shows now."""
    shown = {node.id for node in conversation.history()}
    return [m for m in erased if m in shown]
