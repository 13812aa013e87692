"""The error contract: every non-2xx response is JSON `{code, message, user_message}`.

gRPC status → HTTP status by a table, never "everything is 500" (STYLE 10).
"""

from __future__ import annotations

import re
from typing import Any

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.servicekit.grpc_errors import ERROR_CODES, RETRY_AFTER_SECONDS

# gRPC status → HTTP status; the code strings are the services' (services/servicekit/grpc_errors.py), so a
# gRPC caller's ErrorInfo.reason and an HTTP caller's `code` say the same thing.
_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
GRPC_TO_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    code: (status, ERROR_CODES[code]) for code, status in _HTTP_STATUS.items()
}

HTTP_CODES = {
    400: "invalid_payload",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    503: "unavailable",
}

USER_MESSAGES = {
    400: "Something in that request wasn't right.",
    401: "Please sign in again.",
    403: "You don't have access to that.",
    404: "We couldn't find that.",
    409: "That conflicts with something already in progress.",
    413: "That request is too large.",
    415: "Please send JSON.",
    429: "Too many requests at once. Please wait a moment.",
    499: "The request was cancelled.",
    501: "That isn't available yet.",
    503: "The service is temporarily unavailable. Please try again.",
    504: "That took too long. Please try again.",
}


# What a transport failure says when no service of ours explained it (gRPC's own text names addresses).
TRANSPORT_MESSAGES = {
    503: "a backend service is unavailable",
    504: "a backend service did not answer in time",
}
# Internal addresses in a message: gRPC targets (ipv4:…, unix:…), URLs, IPs and host:port pairs.
_ADDRESS = re.compile(
    r"\b(?:ipv4|ipv6|unix|unix-abstract|dns|vsock):\S+"
    r"|\b[a-z][a-z0-9+.-]*://\S+"
    r"|\[[0-9a-f:.]+\](?::\d+)?"
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"
    r"|\b[a-z0-9-]*[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)*:\d{2,5}\b",
    re.IGNORECASE,
)


def without_addresses(text: str) -> str:
    """`text` with every internal address replaced by `<address>` (what clients may see)."""
    return _ADDRESS.sub("<address>", text)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        user_message: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.user_message = user_message or USER_MESSAGES.get(status, "Something went wrong. Please try again.")
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> JSONResponse:
        body = {"code": self.code, "message": self.message, "user_message": self.user_message, **self.extra}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def from_grpc(error: grpc.aio.AioRpcError) -> ApiError:
    status, code = GRPC_TO_HTTP.get(error.code(), (500, "internal"))
    trailing = {k: v for k, v in (error.trailing_metadata() or ())} if error.trailing_metadata() else {}
    reason = trailing.get("rapport-reason")
    extra: dict[str, Any] = {}
    if reason == "duplicate_in_progress":
        code = "duplicate_in_progress"
        extra["message_id"] = trailing.get("rapport-message-id", "")
    if trailing.get("rapport-field"):
        extra["field"] = trailing["rapport-field"]
    user_message = trailing.get("rapport-user-message")
    message = without_addresses(error.details() or code)
    if status == 500:
        message, user_message = "internal error", None
    elif status in TRANSPORT_MESSAGES and user_message is None:  # the transport failed, not a service of ours
        message = TRANSPORT_MESSAGES[status]
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in (429, 503) else {}
    return ApiError(status, code, message, user_message, headers, extra)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def grpc_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, grpc.aio.AioRpcError)
    return from_grpc(exc).response()


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    location = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(location)
    if first.get("type") == "json_invalid":
        return ApiError(400, "invalid_payload", "malformed JSON body").response()
    message = f"{field}: {first.get('msg', 'invalid value')}" if field else str(first.get("msg", "invalid request"))
    return ApiError(400, "invalid_payload", message, extra={"field": field} if field else None).response()


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "internal" if exc.status_code >= 500 else "invalid_payload")
    message = exc.detail if isinstance(exc.detail, str) else code
    return ApiError(exc.status_code, code, message, headers=dict(exc.headers or {})).response()


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    import logging

    logging.getLogger("rapport.gateway").exception("unhandled error on %s %s", request.method, request.url.path)
    return ApiError(500, "internal", "internal error").response()
