"""``make bench-rollout``: what shadow traffic costs the callers.

A ``modelgate up`` serves the demo MLP v1 and a slightly perturbed v2 (both loaded, v1 the
default). An open-loop load at a fixed rate, chosen so the machine stays at most half busy
(measured from /proc/stat and printed), runs in rounds that alternate between no shadow and v2
shadowing 100% of the calls; the primary's p99 of each side is the median of its rounds, so a
drift of the shared host does not favour either side. Prints the figures with the CPU model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.results import _cpu_model
from bench.swap import ADMIN, up
from modelgate.cli import demo

X = np.random.default_rng(7).standard_normal((1, 4)).astype(np.float32)
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": X.ravel().tolist()}]}


def _busy() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


async def _round(url: str, rate: float, seconds: float) -> tuple[list[float], int, float]:
    """Latencies (s) of calls sent at ``rate``/s for ``seconds``, failures, and the share of the
    machine busy meanwhile."""
    latencies: list[float] = []
    failed = 0
    busy_before, total_before = _busy()
    async with httpx.AsyncClient(base_url=url, timeout=30.0,
                                 headers={"authorization": f"Bearer {ADMIN}"},
                                 limits=httpx.Limits(max_connections=64)) as client:
        async def one() -> None:
            nonlocal failed
            started = time.perf_counter()
            try:
                response = await client.post("/v2/models/mlp/infer", json=BODY)
                if response.status_code != 200:
                    failed += 1
            except httpx.HTTPError:
                failed += 1
            latencies.append(time.perf_counter() - started)

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    busy_after, total_after = _busy()
    share = (busy_after - busy_before) / max(1, total_after - total_before)
    return latencies, failed, share


def _put(url: str, policy: dict[str, Any]) -> None:
    response = httpx.put(f"{url}/v2/models/mlp/traffic", json=policy, timeout=30.0,
                         headers={"authorization": f"Bearer {ADMIN}"})
    response.raise_for_status()


def run(rate: float, seconds: float, rounds: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="modelgate-bench-rollout-"))
    try:
        root = work / "models"
        for version, model in ((1, demo.mlp_model(seed=1)), (2, demo.mlp_model(seed=1))):
            path = root / "mlp" / str(version)
            path.mkdir(parents=True)
            (path / "model.onnx").write_bytes(model.SerializeToString())
        (root / "mlp" / "config.yaml").write_text(
            "version_policy: {all: {}}\ndefault_version: 1\n")
        with up(root, work, "--repository-poll-secs", "1") as running:
            sides: dict[str, list[dict[str, float]]] = {"off": [], "shadow": []}
            asyncio.run(_round(running.url, rate, 5.0))  # warm-up
            for _ in range(rounds):
                for side in ("off", "shadow"):
                    _put(running.url, {"shadow": {"version": "2", "percent": 100}}
                         if side == "shadow" else {})
                    time.sleep(1.0)
                    latencies, failed, busy = asyncio.run(_round(running.url, rate, seconds))
                    sides[side].append({"p50_ms": float(np.percentile(latencies, 50) * 1000),
                                        "p99_ms": float(np.percentile(latencies, 99) * 1000),
                                        "failed": failed, "busy": round(busy, 3),
                                        "calls": len(latencies)})
            agreement = httpx.get(f"{running.url}/v2/models/mlp/traffic", timeout=10.0,
                                  headers={"authorization": f"Bearer {ADMIN}"}).json()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(side: str, key: str) -> float:
        return float(np.median([r[key] for r in sides[side]]))

    return {
        "cpu_model": _cpu_model(), "nproc": os.cpu_count(), "rate_per_s": rate,
        "round_s": seconds, "rounds": rounds,
        "p99_ms_off": round(median("off", "p99_ms"), 2),
        "p99_ms_shadow": round(median("shadow", "p99_ms"), 2),
        "p99_ratio": round(median("shadow", "p99_ms") / median("off", "p99_ms"), 3),
        "busy_off": median("off", "busy"), "busy_shadow": median("shadow", "busy"),
        "failed": sum(r["failed"] for side in sides.values() for r in side),
        "agreement": agreement.get("agreement"), "rounds_detail": sides,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=150.0, help="calls per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    figures = run(args.rate, args.seconds, args.rounds)
    print(json.dumps({k: v for k, v in figures.items() if k != "rounds_detail"}, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
