"""Infer calls with small bodies are served by the gateway's protocol itself, without uvicorn's
request cycle (``connections.DirectCall``), and keep every HTTP behaviour the cycle gives.

The protocol is driven without a socket (``tests/http_protocol.py``); the front is a small
stand-in for the gateway's ``InferFastPath`` that records what it was asked, so each test
sees which path a request took. The real front, endpoint and models are exercised through
real gateways by the integration tests (``tests/integration``), which take this path for
every small call.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response

from modelgate.gateway.connections import DIRECT_MAX_BODY_BYTES
from tests.http_protocol import exchange, open_connection, steps

INFER = b"/v2/models/mlp/infer"


def infer_request(body: bytes = b'{"inputs": []}', path: bytes = INFER,
                  version: bytes = b"1.1", headers: bytes = b"") -> bytes:
    return (b"POST " + path + b" HTTP/" + version + b"\r\nhost: x\r\ncontent-type: "
            b"application/json\r\ncontent-length: " + str(len(body)).encode() + b"\r\n"
            + headers + b"\r\n" + body)


class Front:
    """Answers each infer call with what it was asked (the body and path parameters), after
    ``delays[i]`` loop steps for the i-th call."""

    def __init__(self, delays: list[int] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.delays = delays or []
        self.headers = headers or {}
        self.asked: list[dict[str, Any]] = []
        self.background_ran = 0

    @staticmethod
    def direct_params(path: str) -> dict[str, str] | None:
        if not path.startswith("/v2/models/") or not path.endswith("/infer"):
            return None
        return {"name": path.split("/")[3]}

    async def respond(self, scope: Any, receive: Any) -> Response:
        index = len(self.asked)
        message = await receive()
        asked = {"body": message["body"].decode(), "params": scope["path_params"],
                 "arrived": scope["modelgate.body_arrived"]}
        self.asked.append(asked)
        await steps(self.delays[index] if index < len(self.delays) else 0)
        response = Response(json.dumps({"call": index, **asked}),
                            media_type="application/json",
                            headers={"Model-Version": "1", **self.headers})
        response.background = BackgroundTask(self._ran)
        return response

    async def _ran(self) -> None:
        self.background_ran += 1


class App:
    """The ASGI app: what uvicorn's cycle would run. Records the paths it served."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.paths.append(scope["path"])
        answer = json.dumps({"app": scope["path"], "bytes": len(body)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


def answers(sent: bytes) -> list[tuple[bytes, dict[str, Any]]]:
    """(head, JSON body) of each answer in ``sent``, in order."""
    found = []
    while sent:
        head, _, rest = sent.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        found.append((head, json.loads(rest[:length])))
        sent = rest[length:]
    return found


def test_a_small_infer_call_is_answered_by_the_front_in_one_write() -> None:
    front, app = Front(), App()

    async def run() -> Any:
        protocol, transport = open_connection(app, front)
        protocol.server_state.default_headers = [(b"date", b"Sun, 06 Dec 2026 15:00:00 GMT")]
        protocol.data_received(infer_request(b'{"x": 1}'))
        await steps(20)
        return transport

    transport = asyncio.run(run())
    assert app.paths == []
    assert len(transport.writes) == 1
    [(head, body)] = answers(transport.writes[0])
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ndate: " in head and b"\r\nmodel-version: 1" in head
    assert body == {"call": 0, "body": '{"x": 1}', "params": {"name": "mlp"}, "arrived": True}
    assert not transport.closed  # kept alive
    assert front.background_ran == 1


def test_a_body_in_pieces_reaches_the_front_whole() -> None:
    async def run() -> tuple[Front, Any]:
        front = Front()
        protocol, transport = open_connection(App(), front)
        request = infer_request(b'{"inputs": [1, 2, 3]}')
        for piece in (request[:40], request[40:90], request[90:]):
            protocol.data_received(piece)
            await steps(3)
        await steps(10)
        return front, transport

    front, transport = asyncio.run(run())
    assert front.asked[0]["body"] == '{"inputs": [1, 2, 3]}'
    assert answers(b"".join(transport.writes))[0][1]["call"] == 0


def test_pipelined_requests_wait_for_the_call_before_them() -> None:
    """Requests sent behind a call still in flight are queued by uvicorn as behind any
    request, and taken through the app: the answers leave in the order the requests came,
    however long the first call takes."""
    get = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
    for delay in (0, 30):
        front, app = Front(delays=[delay]), App()
        transport = asyncio.run(exchange(
            app, infer_request(b'"first"') + get + infer_request(b'"third"'), rounds=120,
            direct=front))
        sent = [body for _, body in answers(b"".join(transport.writes))]
        assert sent == [{"call": 0, "body": '"first"', "params": {"name": "mlp"},
                         "arrived": True},
                        {"app": "/v2/health/live", "bytes": 0},
                        {"app": INFER.decode(), "bytes": len('"third"')}]


def test_http_1_0_and_connection_close_get_their_answer_then_the_close() -> None:
    for request in (infer_request(version=b"1.0"),
                    infer_request(headers=b"connection: close\r\n")):
        transport = asyncio.run(exchange(App(), request, direct=Front()))
        [(head, body)] = answers(b"".join(transport.writes))
        assert b"\r\nconnection: close" in head and body["call"] == 0
        assert transport.closed


def test_an_answer_that_closes_the_connection_says_so_once() -> None:
    transport = asyncio.run(exchange(App(), infer_request(),
                                     direct=Front(headers={"Connection": "close"})))
    [(head, _)] = answers(b"".join(transport.writes))
    assert head.lower().count(b"\r\nconnection: close") == 1
    assert transport.closed


def test_large_chunked_and_expect_100_bodies_take_the_app() -> None:
    large = b'"' + b"x" * DIRECT_MAX_BODY_BYTES + b'"'
    chunked = (b"POST " + INFER + b" HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
               b"4\r\n\"ab\"\r\n0\r\n\r\n")
    expect = infer_request(headers=b"expect: 100-continue\r\n")
    for request, size in ((infer_request(large), len(large)), (chunked, 4), (expect, 14)):
        front, app = Front(), App()
        transport = asyncio.run(exchange(app, request, direct=front))
        assert front.asked == []
        assert app.paths == [INFER.decode()]
        assert answers(b"".join(transport.writes).split(b"HTTP/1.1 100 Continue\r\n\r\n")[-1]
                       )[0][1] == {"app": INFER.decode(), "bytes": size}


def test_other_paths_and_escaped_paths_take_the_app() -> None:
    for path in (b"/v2/repository/index", b"/v2/models/ml%70/infer"):
        front, app = Front(), App()
        asyncio.run(exchange(app, infer_request(path=path), direct=front))
        assert front.asked == []
        assert len(app.paths) == 1


def test_a_shutdown_mid_call_answers_the_call_then_closes() -> None:
    async def run() -> Any:
        protocol, transport = open_connection(App(), Front(delays=[10]))
        protocol.data_received(infer_request())
        await steps(2)
        protocol.shutdown()
        assert not transport.closed  # the call in flight is answered first
        await steps(20)
        return transport

    transport = asyncio.run(run())
    [(head, body)] = answers(b"".join(transport.writes))
    assert body["call"] == 0 and b"connection: close" in head
    assert transport.closed


def test_a_caller_gone_mid_call_gets_nothing_written() -> None:
    async def run() -> tuple[Front, Any]:
        front = Front(delays=[10])
        protocol, transport = open_connection(App(), front)
        protocol.data_received(infer_request())
        await steps(2)
        transport.close()
        protocol.connection_lost(None)
        await steps(20)
        return front, transport

    front, transport = asyncio.run(run())
    assert len(front.asked) == 1 and transport.writes == []


def test_a_body_that_stops_coming_gets_a_json_408_at_its_deadline() -> None:
    async def run() -> Any:
        protocol, transport = open_connection(App(), Front(), body_timeout_s=0.05)
        protocol.data_received(infer_request(b'{"inputs": [1, 2, 3]}')[:-5])
        await asyncio.sleep(0.1)
        protocol.guard._sweep(asyncio.get_running_loop())  # the sweep of the next second
        return transport

    transport = asyncio.run(run())
    [(head, body)] = answers(b"".join(transport.writes))
    assert head.startswith(b"HTTP/1.1 408")
    assert "did not arrive within 0.05 s" in body["error"]
    assert transport.closed
