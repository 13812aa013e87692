"""`rapport bench memory` on a tiny run: the generated dataset is what the benchmark promises, both
systems are scored on it in one run through the real memory service, and the report section is
written into docs/benchmarks.md's shape without touching the other sections."""
from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bench.memory import (  # noqa: E402
    SECTION_TITLE,
    RawTurnIndex,
    ScratchDatabase,
    render_section,
    run_split,
    write_section,
)
from tools.bench.memory_dataset import CATEGORIES, generate  # noqa: E402

from services.memory.server import configured_embedder  # noqa: E402


def test_the_dataset_has_300_questions_with_gold_evidence_per_split_and_the_splits_differ() -> None:
    today = datetime.now(UTC).date()
    tune, heldout = generate("tune", today, 12), generate("heldout", today, 12)
    for dataset in (tune, heldout):
        assert len(dataset.questions) >= 300 and set(Counter(q.category for q in dataset.questions)) == set(CATEGORIES)
        for conversation in dataset.conversations:
            ids = {m.id for m in conversation.messages()}
            assert all(q.gold and set(q.gold) <= ids for q in conversation.questions)
            assert len(conversation.sessions) >= 8
            assert (conversation.sessions[-1].day - conversation.sessions[0].day).days >= 35
        persona_gold = [g for q in dataset.questions if q.category == "persona" for g in q.gold]
        assert all(g.startswith("p-") for g in persona_gold)  # the persona's own messages
    said = {m.text for c in tune.conversations for m in c.messages() if m.role == "user"}
    said_heldout = {m.text for c in heldout.conversations for m in c.messages() if m.role == "user"}
    assert len(said & said_heldout) == 0
    asked = {q.text for q in tune.questions} & {q.text for q in heldout.questions}
    assert asked == set()
    assert generate("tune", today, 2).questions == generate("tune", today, 2).questions  # deterministic


def test_the_baseline_finds_a_verbatim_message_by_words_and_by_meaning() -> None:
    import numpy as np

    texts = ["I adopted a kitten called Miso.", "The weather is grey.", "Work was long today."]
    vectors = np.eye(3)
    index = RawTurnIndex(["a", "b", "c"], texts, vectors)
    # BM25 finds "Miso" in a, the vector points at b: fused, a (first and second) beats b (first only).
    assert index.search("Miso", np.array([0.0, 1.0, 0.0]), k=2) == ["a", "b"]
    assert index.bm25("what is Miso doing") == [0] and index.bm25("nothing matches") == []


async def test_a_tiny_run_scores_rapport_and_the_baseline_and_writes_its_section(postgres_admin_url: str,
                                                                                  tmp_path: Path) -> None:
    embedder = configured_embedder({})
    dataset = generate("tune", datetime.now(UTC).date(), 1)
    async with ScratchDatabase(postgres_admin_url, "rapport_bench_memory_test") as url:
        result = await run_split(url, dataset, embedder)
    assert result.questions == len(dataset.questions) and result.turns > 50 and result.memories > 0
    for system in ("rapport", "baseline"):
        assert result.score(system).questions == result.questions
        assert 0 <= result.score(system).all_at_k <= result.score(system).any_at_k <= 100
    assert result.score("rapport", "persona").any_hits > 0
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Turn\n\nkept\n")
    write_section(docs, render_section([result], embedder.model, datetime.now(UTC)))
    write_section(docs, render_section([result], embedder.model, datetime.now(UTC)))
    text = docs.read_text()
    assert text.count(SECTION_TITLE) == 1 and "## Turn\n\nkept" in text and "| tune | **overall** |" in text
