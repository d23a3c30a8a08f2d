"""`modelgate status` and `modelgate simulate` as an operator runs them."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from modelgate.cli.status import render
from modelgate.core.stats import StatsAccumulator
from modelgate.core.store import drift as drift_store
from modelgate.core.store import heartbeats, pools, scaling
from tests.procs import REPO_ROOT

pytestmark = pytest.mark.integration


def test_status_shows_pools_workers_decisions_and_drift(redis_client: redis.Redis) -> None:
    pool = "mlp:1"
    now = time.time()
    redis_client.xadd(pools.requests_stream(pool), {"ids": "1"})  # the stream names the pool
    redis_client.incrby(pools.queued(pool), 1)
    redis_client.zadd(pools.worker_set(pool), {"w-1": now})
    redis_client.hset(heartbeats.heartbeat("w-1"), mapping=heartbeats.Heartbeat(
        pool, 4242, "host-a", now - 60, 1234, 0.5).fields())
    stats = StatsAccumulator(pool)
    stats.add(arrivals=30)
    stats.add_run(requests=30, rows=30, compute_ms=60.0, queue_ms=[1.0] * 30)
    pipe = redis_client.pipeline()
    stats.flush(pipe, int(now) - 1)
    pipe.set(pools.desired(pool), 2)
    pipe.xadd(scaling.EVENTS, scaling.ScalingEvent(
        time=now, pool=pool, current=1, desired=2, reason="scale up: backlog 40").fields())
    for alert in (drift_store.DriftAlert("input[2]", "cusum", 31.2, 28.9, 0, now),
                  drift_store.DriftAlert("input[0]", "chi2", 50, 40, 500, now - 5),
                  drift_store.DriftAlert("input[0]", "cleared", 9, 40, 500, now)):
        pipe.xadd(drift_store.alerts(pool), alert.fields())
    for i in range(3):
        items = pools.DeadLetter({b"ids": b"x", b"payload": b"p" * 100}, b"1-0", 4, i).items()
        pipe.xadd(pools.dead_letters(pool), dict(zip(items[::2], items[1::2], strict=True)))
    pipe.execute()

    out = io.StringIO()
    assert render(redis_client, out) == 0
    text = out.getvalue()
    [dead] = [line for line in text.splitlines() if line.strip().startswith("dead letters")]
    assert pool in dead and "3 of 1000" in dead and "7 days" in dead
    row = next(line for line in text.splitlines() if line.startswith(pool))
    # no decider: no state; then live, starting, desired, backlog
    assert row.split()[1:6] == ["-", "1", "0", "2", "1"]
    assert "pid    4242" in text and "processed     1234" in text
    assert "1 -> 2  scale up: backlog 40" in text
    assert "input[2]" in text and "cusum 31.2 > 28.9" in text
    assert "input[0] " not in text.split("drift alerts")[1]  # cleared: not listed


def test_status_on_an_empty_redis_says_so(redis_client: redis.Redis) -> None:
    out = io.StringIO()
    render(redis_client, out)
    assert "no model pools" in out.getvalue()


def test_simulate_prints_the_comparison_and_plots(tmp_path: Path) -> None:
    png = tmp_path / "spike.png"
    done = subprocess.run(
        [sys.executable, "-m", "modelgate", "simulate", "spike", "--plot", str(png)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "best static in hindsight" in done.stdout
    assert "autoscaler / best static worker-seconds" in done.stdout
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    missing = subprocess.run([sys.executable, "-m", "modelgate", "simulate", "nope"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "no trace 'nope'" in missing.stderr
