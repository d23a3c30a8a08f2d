"""An answer's head and body leave the gateway in one write (``gateway/connections.py``).

The protocol is driven by a real uvicorn config, app and event loop; the socket is replaced by
a transport that records each write, because a real socket would merge the writes on the way
to the reader and hide how many there were.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from modelgate.gateway.connections import JOIN_BELOW_BYTES, ConnectionGuard
from modelgate.gateway.metrics import Metrics

REQUEST = b"GET /answer HTTP/1.1\r\nhost: x\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.writes.append(b"".join(bytes(d) for d in list_of_data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _exchange(app: Any, request: bytes, steps: int = 20,
                    transport: RecordingTransport | None = None) -> RecordingTransport:
    guard = ConnectionGuard(5.0, 5.0, 10, Metrics())
    config = uvicorn.Config(app, http=guard.protocol(), log_level="warning", lifespan="off")
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(),
                                          app_state={}, _loop=asyncio.get_running_loop())
    transport = transport or RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(steps):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


def _app(body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers or [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    return app


def test_a_small_answer_is_one_write_head_then_body() -> None:
    body = b'{"outputs": []}'
    transport = asyncio.run(_exchange(_app(body), REQUEST))
    assert len(transport.writes) == 1
    head, _, rest = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 15" in head
    assert rest == body


def test_a_large_answer_is_one_vectored_write() -> None:
    body = b"x" * (JOIN_BELOW_BYTES + 10)
    transport = asyncio.run(_exchange(_app(body), REQUEST))
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

    asyncio.run(_exchange(app, REQUEST, transport=transport))
    assert seen == [1]
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert b"".join(transport.writes[1:]) == b"5\r\nfirst\r\n0\r\n\r\n"


def test_an_answer_that_closes_the_connection_is_sent_whole_before_the_close() -> None:
    body = b"bye"
    transport = asyncio.run(_exchange(
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

    transport = asyncio.run(_exchange(app, REQUEST + REQUEST, steps=60))
    sent = b"".join(transport.writes)
    assert sent.count(b"HTTP/1.1 200 OK") == 2
    assert sent.index(b"one") < sent.index(b"two")
    assert len(transport.writes) == 2
