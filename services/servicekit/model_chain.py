"""The one way to try a task's models in order: the turn's streamed reply, an OpenAI-compatible utility
call and every task LLM call (judge, evaluator, extraction, summaries) go through `run_model_chain`.

An attempt either returns a result or fails; a failure is described by `ModelFailure` (a code of the
error contract, a message, whether a retry could help). The next model is tried while one is left and
the caller's `try_next` allows it (a streamed answer that already reached the client cannot switch
models, for example); otherwise `ChainFailed` carries the last failure, its cause and how many models
were tried after the first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import openai

from .llm import is_retryable_status

log = logging.getLogger("rapport.model_chain")

T = TypeVar("T")


class ModelFailure(Exception):
    """One model's attempt failed. `code` is an error-contract code: rate_limited, upstream_unavailable, timeout.
    `status` is the provider's HTTP status (None: no answer), `param` the request parameter its error names."""

    def __init__(
        self, code: str, message: str, retryable: bool = True, status: int | None = None, param: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.param = param


class ChainFailed(Exception):
    """Every model that could be tried failed; `failure` is the last one, `cause` the error behind it."""

    def __init__(self, failure: ModelFailure, cause: BaseException, retries: int) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.cause = cause
        self.retries = retries


def model_failure(model: str, error: BaseException) -> ModelFailure:
    """What an attempt's error means for the chain (HTTP status → retryable, timeouts, connection errors)."""
    if isinstance(error, ModelFailure):
        return error
    if isinstance(error, openai.APIStatusError):
        code = "rate_limited" if error.status_code == 429 else "upstream_unavailable"
        detail, param = _provider_error(error)
        return ModelFailure(
            code,
            f"{model}: HTTP {error.status_code}" + (f" ({detail})" if detail else ""),
            is_retryable_status(error.status_code),
            status=error.status_code,
            param=param,
        )
    if isinstance(error, openai.APITimeoutError | asyncio.TimeoutError):
        return ModelFailure("timeout", f"{model}: timed out")
    return ModelFailure("upstream_unavailable", f"{model}: {type(error).__name__}")


def _provider_error(error: openai.APIStatusError) -> tuple[str, str]:
    """The provider's own error message (shortened) and the parameter it names, from OpenAI's error shape."""
    body = error.body if isinstance(error.body, dict) else {}
    detail = body["error"] if isinstance(body.get("error"), dict) else body  # the openai client unwraps it
    message = str(detail.get("message") or "")[:PROVIDER_MESSAGE_CHARS]
    return message, str(detail.get("param") or "")


PROVIDER_MESSAGE_CHARS = 300
CHAIN_ERRORS = (ModelFailure, openai.APIError, asyncio.TimeoutError)


@dataclass(frozen=True)
class Attempt:
    model: str
    index: int
    is_last: bool


async def run_model_chain(
    models: Sequence[str],
    attempt: Callable[[Attempt], Awaitable[T]],
    *,
    try_next: Callable[[ModelFailure], bool] = lambda failure: True,
    before_next: Callable[[Attempt, ModelFailure], Awaitable[None]] | None = None,
    task: str = "",
) -> T:
    """`attempt` each model in turn until one returns. `before_next` runs between a failed attempt and the
    next one (the turn closes the failed attempt's frames there)."""
    if not models:
        raise ValueError("a model chain needs at least one model")
    for index, model in enumerate(models):
        current = Attempt(model, index, index == len(models) - 1)
        try:
            return await attempt(current)
        except CHAIN_ERRORS as error:
            failure = model_failure(model, error)
            if current.is_last or not try_next(failure):
                raise ChainFailed(failure, error, retries=index) from error
            log.warning("%s: model %s failed (%s), trying the next one", task or "llm", model, failure.message)
            if before_next is not None:
                await before_next(current, failure)
    raise AssertionError("unreachable")
