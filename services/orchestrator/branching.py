"""Rewind, branch, swipe and surgical delete on a session's event log (issue 10), and the state that
follows the active branch.

The shape lives in the store (messages with parents, branches with heads, the active branch) and is
read back as the domain's `Conversation`. Whenever the active branch's path changes, the peers are told
through the outbox (ordered per session and peer, retried, never dropped): affinity re-projects the
vector over the path's turns and gifts (`ProjectBranch`), memory and insight hide what is off the path
(`SetHiddenMessages`). A surgical delete also erases: `EraseMessages` in memory and insight, the turns'
affinity events, and every copy of the text the orchestrator keeps.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc

from rapport.affinity.v1 import affinity_pb2
from rapport.insight.v1 import insight_pb2
from rapport.memory.v1 import memory_pb2
from rapport.orchestrator.v1 import orchestrator_pb2 as pb
from services.servicekit.grpc_errors import Aborted, InvalidArgument, NotFound

from .domain.conversation import Conversation, Node, erased_by_deleting, leaving_active_history
from .peers import Peers
from .store import conversations, outbox, sessions, turns
from .store.outbox import OutboxJob
from .store.rows import SessionRow


@dataclass
class LoadedConversation:
    """A session's tree as the domain sees it, with what links it to the peers' state."""

    conversation: Conversation
    turns_by_message: dict[str, list[str]]  # user message id → its turns, oldest first
    turn_of_message: dict[str, str]  # assistant message id → the turn that produced it
    gift_events: dict[str, str]  # gift message id → its affinity event
    running: set[str]  # ids of turns still running


async def load(conn: asyncpg.Connection | asyncpg.Pool, session_id: uuid.UUID) -> LoadedConversation:
    conversation = Conversation()
    turn_of_message: dict[str, str] = {}
    gift_events: dict[str, str] = {}
    for node in await conversations.session_tree(conn, session_id):
        conversation.nodes[node.id] = Node(node.id, node.parent_id, node.role, node.kind, node.deleted)
        if node.role == "assistant" and node.turn_id:
            turn_of_message[node.id] = node.turn_id
        elif node.kind == "gift" and node.gift_event:
            gift_events[node.id] = node.gift_event
    active = await conversations.active_branch(conn, session_id)
    for branch in await conversations.list_branches(conn, session_id):
        conversation.heads[str(branch.id)] = branch.head_id
    conversation.active = str(active.id)
    turns_by_message: dict[str, list[str]] = {}
    running = set()
    for turn in await conversations.turn_links(conn, session_id):
        turns_by_message.setdefault(turn.user_message_id, []).append(turn.turn_id)
        if turn.status == "running":
            running.add(turn.turn_id)
    return LoadedConversation(conversation, turns_by_message, turn_of_message, gift_events, running)


def affinity_refs(loaded: LoadedConversation, path: list[Node]) -> list[affinity_pb2.AffinityEventRef]:
    """The affinity events of a path, in order: every turn answering each of its user messages, its gifts."""
    refs: list[affinity_pb2.AffinityEventRef] = []
    for node in path:
        if node.deleted:
            continue
        if node.role == "user":
            refs += [affinity_pb2.AffinityEventRef(turn_id=t) for t in loaded.turns_by_message.get(node.id, [])]
        elif node.kind == "gift" and node.id in loaded.gift_events:
            refs.append(affinity_pb2.AffinityEventRef(event_id=loaded.gift_events[node.id]))
    return refs


def projection_request(
    loaded: LoadedConversation,
    session: SessionRow,
    *,
    erased: list[str] = (),  # type: ignore[assignment]
    dry_run: bool = False,
) -> affinity_pb2.ProjectBranchRequest:
    """The active branch's affinity projection (without the `erased` messages' turns and gifts)."""
    conversation = loaded.conversation
    gone = set(erased)
    path = [node for node in conversation.active_path() if node.id not in gone]
    included = affinity_refs(loaded, path)
    included_turns = {ref.turn_id for ref in included if ref.turn_id}
    erased_refs = _refs_of(loaded, [conversation.nodes[m] for m in erased])
    erased_turns = {ref.turn_id for ref in erased_refs if ref.turn_id}
    excluded = sorted(
        turn_id
        for turn_ids in loaded.turns_by_message.values()
        for turn_id in turn_ids
        if turn_id not in included_turns and turn_id not in erased_turns
    )
    return affinity_pb2.ProjectBranchRequest(
        user_id=str(session.user_id),
        session_id=str(session.id),
        events=included,
        excluded_turn_ids=excluded,
        erase=erased_refs,
        dry_run=dry_run,
    )


def _refs_of(loaded: LoadedConversation, nodes: list[Node]) -> list[affinity_pb2.AffinityEventRef]:
    refs = affinity_refs(loaded, [Node(n.id, n.parent_id, n.role, n.kind) for n in nodes])
    for node in nodes:  # an erased reply takes its own turn's events with it
        turn_id = loaded.turn_of_message.get(node.id)
        if node.role == "assistant" and turn_id:
            refs.append(affinity_pb2.AffinityEventRef(turn_id=turn_id))
    return refs


def branch_state_jobs(loaded: LoadedConversation, session: SessionRow) -> list[OutboxJob]:
    """What the peers must be told so their state follows the active branch."""
    hidden = loaded.conversation.off_active_path()
    common = {"user_id": str(session.user_id), "session_id": str(session.id)}
    return [
        OutboxJob("affinity", projection_request(loaded, session), call="project_branch"),
        OutboxJob("memory", memory_pb2.SetHiddenMessagesRequest(**common, hidden_message_ids=hidden), "hide_messages"),
        OutboxJob(
            "insight", insight_pb2.SetHiddenMessagesRequest(**common, hidden_message_ids=hidden), "hide_messages"
        ),
    ]


async def follow_active_branch(
    conn: asyncpg.Connection, session: SessionRow, event_id: str, loaded: LoadedConversation | None = None
) -> None:
    """Count the session on its active branch and queue the peers' state for it (keyed by the event that
    changed the branch), in the caller's transaction. `loaded`: the conversation as it is now, when the caller
    has it (else it is read)."""
    loaded = loaded or await load(conn, session.id)
    shown = loaded.conversation.history()
    await conversations.set_counts(
        conn,
        session.id,
        messages=sum(1 for n in shown if n.kind == "chat" and n.role in ("user", "assistant")),
        user_messages=sum(1 for n in shown if n.role == "user"),
    )
    await outbox.insert_jobs(
        conn,
        turn_id=event_id,
        user_id=session.user_id,
        session_id=session.id,
        jobs=branch_state_jobs(loaded, session),
        trace_context={},
    )


def _refuse_while_running(loaded: LoadedConversation, message_ids: list[str], what: str) -> None:
    for message_id in message_ids:
        if any(t in loaded.running for t in loaded.turns_by_message.get(message_id, [])) or (
            loaded.turn_of_message.get(message_id) in loaded.running
        ):
            raise Aborted(
                f"cannot {what} a message that is still being answered",
                reason="conflict",
                user_message="That message is still being answered. Try again when the reply is done.",
            )
    if what == "branch from" and loaded.running:
        raise Aborted(
            "a reply is still being generated in this conversation",
            reason="conflict",
            user_message="A reply is still being written. Try again when it is done.",
        )


def _node(loaded: LoadedConversation, message_id: str) -> Node:
    node = loaded.conversation.nodes.get(message_id)
    if node is None:
        raise NotFound("no such message in this conversation", user_message="That message does not exist.")
    return node


# -- operations ----------------------------------------------------------------------------------------


async def create_branch(
    pool: asyncpg.Pool, session: SessionRow, from_message_id: str, client_request_id: str = ""
) -> str:
    """A new branch continuing from `from_message_id` (empty: from the very start, before the first message), made
    active → its id (the same for a repeated `client_request_id`)."""
    async with pool.acquire() as conn, conn.transaction():
        await sessions.lock_session(conn, session.id)
        if client_request_id:
            existing = await conversations.branch_made_by_request(conn, session.id, client_request_id)
            if existing is not None:
                return str(existing)
        loaded = await load(conn, session.id)
        if from_message_id:
            node = _node(loaded, from_message_id)
            if node.deleted:
                raise InvalidArgument("a branch cannot continue from an erased message", field="from_message_id")
        _refuse_while_running(loaded, [from_message_id] if from_message_id else [], "branch from")
        head = from_message_id or None  # none: a branch from the very start (to say the first message differently)
        branch_id = await conversations.create_branch(conn, session.id, head, head)
        await conversations.activate_branch(conn, session.id, branch_id)
        event_id = await conversations.append_event(
            conn,
            session_id=session.id,
            user_id=session.user_id,
            kind="branched",
            actor="user",
            branch_id=branch_id,
            data={"from_message_id": head, "activate": True, "client_request_id": client_request_id},
        )
        await follow_active_branch(conn, session, event_id)
    return str(branch_id)


async def activate_branch(pool: asyncpg.Pool, session: SessionRow, branch_id: str) -> str:
    try:
        wanted = uuid.UUID(branch_id)
    except ValueError:
        raise InvalidArgument("branch_id must be a UUID", field="branch_id") from None
    async with pool.acquire() as conn, conn.transaction():
        await sessions.lock_session(conn, session.id)
        branch = await conversations.get_branch(conn, wanted)
        if branch is None or branch.session_id != session.id:
            raise NotFound("no such branch in this conversation", user_message="That branch does not exist.")
        loaded = await load(conn, session.id)
        if loaded.conversation.active == str(wanted):
            return branch_id
        if loaded.running:
            _refuse_while_running(loaded, [], "branch from")
        await conversations.activate_branch(conn, session.id, wanted)
        event_id = await conversations.append_event(
            conn,
            session_id=session.id,
            user_id=session.user_id,
            kind="branch_activated",
            actor="user",
            branch_id=wanted,
        )
        loaded.conversation.active = str(wanted)  # the only change: no need to read the tree again
        await follow_active_branch(conn, session, event_id, loaded)
    return branch_id


async def select_alternative(pool: asyncpg.Pool, session: SessionRow, message_id: str) -> tuple[str, bool]:
    """Make an alternative reply current: in the active branch's last exchange, the branch's head moves to it;
    elsewhere a new branch ending at it is made active (the old one stays whole) → (branch id, branched)."""
    async with pool.acquire() as conn, conn.transaction():
        await sessions.lock_session(conn, session.id)
        loaded = await load(conn, session.id)
        conversation = loaded.conversation
        node = _node(loaded, message_id)
        if node.role != "assistant" or node.deleted:
            raise InvalidArgument("only a reply can be selected", field="message_id")
        _refuse_while_running(loaded, [message_id], "select")
        assert conversation.active is not None
        active = uuid.UUID(conversation.active)
        head = conversation.heads.get(conversation.active)
        last_exchange = head == node.parent_id or (
            head is not None and conversation.nodes[head].parent_id == node.parent_id
        )
        if last_exchange:
            if head == message_id:
                return conversation.active, False
            await conversations.set_head(conn, active, message_id)
            event_id = await conversations.append_event(
                conn,
                session_id=session.id,
                user_id=session.user_id,
                kind="alternative_selected",
                actor="user",
                message_id=message_id,
                branch_id=active,
            )
            branch, branched = active, False
        else:
            branch = await conversations.create_branch(conn, session.id, message_id, node.parent_id)
            await conversations.activate_branch(conn, session.id, branch)
            event_id = await conversations.append_event(
                conn,
                session_id=session.id,
                user_id=session.user_id,
                kind="branched",
                actor="user",
                branch_id=branch,
                data={"from_message_id": message_id, "activate": True, "reason": "alternative_selected"},
            )
            branched = True
        await follow_active_branch(conn, session, event_id)
    return str(branch), branched


async def delete_message(
    pool: asyncpg.Pool, peers: Peers, session: SessionRow, message_id: str, *, dry_run: bool
) -> pb.DeleteMessageResponse:
    """A surgical delete's impact — the messages leaving the active branch, the memories and profile fields
    whose only sources they are, the affinity vector before and after — and, unless `dry_run`, the delete:
    the text erased everywhere, the message's place kept, the peers' state following."""
    loaded = await load(pool, session.id)
    node = _node(loaded, message_id)
    if node.deleted:
        raise NotFound("this message was deleted already", user_message="That message was deleted already.")
    erased = erased_by_deleting(loaded.conversation, message_id)
    _refuse_while_running(loaded, erased, "delete")
    response = pb.DeleteMessageResponse(
        dry_run=dry_run,
        erased_message_ids=erased,
        leaving_active_branch=leaving_active_history(loaded.conversation, erased),
    )
    await _preview(peers, loaded, session, erased, response)
    if dry_run:
        return response
    async with pool.acquire() as conn, conn.transaction():
        await sessions.lock_session(conn, session.id)
        current = await load(conn, session.id)
        _refuse_while_running(current, erased, "delete")
        erase_affinity = projection_request(current, session, erased=erased)
        await conversations.erase_messages(conn, session.id, erased)
        event_id = await conversations.append_event(
            conn,
            session_id=session.id,
            user_id=session.user_id,
            kind="message_deleted",
            actor="user",
            message_id=message_id,
            data={"message_ids": erased},
        )
        common: dict[str, Any] = {"user_id": str(session.user_id)}
        await outbox.insert_jobs(
            conn,
            turn_id=event_id,
            user_id=session.user_id,
            session_id=session.id,
            jobs=[
                OutboxJob("memory", memory_pb2.EraseMessagesRequest(**common, message_ids=erased), "erase_messages"),
                OutboxJob("insight", insight_pb2.EraseMessagesRequest(**common, message_ids=erased), "erase_messages"),
            ],
            trace_context={},
        )
        await conversations.recount_session(conn, session.id)
        after = await load(conn, session.id)
        jobs = branch_state_jobs(after, session)
        jobs[0] = OutboxJob("affinity", erase_affinity, call="project_branch")
        await outbox.insert_jobs(
            conn, turn_id=event_id, user_id=session.user_id, session_id=session.id, jobs=jobs, trace_context={}
        )
    return response


async def _preview(
    peers: Peers, loaded: LoadedConversation, session: SessionRow, erased: list[str], response: pb.DeleteMessageResponse
) -> None:
    user_id = str(session.user_id)
    try:
        memories = await peers.preview_memory_erase(
            memory_pb2.EraseMessagesRequest(user_id=user_id, message_ids=erased, dry_run=True)
        )
        layers = {memory_pb2.LAYER_PROFILE: "profile", memory_pb2.LAYER_RELATIONSHIP: "relationship"}
        response.memories.extend(
            pb.DeletedMemory(id=m.id, layer=layers.get(m.layer, ""), category=m.category, content=m.content)
            for m in memories.deleted
        )
    except grpc.aio.AioRpcError:
        response.unavailable.append("memory")
    try:
        profile = await peers.preview_insight_erase(
            insight_pb2.EraseMessagesRequest(user_id=user_id, message_ids=erased, dry_run=True)
        )
        response.profile_fields.extend(profile.removed_fields)
    except grpc.aio.AioRpcError:
        response.unavailable.append("insight")
    try:
        projected = await peers.preview_projection(projection_request(loaded, session, erased=erased, dry_run=True))
        response.affinity_before.CopyFrom(projected.before)
        response.affinity_after.CopyFrom(projected.state)
    except grpc.aio.AioRpcError:
        response.unavailable.append("affinity")


async def begin_regenerate(
    pool: asyncpg.Pool, session: SessionRow, user_message_id: str, client_msg_id: str, actor: str
) -> tuple[str, str, bool]:
    """The begin of a regenerate: a new answer to a stored user message (see turns.begin_answer); when that
    made a new branch active, the peers follow it. → (turn_id, user_message_id, created)."""
    async with pool.acquire() as conn, conn.transaction():
        await sessions.lock_session(conn, session.id)
        before = await conversations.active_branch(conn, session.id)
        turn_id, created = await turns.begin_answer(
            conn,
            session_id=session.id,
            user_id=session.user_id,
            user_message_id=user_message_id,
            client_msg_id=client_msg_id,
            actor=actor,
        )
        if created:
            loaded = await load(conn, session.id)
            others = loaded.running - {turn_id}
            if others:
                raise Aborted(
                    "a reply is still being generated in this conversation",
                    reason="conflict",
                    user_message="A reply is still being written. Try again when it is done.",
                )
            after = await conversations.active_branch(conn, session.id)
            if after.id != before.id:
                await follow_active_branch(conn, session, f"regenerate-{turn_id}")
    return turn_id, user_message_id, created


def resolve_user_message(loaded: LoadedConversation, message_id: str) -> Node:
    """The user message a regenerate answers again: the message itself, or the one a reply answered."""
    node = _node(loaded, message_id)
    if node.deleted:
        raise InvalidArgument("an erased message cannot be answered again", field="message_id")
    if node.role == "assistant":
        if node.parent_id is None:
            raise InvalidArgument("this reply answers no message", field="message_id")
        node = loaded.conversation.nodes[node.parent_id]
    if node.role != "user" or node.deleted:
        raise InvalidArgument("only a user message, or a reply to one, can be regenerated", field="message_id")
    return node
