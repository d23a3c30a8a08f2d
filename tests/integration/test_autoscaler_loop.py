"""The control loop against a real Redis: observations from the per-second counters that
gateways and workers flush, decisions as events, the desired gauge, and the budget.

The backend is a stand-in that records ``scale`` calls: this test is about the loop's reading
and reporting, and the local process backend is exercised end to end in test_autoscaling.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from modelgate.autoscaler.backends.base import PoolRef
from modelgate.autoscaler.control import ModelControl
from modelgate.autoscaler.decider import Decider
from modelgate.autoscaler.loop import Autoscaler, PoolPlan
from modelgate.autoscaler.policy import PolicyConfig
from modelgate.core.settings import ScalingSettings
from modelgate.core.stats import StatsAccumulator
from modelgate.core.store import pools, scaling

pytestmark = pytest.mark.integration


class RecordingBackend:
    """Stand-in for a worker backend: replicas appear the moment they are asked for."""

    name = "recording"

    def __init__(self) -> None:
        self.replicas: dict[str, int] = {}  # by pool
        self.calls: list[tuple[str, int]] = []
        self.removed: list[str] = []

    def scale(self, ref: PoolRef, desired: int) -> None:
        self.calls.append((ref.pool, desired))
        self.replicas[ref.pool] = desired

    def running(self, ref: PoolRef) -> int:
        return self.replicas.get(ref.pool, 0)

    def remove(self, ref: PoolRef) -> None:
        self.removed.append(ref.pool)
        self.replicas.pop(ref.pool, None)

    def supervise(self) -> None:
        pass

    def stop_all(self) -> None:
        self.replicas.clear()


def write_load(client: redis.Redis, pool: str, now: float, arrivals_per_s: int,
               compute_ms_per_request: float, backlog: int) -> None:
    """What gateways and workers would have flushed over the last 10 seconds."""
    for second in range(int(now) - 10, int(now)):
        stats = StatsAccumulator(pool)
        stats.add(arrivals=arrivals_per_s)
        stats.add_run(requests=arrivals_per_s, rows=arrivals_per_s,
                      compute_ms=compute_ms_per_request * arrivals_per_s,
                      queue_ms=[5.0] * arrivals_per_s)
        pipe = client.pipeline()
        stats.flush(pipe, second)
        pipe.execute()
    if backlog:
        # As a gateway queues them: one bundle entry nobody consumes, and the queued count (the
        # stream's length, 1, is not the backlog).
        client.xadd(pools.requests_stream(pool), {"ids": ",".join(map(str, range(backlog)))})
        client.incrby(pools.queued(pool), backlog)


def test_tick_observes_redis_scales_and_records_the_decision(redis_client: redis.Redis) -> None:
    backend = RecordingBackend()
    backend.replicas["mlp:1"] = 1
    plan = PoolPlan(PoolRef("mlp", "1"), PolicyConfig(min_workers=1, max_workers=8))
    scaler = Autoscaler(redis_client, backend, [plan])
    now = time.time()
    write_load(redis_client, "mlp:1", now, arrivals_per_s=100, compute_ms_per_request=20.0,
               backlog=3)

    outcome = scaler.tick(now)["mlp:1"]

    assert outcome.observation.arrival_rate == pytest.approx(100.0)
    assert outcome.observation.service_s == pytest.approx(0.02)
    assert outcome.observation.backlog == 3
    assert outcome.desired == 3  # 100/s x 20 ms / 70% = 2.86
    assert backend.calls == [("mlp:1", 3)]
    (_, event), = redis_client.xrevrange(scaling.EVENTS, count=1)
    assert event[b"pool"] == b"mlp:1" and event[b"desired"] == b"3"
    assert event[b"current"] == b"1" and b"scale up" in event[b"reason"]
    assert event[b"arrival_rate"] == b"100.00" and event[b"backlog"] == b"3"
    assert redis_client.get(pools.desired("mlp:1")) == b"3"
    sample = scaler.registry.get_sample_value("modelgate_desired_workers",
                                              {"model": "mlp", "version": "1"})
    assert sample == 3.0


def test_a_pool_no_longer_planned_is_removed_not_scaled_to_zero(
        redis_client: redis.Redis) -> None:
    """A version that stops being served is gone for good: the backend removes its pool (on
    Kubernetes, deletes its Deployment) and the pool's gauges go; the other pool is kept."""
    backend = RecordingBackend()
    backend.replicas.update({"mlp:1": 1, "mlp:2": 1})
    plans = [PoolPlan(PoolRef("mlp", v), PolicyConfig(min_workers=1, max_workers=4))
             for v in ("1", "2")]
    scaler = Autoscaler(redis_client, backend, plans)
    scaler.tick(time.time())
    assert scaler.registry.get_sample_value("modelgate_workers",
                                            {"model": "mlp", "version": "1"}) == 1.0

    scaler.set_plans(plans[1:])

    assert backend.removed == ["mlp:1"]
    assert ("mlp:1", 0) not in backend.calls
    assert list(scaler.plans) == ["mlp:2"] and "mlp:1" not in scaler.states
    assert scaler.registry.get_sample_value("modelgate_workers",
                                            {"model": "mlp", "version": "1"}) is None
    scaler.set_plans(plans[1:])  # asked again: nothing more to remove
    assert backend.removed == ["mlp:1"]


def test_budget_caps_the_pools_and_the_decision_says_so(redis_client: redis.Redis) -> None:
    backend = RecordingBackend()
    backend.replicas.update({"a:1": 1, "b:1": 1})
    plans = [PoolPlan(PoolRef("a", "1"), PolicyConfig(min_workers=1, max_workers=10), 2.0),
             PoolPlan(PoolRef("b", "1"), PolicyConfig(min_workers=1, max_workers=10), 1.0)]
    scaler = Autoscaler(redis_client, backend, plans, max_cost_per_hour=8.0)
    now = time.time()
    for pool in ("a:1", "b:1"):
        write_load(redis_client, pool, now, arrivals_per_s=200, compute_ms_per_request=20.0,
                   backlog=0)

    outcomes = scaler.tick(now)

    cost = outcomes["a:1"].desired * 2.0 + outcomes["b:1"].desired * 1.0
    assert cost <= 8.0
    assert outcomes["a:1"].capped and outcomes["b:1"].capped
    reasons = [e[b"reason"] for _, e in redis_client.xrange(scaling.EVENTS)]
    assert all(b"capped by budget" in r for r in reasons)


def test_redis_outage_holds_instead_of_guessing(redis_client: redis.Redis,
                                                tmp_path: Path) -> None:
    """With Redis unreachable the loop keeps what runs and retries (bounded run)."""
    backend = RecordingBackend()
    backend.replicas["mlp:1"] = 2
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    scaler = Autoscaler(unreachable, backend,
                        [PoolPlan(PoolRef("mlp", "1"), PolicyConfig(min_workers=1,
                                                                    max_workers=4))])
    decider = Decider(unreachable, ModelControl(unreachable, tmp_path), scaler,
                      ScalingSettings())
    stop = threading.Event()
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    ticks = decider.run(stop, interval_s=0.1)
    timer.cancel()
    assert ticks == 0 and backend.calls == [] and backend.replicas["mlp:1"] == 2


# --------------------------------------------------------------------------- bad data


def sample(scaler: Autoscaler, name: str, **labels: str) -> float:
    return scaler.registry.get_sample_value(name, labels) or 0.0


def test_a_counter_that_is_no_count_is_skipped_and_the_loop_goes_on(
        redis_client: redis.Redis) -> None:
    """An infinite arrival count made the policy raise OverflowError, which ended the loop
    (issue 12): anything that reaches Redis could stop the autoscaler for good."""
    backend = RecordingBackend()
    backend.replicas["mlp:1"] = 1
    scaler = Autoscaler(redis_client, backend,
                        [PoolPlan(PoolRef("mlp", "1"), PolicyConfig(min_workers=1,
                                                                    max_workers=8))])
    now = time.time()
    write_load(redis_client, "mlp:1", now, arrivals_per_s=100, compute_ms_per_request=20.0,
               backlog=0)
    redis_client.hset(pools.stats("mlp:1", int(now) - 2), "arrivals", "inf")

    scaler.tick(now)
    scaler.tick(now)

    assert sample(scaler, "modelgate_malformed_records_total", record="pool") == 2
    # The other seconds' arrivals still count: 2 of the 3 seconds of the rate window.
    assert scaler.last["mlp:1"].observation.arrival_rate == pytest.approx(200 / 3)
    assert backend.replicas["mlp:1"] == 2


def test_a_pool_key_of_another_type_holds_that_pool_and_scales_the_others(
        redis_client: redis.Redis) -> None:
    """WRONGTYPE on one pool's key failed the whole round trip: every pool was held as if Redis
    were down. Now that pool alone is held, at the workers it runs."""
    backend = RecordingBackend()
    backend.replicas.update({"a:1": 1, "b:1": 1})
    plans = [PoolPlan(PoolRef("a", "1"), PolicyConfig(min_workers=1, max_workers=8)),
             PoolPlan(PoolRef("b", "1"), PolicyConfig(min_workers=1, max_workers=8))]
    scaler = Autoscaler(redis_client, backend, plans)
    now = time.time()
    for pool in ("a:1", "b:1"):
        write_load(redis_client, pool, now, arrivals_per_s=100, compute_ms_per_request=20.0,
                   backlog=0)
    redis_client.set(pools.worker_set("a:1"), "not a sorted set")

    scaler.tick(now)

    assert backend.calls == [("b:1", 3)]
    held = scaler.last["a:1"]
    assert held.desired == 1 and "holding" in held.decision.reason
    assert sample(scaler, "modelgate_malformed_records_total", record="pool") == 1


class FailingOnceBackend(RecordingBackend):
    """The platform refuses its first upkeep (a Docker or Kubernetes API error, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.upkeeps = 0

    def supervise(self) -> None:
        self.upkeeps += 1
        if self.upkeeps == 1:
            raise RuntimeError("the platform said no, once")


def test_a_tick_that_raises_is_counted_and_the_loop_goes_on(
        redis_client: redis.Redis, tmp_path: Path) -> None:
    """The loop caught RedisError alone: anything else a tick raised ended the decider."""
    backend = FailingOnceBackend()
    scaler = Autoscaler(redis_client, backend, [])
    decider = Decider(redis_client, ModelControl(redis_client, tmp_path), scaler,
                      ScalingSettings())
    stop = threading.Event()
    timer = threading.Timer(10, stop.set)  # bounded, whatever happens
    timer.start()
    try:
        assert decider.run(stop, interval_s=0, max_ticks=1) == 1
    finally:
        timer.cancel()
    assert backend.upkeeps >= 2
    assert sample(scaler, "modelgate_background_errors_total", task="autoscaler") == 1
