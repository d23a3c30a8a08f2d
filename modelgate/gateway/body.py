"""Reading a request body within limits: content type, size, time and the bytes this gateway
process holds at once are checked before anything is parsed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from modelgate.core.errors import (
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from modelgate.gateway.connections import BODY_ARRIVED, WHOLE_BODY
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


class json_body:
    """The raw body of a JSON call, counted in ``budget`` until the block ends.

    415 for other content types, 413 past ``limits.max_bytes``, 429 past the budget, 408 when
    it has not all arrived ``limits.timeout_s`` after this began (the connection's guard cuts
    off a body nobody reads, ``gateway/connections.py``). With ``binary_ok``, a body announced
    by Triton's ``Inference-Header-Content-Length`` header (JSON then raw tensor data) is taken
    whatever its content type; with ``any_type``, any body is (an uploaded file).

    A class rather than a generator-based context manager: it is on every call's path.
    """

    __slots__ = ("any_type", "binary_ok", "budget", "held", "limits", "request")

    def __init__(self, request: Request, limits: BodyLimits, budget: BodyBudget,
                 binary_ok: bool = False, any_type: bool = False) -> None:
        self.request = request
        self.limits = limits
        self.budget = budget
        self.binary_ok = binary_ok
        self.any_type = any_type
        self.held = 0

    async def __aenter__(self) -> bytes | bytearray:
        request, limits, budget = self.request, self.limits, self.budget
        headers = request.headers
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        binary = self.binary_ok and "inference-header-content-length" in headers
        if (content_type and not binary and not self.any_type
                and content_type not in JSON_TYPES and not content_type.endswith("+json")):
            raise UnsupportedMediaType(
                f"content type {content_type!r} is not supported here; send the body as JSON "
                "with 'Content-Type: application/json'"
            )
        raw_length = headers.get("content-length")
        declared = int(raw_length) if raw_length is not None and raw_length.isdigit() else None
        if declared is not None and declared > limits.max_bytes:
            raise PayloadTooLarge(_too_large(declared, limits.max_bytes))
        held = declared or 0
        budget.take(held)
        whole = request.scope.get(WHOLE_BODY)
        if whole is not None:  # a call the connection serves itself: its body is all here
            self.held = held
            return whole
        try:
            body = await _read(request, limits, declared, budget)
        except BaseException:
            budget.give(held)
            raise
        self.held = len(body) if declared is None else held  # chunked: taken as it came
        return body

    async def __aexit__(self, *exc: object) -> None:
        self.budget.give(self.held)


async def _read(request: Request, limits: BodyLimits, declared: int | None,
                budget: BodyBudget) -> bytes | bytearray:
    """The body: as it came when it came in one piece, else into one buffer of the announced
    size (joining chunks would hold it twice); a chunked body is taken from ``budget`` as it
    comes, and given back if reading fails. A body the connection has already buffered whole
    (``BODY_ARRIVED``) is read with no timer: nothing it waits for can be late."""
    parts = _Parts(limits.max_bytes, declared, budget)
    try:
        if request.scope.get(BODY_ARRIVED):
            await parts.take(request.receive)
        else:
            async with asyncio.timeout(limits.timeout_s):
                await parts.take(request.receive)
    except TimeoutError as e:
        parts.give_back()
        raise RequestTimeout(
            f"the body did not arrive within {limits.timeout_s:g} s ({parts.size} bytes came); "
            "send it faster, or in smaller calls, or raise --body-timeout-s") from e
    except BaseException:
        parts.give_back()
        raise
    return parts.body()


class _Parts:
    """A body as its chunks come (``http.request`` messages)."""

    __slots__ = ("budget", "buffer", "declared", "first", "max_bytes", "size")

    def __init__(self, max_bytes: int, declared: int | None, budget: BodyBudget) -> None:
        self.max_bytes = max_bytes
        self.declared = declared
        self.budget = budget
        self.size = 0
        self.first: bytes | None = None  # the body, while it is one chunk
        self.buffer: bytearray | None = None

    async def take(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                continue
            chunk = message.get("body", b"")
            if chunk:
                self._add(chunk)
            if not message.get("more_body", False):
                return

    def _add(self, chunk: bytes) -> None:
        end = self.size + len(chunk)
        if end > self.max_bytes:
            raise PayloadTooLarge(_too_large(end, self.max_bytes))
        if self.declared is None:
            self.budget.take(len(chunk))
        if self.buffer is None:
            if self.first is None and (self.declared is None or len(chunk) == self.declared):
                self.first = chunk
                self.size = end
                return
            self.buffer = bytearray(self.declared or 0)
            if self.first is not None:
                self.buffer[:self.size] = self.first
                self.first = None
        self.buffer[self.size:end] = chunk
        self.size = end

    def give_back(self) -> None:
        if self.declared is None:
            self.budget.give(self.size)

    def body(self) -> bytes | bytearray:
        if self.buffer is None:
            return self.first if self.first is not None else b""
        del self.buffer[self.size:]  # nothing, unless the body ended short of its announced length
        return self.buffer


def _too_large(size: int, max_bytes: int) -> str:
    return (f"the body is {size} bytes or more, over this server's limit of {max_bytes}; split "
            "the batch into smaller calls or raise --max-body-bytes")
