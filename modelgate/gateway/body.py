"""Reading a request body within limits: content type, size, time and the bytes this gateway
process holds at once are checked before anything is parsed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request

from modelgate.core.errors import (
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from modelgate.gateway.metrics import Metrics
from modelgate.gateway.parsing import Parsers

JSON_TYPES = ("application/json", "text/json")


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_bytes: int  # one body; past it, 413
    timeout_s: float  # to read one body; past it, 408


@dataclass(frozen=True, slots=True)
class Bodies:
    """Everything a route needs to take a call's body: the app holds one (``state.bodies``)."""

    limits: BodyLimits
    budget: BodyBudget
    parsers: Parsers


class BodyBudget:
    """Bytes of request bodies this gateway process holds at once, from when a body is
    announced (its Content-Length; a chunked body as it arrives) until its call is answered.

    Past ``limit_bytes`` a call is refused with 429 before its body is read, unless nothing
    else is held: the largest body allowed can always be served alone.
    """

    def __init__(self, limit_bytes: int, metrics: Metrics) -> None:
        self.limit_bytes = limit_bytes
        self.held = 0
        self._gauge = metrics.body_bytes_in_flight

    def take(self, size: int) -> None:
        if self.held and self.held + size > self.limit_bytes:
            raise Overloaded(
                f"this gateway holds {self.held} bytes of request bodies and this one would "
                f"pass its limit of {self.limit_bytes}; retry after the Retry-After seconds, "
                "send smaller calls or spread them across gateway processes", 1)
        self.held += size
        self._gauge.set(self.held)

    def give(self, size: int) -> None:
        self.held -= size
        self._gauge.set(self.held)


@contextlib.asynccontextmanager
async def json_body(request: Request, limits: BodyLimits, budget: BodyBudget,
                    binary_ok: bool = False, any_type: bool = False) -> AsyncIterator[bytearray]:
    """The raw body of a JSON call, counted in ``budget`` until the block ends.

    415 for other content types, 413 past ``limits.max_bytes``, 429 past the budget, 408 when
    it has not all arrived ``limits.timeout_s`` after this began (the connection's guard cuts
    off a body nobody reads, ``gateway/connections.py``). With ``binary_ok``, a body announced
    by Triton's ``Inference-Header-Content-Length`` header (JSON then raw tensor data) is taken
    whatever its content type; with ``any_type``, any body is (an uploaded file).
    """
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    binary = binary_ok and "inference-header-content-length" in request.headers
    if (content_type and not binary and not any_type and content_type not in JSON_TYPES
            and not content_type.endswith("+json")):
        raise UnsupportedMediaType(
            f"content type {content_type!r} is not supported here; send the body as JSON with "
            "'Content-Type: application/json'"
        )
    raw_length = request.headers.get("content-length")
    declared = int(raw_length) if raw_length is not None and raw_length.isdigit() else None
    if declared is not None and declared > limits.max_bytes:
        raise PayloadTooLarge(_too_large(declared, limits.max_bytes))
    held = declared or 0
    budget.take(held)
    try:
        body = await _read(request, limits, declared, budget)
        if declared is None:
            held = len(body)  # taken chunk by chunk as it came
        yield body
    finally:
        budget.give(held)


async def _read(request: Request, limits: BodyLimits, declared: int | None,
                budget: BodyBudget) -> bytearray:
    """The body, into one buffer of the announced size (joining chunks would hold it twice);
    a chunked body is taken from ``budget`` as it comes, and given back if reading fails."""
    buffer = bytearray(declared or 0)
    size = 0
    try:
        async with asyncio.timeout(limits.timeout_s):
            async for chunk in request.stream():
                end = size + len(chunk)
                if end > limits.max_bytes:
                    raise PayloadTooLarge(_too_large(end, limits.max_bytes))
                if declared is None:
                    budget.take(len(chunk))
                buffer[size:end] = chunk
                size = end
    except TimeoutError as e:
        if declared is None:
            budget.give(size)
        raise RequestTimeout(
            f"the body did not arrive within {limits.timeout_s:g} s ({size} bytes came); send "
            "it faster, or in smaller calls, or raise --body-timeout-s") from e
    except BaseException:
        if declared is None:
            budget.give(size)
        raise
    del buffer[size:]  # nothing, unless the body ended short of its announced length
    return buffer


def _too_large(size: int, max_bytes: int) -> str:
    return (f"the body is {size} bytes or more, over this server's limit of {max_bytes}; split "
            "the batch into smaller calls or raise --max-body-bytes")
