"""Fallback load generator for when wrk is missing: closed-loop HTTP/1.1 POSTs over keep-alive
asyncio connections, bounded by duration and by request count.

    python -m bench.pyclient --url http://127.0.0.1:8001/v2/models/mlp/infer \\
        --body-file body.json --concurrency 32 --duration-s 10

Prints the same ``BENCH_RESULT {json}`` line as the wrk script (latencies in microseconds).
One Python process tops out at a few thousand requests per second, so at high concurrency this
measures the client as much as the server; prefer wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

RESULT_MARK = "BENCH_RESULT "


@dataclass(slots=True)
class Tally:
    latencies_us: list[float] = field(default_factory=list)
    non_2xx: int = 0
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; return its status. Needs Content-Length (both servers send it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _connection(host: str, port: int, request: bytes, until: float, budget: list[int],
                      timeout_s: float, tally: Tally) -> None:
    """One keep-alive connection, one request in flight; reconnects after any error."""
    while time.monotonic() < until and budget[0] > 0:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except (OSError, TimeoutError):
            tally.connect += 1
            await asyncio.sleep(0.01)  # do not spin on a refused port
            continue
        try:
            await _requests(reader, writer, request, until, budget, timeout_s, tally)
        finally:
            writer.close()


async def _requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                    until: float, budget: list[int], timeout_s: float, tally: Tally) -> None:
    """Send requests on one connection until time or budget runs out, or an error occurs."""
    while time.monotonic() < until and budget[0] > 0:
        budget[0] -= 1
        started = time.perf_counter()
        try:
            writer.write(request)
            await writer.drain()
        except OSError:
            tally.write += 1
            return
        try:
            status = await asyncio.wait_for(_read_response(reader), timeout_s)
        except TimeoutError:
            tally.timeout += 1
            return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            tally.read += 1
            return
        tally.latencies_us.append((time.perf_counter() - started) * 1e6)
        if status >= 400:
            tally.non_2xx += 1


async def drive(url: str, body: bytes, concurrency: int, duration_s: float, max_requests: int,
                timeout_s: float, headers: Sequence[str] = ("Content-Type: application/json",)
                ) -> dict[str, float]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               + "".join(f"{line}\r\n" for line in headers)
               + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    tally = Tally()
    budget = [max_requests]
    started = time.monotonic()
    until = started + duration_s
    await asyncio.gather(*(_connection(host, port, request, until, budget, timeout_s, tally)
                           for _ in range(concurrency)))
    elapsed_s = time.monotonic() - started
    latencies = np.asarray(tally.latencies_us) if tally.latencies_us else np.zeros(1)
    return {
        "requests": len(tally.latencies_us), "duration_us": elapsed_s * 1e6,
        "p50_us": float(np.percentile(latencies, 50)),
        "p99_us": float(np.percentile(latencies, 99)),
        "non_2xx": tally.non_2xx, "connect": tally.connect, "read": tally.read,
        "write": tally.write, "timeout": tally.timeout,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pyclient", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--header", action="append", default=None,
                        help="'Name: value', repeatable (default: a JSON Content-Type)")
    args = parser.parse_args(argv)
    host = urllib.parse.urlsplit(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error(f"refusing to load {host!r}: the benchmark only targets this machine")
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(drive(args.url, args.body_file.read_bytes(), args.concurrency,
                                  args.duration_s, args.max_requests, args.timeout_s,
                                  args.header or ("Content-Type: application/json",)))
    print(RESULT_MARK + orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
