"""The conversation's projection (domain/conversation.py, issue 10): for any sequence of appends, regenerates,
branches, activations, selections and deletes, the projected state equals the one built by replaying only the
active branch's turns — its history, and what a state folded over that history gives."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from services.orchestrator.domain.conversation import (
    Conversation,
    Event,
    apply,
    erased_by_deleting,
    leaving_active_history,
    project,
)

OPS = st.lists(
    st.tuples(st.sampled_from(["turn", "regenerate", "branch", "activate", "select", "delete", "gift"]),
              st.integers(min_value=0, max_value=10_000)),
    max_size=60,
)


class Builder:
    """Drives the log as the orchestrator does: every change an event, the state its projection."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.conversation = Conversation()
        self.ids = (f"m{n:05d}" for n in itertools.count())
        self.branches = (f"b{n}" for n in itertools.count())
        self.values: dict[str, int] = {}  # a toy state: each user message adds its value
        self.emit(Event("branched", branch_id=next(self.branches), data={"from_message_id": None}))

    def emit(self, event: Event) -> None:
        self.events.append(event)
        apply(self.conversation, event)

    @property
    def head(self) -> str | None:
        assert self.conversation.active is not None
        return self.conversation.heads[self.conversation.active]

    def append(self, kind: str, parent: str | None, value: int = 0) -> str:
        message_id = next(self.ids)
        self.values[message_id] = value
        self.emit(Event(kind, message_id, self.conversation.active, {"parent_id": parent}))
        return message_id

    def run(self, op: str, n: int) -> None:
        conversation = self.conversation
        nodes = sorted(conversation.nodes)
        if op == "turn":
            user = self.append("user_message", self.head, n)
            self.append("reply", user)
        elif op == "gift":
            self.append("gift", self.head, n)
        elif op == "regenerate" and nodes:
            users = [m for m in nodes if conversation.nodes[m].role == "user" and not conversation.nodes[m].deleted]
            if not users:
                return
            user = users[n % len(users)]
            last = self.head == user or (self.head is not None and conversation.nodes[self.head].parent_id == user)
            if not last:  # an earlier exchange: a new branch from the user message, as turns.begin_answer does
                self.emit(Event("branched", branch_id=next(self.branches), data={"from_message_id": user}))
            self.emit(Event("regenerated", user, conversation.active))
            self.append("reply", user)
        elif op == "branch" and nodes:
            self.emit(Event("branched", branch_id=next(self.branches), data={"from_message_id": nodes[n % len(nodes)]}))
        elif op == "activate":
            branches = sorted(conversation.heads)
            self.emit(Event("branch_activated", branch_id=branches[n % len(branches)]))
        elif op == "select" and self.head is not None:
            alternatives = [m for m in nodes if conversation.nodes[m].role == "assistant"
                            and conversation.nodes[m].parent_id == conversation.nodes[self.head].parent_id
                            and not conversation.nodes[m].deleted]
            if alternatives and conversation.nodes[self.head].role == "assistant":
                chosen = alternatives[n % len(alternatives)]
                self.emit(Event("alternative_selected", chosen, conversation.active))
        elif op == "delete" and nodes:
            erased = erased_by_deleting(conversation, nodes[n % len(nodes)])
            if erased:
                self.emit(Event("message_deleted", data={"message_ids": erased}))


def replay_active_branch(conversation: Conversation) -> Conversation:
    """A fresh log holding only the active branch's messages, appended one after the other."""
    replayed = Conversation()
    apply(replayed, Event("branched", branch_id="only", data={"from_message_id": None}))
    parent = None
    for node in conversation.history():
        kind = {"user": "user_message", "event": "gift"}.get(node.role, "ghost" if node.kind == "ghost" else "reply")
        apply(replayed, Event(kind, node.id, "only", {"parent_id": parent}))
        parent = node.id
    return replayed


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_the_projection_equals_replaying_only_the_active_branch(ops: list[tuple[str, int]]) -> None:
    builder = Builder()
    for op, n in ops:
        builder.run(op, n)
    projected = project(builder.events)
    assert projected.heads == builder.conversation.heads and projected.active == builder.conversation.active
    replayed = replay_active_branch(projected)
    assert [(n.id, n.role) for n in replayed.history()] == [(n.id, n.role) for n in projected.history()]
    state = sum(builder.values[n.id] for n in projected.history())
    assert state == sum(builder.values[n.id] for n in replayed.history())
    # a path runs from the root to its head, every step a real parent
    for head in projected.heads.values():
        path = projected.path(head)
        assert all(path[i].parent_id == (path[i - 1].id if i else None) for i in range(len(path)))
    # what is off the active branch is exactly what its history does not show
    shown = {n.id for n in projected.history()}
    assert set(projected.off_active_path()) == set(projected.nodes) - shown


def test_deleting_a_user_message_erases_its_replies_and_keeps_their_places() -> None:
    builder = Builder()
    builder.run("turn", 1)
    builder.run("turn", 2)
    user, reply = "m00002", "m00003"
    erased = erased_by_deleting(builder.conversation, user)
    assert erased == [user, reply] and leaving_active_history(builder.conversation, erased) == erased
    builder.emit(Event("message_deleted", data={"message_ids": erased}))
    assert [n.id for n in builder.conversation.history()] == ["m00000", "m00001"]
    assert [n.id for n in builder.conversation.active_path()] == ["m00000", "m00001", user, reply]
