"""What gateways and every process's start-up check do about Redis's memory settings, against
a real Redis of the test's own (``private_redis_url``: these tests change its configuration)."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from modelgate.core import wire
from modelgate.core.embedded_redis import start_redis
from modelgate.core.errors import BackendUnavailable
from modelgate.core.prediction import spec_for
from modelgate.core.process import stop_process
from modelgate.core.redis_checks import check_redis
from modelgate.core.repository import Model
from modelgate.core.settings import GatewaySettings
from modelgate.core.store import feedback as store
from modelgate.core.store import pools
from modelgate.gateway.app import redis_clients
from modelgate.gateway.dispatch import Dispatcher
from modelgate.gateway.feedback import Feedback
from modelgate.gateway.metrics import Metrics
from modelgate.worker.stored_answers import AnswerStore

pytestmark = pytest.mark.integration

POOL = "mlp:1"
LOG = logging.getLogger("modelgate.test")


def test_a_call_refused_for_memory_fails_at_once_saying_so(
        private_redis_url: str, tmp_path: object) -> None:
    """XADD refused with OOM: the call fails with BackendUnavailable (503) at once, and the
    message says Redis is out of memory and what to do about it."""
    client = redis.Redis.from_url(private_redis_url)
    client.config_set("maxmemory", 1)
    settings = GatewaySettings(models_dir=tmp_path, redis_url=private_redis_url)  # type: ignore[arg-type]

    async def call() -> tuple[BaseException | wire.Reply, float]:
        writer, reader = redis_clients(settings)
        dispatcher = Dispatcher(writer, reader, "oom")
        dispatcher.start()
        try:
            started = time.monotonic()
            request = wire.Request({"input": wire.tensor(np.ones((1, 4), np.float32))})
            future = dispatcher.submit(POOL, request, int(time.time() * 1000) + 10_000, 0)
            [outcome] = await asyncio.gather(future, return_exceptions=True)
            return outcome, time.monotonic() - started
        finally:
            await dispatcher.stop()
            await writer.aclose()
            await reader.aclose()

    try:
        outcome, waited_s = asyncio.run(call())
    finally:
        client.config_set("maxmemory", 0)
        client.close()
    assert isinstance(outcome, BackendUnavailable), outcome
    assert waited_s < 2.0
    message = str(outcome)
    assert "out of memory" in message and "maxmemory" in message, message
    assert "docs/operations.md" in message, message


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl",
                                    "allkeys-random"])
def test_an_evicting_policy_is_warned_about_loudly(
        private_redis_url: str, policy: str, caplog: pytest.LogCaptureFixture) -> None:
    client = redis.Redis.from_url(private_redis_url)
    client.config_set("maxmemory-policy", policy)
    with caplog.at_level(logging.INFO):
        assert check_redis(client, LOG) == policy
    client.close()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert policy in record.message and "noeviction" in record.message
    why = "reply lists" if policy.startswith("volatile") else "request streams"
    assert why in record.message, record.message


def test_noeviction_passes_quietly(private_redis_url: str,
                                   caplog: pytest.LogCaptureFixture) -> None:
    client = redis.Redis.from_url(private_redis_url)
    with caplog.at_level(logging.INFO):
        assert check_redis(client, LOG) == "noeviction"
    client.close()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_redis_without_config_is_said_once_and_not_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """Managed Redis services often disable CONFIG (renamed or refused by ACL)."""
    process, url = start_redis(extra_args=("--rename-command", "CONFIG", ""))
    client = redis.Redis.from_url(url)
    try:
        with caplog.at_level(logging.INFO):
            assert check_redis(client, LOG) is None
    finally:
        client.close()
        stop_process(process, timeout_s=5)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "maxmemory-policy" in record.message and "noeviction" in record.message


def test_an_unreachable_redis_is_left_to_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    """The check never stops a process from starting: Redis may come up later."""
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2,
                         retry=Retry(NoBackoff(), 0))
    with caplog.at_level(logging.INFO):
        assert check_redis(client, LOG) is None


def test_stored_answers_give_memory_back_before_calls_are_refused(
        private_redis_url: str, unit_repository: dict[str, Model]) -> None:
    """At maxmemory (noeviction) the feedback writer's refused batch is dropped and counted,
    and the store shrinks by half at once, so the calls' own writes (XADD) fit again."""
    iris = unit_repository["iris"].default
    client = redis.Redis.from_url(private_redis_url)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 3 * 2**20)
    reply = wire.Reply(("x",), wire.ReplyStatus.OK, {
        "output_label": wire.Tensor("INT64", (1,), np.array([1], np.int64)),
        "output_probability": wire.Tensor("FP32", (1, 3),
                                          np.array([[0.1, 0.8, 0.1]], np.float32))})
    metrics = Metrics()

    async def fill() -> tuple[int, int]:
        aclient = aioredis.Redis.from_url(private_redis_url)
        feedback = Feedback(aclient, metrics, spec_for, lambda name: {"1": iris})
        peak = 0
        try:
            for round_number in range(100):
                for i in range(2000):
                    feedback.record(iris, f"{round_number}-{i:028d}", reply)
                await feedback.flush()
                held = await aclient.hlen(store.answers("iris"))
                if held < peak:
                    return peak, held  # it shrank: Redis refused a batch
                peak = held
            raise AssertionError("Redis never refused the stored answers")
        finally:
            await aclient.aclose()

    peak, held = asyncio.run(fill())
    # Half went at the refusal; the rest of that round's batches were then taken again.
    assert held <= (peak + 2000) // 2 + 2000
    assert (metrics.registry.get_sample_value("modelgate_feedback_answers_dropped_total",
                                              {"model": "iris", "reason": "redis_full"})
            or 0) >= 1
    assert int(client.hget(store.counts("iris"), "rows")) == held
    # The memory went back to the calls: a request entry is taken again.
    client.xadd(pools.requests_stream(POOL), {"payload": b"x" * 10_000})
    assert int(client.hget(store.counts("iris"), "dropped")) >= 1  # the quality answer's


def test_a_workers_stored_answers_give_memory_back_and_count_what_was_dropped(
        private_redis_url: str, unit_repository: dict[str, Model]) -> None:
    """The same at a worker's storing thread: the refused batch is dropped, counted in the
    store's ``dropped`` (which the quality answer shows), and the store shrinks by half."""
    iris = unit_repository["iris"].default
    client = redis.Redis.from_url(private_redis_url)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 3 * 2**20)
    bundle = wire.Reply(("a", "b"), wire.ReplyStatus.OK, {
        "output_label": wire.Tensor("INT64", (2,), np.array([1, 2], np.int64)),
        "output_probability": wire.Tensor("FP32", (2, 3), np.array(
            [[0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], np.float32))}, rows=(1, 1))
    answers = AnswerStore(client, iris, spec_for(iris))
    peak = held = 0
    for round_number in range(100):
        for i in range(1000):
            assert answers.room(2)
            answers.add([(time.time(), bundle, (f"{round_number}-{i:027d}a",
                                                f"{round_number}-{i:027d}b"))])
        answers.flush()
        held = int(client.hlen(store.answers("iris")))
        if held < peak:
            break
        peak = held
    else:
        raise AssertionError("Redis never refused the stored answers")

    assert held <= (peak + 2000) // 2 + 2000
    assert answers.dropped >= 1
    assert int(client.hget(store.counts("iris"), "dropped")) == answers.dropped
    assert int(client.hget(store.counts("iris"), "rows")) == held
    client.xadd(pools.requests_stream(POOL), {"payload": b"x" * 10_000})
