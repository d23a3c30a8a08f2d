"""Bounded load from the host, and what the worker containers it lands on hold.

The load is ``tests.chaos.conftest.drive``: keep-alive connections from this process, every
call sent gets an ``Answer`` (a lost one has status 0), and a time budget ends it whatever the
server does. Calls are V2 JSON, one row each, so every answer can be checked against ONNX
Runtime run directly on the same row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import redis

from modelgate.core.store import pools
from tests.chaos.conftest import Answer, drive
from tests.engine.stack import docker

TIMEOUT_MS = 30_000  # each call's deadline: longer than a reclaim after a kill (5 s)


def mlp_rows(seed: int, count: int) -> np.ndarray:
    """Distinct rows for the demo `mlp` model (4 features), so each call has its own answer."""
    return np.random.default_rng(seed).uniform(0, 8, (count, 4)).astype(np.float32)


def v2_body(rows: np.ndarray, input_name: str = "input") -> bytes:
    return orjson.dumps({
        "inputs": [{"name": input_name, "shape": list(rows.shape), "datatype": "FP32",
                    "data": rows.ravel().tolist()}],
        "parameters": {"timeout_ms": TIMEOUT_MS},
    })


def load(base_url: str, model: str, inputs: np.ndarray, *, concurrency: int,
         rate_per_s: float | None = None, budget_s: float = 60.0,
         on_answer: Callable[[Answer, int], Awaitable[None] | None] | None = None,
         until: Callable[[], bool] | None = None, poll_s: float = 0.5) -> list[Answer]:
    """One call per row of ``inputs``, in order, from ``concurrency`` connections (at most
    ``rate_per_s`` calls a second). With ``until``, rows repeat and the load goes on until
    ``until()`` (polled off the event loop every ``poll_s``) holds; ``budget_s`` bounds both."""

    async def run() -> list[Answer]:
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                if until is not None and await asyncio.to_thread(until):
                    stop.set()
                    return
                await asyncio.sleep(poll_s)

        watcher = asyncio.create_task(watch()) if until is not None else None
        try:
            return await drive(
                base_url, f"/v2/models/{model}/infer",
                lambda i: v2_body(inputs[i % len(inputs)][None, :]),
                concurrency=concurrency, count=None if until is not None else len(inputs),
                stop=stop, rate_per_s=rate_per_s, budget_s=budget_s,
                client_timeout_s=TIMEOUT_MS / 1000 + 5, on_answer=on_answer)
        finally:
            stop.set()
            if watcher is not None:
                await watcher

    return asyncio.run(run())


def after_answers(count: int, action: Callable[[], dict[str, Any]],
                  figures: dict[str, Any]) -> Callable[[Answer, int], Awaitable[None] | None]:
    """An ``on_answer`` that runs ``action`` (off the event loop, so the load goes on) once
    ``count`` calls were answered, and stores what it returns in ``figures``."""

    async def on_answer(answer: Answer, answered: int) -> None:
        if answered == count:
            figures.update(await asyncio.to_thread(action))

    return on_answer


def failures(answers: list[Answer], limit: int = 5) -> str:
    bad = [a for a in answers if a.status != 200]
    return "; ".join(f"#{a.index}: {a.status} {a.error or a.body[:200]!r}" for a in bad[:limit])


def wrong_outputs(answers: list[Answer], inputs: np.ndarray, model_file: Path) -> list[int]:
    """Indices of 200 answers whose first output is not ONNX Runtime's on that call's row
    (call ``i`` sent row ``i % len(inputs)``)."""
    ok = [a for a in answers if a.status == 200]
    if not ok:
        return []
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    wrong = []
    for answer in ok:
        output = orjson.loads(answer.body)["outputs"][0]
        got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])[0]
        if not np.allclose(got, expected[answer.index % len(inputs)], rtol=1e-4, atol=1e-5):
            wrong.append(answer.index)
    return wrong


def throughput(answers: list[Answer]) -> float:
    """Answers per second between the first call sent and the last answer."""
    if not answers:
        return 0.0
    start = min(a.started_s for a in answers)
    end = max(a.started_s + a.latency_s for a in answers)
    return round(len(answers) / max(end - start, 1e-9), 1)


# --------------------------------------------------------------------------- held entries


def held_by(client: redis.Redis, pool: str, container: str) -> int:
    """Request entries of ``pool`` delivered to the worker in ``container`` and not yet
    acknowledged (its consumer name starts with its host name, the container's short id)."""
    summary = client.xpending(pools.requests_stream(pool), pools.WORKER_GROUP)
    prefix = f"{container[:12]}-".encode()
    return sum(int(c["pending"]) for c in summary.get("consumers") or ()
               if c["name"].startswith(prefix))


def pause_holding(client: redis.Redis, pool: str, container: str,
                  timeout_s: float = 15.0) -> int:
    """Pause ``container`` (the cgroup freezer) at a moment its worker holds entries, so a
    stop or kill that follows provably finds work in its hands; returns how many it holds.
    The container stays paused; ``docker stop`` and ``docker kill`` act on it as they are."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        docker("container", "pause", container)
        held = held_by(client, pool, container)
        if held:
            return held
        docker("container", "unpause", container)
        time.sleep(0.02)
    raise AssertionError(f"{container[:12]} never held an entry of {pool} in {timeout_s:.0f} s")
