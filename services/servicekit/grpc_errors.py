"""Domain errors → gRPC status, in one place, so every server maps errors the same way.

Every error a service ends a call with carries, besides its status code and message:

- `google.rpc.Status` details (the `grpc-status-details-bin` trailer, read with `grpc_status.rpc_status`):
  an `ErrorInfo` whose `reason` is the error contract's code (`ERROR_CODES`: the same strings as the
  HTTP error contract, e.g. `not_found`, `rate_limited`, `duplicate_in_progress`; domain `rapport.dev`;
  `metadata` holds `field` and the error's extra values), a `LocalizedMessage` with the text safe to
  show a person, and a `RetryInfo` on RESOURCE_EXHAUSTED and UNAVAILABLE;
- the same facts as `rapport-*` trailing metadata, which the gateway reads (`trailing_details`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import asyncpg
import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

log = logging.getLogger("rapport.grpc.errors")


ERROR_DOMAIN = "rapport.dev"
RETRY_AFTER_SECONDS = 2  # what RetryInfo (and the gateway's Retry-After) suggests
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# The error contract's code of each status: the `code` of an HTTP error body (gateway/errors.py) and the
# `reason` of a gRPC error's ErrorInfo. A status not listed is `internal`.
ERROR_CODES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_payload",
    grpc.StatusCode.FAILED_PRECONDITION: "invalid_payload",
    grpc.StatusCode.OUT_OF_RANGE: "invalid_payload",
    grpc.StatusCode.UNAUTHENTICATED: "unauthorized",
    grpc.StatusCode.PERMISSION_DENIED: "forbidden",
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.ALREADY_EXISTS: "conflict",
    grpc.StatusCode.ABORTED: "conflict",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limited",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.CANCELLED: "cancelled",
    grpc.StatusCode.UNIMPLEMENTED: "not_implemented",
}
RETRYABLE = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})


class ServiceError(Exception):
    """An error with a gRPC status; `user_message` is safe to show a person."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        user_message: str | None = None,
        field: str | None = None,
        reason: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.extra = extra or {}
        self.message = message
        self.user_message = user_message or message
        self.field = field
        self.reason = reason
        self.retry_after: float | None = None


class Unauthenticated(ServiceError):
    """No credentials, or credentials that are not valid (missing, malformed, expired, revoked)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


def error_code(error: ServiceError) -> str:
    """The error contract's code: the error's own reason (e.g. `duplicate_in_progress`), else its status's."""
    return error.reason or ERROR_CODES.get(error.code, "internal")


def rich_status(error: ServiceError) -> status_pb2.Status:
    """The `google.rpc.Status` of an error: ErrorInfo, LocalizedMessage and (when retryable) RetryInfo."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    metadata = {key.replace("-", "_"): value for key, value in error.extra.items()}
    if error.field:
        metadata["field"] = error.field
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=error_code(error), domain=ERROR_DOMAIN, metadata=metadata)
    )
    status.details.add().Pack(error_details_pb2.LocalizedMessage(locale="en", message=error.user_message))
    if error.code in RETRYABLE:
        delay = error.retry_after if error.retry_after is not None else RETRY_AFTER_SECONDS
        retry = duration_pb2.Duration()
        retry.FromNanoseconds(int(delay * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=retry))
    return status


def trailing_details(error: ServiceError) -> tuple[tuple[str, str], ...]:
    md = [("rapport-user-message", error.user_message.encode("ascii", "backslashreplace").decode())]
    if error.field:
        md.append(("rapport-field", error.field))
    if error.reason:
        md.append(("rapport-reason", error.reason))
    md.extend((f"rapport-{key}", value) for key, value in error.extra.items())
    return tuple(md)


def parse_uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(f"{field} must be a UUID", field=field) from None


F = TypeVar("F", bound=Callable[..., Any])


async def abort_with(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """End the call with the status an error maps to (raises, as `context.abort` does):
    ServiceError → its status and details; a peer's failure → its status and details passed on; text
    PostgreSQL cannot store or a ValueError → INVALID_ARGUMENT."""
    if isinstance(error, ServiceError):
        await _abort(context, error)
    if isinstance(error, grpc.aio.AioRpcError):
        passed_on = tuple(
            (k, v) for k, v in (error.trailing_metadata() or ()) if k.startswith("rapport-") or k == STATUS_DETAILS_KEY
        )
        if any(k == STATUS_DETAILS_KEY for k, _ in passed_on):
            await context.abort(error.code(), error.details() or "", trailing_metadata=passed_on)
        # No details of ours (a transport failure): the status and message are passed on, with details added.
        peer_failure = ServiceError(
            error.details() or "peer call failed", user_message="A backend service failed. Please try again."
        )
        peer_failure.code = error.code()
        await _abort(context, peer_failure, passed_on)
    if isinstance(error, asyncpg.exceptions.DataError):
        await _abort(context, InvalidArgument(f"invalid value: {error}", user_message=str(error)))
    if isinstance(error, DATABASE_BUSY):
        log.warning("database busy: %s", error)
        await _abort(
            context,
            Unavailable(
                "the database is busy (a lock or statement timeout)",
                user_message="That took too long. Please try again.",
            ),
        )
    if isinstance(error, DATABASE_DOWN):
        log.warning("database unavailable: %s: %s", type(error).__name__, error)
        await _abort(
            context,
            Unavailable(
                "the database is unavailable", user_message="The service is briefly unavailable. Please try again."
            ),
        )
    if isinstance(error, ValueError):
        await _abort(context, InvalidArgument(str(error)))
    raise error


async def _abort(
    context: grpc.aio.ServicerContext, error: ServiceError, metadata: tuple[tuple[str, str], ...] | None = None
) -> None:
    details = trailing_details(error) if metadata is None else metadata
    await context.abort(
        error.code,
        error.message,
        trailing_metadata=(*details, (STATUS_DETAILS_KEY, rich_status(error).SerializeToString())),
    )


# A lock wait or statement past its timeout (DB_LOCK_TIMEOUT_SECS, DB_STATEMENT_TIMEOUT_SECS), and an outage: retryable.
DATABASE_BUSY = (asyncpg.exceptions.LockNotAvailableError, asyncpg.exceptions.QueryCanceledError)
DATABASE_DOWN = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    ConnectionError,
    OSError,
)
_MAPPED = (ServiceError, grpc.aio.AioRpcError, asyncpg.exceptions.DataError, ValueError, *DATABASE_BUSY, *DATABASE_DOWN)


def maps_errors(method: F) -> F:
    """Decorator for servicer methods, unary or server-streaming (async generators): errors are mapped
    by `abort_with`; anything else propagates (grpc answers UNKNOWN and logs it)."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except _MAPPED as error:
                await abort_with(context, error)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except _MAPPED as error:
            await abort_with(context, error)

    return wrapper  # type: ignore[return-value]
