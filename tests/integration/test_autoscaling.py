"""End to end: `modelgate up` scales a compute-heavy model up under a step load and back down
after it, on the local process backend, with no failed request while workers drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from modelgate.cli import demo
from modelgate.core.embedded_redis import free_port
from modelgate.core.process import child_preexec, stop_process
from modelgate.core.store import pools, scaling
from tests.procs import REPO_ROOT, wait_until

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / "test-artifacts"
POOL = "heavy:1"
FEATURES = 64


@pytest.fixture
def heavy_repository(tmp_path: Path) -> Path:
    # ~800 M multiply-adds per row: ORT time dominates, so one worker saturates under load.
    demo.write_model(demo.heavy_model(features=FEATURES, layers=48), tmp_path, "heavy")
    (tmp_path / "heavy" / "config.yaml").write_text("max_batch_size: 8\n")
    return tmp_path


async def _drive(base: str, rate_per_s: float, seconds: float, results: list[int]) -> float:
    """Open-loop load: a request every 1/rate seconds whatever the answers do (a real step)."""
    rng = np.random.default_rng(0)
    body = {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32",
                        "data": rng.random(FEATURES).tolist()}]}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as client:
        async def one() -> None:
            try:
                response = await client.post("/v2/models/heavy/infer", json=body)
                results.append(response.status_code)
            except httpx.HTTPError:
                results.append(0)

        started = time.monotonic()
        first_sent = time.time()
        tasks = []
        for i in range(int(rate_per_s * seconds)):
            delay = started + i / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return first_sent


def _row_seconds(repository: Path) -> float:
    """Median ONNX Runtime time of one row on one thread, here and now."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repository / "heavy" / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    row = {"input": np.zeros((1, FEATURES), dtype=np.float32)}
    session.run(None, row)
    times = []
    for _ in range(15):
        started = time.perf_counter()
        session.run(None, row)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _events(client: redis.Redis) -> list[scaling.ScalingEvent]:
    return [event for _, fields in client.xrange(scaling.EVENTS)
            if (event := scaling.ScalingEvent.parse(fields)) is not None]


@pytest.mark.timeout(180)
def test_step_load_scales_up_then_back_to_one_without_failures(heavy_repository: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    log_path = heavy_repository / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "modelgate", "up", "--models", str(heavy_repository),
             "--port", str(port), "--min-workers", "1", "--max-workers", "3",
             "--scale-down-delay", "3", "--state-dir", str(heavy_repository / ".state")],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=child_preexec)
    try:
        wait_until(lambda: b"gateway listening" in log_path.read_bytes(), 90,
                   "modelgate up to start", details=lambda: log_path.read_text())
        # `up` keeps the embedded Redis's URL, password included, in a file only we can read.
        client = redis.Redis.from_url((heavy_repository / ".state" / "redis-url").read_text()
                                      .strip())

        results: list[int] = []
        # Enough load for 2.5 busy workers (what one row costs differs from machine to machine:
        # measure it), within what this test's Python client can send.
        rate = min(max(2.5 / _row_seconds(heavy_repository), 40.0), 250.0)
        step_at = asyncio.run(_drive(base, rate, 8.0, results))
        load_ended = time.time()

        events = _events(client)
        up_events = [e for e in events if e.time >= step_at and e.desired > e.current]
        assert up_events, f"no scale-up during the step load; events: {events[-5:]}"
        decision_s = up_events[0].time - step_at
        assert max(e.desired for e in up_events) >= 2

        # A trickle keeps flowing while the pool scales back down: none of it may fail.
        trickle: list[int] = []
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=base, timeout=30.0) as http:
            body = {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32",
                                "data": [0.5] * FEATURES}]}
            while time.monotonic() < deadline:
                trickle.append(http.post("/v2/models/heavy/infer", json=body).status_code)
                now = time.time()
                live = client.zcount(pools.worker_set(POOL), now - 5, "+inf")
                last = _events(client)[-1]
                if live == 1 and last.desired == 1 and last.current == 1:
                    break
                time.sleep(0.1)
        events = _events(client)
        down_events = [e for e in events if e.desired < e.current]
        assert down_events, "never scaled back down"
        assert events[-1].desired == 1, events[-1]
        # The first new worker to register is the moment it serves (it registers after warm-up).
        serving = [e for e in events if e.time >= step_at and e.live >= 2]
        serving_s = serving[0].time - step_at if serving else None
        back_to_one_s = down_events[-1].time - load_ended

        figures = {
            "step_requests": len(results), "step_failures": sum(c != 200 for c in results),
            "trickle_requests": len(trickle), "trickle_failures": sum(c != 200 for c in trickle),
            "seconds_to_scale_up_decision": round(decision_s, 2),
            "seconds_to_new_worker_serving": None if serving_s is None else round(serving_s, 2),
            "peak_desired": max(e.desired for e in events),
            "seconds_from_load_end_to_one_worker": round(back_to_one_s, 2),
        }
        print("autoscaling:", json.dumps(figures))
        for e in events:  # the decisions around the step, for the log
            if e.time >= step_at - 1:
                print(f"  t+{e.time - step_at:5.1f}s {e.current}->{e.desired} "
                      f"backlog {e.backlog:>3} in/s {e.arrival_rate:>7.2f} live {e.live} "
                      f"{e.reason}")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "autoscaling.json").write_text(json.dumps(figures, indent=2))
        assert figures["step_failures"] == 0 and figures["trickle_failures"] == 0
    finally:
        up.send_signal(signal.SIGTERM)
        stop_process(up, timeout_s=40)
