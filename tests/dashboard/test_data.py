"""``GET /dashboard/data`` from a real gateway process over a real Redis, with known counters.

The counters are written the way workers and gateways write them (``StatsAccumulator``
flushed on a pipeline), the decisions the way the autoscaler writes its events, so the numbers
the dashboard reports can be checked against what was written.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
import redis

from modelgate.core.embedded_redis import free_port
from modelgate.core.stats import LATENCY_WINDOW_S, RATE_WINDOW_S, StatsAccumulator
from modelgate.core.store import pools, scaling
from tests.conftest import redis_url_for_db
from tests.models import write_repository
from tests.procs import Processes, wait_until

pytestmark = pytest.mark.integration

POOL = "mlp:1"
KEY = "mg-dashboard-key-3c9d"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"> & "quotes"'
READY_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory,
         onnx_models: dict[str, onnx.ModelProto]) -> Path:
    return write_repository(tmp_path_factory.mktemp("dashboard-models"),
                            {"mlp": onnx_models["mlp"]})


@contextlib.contextmanager
def gateway(repo: Path, redis_url: str, log_dir: Path,
            extra: Sequence[str] = ()) -> Iterator[httpx.Client]:
    """A gateway process with no workers (nothing but the test writes counters)."""
    processes = Processes(log_dir)
    port = free_port()
    processes.spawn("gateway", ["gateway", "--models", str(repo), "--redis-url", redis_url,
                                "--host", "127.0.0.1", "--port", str(port), *extra])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
            def live() -> bool:
                try:
                    # Open even with --protect-probes, unlike /v2/health/live.
                    return client.get("/dashboard").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(live, READY_TIMEOUT_S, "the gateway to answer", processes.check_alive,
                       processes.logs)
            yield client
    finally:
        processes.stop()


def write_second(client: redis.Redis, second: int, runs: Sequence[dict[str, Any]],
                 **counts: float) -> None:
    stats = StatsAccumulator(POOL)
    for run in runs:
        stats.add_run(**run)
    if counts:
        stats.add(**counts)
    pipe = client.pipeline(transaction=False)
    stats.flush(pipe, second)
    pipe.execute()


def write_event(client: redis.Redis, when: float, current: int, desired: int, reason: str,
                cost_per_hour: float, capped: bool = False) -> None:
    client.xadd(scaling.EVENTS, {
        "time": f"{when:.3f}", "pool": POOL, "current": current, "desired": desired,
        "raw": desired, "capped": int(capped), "panic": 0, "backlog": 3, "arrival_rate": "1.00",
        "completion_rate": "1.00", "p95_ms": "", "service_ms": "", "live": current,
        "starting": 0, "cost_per_hour": f"{cost_per_hour:.4f}", "reason": reason})


def test_data_reports_what_was_written(repo: Path, redis_url: str, redis_client: redis.Redis,
                                       tmp_path: Path) -> None:
    now = int(time.time())
    old, older = now - 40, now - 41
    recent = now - 2
    # 4 requests in one run: queue waits 1, 3, 5, 7 ms, 2 ms of compute -> latencies 3..9 ms.
    write_second(redis_client, old, [dict(requests=4, rows=4, compute_ms=2.0,
                                          queue_ms=[1.0, 3.0, 5.0, 7.0],
                                          failures={"errors": 1})],
                 arrivals=10, rejected=2)
    # Two runs of 2: queue 0.5 ms, compute 1 ms each -> every latency 1.5 ms.
    write_second(redis_client, older, [dict(requests=2, rows=2, compute_ms=1.0,
                                            queue_ms=[0.5, 0.5])] * 2)
    write_second(redis_client, recent, [dict(requests=6, rows=6, compute_ms=3.0,
                                             queue_ms=[2.0] * 6)], arrivals=6)
    # Backlog: 3 requests as a gateway queues them, bundled in one entry nobody consumes (the
    # stream's length, 1, is not the backlog).
    redis_client.xadd(pools.requests_stream(POOL), {"ids": "0,1,2"})
    redis_client.incrby(pools.queued(POOL), 3)
    redis_client.zadd(pools.worker_set(POOL), {"worker-a": now + 3600})  # live for the test
    redis_client.set(pools.desired(POOL), 2)
    redis_client.set(scaling.BUDGET, "4.0000")
    write_event(redis_client, now - 30.5, 1, 2, HOSTILE, cost_per_hour=2.0)
    write_event(redis_client, now - 29.5, 2, 2, "steady", cost_per_hour=2.0)
    write_event(redis_client, now - 1.5, 2, 2, "capped", cost_per_hour=2.0, capped=True)

    url = redis_url_for_db(redis_url, 0)
    with gateway(repo, url, tmp_path) as client:
        def snapshot() -> dict[str, Any]:
            response = client.get("/dashboard/data")
            assert response.status_code == 200, response.text
            assert response.headers["cache-control"] == "no-store"
            return response.json()

        # The gateway's own history has a sample once its monitor ran.
        wait_until(lambda: snapshot()["models"][0]["series"]["live"][-1] == 1, 10,
                   "the gateway's history to hold a sample")
        data = snapshot()

    assert data["window_s"] == 300 and data["end"] - data["start"] == 299
    assert data["end"] in (now - 1, now, now + 1, now + 2)
    [model] = data["models"]
    assert (model["name"], model["version"], model["pool"]) == ("mlp", "1", POOL)
    s = model["series"]
    assert all(len(values) == 300 for values in s.values())
    at = {name: values[old - data["start"]] for name, values in s.items()}
    assert (at["completed"], at["arrivals"], at["errors"], at["rejected"]) == (4, 10, 1, 2)
    assert at["queue_ms"] == 4.0  # (1 + 3 + 5 + 7) / 4
    assert at["compute_ms"] == 2.0
    assert (at["p50_ms"], at["p95_ms"], at["p99_ms"]) == (5.0, 9.5, 9.9)  # in (2, 5], (5, 10]
    at = {name: values[older - data["start"]] for name, values in s.items()}
    assert (at["completed"], at["queue_ms"], at["compute_ms"]) == (4, 0.5, 1.0)
    assert (at["p50_ms"], at["p95_ms"], at["p99_ms"]) == (1.5, 1.95, 1.99)  # all in (1, 2]
    quiet = old + 5 - data["start"]
    assert (s["completed"][quiet], s["p95_ms"][quiet], s["queue_ms"][quiet]) == (0, None, None)

    # "Now": rates over the last RATE_WINDOW_S complete seconds, latency over a longer window.
    figures = model["now"]
    in_rates = data["end"] - RATE_WINDOW_S < recent <= data["end"]
    assert figures["completed_per_s"] == (round(6 / RATE_WINDOW_S, 3) if in_rates else 0)
    assert figures["arrivals_per_s"] == (round(6 / RATE_WINDOW_S, 3) if in_rates else 0)
    if data["end"] - LATENCY_WINDOW_S < recent <= data["end"]:
        # six latencies of 5 ms, in (2, 5]: the median is halfway up the bucket
        assert (figures["queue_ms"], figures["compute_ms"], figures["p50_ms"]) == (2.0, 3.0, 3.5)
    assert (figures["backlog"], figures["live"], figures["starting"]) == (3, 1, 0)
    assert figures["desired"] == 2
    assert figures["cost_per_hour"] == 2.0
    assert s["backlog"][-1] == 3 and s["desired"][-1] == 2

    # Decisions: the change (its reason verbatim: escaping is the page's job) and the cap.
    assert [(d["current"], d["desired"], d["reason"], d["capped"])
            for d in model["decisions"]] == [(1, 2, HOSTILE, False), (2, 2, "capped", True)]
    assert model["decisions"][0]["time"] == pytest.approx(now - 30.5)
    auto = data["autoscaler"]
    assert auto["running"] is True
    assert (auto["cost_per_hour"], auto["budget_per_hour"]) == (2.0, 4.0)
    assert auto["cost"][-1] == 2.0
    assert auto["cost"][int(now - 30.5) - data["start"] - 1] is None  # before the first event


def test_many_pages_share_one_snapshot(repo: Path, redis_url: str, redis_client: redis.Redis,
                                       tmp_path: Path) -> None:
    with gateway(repo, redis_url_for_db(redis_url, 0), tmp_path) as client:
        client.get("/dashboard/data")  # the first build reads the whole window
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda _: client.get("/dashboard/data").json()["time"],
                                   range(16)))
        # Within the 0.5 s cache, built at most twice (a build may expire mid-burst).
        assert len(set(bodies)) <= 2, bodies


def test_page_is_open_but_data_needs_the_key(repo: Path, redis_url: str,
                                             redis_client: redis.Redis, tmp_path: Path) -> None:
    url = redis_url_for_db(redis_url, 0)
    with gateway(repo, url, tmp_path, ["--api-key", KEY, "--protect-probes"]) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["referrer-policy"] == "no-referrer"
        for asset, kind in [("dashboard.js", "text/javascript"), ("charts.js", "text/javascript"),
                            ("dashboard.css", "text/css")]:
            response = client.get(f"/dashboard/{asset}")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(kind)
        assert "mlp" not in page.text  # the shell names no model

        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
            response = client.get("/dashboard/data", headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "error" in response.json()
        response = client.get("/dashboard/data", headers={"authorization": f"Bearer {KEY}"})
        assert response.status_code == 200
        assert response.json()["models"][0]["name"] == "mlp"
        assert client.get("/dashboard/nothing").status_code == 404
