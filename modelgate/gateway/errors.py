"""The one table from domain errors to HTTP status codes and gRPC status codes, and the JSON
error response. Both transports answer the same error with the same message."""

from __future__ import annotations

import grpc
import orjson
from starlette.responses import Response

from modelgate.core import errors, wire

Code = grpc.StatusCode
# Domain error -> (HTTP status, gRPC status). The gRPC codes are what Triton's and KServe's
# servers answer and their clients expect: overload is RESOURCE_EXHAUSTED, a missing worker
# UNAVAILABLE (DECISIONS 9).
CODES: dict[type[errors.ModelgateError], tuple[int, grpc.StatusCode]] = {
    errors.InvalidInput: (400, Code.INVALID_ARGUMENT),
    errors.ModelNotFound: (404, Code.NOT_FOUND),
    errors.NoLiveWorker: (503, Code.UNAVAILABLE),
    errors.BackendUnavailable: (503, Code.UNAVAILABLE),
    errors.DeadlineExceeded: (504, Code.DEADLINE_EXCEEDED),
    errors.ModelFailed: (500, Code.INTERNAL),
    errors.Overloaded: (429, Code.RESOURCE_EXHAUSTED),
    errors.RequestTimeout: (408, Code.DEADLINE_EXCEEDED),
    errors.PayloadTooLarge: (413, Code.RESOURCE_EXHAUSTED),
    errors.UnsupportedMediaType: (415, Code.INVALID_ARGUMENT),
    errors.Unauthorized: (401, Code.UNAUTHENTICATED),
    errors.Forbidden: (403, Code.PERMISSION_DENIED),
    errors.Conflict: (409, Code.FAILED_PRECONDITION),
}
STATUS_OF: dict[type[errors.ModelgateError], int] = {k: v[0] for k, v in CODES.items()}

# Worker reply statuses -> the domain error the caller sees.
ERROR_OF_REPLY: dict[str, type[errors.ModelgateError]] = {
    wire.ReplyStatus.BAD_INPUT: errors.InvalidInput,
    wire.ReplyStatus.MODEL_ERROR: errors.ModelFailed,
    wire.ReplyStatus.DEADLINE: errors.DeadlineExceeded,
    wire.ReplyStatus.DEAD_LETTER: errors.ModelFailed,
    wire.ReplyStatus.WIRE: errors.ModelFailed,
    # The worker could not open the gateway's arena; the gateway has stopped using it for
    # that pool (``Dispatcher``), so the caller's retry goes through Redis.
    wire.ReplyStatus.UNREACHABLE: errors.BackendUnavailable,
}


def status_of(error: errors.ModelgateError) -> int:
    return _codes_of(error)[0]


def grpc_status_of(error: errors.ModelgateError) -> grpc.StatusCode:
    return _codes_of(error)[1]


def _codes_of(error: errors.ModelgateError) -> tuple[int, grpc.StatusCode]:
    for cls in type(error).__mro__:
        if cls in CODES:
            return CODES[cls]
    return 500, Code.INTERNAL


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status,
                    media_type="application/json", headers=headers)


def domain_error_response(error: errors.ModelgateError) -> Response:
    headers = None
    if isinstance(error, errors.Overloaded):
        headers = {"Retry-After": str(error.retry_after_s)}
    elif isinstance(error, errors.Unauthorized):
        headers = {"WWW-Authenticate": 'Bearer realm="modelgate"'}
    elif isinstance(error, errors.RequestTimeout):
        headers = {"Connection": "close"}  # the rest of the request is not worth waiting for
    return error_response(status_of(error), str(error), headers)
