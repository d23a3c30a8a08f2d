"""`docker compose up --scale worker=3` under a bounded load, and a worker stopped mid-load.

Three Compose-started `mlp` workers share one request stream. Each worker's heartbeat in
Redis says how many calls it processed and on which host (a container's host name is its
short id), so the shares are counted per container. A worker stopped mid-load must drain:
answer what it holds and exit 0. Every answer is compared with ONNX Runtime run here on the
image's model.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelgate.core.store import pools
from tests.engine.load import (
    after_answers,
    failures,
    load,
    mlp_rows,
    pause_holding,
    throughput,
    wrong_outputs,
)
from tests.engine.stack import (
    Stack,
    container_logs,
    docker,
    inspect,
    live_workers,
    open_stack,
    pool_counts,
)
from tests.procs import wait_until

pytestmark = pytest.mark.engine

POOL = pools.pool_id("mlp", "1")
WORKERS = 3
CALLS = 3_000
CONCURRENCY = 16
ACT_AFTER = 1_000  # answers before a worker is stopped or killed
STOP_GRACE_S = 30  # compose.yaml's stop_grace_period for workers


@pytest.fixture(scope="module")
def three_workers(compose_binary: str, images: dict[str, str],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Gateway, Redis, iris' worker and three `mlp` workers; no autoscaler, so the pool is
    exactly what Compose runs."""
    with open_stack(compose_binary, images, tmp_path_factory.mktemp("scale-out")) as stack:
        stack.up("gateway", "worker", "worker-iris", scale={"worker": WORKERS})
        client = stack.redis()
        wait_until(lambda: live_workers(client, POOL) == WORKERS, 60,
                   f"{WORKERS} live mlp workers", details=stack.logs)
        stack.wait_model_ready("mlp")
        client.close()
        yield stack


def shares(counts: dict[str, int]) -> dict[str, str]:
    total = sum(counts.values()) or 1
    return {host: f"{n} ({n / total:.0%})" for host, n in sorted(counts.items())}


@pytest.mark.timeout(180)
def test_three_workers_each_take_a_share_of_the_load(
        three_workers: Stack, image_models: Path,
        engine_report: Callable[[dict[str, Any]], None]) -> None:
    inputs = mlp_rows(1, CALLS)
    answers = load(three_workers.base_url, "mlp", inputs, concurrency=CONCURRENCY, budget_s=90)
    codes = Counter(a.status for a in answers)
    client = three_workers.redis()
    # Heartbeats carry the counts once a second; wait for the one after the last answer.
    wait_until(lambda: sum(pool_counts(client, POOL).values()) >= codes[200], 10,
               "the workers' heartbeats to count every answered call")
    counts = pool_counts(client, POOL)
    client.close()
    containers = {c[:12] for c in three_workers.containers("worker")}
    engine_report({"calls": len(answers), "ok": codes[200], "failed": len(answers) - codes[200],
                   "calls_per_s": throughput(answers), "per_container": shares(counts)})
    assert len(answers) == CALLS, "the load did not finish within its time budget"
    assert codes == {200: CALLS}, f"{dict(codes)}: {failures(answers)}"
    assert not wrong_outputs(answers, inputs, image_models / "mlp" / "1" / "model.onnx")
    assert set(counts) == containers, f"workers on {set(counts)}, Compose runs {containers}"
    assert sum(counts.values()) == CALLS
    assert all(n > 0 for n in counts.values()), f"a worker took no work: {counts}"


@pytest.mark.timeout(180)
def test_a_worker_stopped_mid_load_drains(
        three_workers: Stack, image_models: Path,
        engine_report: Callable[[dict[str, Any]], None]) -> None:
    """``docker stop`` of one replica, which is what ``docker compose stop`` does to each
    container of a service (SIGTERM, SIGKILL after stop_grace_period; Compose's ``stop``
    takes whole services, not replicas). The worker is paused at a moment it holds entries
    first, so the stop provably finds work in its hands."""
    victim = three_workers.containers("worker")[0]
    client = three_workers.redis()
    figures: dict[str, Any] = {}

    def stop() -> dict[str, Any]:
        held = pause_holding(client, POOL, victim)
        started = time.monotonic()
        docker("container", "stop", "-t", str(STOP_GRACE_S), victim)
        return {"held_at_stop": held, "stop_s": round(time.monotonic() - started, 2)}

    inputs = mlp_rows(2, CALLS)
    answers = load(three_workers.base_url, "mlp", inputs, concurrency=CONCURRENCY,
                   budget_s=90, on_answer=after_answers(ACT_AFTER, stop, figures))
    codes = Counter(a.status for a in answers)
    state = inspect(victim)["State"]
    log = container_logs(victim)
    pending = client.xpending(pools.requests_stream(POOL), pools.WORKER_GROUP)["pending"]
    live = live_workers(client, POOL)
    client.close()
    engine_report({"calls": len(answers), "ok": codes[200], "failed": len(answers) - codes[200],
                   **figures, "exit_code": state["ExitCode"], "pending_after": pending,
                   "live_workers_after": live})
    assert figures, f"the worker was never stopped: {len(answers)} answers"
    assert len(answers) == CALLS, "the load did not finish within its time budget"
    assert codes == {200: CALLS}, f"{dict(codes)}: {failures(answers)}"
    assert not wrong_outputs(answers, inputs, image_models / "mlp" / "1" / "model.onnx")
    assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 0, False)
    assert figures["stop_s"] < STOP_GRACE_S, "the worker was killed at the grace period"
    assert "draining" in log and "stopped after" in log, log[-2000:]
    assert pending == 0, "entries are left unacknowledged"
    assert live == WORKERS - 1
