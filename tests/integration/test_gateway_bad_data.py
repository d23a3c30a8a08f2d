"""Bad data in Redis against a real gateway: its background tasks log it, count it and go on.

Anything that reaches Redis can write a reply onto a gateway's reply list or a value into a
pool's keys. Neither may stop the reply reader or the pool monitor (issue 12: one malformed
reply made every later call a 504, one malformed pool key stopped the monitor for good, both
with ``/v2/health/ready`` still 200). Real processes on a Redis of their own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgpack
import onnx
import pytest
import redis
import redis.asyncio as aioredis

from modelgate.core import wire
from modelgate.core.embedded_redis import free_port, start_redis
from modelgate.core.process import stop_process
from modelgate.core.settings import GatewaySettings
from modelgate.core.store import models as model_store
from modelgate.core.store import pools
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.metrics import Metrics
from tests import metrics
from tests.conftest import redis_url_for_db
from tests.models import write_repository
from tests.procs import Processes, wait_until

pytestmark = pytest.mark.integration

MLP = pools.pool_id("mlp", "1")
MLP_BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                        "data": [1, 2, 3, 4]}], "parameters": {"timeout_ms": 5_000}}
# The gateway's monitor reads every pool each 0.5 s (GatewaySettings.monitor_interval_s).
MONITOR_ROUNDS_S = 2.0
ADD2_BODY = {"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
                        {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1, 1, 1]}],
             "parameters": {"timeout_ms": 5_000}}


@dataclass
class Stack:
    base_url: str
    redis_url: str
    redis: redis.Redis
    processes: Processes

    def gateway_log(self) -> str:
        return (self.processes.log_dir / "gateway.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          onnx_models: dict[str, onnx.ModelProto]) -> Iterator[Stack]:
    repo = write_repository(tmp_path_factory.mktemp("bad-data-models"),
                            {"mlp": onnx_models["mlp"], "add2": onnx_models["add2"]})
    redis_process, redis_url = start_redis()
    processes = Processes(tmp_path_factory.mktemp("bad-data-logs"))
    client = redis.Redis.from_url(redis_url, socket_timeout=30)
    port = free_port()
    try:
        for name in ("mlp", "add2"):
            processes.spawn(f"worker-{name}", [
                "worker", "--models", str(repo), "--model", name, "--redis-url", redis_url])
        processes.spawn("gateway", [
            "gateway", "--models", str(repo), "--redis-url", redis_url, "--port", str(port)])
        base_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _status(base_url, "/v2/health/ready") == 200, 60,
                   f"{base_url} ready", processes.check_alive, processes.logs)
        yield Stack(base_url, redis_url, client, processes)
    finally:
        processes.stop(labels_first=("gateway",))
        client.close()
        stop_process(redis_process, timeout_s=5)
        if redis_process.stderr is not None:
            redis_process.stderr.close()


def _status(base_url: str, path: str) -> int:
    try:
        return httpx.get(f"{base_url}{path}", timeout=2).status_code
    except httpx.TransportError:
        return 0


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as c:
        yield c


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels on /metrics (0 when absent)."""
    return metrics.value(metrics.parse(client.get("/metrics").text), name, **labels)


def gateway_reply_list(stack: Stack, client: httpx.Client) -> str:
    """The gateway's reply list, read off a request entry as it is added (entries are deleted
    once answered, so a reader blocked on the stream's end is the sure way to see one)."""
    found: list[str] = []

    def watch() -> None:
        watcher = redis.Redis.from_url(stack.redis_url, socket_timeout=30)
        try:
            entries = watcher.xread({pools.requests_stream(MLP): "$"}, count=1, block=20_000)
            if entries:
                found.append(entries[0][1][0][1][b"reply_to"].decode())
        finally:
            watcher.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def seen() -> bool:
        assert client.post("/v2/models/mlp/infer", json=MLP_BODY).status_code == 200
        return not thread.is_alive()

    wait_until(seen, 20, "a request entry from the gateway")
    assert found, "the watcher saw no entry"
    return found[0]


def serves(client: httpx.Client) -> bool:
    return (client.post("/v2/models/mlp/infer", json=MLP_BODY).status_code == 200
            and client.post("/v2/models/add2/infer", json=ADD2_BODY).status_code == 200
            and client.get("/v2/health/ready").status_code == 200)


def keeps_serving(client: httpx.Client, seconds: float = MONITOR_ROUNDS_S) -> None:
    """Every call and readiness check answers 200 for ``seconds`` (several monitor rounds,
    so the bad data has been read more than once)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert serves(client)


# --------------------------------------------------------------------------- the reply reader


def test_a_malformed_reply_is_dropped_counted_and_later_calls_are_answered(
        stack: Stack, client: httpx.Client) -> None:
    """Issue 12's reproduction: a JSON output whose data is not a list."""
    reply_to = gateway_reply_list(stack, client)
    before = metric(client, "modelgate_dropped_replies_total", reason="malformed")
    stack.redis.rpush(reply_to, msgpack.packb({
        "v": wire.WIRE_VERSION, "ids": ["999998", "999999"], "rows": [1, 1], "status": "ok",
        "outputs": {"x": ["JSON", [2], 5]}}))
    stack.redis.rpush(reply_to, b"not msgpack at all")

    wait_until(lambda: metric(client, "modelgate_dropped_replies_total",
                              reason="malformed") == before + 2, 10,
               "both replies to be counted as dropped")
    keeps_serving(client)
    assert "dropped a malformed reply" in stack.gateway_log()
    assert metric(client, "modelgate_background_errors_total", task="dispatch-reader") == 0


# --------------------------------------------------------------------------- the pool monitor


def test_a_malformed_pool_key_is_counted_and_the_monitor_goes_on(
        stack: Stack, client: httpx.Client) -> None:
    """A worker count too large for a float stopped the monitor for good (OverflowError);
    then nothing the monitor keeps (gauges, readiness) moved again."""
    before = metric(client, "modelgate_malformed_records_total", record="pool")
    stack.redis.set(pools.desired(MLP), "1" + "0" * 400, ex=60)
    keeps_serving(client)
    assert metric(client, "modelgate_malformed_records_total", record="pool") > before

    stack.redis.set(pools.desired(MLP), "3", ex=60)
    wait_until(lambda: metric(client, "modelgate_desired_workers", model="mlp") == 3.0, 10,
               "the monitor to read the next good value")
    assert "desired" in stack.gateway_log()
    assert metric(client, "modelgate_background_errors_total", task="pool-monitor") == 0
    stack.redis.delete(pools.desired(MLP))


def test_a_pool_key_of_another_type_is_not_a_redis_outage(
        stack: Stack, client: httpx.Client) -> None:
    """WRONGTYPE on one pool's key is bad data in that pool, not Redis being unreachable: the
    other model keeps being served, the bad pool keeps its last reading, and it is counted.
    (Before, every refresh failed as an outage: readiness 503 and every call 503.)"""
    before = metric(client, "modelgate_malformed_records_total", record="pool")
    stack.redis.delete(pools.starting_set(MLP))
    stack.redis.set(pools.starting_set(MLP), "not a sorted set")
    try:
        keeps_serving(client)
        assert metric(client, "modelgate_malformed_records_total", record="pool") >= before + 2
        ready = client.get("/v2/health/ready").json()
        assert ready["redis"] is True, ready
    finally:
        stack.redis.delete(pools.starting_set(MLP))


# --------------------------------------------------------------------------- refresh hooks


def test_a_refresh_hook_that_raises_is_counted_and_the_refresh_goes_on(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path,
        onnx_models: dict[str, onnx.ModelProto]) -> None:
    """The dashboard records the gauges through a hook the monitor calls: one that raised
    stopped the refresh that called it, and with it the monitor."""
    repo = write_repository(tmp_path / "models", {"mlp": onnx_models["mlp"]})
    url = redis_url_for_db(redis_url, 0)  # redis_client's database, emptied after the test
    settings = GatewaySettings(models_dir=repo, redis_url=url)

    async def scenario() -> Metrics:
        client = aioredis.Redis.from_url(url)
        plane = DataPlane(settings, client, client, "hooks", Metrics())
        seen: list[float] = []

        def broken(now: float) -> None:
            raise ZeroDivisionError("a bug in a view of the gauges")

        plane.on_refresh += [broken, seen.append]
        redis_client.zadd(pools.worker_set(MLP), {"w": time.time()})
        try:
            await plane.refresh()
            await plane.refresh()
        finally:
            await client.aclose()
        assert len(seen) == 2, "the hooks after the broken one did not run"
        assert plane.redis_ok and plane.pools[MLP].live_workers == 1
        return plane.metrics

    metrics = asyncio.run(scenario())
    assert metrics.registry.get_sample_value("modelgate_background_errors_total",
                                             {"task": "dashboard"}) == 2


def test_malformed_model_state_keys_are_counted_and_the_monitor_goes_on(
        stack: Stack, client: httpx.Client) -> None:
    """The served models' generation (an integer), the decider's lease (text) and the set of
    models are read by the same monitor: int('abc') or a lease that is not UTF-8 stopped it
    for good, and a set of another type was taken for a Redis outage."""
    before = metric(client, "modelgate_malformed_records_total", record="models")
    stack.redis.set(model_store.GENERATION, "abc")
    stack.redis.set(model_store.LEASE, b"\xff\xfe not text", ex=30)
    try:
        keeps_serving(client)
        assert metric(client, "modelgate_malformed_records_total", record="models") >= before + 2
        stack.redis.set(model_store.GENERATION, "999")
        stack.redis.delete(model_store.MODELS)
        stack.redis.set(model_store.MODELS, "not a set")
        keeps_serving(client)
        ready = client.get("/v2/health/ready").json()
        assert ready["redis"] is True and not ready["failing_tasks"], ready
    finally:
        stack.redis.delete(model_store.GENERATION, model_store.LEASE, model_store.MODELS)
    assert "skipped bad data in models" in stack.gateway_log()
    assert metric(client, "modelgate_background_errors_total", task="pool-monitor") == 0
