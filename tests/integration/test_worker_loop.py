"""The worker's loops against a real Redis, in this process: bad data never ends them.

``worker.main.run`` and the heartbeat thread run here (a thread each) on a real ORT session, so
the test can break the pool's keys under them and watch them log, back off and go on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import redis

from modelgate.core import wire
from modelgate.core.settings import WorkerSettings
from modelgate.core.store import models as model_store
from modelgate.core.store import pools, replies
from modelgate.core.store.models import ModelState
from modelgate.worker import main as worker_main
from modelgate.worker.heartbeat import Heartbeat
from tests.conftest import redis_url_for_db
from tests.models import write_repository
from tests.procs import entry_fields, wait_until

pytestmark = pytest.mark.integration

POOL = pools.pool_id("mlp", "1")
STREAM = pools.requests_stream(POOL)
REPLY_TO = replies.reply_list("worker-loop-test")


@pytest.fixture
def repo(tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> Path:
    return write_repository(tmp_path / "models", {"mlp": onnx_models["mlp"]})


@pytest.fixture
def serving(repo: Path, redis_url: str, redis_client: redis.Redis) -> Iterator[threading.Thread]:
    """``worker.main.run`` in a thread on redis_client's database, serving once this yields."""
    stop = threading.Event()
    settings = WorkerSettings(models_dir=repo, model="mlp",
                              redis_url=redis_url_for_db(redis_url, 0), block_ms=50)
    thread = threading.Thread(target=worker_main.run, args=(settings, stop), daemon=True)
    thread.start()
    wait_until(lambda: redis_client.zcard(pools.worker_set(POOL)) == 1, 30,
               "the worker to serve")
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=10)


def answered(client: redis.Redis, correlation: str) -> wire.Reply:
    payload = wire.encode_bundle(wire.Bundle.single(correlation, wire.Request(
        {"input": wire.tensor(np.ones((1, 4), np.float32))})))
    client.xadd(STREAM, entry_fields(
        pools.RequestEntry((correlation,), REPLY_TO, 60_000, 1, payload)))
    popped = client.blpop([REPLY_TO], timeout=10)
    assert popped is not None, "no reply"
    return wire.decode_reply(popped[1])


def test_a_stream_key_of_another_type_is_logged_and_the_loop_goes_on(
        serving: threading.Thread, redis_client: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    """The step loop re-raised every ResponseError but NOGROUP: anything that could write a
    key could stop every worker of a pool (and `up` restarted them into the same error)."""
    assert answered(redis_client, "before").status == "ok"
    with caplog.at_level(logging.ERROR, logger="modelgate.worker"):
        redis_client.delete(STREAM)
        redis_client.set(STREAM, "not a stream")
        wait_until(lambda: sum("WRONGTYPE" in r.getMessage() for r in caplog.records) >= 2,
                   10, "the worker to meet the bad key twice")
    assert serving.is_alive()
    redis_client.delete(STREAM)  # NOGROUP next: the worker makes the stream and group again
    assert answered(redis_client, "after").status == "ok"
    assert serving.is_alive()


def test_a_worker_whose_pool_was_removed_stops_instead_of_making_its_stream_again(
        serving: threading.Thread, redis_client: redis.Redis) -> None:
    """The decider removes a pool's keys once its version left the served state: a worker still
    reading it stops, and leaves no key behind (making the stream again would)."""
    assert answered(redis_client, "before").status == "ok"
    redis_client.set(model_store.state("mlp"), ModelState("mlp").encode())  # v1 not served
    redis_client.delete(STREAM)
    serving.join(timeout=10)
    assert not serving.is_alive(), "the worker kept serving a removed pool"
    assert not redis_client.exists(STREAM)


class FlakyStats:
    """The heartbeat's stats callable, failing on its second call only."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, float]:
        self.calls += 1
        if self.calls == 2:
            raise ValueError("a figure that cannot be read, once")
        return {"processed": self.calls, "busy": 0.0}


def test_a_heartbeat_that_raises_is_logged_and_the_beats_go_on(
        redis_client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """The heartbeat thread caught RedisError alone: anything else ended it silently, and a
    worker still serving was declared dead five seconds later."""
    stats = FlakyStats()
    heartbeat = Heartbeat(redis_client, "w-1", POOL, interval_s=0.02, ttl_s=5.0, stats=stats)
    with caplog.at_level(logging.ERROR, logger="modelgate.worker"):
        heartbeat.start()
        try:
            wait_until(lambda: stats.calls >= 5, 10, "beats after the failed one")
        finally:
            heartbeat.stop()
    assert any("heartbeat failed" in r.getMessage() and r.exc_info for r in caplog.records)
