"""The gateway's HTTP protocol driven without a socket: a real uvicorn config, app and event
loop, and a transport that records each write (a real socket would merge the writes on the
way to the reader and hide how many there were)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from modelgate.gateway.connections import ConnectionGuard, DirectFront, GuardedProtocol
from modelgate.gateway.metrics import Metrics


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


def open_connection(app: Any, direct: DirectFront | None = None,
                    transport: RecordingTransport | None = None,
                    body_timeout_s: float = 5.0, keep_alive_s: float = 5.0
                    ) -> tuple[GuardedProtocol, RecordingTransport]:
    """A connection of a gateway protocol serving ``app`` (and ``direct``), in the running
    loop."""
    guard = ConnectionGuard(5.0, body_timeout_s, 10, Metrics(), direct=direct)
    config = uvicorn.Config(app, http=guard.protocol(), log_level="warning", lifespan="off",
                            timeout_keep_alive=keep_alive_s)  # type: ignore[arg-type]
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(),
                                          app_state={}, _loop=asyncio.get_running_loop())
    transport = transport or RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport  # type: ignore[return-value]


async def steps(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def exchange(app: Any, request: bytes, rounds: int = 20,
                   transport: RecordingTransport | None = None,
                   direct: DirectFront | None = None) -> RecordingTransport:
    """Send ``request`` (one or more, pipelined), run the loop, then drop the connection."""
    protocol, transport = open_connection(app, direct, transport)
    protocol.data_received(request)
    await steps(rounds)
    protocol.connection_lost(None)
    return transport
