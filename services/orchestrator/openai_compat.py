"""The OpenAI-compatible chat (gateway.md "OpenAI-compatible API"), orchestrator side.

`ChatCompletions.prepare` turns one request into a turn of the ordinary machinery: the model names a
persona; the conversation (X-Chat-Id, `user`, or a fingerprint) names a session of user × persona;
the client's whole transcript is reconciled with the stored one (`domain/transcript.py` decides,
this module reads and writes, under the session's row lock). The server then runs it through the
same `_start_or_attach` as SendMessage (validation, idempotency by client_msg_id, detached
generation, frames, model chain, post-process outbox). Utility calls are answered by the LLM
directly and stored nowhere (`answer_utility`).

What the turn is given besides the user message: the client's own messages (`ClientPrompt`: its
character, example dialogue, post-history instruction, tool exchange — placed by the prompt assembly)
and the provider parameters the client sent (`provider_params`: response_format, tools, tool_choice,
parallel_tool_calls, logit_bias, forwarded as sent). The offline responder cannot call tools: a request
with `tools` is refused (400 naming `tools`) before anything is stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
from ulid import ULID

from rapport.affinity.v1 import affinity_pb2
from rapport.orchestrator.v1 import orchestrator_pb2 as pb
from services.contracts import frames
from services.contracts.frames import Frame
from services.servicekit.grpc_errors import Aborted, InvalidArgument, NotFound
from services.servicekit.model_chain import Attempt, ChainFailed, run_model_chain
from services.servicekit.telemetry import current_trace_id

from .domain.transcript import (
    ClientMessage,
    ClientPrompt,
    ClientTranscript,
    StoredMessage,
    TranscriptError,
    TranscriptPlan,
    conversation_key,
    derived_client_msg_id,
    instruction_after_answer,
    normalized,
    plan_over_branches,
    split_transcript,
    utility_reason,
    validate_completion_request,
)
from .domain.turn_request import TurnRequest, TurnRequestError, validate_turn_request
from .live_turns import FrameLog, LiveTurns, TooManyTurns
from .peers import Peers
from .store import catalog, conversations, new_message_id, sessions, turns
from .store.rows import MessageRow, SessionRow
from .turn import Streamed, TurnEngine, generation_failure, post_process_jobs, stream_reply

log = logging.getLogger("rapport.openai_compat")

BeginTurn = Callable[[], Awaitable[tuple[str, str, bool]]]
CONTINUATION_MIN_MESSAGES = 3  # a fingerprint miss with this many chat messages may be a trimmed transcript
_PLACEHOLDER_MSG_ID = "oa-" + "0" * 32  # validates the content before the real key is known
PROVIDER_JSON_PARAMS = ("response_format", "tools", "tool_choice", "logit_bias")


@dataclass(frozen=True)
class Reconciled:
    """The client's transcript met the stored conversation: the plan, on which branch, and the turn to run."""

    plan: TranscriptPlan
    branch_id: str
    branched: bool
    client_msg_id: str
    begin: BeginTurn | None  # None: the ordinary begin (a new user message at the branch's head)
    post_process: bool


def _stored(message: MessageRow) -> StoredMessage:
    return StoredMessage(message.id, message.role, message.content, message.kind == "ghost")


def _in_transcript(message: MessageRow) -> bool:
    """What a client's transcript holds of a branch: user and assistant messages, not erased ones."""
    return message.role in ("user", "assistant") and message.deleted_at is None


@dataclass(frozen=True)
class PreparedCompletion:
    """A request made ready: a turn to run (session set) or a utility call (session None)."""

    conversation: pb.ChatCompletionConversation
    transcript: ClientTranscript
    session: SessionRow | None = None
    turn_request: TurnRequest | None = None
    begin: BeginTurn | None = None  # None: the ordinary begin (a new user message)
    post_process: bool = True
    provider_params: dict[str, Any] = dataclasses.field(default_factory=dict)  # forwarded to the model as sent

    @property
    def client_prompt(self) -> ClientPrompt:
        return self.transcript.prompt


def client_messages(request: pb.ChatCompletionRequest) -> list[ClientMessage]:
    return [ClientMessage(m.role, m.content, m.name, m.tool_calls_json, m.tool_call_id) for m in request.messages]


def provider_params(request: pb.ChatCompletionRequest) -> dict[str, Any]:
    """The provider parameters of the request (`ProviderParams`), decoded; those not sent are left out."""
    sent = request.provider_params
    params: dict[str, Any] = {}
    for name in PROVIDER_JSON_PARAMS:
        text = getattr(sent, f"{name}_json")
        if text:
            try:
                params[name] = json.loads(text)
            except ValueError:
                raise InvalidArgument(
                    f"{name}: not valid JSON", field=name, user_message=f"{name}: not valid JSON"
                ) from None
    if sent.HasField("parallel_tool_calls"):
        params["parallel_tool_calls"] = sent.parallel_tool_calls
    return params


class ChatCompletions:
    def __init__(self, pool: asyncpg.Pool, peers: Peers, engine: TurnEngine, live: LiveTurns) -> None:
        self.pool = pool
        self.peers = peers
        self.engine = engine
        self.live = live

    # -- the request --------------------------------------------------------------------------

    async def prepare(self, request: pb.ChatCompletionRequest, user_id: uuid.UUID) -> PreparedCompletion:
        """Validate, resolve the persona and the conversation, reconcile the transcript."""
        messages = client_messages(request)
        try:
            model, chat_id, client_user = validate_completion_request(
                request.model, messages, request.chat_id, request.client_user
            )
        except TranscriptError as error:
            raise InvalidArgument(str(error), field=error.field, user_message=str(error)) from None
        persona = await catalog.find_persona(self.pool, model)
        if persona is None:
            raise NotFound(
                f"no persona named {model!r}",
                reason="model_not_found",
                user_message=f"The model '{model}' does not exist: use a persona name from /v1/models.",
            )
        params = provider_params(request)
        if params.get("tools") and self.engine.offline_model:
            raise InvalidArgument(
                "tools: the offline responder cannot call tools",
                field="tools",
                user_message="tools: the offline responder cannot call tools; configure a model that can "
                "(LLM_BASE_URL or OPENROUTER_API_KEY).",
            )
        transcript = split_transcript(messages)
        conversation = pb.ChatCompletionConversation(persona_id=str(persona.id), persona_name=persona.name)
        max_tokens = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else None
        reason = utility_reason(
            transcript, marked=request.utility, named=bool(chat_id or client_user), max_tokens=max_tokens
        )
        if reason is not None:
            conversation.handling, conversation.utility_reason = "utility", reason
            return PreparedCompletion(conversation, transcript, provider_params=params)
        turn_request = self._validated_turn(messages, transcript)
        key = conversation_key(chat_id, client_user, transcript)
        session, is_new = await self._session_for(user_id, persona.id, key, transcript)
        reconciled = await self._reconcile(session, transcript)
        if reconciled is None:  # an instruction after an answered message: summarize, impersonate
            conversation.handling, conversation.utility_reason = "utility", "instruction_after_reply"
            return PreparedCompletion(conversation, transcript, provider_params=params)
        conversation.session_id = str(session.id)
        conversation.handling = reconciled.plan.handling
        conversation.imported_messages = len(reconciled.plan.imports)
        conversation.is_new_session = is_new
        conversation.branch_id = reconciled.branch_id
        conversation.branched = reconciled.branched
        return PreparedCompletion(
            conversation,
            transcript,
            session,
            dataclasses.replace(turn_request, client_msg_id=reconciled.client_msg_id),
            reconciled.begin,
            reconciled.post_process,
            params,
        )

    def _validated_turn(self, messages: list[ClientMessage], transcript: ClientTranscript) -> TurnRequest:
        """The user message to answer passes SendMessage's own validation before anything is written."""
        try:
            return validate_turn_request(
                content=transcript.chat[-1].content,
                client_msg_id=_PLACEHOLDER_MSG_ID,
                known_tiers=self.engine.model_config.tier_names(),
            )
        except TurnRequestError as error:
            index = max(i for i, m in enumerate(messages) if m.role == "user")
            field = f"messages[{index}].content"
            raise InvalidArgument(f"{field}: {error}", field=field, user_message=str(error)) from None

    # -- the conversation → a session ------------------------------------------------------------

    async def _session_for(
        self, user_id: uuid.UUID, persona_id: uuid.UUID, key: str, transcript: ClientTranscript
    ) -> tuple[SessionRow, bool]:
        """The session of user × persona this conversation is stored in; a new one (affinity opened) if none."""
        async with self.pool.acquire() as conn, conn.transaction():
            instance_id = await catalog.ensure_instance(conn, user_id, persona_id)
            session_id = await sessions.session_by_client_key(conn, instance_id, key)
            if session_id is None and key.startswith("fingerprint:"):
                session_id = await continued_session(conn, instance_id, transcript)
            created = False
            if session_id is None:
                session_id = await sessions.create_client_session(conn, user_id, instance_id, key)
                created = session_id is not None
                if session_id is None:  # a concurrent first request created it
                    session_id = await sessions.session_by_client_key(conn, instance_id, key)
        assert session_id is not None
        if created:
            try:
                await self.peers.open_session(
                    affinity_pb2.OpenSessionRequest(
                        user_id=str(user_id), session_id=str(session_id), instance_id=str(instance_id)
                    )
                )
            except grpc.aio.AioRpcError:
                await sessions.delete_session(self.pool, session_id)  # never leave a half-opened session
                raise
        session = await sessions.get_session(self.pool, session_id)
        assert session is not None
        return session, created

    # -- the transcript → a branch and a plan ---------------------------------------------------------

    async def _reconcile(self, session: SessionRow, transcript: ClientTranscript) -> Reconciled | None:
        """Find the branch the client's transcript is and apply the plan on it, under the session lock:
        activate that branch; or fork a new one from the last message shared with the client, importing the
        client's differing messages (post-processed once). Nothing stored is removed. None = the request is
        an instruction after an answered message (a utility call): nothing is written."""
        imported_until: str | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            await sessions.lock_session(conn, session.id)
            active = await conversations.active_branch(conn, session.id)
            branches = []
            for branch in await conversations.list_branches(conn, session.id):
                path = await conversations.path_to(conn, branch.head_id)
                branches.append((str(branch.id), [_stored(m) for m in path if _in_transcript(m)]))
            branch_key, plan = plan_over_branches(branches, str(active.id), transcript.chat)
            branch_id = uuid.UUID(branch_key)
            if plan.handling != "new_turn" and instruction_after_answer(
                transcript, await sessions.post_history(conn, session.id)
            ):
                return None
            await sessions.remember_post_history(conn, session.id, transcript.post_history)
            branched = False
            if branch_id != active.id:
                await refuse_while_generating(conn, session.id)
                await self._activate(conn, session, branch_id)
            if plan.handling == "new_turn":
                anchor = plan.anchor
                if plan.forks:
                    await refuse_while_generating(conn, session.id)
                    branch_id = await conversations.create_branch(conn, session.id, plan.fork_after, plan.fork_after)
                    branched = True
                    await conversations.activate_branch(conn, session.id, branch_id)
                    await conversations.append_event(
                        conn,
                        session_id=session.id,
                        user_id=session.user_id,
                        kind="branched",
                        actor="client",
                        branch_id=branch_id,
                        data={"from_message_id": plan.fork_after, "activate": True, "reason": "transcript"},
                    )
                    anchor = plan.fork_after
                    if plan.imports:
                        ids = await self._import(conn, session, branch_id, plan.fork_after, plan.imports)
                        imported_until = anchor = ids[-1]
                    await conversations.recount_session(conn, session.id)
                client_msg_id = derived_client_msg_id(str(session.id), anchor or "start", plan.user_message)
                result = Reconciled(plan, str(branch_id), branched, client_msg_id, None, True)
            else:
                assert plan.user_message_id is not None
                attempts = await turns.turns_answering(conn, session.id, plan.user_message_id)
                # Post-process runs once per user message: not again when a reply to it was already processed.
                post_process = not any(t.post_processed for t in attempts)
                if plan.handling == "resume" and attempts and attempts[-1].status != "done":
                    client_msg_id = attempts[-1].client_msg_id  # follow or retry the turn in progress / failed
                else:
                    client_msg_id = derived_client_msg_id(
                        str(session.id), plan.anchor or "start", plan.user_message, generation=len(attempts)
                    )
                user_message_id = plan.user_message_id

                async def begin() -> tuple[str, str, bool]:
                    async with self.pool.acquire() as conn, conn.transaction():
                        await sessions.lock_session(conn, session.id)
                        turn_id, created = await turns.begin_answer(
                            conn,
                            session_id=session.id,
                            user_id=session.user_id,
                            user_message_id=user_message_id,
                            client_msg_id=client_msg_id,
                            actor="client",
                        )
                        if created:
                            await refuse_while_generating(conn, session.id, except_turn=turn_id)
                    return turn_id, user_message_id, created

                result = Reconciled(plan, str(branch_id), branched, client_msg_id, begin, post_process)
        if imported_until is not None:
            await _after_millisecond_of(imported_until)
        return result

    async def _activate(self, conn: asyncpg.Connection, session: SessionRow, branch_id: uuid.UUID) -> None:
        await conversations.activate_branch(conn, session.id, branch_id)
        await conversations.append_event(
            conn,
            session_id=session.id,
            user_id=session.user_id,
            kind="branch_activated",
            actor="client",
            branch_id=branch_id,
            data={"reason": "transcript"},
        )
        await conversations.recount_session(conn, session.id)

    async def _import(
        self,
        conn: asyncpg.Connection,
        session: SessionRow,
        branch_id: uuid.UUID,
        after: str | None,
        messages: Sequence[ClientMessage],
    ) -> list[str]:
        """The client's messages taken over after `after`; each user message among them is post-processed
        once, with the reply that follows it in the client's transcript."""
        ids = await sessions.import_messages(
            conn, session, [(m.role, m.content) for m in messages], parent_id=after, branch_id=branch_id
        )
        now = datetime.now(UTC)
        previous: datetime | None = None
        for index, message in enumerate(messages):
            if message.role != "user":
                continue
            reply = (
                messages[index + 1] if index + 1 < len(messages) and messages[index + 1].role == "assistant" else None
            )
            turn_id = new_message_id()
            jobs = post_process_jobs(
                session,
                turn_id=turn_id,
                user_message_id=ids[index],
                user_text=message.content,
                reply_id=ids[index + 1] if reply is not None else "",
                reply_text=reply.content if reply is not None else "",
                user_message_at=now,
                previous_user_message_at=previous,
                occurred_at=now,
            )
            await turns.record_imported_turn(
                conn,
                turn_id=turn_id,
                session_id=session.id,
                user_id=session.user_id,
                user_message_id=ids[index],
                branch_id=branch_id,
                jobs=jobs,
            )
            previous = now
        return ids

    # -- utility calls -------------------------------------------------------------------------------

    def answer_utility(
        self, user_id: uuid.UUID, request: pb.ChatCompletionRequest, sampling: dict[str, Any]
    ) -> AsyncIterator[Frame]:
        """Answer with the LLM, the client's messages as they are; nothing is stored. Counts against the
        user's concurrent turns (waiting in the same queue; over the cap: a `rate_limited` error frame)."""
        messages = [m.for_model() for m in client_messages(request)]
        return self._utility_frames(str(user_id), messages, sampling)

    async def _utility_frames(
        self, user_key: str, messages: list[dict[str, Any]], sampling: dict[str, Any]
    ) -> AsyncIterator[Frame]:
        try:
            await self.live.admit(user_key, queue=True)
        except TooManyTurns as error:
            yield frames.error("rate_limited", str(error), "Too many replies at once. Wait a moment.", True)
            return
        frame_log = FrameLog()

        async def generate() -> None:
            try:
                await self._answer_utility(messages, sampling, frame_log.publish)
            finally:
                self.live.release(user_key)
                await frame_log.close()

        task = asyncio.create_task(generate())
        try:
            async for frame in frame_log.follow():
                yield frame
        finally:
            task.cancel()  # the client went away: nothing is stored, so nothing is left to finish

    async def _answer_utility(
        self, messages: list[dict[str, Any]], sampling: dict[str, Any], emit: Callable[[Frame], Awaitable[None]]
    ) -> None:
        resolved = self.engine.chat_task(None)
        params = {**resolved.sampling_params(), **{k: v for k, v in sampling.items() if v is not None}}
        started = False  # once text reached the client, another model cannot take over

        async def attempt(this: Attempt) -> None:
            nonlocal started
            message_id = new_message_id()
            streamed = Streamed()

            async def on_piece(content: str, calls: list[dict[str, Any]]) -> None:
                nonlocal started
                if not started:
                    await emit(frames.meta(message_id, "reply", this.model))
                    started = True
                await emit(frames.delta(message_id, content, calls))

            await stream_reply(self.engine.llm, this.model, messages, params, streamed, on_piece)
            if not started:
                await emit(frames.meta(message_id, "reply", this.model))
                started = True
            await emit(
                frames.done(
                    message_id,
                    usage=self.engine.visible_usage(streamed.usage),
                    generation_id=streamed.generation_id,
                    finish_reason=streamed.outcome,
                )
            )
            await emit(
                frames.final(prompt_injected=[], tier="", retries=this.index, degraded=[], trace_id=current_trace_id())
            )

        try:
            await run_model_chain(
                self.engine.model_chain(resolved), attempt, try_next=lambda failure: not started, task="utility"
            )
        except ChainFailed as failed:
            await emit(generation_failure(failed, params).error_frame("I couldn't reply just now."))


# ---- the conversation's transcript (queries in store.sessions / store.turns) --------------------------


async def continued_session(
    conn: asyncpg.Connection, instance_id: uuid.UUID, transcript: ClientTranscript
) -> uuid.UUID | None:
    """A fingerprinted session this transcript continues although its fingerprint changed: a client that trims
    its oldest messages no longer sends the first user message, and one whose user fixed a typo in it sends
    another. The most recently active fingerprinted session of the instance holding the client's first user
    message or one of the character's replies it sends (Rapport wrote those: they name the conversation)."""
    first_user = next((m.content for m in transcript.chat if m.role == "user"), "")
    if len(transcript.chat) < CONTINUATION_MIN_MESSAGES or not first_user:
        return None
    replies = [normalized(m.content) for m in transcript.chat if m.role == "assistant" and m.content.strip()]
    return await sessions.fingerprinted_session_holding(conn, instance_id, [normalized(first_user), *replies])


async def refuse_while_generating(conn: asyncpg.Connection, session_id: uuid.UUID, except_turn: str = "") -> None:
    """Removing messages under a turn that is still generating would orphan its reply: refuse (409)."""
    if await turns.other_turn_running(conn, session_id, except_turn):
        raise Aborted(
            "a reply is still being generated in this conversation",
            reason="conflict",
            user_message="A reply is still being written. Try again when it is done.",
        )


async def _after_millisecond_of(message_id: str) -> None:
    """Wait (at most a few ms) until ids minted now sort after `message_id`."""
    while ULID().milliseconds <= ULID.from_str(message_id).milliseconds:  # noqa: ASYNC110 (a clock, not an event)
        await asyncio.sleep(0.001)
