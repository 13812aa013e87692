"""One turn = one trace: the gateway's HTTP span is the root, and spans from the orchestrator, affinity,
memory, insight and Postgres hang under it with correct parents (in-memory exporter)."""
from __future__ import annotations

import uuid

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.stack import Stack, wait_for


async def test_one_turn_is_one_trace_rooted_at_the_gateway(stack: Stack, spans: InMemorySpanExporter, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    spans.clear()
    frames = await stack.send(user, chat["session_id"], "I love hiking in the mountains near Lisbon.")
    trace_id = frames[-1]["trace_id"]

    async def post_processed() -> bool:
        return await db.fetchval("SELECT count(*) FROM chat.outbox WHERE status = 'done'") == 3

    await wait_for(post_processed)

    async def all_spans_ended() -> list:
        mine = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
        names = {s.name for s in mine}
        wanted = {"/rapport.memory.v1.MemoryService/IngestTurn", "/rapport.insight.v1.InsightService/ExtractTurn",
                  "/rapport.affinity.v1.AffinityService/ApplyTurn"}
        return mine if wanted <= names else []

    turn_spans = await wait_for(all_spans_ended)
    by_id = {s.context.span_id: s for s in turn_spans}
    roots = [s for s in turn_spans if s.parent is None]
    assert len(roots) == 1, [s.name for s in roots]
    root = roots[0]
    assert root.name.startswith("POST /comp/chat/") and root.kind.name == "SERVER"

    def ancestors(span):  # type: ignore[no-untyped-def]
        chain = []
        while span.parent is not None:
            span = by_id[span.parent.span_id]  # KeyError = a parent outside this trace
            chain.append(span.name)
        return chain

    def server_span(rpc: str):  # type: ignore[no-untyped-def]
        matches = [s for s in turn_spans if s.name == rpc and s.kind.name == "SERVER"]
        assert matches, f"no server span {rpc}"
        return matches[0]

    send = server_span("/rapport.orchestrator.v1.OrchestratorService/SendMessage")
    assert by_id[send.parent.span_id].kind.name == "CLIENT"  # the gateway's gRPC client span
    assert root.name in ancestors(send)
    # One affinity read per turn (state, bands and ghost decision together) since issue 16 asked for it.
    for rpc in ("/rapport.affinity.v1.AffinityService/ReadTurnState",
                "/rapport.memory.v1.MemoryService/Recall", "/rapport.insight.v1.InsightService/GetProfile"):
        span = server_span(rpc)
        chain = ancestors(span)
        assert send.name in chain and chain[-1] == root.name, (rpc, chain)
    for rpc in ("/rapport.affinity.v1.AffinityService/ApplyTurn", "/rapport.memory.v1.MemoryService/IngestTurn",
                "/rapport.insight.v1.InsightService/ExtractTurn"):
        chain = ancestors(server_span(rpc))
        assert chain[-1] == root.name and any(name.startswith("post_process") for name in chain), (rpc, chain)
    db_spans = [s for s in turn_spans if s.attributes and s.attributes.get("db.system") == "postgresql"]
    assert db_spans, "no Postgres spans in the turn's trace"
    services_with_db = {ancestors(s)[0] for s in db_spans if ancestors(s)}
    assert any("AffinityService" in name for name in services_with_db)
    assert any("MemoryService" in name for name in services_with_db)
    assert all(ancestors(s)[-1] == root.name for s in db_spans)
    llm = [s for s in turn_spans if s.name == "llm.chat"]
    assert llm and send.name in ancestors(llm[0])
