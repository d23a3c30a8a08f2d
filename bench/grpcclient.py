"""Load generator for the gRPC targets: tritonclient.grpc.aio, closed loop, the V2 body's
inputs sent as raw_input_contents (what tritonclient sends), bounded by duration and count.

    python -m bench.grpcclient --url grpc://127.0.0.1:8081/mlp --body-file body.json \\
        --concurrency 32 --duration-s 10

Prints the same ``BENCH_RESULT {json}`` line as the HTTP generators (latencies in
microseconds); a call that fails with a gRPC status counts as ``non_2xx``, one that times out
as ``timeout``. It is one Python process, like bench.pyclient: at high rates it measures the
client too (wrk drives HTTP from C), which the report says.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.parse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.naive_server import DTYPES
from bench.pyclient import RESULT_MARK, Tally


def _inputs(module: Any, body: dict[str, Any]) -> list[Any]:
    inputs = []
    for item in body["inputs"]:
        array = np.asarray(item["data"], dtype=DTYPES[item["datatype"]]).reshape(item["shape"])
        tensor = module.InferInput(item["name"], list(array.shape), item["datatype"])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


async def drive(url: str, body: dict[str, Any], concurrency: int, duration_s: float,
                max_requests: int, timeout_s: float) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tritonclient.grpc.aio as triton
        from tritonclient.utils import InferenceServerException
    parts = urllib.parse.urlsplit(url)
    model = parts.path.strip("/")
    client = triton.InferenceServerClient(url=parts.netloc)
    inputs = _inputs(triton, body)
    tally = Tally()
    budget = [max_requests]
    started = time.monotonic()
    until = started + duration_s

    async def loop() -> None:
        while time.monotonic() < until and budget[0] > 0:
            budget[0] -= 1
            began = time.perf_counter()
            try:
                await client.infer(model, inputs, client_timeout=timeout_s)
            except InferenceServerException as e:
                if "DEADLINE_EXCEEDED" in str(e.status()):
                    tally.timeout += 1
                else:
                    tally.non_2xx += 1
                continue
            tally.latencies_us.append((time.perf_counter() - began) * 1e6)

    try:
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    finally:
        await client.close()
    elapsed_s = time.monotonic() - started
    latencies = np.asarray(tally.latencies_us) if tally.latencies_us else np.zeros(1)
    return {
        "requests": len(tally.latencies_us) + tally.non_2xx, "duration_us": elapsed_s * 1e6,
        "p50_us": float(np.percentile(latencies, 50)),
        "p99_us": float(np.percentile(latencies, 99)),
        "non_2xx": tally.non_2xx, "connect": 0, "read": 0, "write": 0,
        "timeout": tally.timeout,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpcclient", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="grpc://HOST:PORT/MODEL")
    parser.add_argument("--body-file", type=Path, required=True, help="a V2 JSON infer body")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    host = urllib.parse.urlsplit(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error(f"refusing to load {host!r}: the benchmark only targets this machine")
    result = asyncio.run(drive(args.url, orjson.loads(args.body_file.read_bytes()),
                               args.concurrency, args.duration_s, args.max_requests,
                               args.timeout_s))
    print(RESULT_MARK + orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
