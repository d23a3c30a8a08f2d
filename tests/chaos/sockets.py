"""Sockets that cost a server without ever making a request, run as a process of their own
(``python -m tests.chaos.sockets PORT IDLE SLOW``) so that they do not slow the client that
measures the server: IDLE connections that send nothing, and SLOW ones that send a request's
headers one byte every BYTE_EVERY_S (slowloris). Each is opened again if the server closes it.
Runs until terminated."""

from __future__ import annotations

import asyncio
import sys

BYTE_EVERY_S = 0.5


async def idle(port: int) -> None:
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        await reader.read(1)  # returns when the server closes it
        writer.close()


async def slow(port: int) -> None:
    header = b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 10_000
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for byte in header:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(BYTE_EVERY_S)
        except OSError:
            await asyncio.sleep(0.1)


async def main(port: int, idle_count: int, slow_count: int) -> None:
    await asyncio.gather(*(idle(port) for _ in range(idle_count)),
                         *(slow(port) for _ in range(slow_count)))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
