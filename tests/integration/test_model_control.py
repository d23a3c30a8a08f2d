"""The model control loop against a real Redis, tick by tick, without worker processes: a
worker's presence is its entry in the pool's worker set, as a heartbeat writes it."""

from __future__ import annotations

import time
from pathlib import Path

import onnx
import pytest
import redis

from modelgate.autoscaler.control import ModelControl
from modelgate.core.store import models as model_store
from modelgate.core.store import pools
from modelgate.core.store.models import CommandResult, ControlCommand, ModelState
from tests.models import write_repository

pytestmark = pytest.mark.integration


def live(client: redis.Redis, pool: str) -> None:
    client.zadd(pools.worker_set(pool), {f"worker-of-{pool}": time.time()})


def state(client: redis.Redis, name: str) -> ModelState | None:
    raw = client.get(model_store.state(name))
    return ModelState.decode(raw) if raw is not None else None


def statuses(client: redis.Redis, name: str) -> dict[str, str]:
    found = state(client, name)
    return {v: s.status.value for v, s in found.versions.items()} if found else {}


def test_a_load_that_would_break_the_budget_is_refused_with_the_reason(
        redis_client: redis.Redis, tmp_path: Path,
        onnx_models: dict[str, onnx.ModelProto]) -> None:
    root = write_repository(tmp_path, {"a": onnx_models["mlp"], "b": onnx_models["mlp"]},
                            configs={"a": "worker_cost_per_hour: 1.0\n",
                                     "b": "worker_cost_per_hour: 1.0\n"})
    control = ModelControl(redis_client, root, "poll", max_cost_per_hour=1.5)
    control.tick()
    assert statuses(redis_client, "a") == {"1": "LOADING"}
    refused = state(redis_client, "b")
    assert refused is not None and refused.versions["1"].status.value == "UNAVAILABLE"
    assert "--max-cost-per-hour" in refused.versions["1"].reason


def test_the_state_of_another_repository_is_not_inherited(
        redis_client: redis.Redis, tmp_path: Path,
        onnx_models: dict[str, onnx.ModelProto]) -> None:
    first = write_repository(tmp_path / "one", {"a": onnx_models["mlp"]})
    ModelControl(redis_client, first, "explicit", load_models=("a",)).tick()
    assert statuses(redis_client, "a") == {"1": "LOADING"}
    second = write_repository(tmp_path / "two", {"b": onnx_models["mlp"]})
    ModelControl(redis_client, second, "explicit").tick()
    assert state(redis_client, "a") is None
    assert redis_client.smembers(model_store.EXPLICIT) == set()


def test_explicit_state_survives_a_new_decider_for_the_same_repository(
        redis_client: redis.Redis, tmp_path: Path,
        onnx_models: dict[str, onnx.ModelProto]) -> None:
    root = write_repository(tmp_path, {"a": onnx_models["mlp"], "b": onnx_models["mlp"]})
    ModelControl(redis_client, root, "explicit", load_models=("a",)).tick()
    live(redis_client, "a:1")
    restarted = ModelControl(redis_client, root, "explicit")  # no --load-model this time
    restarted.tick()
    assert statuses(redis_client, "a") == {"1": "READY"}
    assert state(redis_client, "b") is None


def test_a_first_decider_beside_live_workers_puts_their_version_ready_at_once(
        redis_client: redis.Redis, tmp_path: Path,
        onnx_models: dict[str, onnx.ModelProto]) -> None:
    """No tick of LOADING, in which every gateway would answer 503 "loading" for a version
    its workers already serve (a decider starting, or taking over, beside running ones)."""
    root = write_repository(tmp_path, {"a": onnx_models["mlp"], "b": onnx_models["mlp"]})
    live(redis_client, "a:1")
    ModelControl(redis_client, root, "poll").tick()
    assert statuses(redis_client, "a") == {"1": "READY"}
    assert statuses(redis_client, "b") == {"1": "LOADING"}  # no worker yet: it must load


def test_commands_are_answered_and_refused_outside_explicit_mode(
        redis_client: redis.Redis, tmp_path: Path,
        onnx_models: dict[str, onnx.ModelProto]) -> None:
    root = write_repository(tmp_path, {"a": onnx_models["mlp"]})
    control = ModelControl(redis_client, root, "poll")
    control.tick()
    command = ControlCommand("c1", "load", "a", "test", time.time())
    redis_client.xadd(model_store.COMMANDS, command.fields())
    control.tick()
    result = CommandResult.decode(redis_client.get(model_store.command_result("c1")))
    assert result.status == "refused" and "explicit" in result.message

    explicit = ModelControl(redis_client, root, "explicit")
    explicit.tick()
    for command in (ControlCommand("c2", "load", "a", "test", time.time()),
                    ControlCommand("c3", "load", "missing", "test", time.time())):
        redis_client.xadd(model_store.COMMANDS, command.fields())
    explicit.tick()
    pending = CommandResult.decode(redis_client.get(model_store.command_result("c2")))
    assert pending.status == "pending"
    missing = CommandResult.decode(redis_client.get(model_store.command_result("c3")))
    assert missing.status == "failed" and "no model 'missing'" in missing.message
    live(redis_client, "a:1")
    explicit.tick()
    done = CommandResult.decode(redis_client.get(model_store.command_result("c2")))
    assert done.status == "done", done.message


def test_a_removed_pool_leaves_no_key_behind(
        redis_client: redis.Redis, tmp_path: Path,
        onnx_models: dict[str, onnx.ModelProto]) -> None:
    root = write_repository(tmp_path, {"a": onnx_models["mlp"]})
    control = ModelControl(redis_client, root, "explicit", load_models=("a",))
    control.tick()
    live(redis_client, "a:1")
    control.tick()
    # What a pool accumulates while serving: a stream with its group, counts, dead letters,
    # per-second counters, a starting set, drift streams.
    redis_client.xgroup_create(pools.requests_stream("a:1"), pools.WORKER_GROUP, mkstream=True)
    for key in (pools.queued("a:1"), pools.desired("a:1"), pools.stats("a:1", 1)):
        redis_client.set(key, 1)
    redis_client.xadd(pools.dead_letters("a:1"), {"x": "1"})
    redis_client.zadd(pools.starting_set("a:1"), {"w": 1})
    redis_client.srem(model_store.EXPLICIT, "a")  # as an unload command does
    control.tick()  # UNLOADING
    assert statuses(redis_client, "a") == {"1": "UNLOADING"}
    control.tick()  # no gateway runs and nothing is queued: removed
    assert state(redis_client, "a") is None
    assert list(redis_client.scan_iter(match="mg:pool:*")) == []
    # A worker that was still starting makes its group again before its stop arrives (seen
    # once in 200 load/unload cycles of make bench-swap): the next tick removes it again.
    redis_client.xgroup_create(pools.requests_stream("a:1"), pools.WORKER_GROUP, mkstream=True)
    control.tick()
    assert list(redis_client.scan_iter(match="mg:pool:*")) == []


def test_config_traffic_is_stored_once_its_versions_are_ready_and_never_over_a_stored_one(
        redis_client: redis.Redis, tmp_path: Path,
        onnx_models: dict[str, onnx.ModelProto]) -> None:
    from modelgate.core.store import traffic as traffic_store

    root = write_repository(tmp_path, {"a": [onnx_models["mlp"], onnx_models["mlp"]]},
                            configs={"a": "version_policy: {all: {}}\n"
                                          "traffic: {weights: {1: 90, 2: 10}}\n"})
    control = ModelControl(redis_client, root, "poll")
    control.tick()
    assert redis_client.get(traffic_store.policy("a")) is None  # versions still loading
    live(redis_client, "a:1")
    live(redis_client, "a:2")
    control.tick()
    control.tick()
    stored = traffic_store.TrafficPolicy.decode(redis_client.get(traffic_store.policy("a")))
    assert stored.weights == {"1": 90, "2": 10} and stored.by == "config"
    redis_client.set(traffic_store.policy("a"), traffic_store.from_body(
        {"weights": {"1": 100}}, by="key:x").encode())
    control.tick()
    kept = traffic_store.TrafficPolicy.decode(redis_client.get(traffic_store.policy("a")))
    assert kept.by == "key:x"
