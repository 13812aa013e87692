"""Domain errors → gRPC status, in one place, so every server maps errors the same way."""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import asyncpg
import grpc

log = logging.getLogger("rapport.grpc.errors")


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
        context.set_trailing_metadata(trailing_details(error))
        await context.abort(error.code, error.message)
    if isinstance(error, grpc.aio.AioRpcError):
        details = tuple((k, v) for k, v in (error.trailing_metadata() or ()) if k.startswith("rapport-"))
        if details:
            context.set_trailing_metadata(details)
        await context.abort(error.code(), error.details() or "peer call failed")
    if isinstance(error, asyncpg.exceptions.DataError):
        context.set_trailing_metadata(trailing_details(InvalidArgument(str(error))))
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid value: {error}")
    if isinstance(error, ValueError):
        context.set_trailing_metadata(trailing_details(InvalidArgument(str(error))))
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    raise error


_MAPPED = (ServiceError, grpc.aio.AioRpcError, asyncpg.exceptions.DataError, ValueError)


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
