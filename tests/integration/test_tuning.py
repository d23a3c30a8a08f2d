"""Batch sizes tuned at load, against a real Redis and real ONNX Runtime sessions.

A model whose rows/s falls with the batch (``Y = Gᵏ X`` with ``G = X Xᵀ``: its work per row
grows with the rows in the run) gets a cap below its largest size; a second start takes the
curve from the cache instead of measuring; config.yaml's max_batch_size wins; the worker
process publishes its plan before it is live (log, ``modelgate status``); a gateway bundles to
the published cap.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import httpx
import msgpack
import onnx
import pytest
import redis
from onnx import TensorProto, helper

from modelgate.cli.status import render
from modelgate.core.batching import BatchPlan, Source, choose
from modelgate.core.embedded_redis import free_port
from modelgate.core.repository import load_model
from modelgate.core.store import batching as batching_store
from modelgate.core.store import pools
from modelgate.worker.runner import Runner
from modelgate.worker.tuning import publish, tune
from tests import models
from tests.procs import Processes, wait_until

pytestmark = pytest.mark.integration

WIDTH = 16384
# Products by the Gram matrix. Its choice is only sound if a run at the best size costs more
# than a run's overhead beyond ONNX Runtime (batching.RUN_OVERHEAD_MS), on the fastest host:
# with one product (2·N·WIDTH multiply-adds a row) a run of 16 rows took 0.18 ms on an Intel
# Xeon VM and the overhead made 64 the best size served; with 16 a run of 16 takes ~1.4 ms
# there (cap 16, 64 serving ~0.6x the best by the rule), and on a host twice as fast 64 would
# still serve only ~0.84x the best.
GRAM_PRODUCTS = 16
BUDGET_S = 1.0


def falling_model() -> onnx.ModelProto:
    """``x`` FP32 [-1, WIDTH] -> ``y = Gᵏ x`` with ``G = x xᵀ / WIDTH`` (k = GRAM_PRODUCTS):
    (k + 1)·N·WIDTH multiply-adds a row in a run of N rows, so the larger the run, the slower
    each row. (Scaled by WIDTH, G's products stay finite on standard normal input.)"""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "xt"], ["gram_raw"]),
             helper.make_node("Mul", ["gram_raw", "scale"], ["gram"])]
    previous = "x"
    for step in range(GRAM_PRODUCTS):
        out = "y" if step == GRAM_PRODUCTS - 1 else f"y{step}"
        nodes.append(helper.make_node("MatMul", ["gram", previous], [out]))
        previous = out
    graph = helper.make_graph(
        nodes, "falling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0 / WIDTH])],
    )
    return models.finish(graph)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.write_repository(tmp_path_factory.mktemp("tuning-models"), {
        "falling": falling_model(), "capped": falling_model(), "add2": models.add2_model()},
        {"capped": "max_batch_size: 32\n"})


def test_falling_rows_per_s_gets_a_cap_below_the_largest_and_a_second_start_reuses_it(
        repo: Path, redis_client: redis.Redis) -> None:
    version = load_model(repo / "falling").default
    runner = Runner(version, intra_op_threads=1)
    runner.warm_up()
    plan = tune(redis_client, version, runner, 1, BUDGET_S)
    curve = dict(plan.curve)
    assert (plan.source, plan.curve_from) == (Source.TUNED, Source.MEASURED)
    # The choice from the measured curve: what serves most once each run pays
    # batching.RUN_OVERHEAD_MS (see GRAM_PRODUCTS), never 64, where the curve has fallen to
    # half its best or less.
    assert plan.max_batch_size == choose(plan.curve) < 64, plan.describe()
    assert version.max_batch_size == 64 and 64 in curve, plan.describe()  # measured to the top
    assert curve[64] < 0.5 * max(curve.values()), plan.describe()
    assert curve[64] < curve[plan.max_batch_size], plan.describe()
    publish(redis_client, version.pool, plan)
    assert BatchPlan.decode(redis_client.get(batching_store.plan(version.pool))) == plan

    started = time.perf_counter()
    again = tune(redis_client, version, runner, 1, BUDGET_S)
    assert time.perf_counter() - started < 0.05  # one HGET, no measuring
    assert (again.curve, again.max_batch_size, again.curve_from) == (
        plan.curve, plan.max_batch_size, Source.CACHED)
    # Another kind of host (here: another thread count) does not share the curve.
    other = tune(redis_client, version, Runner(version, intra_op_threads=2), 2, 0.0)
    assert (other.source, other.curve) == (Source.DEFAULT, ())


def test_config_max_batch_size_wins_but_the_curve_is_still_shown(
        repo: Path, redis_client: redis.Redis) -> None:
    version = load_model(repo / "capped").default
    plan = tune(redis_client, version, Runner(version, intra_op_threads=1), 1, BUDGET_S)
    assert (plan.max_batch_size, plan.source, plan.curve_from) == (
        32, Source.CONFIG, Source.MEASURED)
    assert [size for size, _ in plan.curve] == [1, 2, 4, 8, 16, 32]


def test_worker_publishes_its_plan_before_it_is_live_and_the_next_one_uses_the_cache(
        repo: Path, redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first, second = Processes(tmp_path / "first"), Processes(tmp_path / "second")
    pool = pools.pool_id("falling", "1")
    args = ["worker", "--models", str(repo), "--model", "falling", "--redis-url", redis_url]
    try:
        first.spawn("worker", args)
        wait_until(lambda: redis_client.zcard(pools.worker_set(pool)) > 0, 60,
                   "the first worker to be live", first.check_alive, first.logs)
        plan = BatchPlan.decode(redis_client.get(batching_store.plan(pool)))
        assert plan.curve_from == Source.MEASURED and plan.max_batch_size < 64
        out = io.StringIO()
        render(redis_client, out)
        assert f"{pool:<22} run size cap {plan.max_batch_size} (tuned)" in out.getvalue()
        first.stop()
        second.spawn("worker", args)
        wait_until(lambda: "serving falling:1" in second.logs(), 60,
                   "the second worker to serve", second.check_alive, second.logs)
    finally:
        first.stop()
        second.stop()
    first_log, second_log = first.logs(), second.logs()
    assert "tuned falling:1 in" in first_log and "(measured)" in first_log
    assert "tuned falling:1 in" not in second_log and "(cached)" in second_log
    assert f"max_batch_size={plan.max_batch_size}," in second_log


def _entry_rows(client: redis.Redis, pool: str) -> list[int]:
    """Rows of every entry on the pool's stream (read from their payloads)."""
    return [sum(msgpack.unpackb(fields[b"payload"])["rows"])
            for _, fields in client.xrange(pools.requests_stream(pool))]


async def _calls(base: str, count: int) -> None:
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
                       for n in ("a", "b")], "parameters": {"timeout_ms": 300}}
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        answers = await asyncio.gather(*(client.post("/v2/models/add2/infer", json=body)
                                         for _ in range(count)))
    assert {a.status_code for a in answers} == {504}  # no worker reads: the deadline ends it


def test_gateway_bundles_to_the_published_cap(repo: Path, redis_url: str,
                                              redis_client: redis.Redis,
                                              tmp_path: Path) -> None:
    """No worker reads the stream (a live one is only announced), so the entries the gateway
    adds stay on it to be counted: bundles of many calls at first, none above the cap once a
    plan is published."""
    version = load_model(repo / "add2").default
    processes = Processes(tmp_path)
    base = f"http://127.0.0.1:{free_port()}"
    redis_client.zadd(pools.worker_set(version.pool), {"announced": time.time() + 60})
    try:
        processes.spawn("gateway", ["gateway", "--models", str(repo), "--redis-url", redis_url,
                                    "--port", base.rsplit(":", 1)[1]])
        wait_until(lambda: _answers(f"{base}/v2/models/add2/ready") == 200, 60,
                   "the gateway to count the announced worker", processes.check_alive,
                   processes.logs)
        for _ in range(5):  # bundling depends on calls meeting in one write: a few tries
            asyncio.run(_calls(base, 16))
            if max(_entry_rows(redis_client, version.pool)) > 2:
                break
        assert max(_entry_rows(redis_client, version.pool)) > 2
        redis_client.delete(pools.requests_stream(version.pool))
        plan = BatchPlan(2, (), Source.TUNED, ((1, 10.0), (2, 30.0)), Source.MEASURED,
                         "test host", version.sha256, time.time())
        redis_client.set(batching_store.plan(version.pool), plan.encode())
        wait_until(lambda: httpx.get(f"{base}/v2/models/add2").json()["parameters"][
            "batching"] == plan.body(), 10, "the gateway to read the plan")
        for _ in range(3):
            asyncio.run(_calls(base, 16))
        rows = _entry_rows(redis_client, version.pool)
        assert sum(rows) == 48 and max(rows) <= 2, rows
        assert 2 in rows  # still bundling, to the cap
    finally:
        processes.stop()


def _answers(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_a_worker_starting_while_another_measures_waits_for_its_curve(
        repo: Path, redis_client: redis.Redis) -> None:
    """Workers of one model starting at once would slow each other's runs: the one holding
    the claim measures, the others take its curve once cached."""
    version = load_model(repo / "falling").default
    runner = Runner(version, intra_op_threads=1)
    measured = tune(redis_client, version, Runner(version, intra_op_threads=1), 1, BUDGET_S)
    redis_client.delete(batching_store.cache(version.sha256))
    claim = batching_store.measuring(version.sha256, batching_store.host_id(measured.host))
    redis_client.set(claim, 1, ex=30)  # another worker measures

    def finish() -> None:
        time.sleep(0.3)
        publish(redis_client, version.pool, measured)  # caches the curve, drops the claim

    other = threading.Thread(target=finish)
    other.start()
    started = time.perf_counter()
    waited = tune(redis_client, version, runner, 1, BUDGET_S, poll_s=0.02)
    other.join()
    assert time.perf_counter() - started >= 0.3
    assert (waited.curve, waited.curve_from) == (measured.curve, Source.CACHED)
    assert not redis_client.exists(claim)
    # A claim dropped without a curve (the measurer found the model refuses synthetic input,
    # or died and its claim lapsed): the waiter measures itself.
    redis_client.delete(batching_store.cache(version.sha256))
    redis_client.set(claim, 1, px=200)
    alone = tune(redis_client, version, runner, 1, BUDGET_S, poll_s=0.02)
    assert alone.curve_from == Source.MEASURED
