"""Reading a request body within limits: content type, size and time are checked before
parsing."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from modelgate.core.errors import PayloadTooLarge, RequestTimeout, UnsupportedMediaType

JSON_TYPES = ("application/json", "text/json")


async def read_json_body(request: Request, max_bytes: int, timeout_s: float,
                         binary_ok: bool = False) -> bytes:
    """The raw body of a JSON call; 415 for other content types, 413 past ``max_bytes``, 408
    when it has not all arrived ``timeout_s`` after this began (the connection's guard cuts
    off a body nobody reads, ``gateway/connections.py``).

    With ``binary_ok``, a body announced by Triton's ``Inference-Header-Content-Length``
    header (JSON then raw tensor data) is taken whatever its content type.
    """
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    binary = binary_ok and "inference-header-content-length" in request.headers
    if (content_type and not binary and content_type not in JSON_TYPES
            and not content_type.endswith("+json")):
        raise UnsupportedMediaType(
            f"content type {content_type!r} is not supported here; send the body as JSON with "
            "'Content-Type: application/json'"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(_too_large(int(declared), max_bytes))
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(_too_large(size, max_bytes))
                chunks.append(chunk)
    except TimeoutError as e:
        raise RequestTimeout(
            f"the body did not arrive within {timeout_s:g} s ({size} bytes came); send it "
            "faster, or in smaller calls, or raise --body-timeout-s") from e
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int) -> str:
    return (f"the body is {size} bytes or more, over this server's limit of {max_bytes}; split "
            "the batch into smaller calls or raise --max-body-bytes")
