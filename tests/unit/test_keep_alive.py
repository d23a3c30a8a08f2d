"""Idle keep-alive connections are closed by the connection guard's sweep, once a second,
not by a timer armed after every answer and cancelled by the next request
(``gateway/connections.py``). Driven without a socket (``tests/http_protocol.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.http_protocol import open_connection, steps

REQUEST = b"GET /answer HTTP/1.1\r\nhost: x\r\n\r\n"


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_an_answer_arms_no_timer_and_the_sweep_closes_the_connection_once_idle_too_long(
) -> None:
    async def run() -> list[tuple[bool, bool]]:
        loop = asyncio.get_running_loop()
        protocol, transport = open_connection(app, keep_alive_s=0.2)
        protocol.data_received(REQUEST)
        await steps(20)
        seen = [(transport.closed, protocol.timeout_keep_alive_task is None)]
        protocol.guard._sweep(loop)  # young: kept
        seen.append((transport.closed, protocol in protocol.guard.idle))
        await asyncio.sleep(0.3)
        protocol.guard._sweep(loop)  # idle past the keep-alive timeout: closed
        seen.append((transport.closed, protocol in protocol.guard.idle))
        return seen

    assert asyncio.run(run()) == [(False, True), (False, True), (True, False)]


def test_a_connection_in_use_is_not_closed_for_keep_alive() -> None:
    """A request that came after the answer takes the connection out of the idle ones: the
    sweep leaves it alone however long the call takes."""
    async def run() -> bool:
        loop = asyncio.get_running_loop()
        protocol, transport = open_connection(app, keep_alive_s=0.1)
        protocol.data_received(REQUEST)
        await steps(20)
        protocol.data_received(b"GET /answer HTTP/1.1\r\n")  # the next request, half here
        await asyncio.sleep(0.2)
        protocol.guard._sweep(loop)
        return transport.closed

    assert asyncio.run(run()) is False
