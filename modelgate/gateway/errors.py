"""The one table from domain errors to HTTP status codes, and the JSON error response."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from modelgate.core import errors, wire

STATUS_OF: dict[type[errors.ModelgateError], int] = {
    errors.InvalidInput: 400,
    errors.ModelNotFound: 404,
    errors.NoLiveWorker: 503,
    errors.BackendUnavailable: 503,
    errors.DeadlineExceeded: 504,
    errors.ModelFailed: 500,
    errors.Overloaded: 429,
    errors.RequestTimeout: 408,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.Unauthorized: 401,
}

# Worker reply statuses -> the domain error the caller sees.
ERROR_OF_REPLY: dict[str, type[errors.ModelgateError]] = {
    wire.ReplyStatus.BAD_INPUT: errors.InvalidInput,
    wire.ReplyStatus.MODEL_ERROR: errors.ModelFailed,
    wire.ReplyStatus.DEADLINE: errors.DeadlineExceeded,
    wire.ReplyStatus.DEAD_LETTER: errors.ModelFailed,
    wire.ReplyStatus.WIRE: errors.ModelFailed,
}


def status_of(error: errors.ModelgateError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 500


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
