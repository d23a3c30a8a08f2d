"""An answer's head and body leave the gateway in one write (``gateway/connections.py``).

The protocol is driven without a socket (``tests/http_protocol.py``), to count the writes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from modelgate.gateway.connections import JOIN_BELOW_BYTES
from tests.http_protocol import RecordingTransport, exchange

REQUEST = b"GET /answer HTTP/1.1\r\nhost: x\r\n\r\n"


def _app(body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers or [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    return app


def test_a_small_answer_is_one_write_head_then_body() -> None:
    body = b'{"outputs": []}'
    transport = asyncio.run(exchange(_app(body), REQUEST))
    assert len(transport.writes) == 1
    head, _, rest = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 15" in head
    assert rest == body


def test_a_large_answer_is_one_vectored_write() -> None:
    body = b"x" * (JOIN_BELOW_BYTES + 10)
    transport = asyncio.run(exchange(_app(body), REQUEST))
    assert len(transport.writes) == 1
    assert transport.writes[0].endswith(b"\r\n\r\n" + body)


def test_a_streamed_answer_gets_its_head_before_its_body_comes() -> None:
    """The head is not held waiting for a body that comes later."""
    seen: list[int] = []
    transport = RecordingTransport()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for _ in range(5):
            await asyncio.sleep(0)
        seen.append(len(transport.writes))  # the head, before any body was sent
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    asyncio.run(exchange(app, REQUEST, transport=transport))
    assert seen == [1]
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert b"".join(transport.writes[1:]) == b"5\r\nfirst\r\n0\r\n\r\n"


def test_an_answer_that_closes_the_connection_is_sent_whole_before_the_close() -> None:
    body = b"bye"
    transport = asyncio.run(exchange(
        _app(body, [(b"content-length", b"3"), (b"connection", b"close")]), REQUEST))
    assert transport.closed
    assert b"".join(transport.writes).endswith(b"\r\n\r\nbye")


def test_pipelined_requests_get_their_answers_in_order() -> None:
    calls = iter([b"one", b"two"])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = next(calls)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": body})

    transport = asyncio.run(exchange(app, REQUEST + REQUEST, rounds=60))
    sent = b"".join(transport.writes)
    assert sent.count(b"HTTP/1.1 200 OK") == 2
    assert sent.index(b"one") < sent.index(b"two")
    assert len(transport.writes) == 2
