"""What gateways and every process's start-up check do about Redis's memory settings, against
a real Redis of the test's own (``private_redis_url``: these tests change its configuration)."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from modelgate.core import wire
from modelgate.core.embedded_redis import start_redis
from modelgate.core.errors import BackendUnavailable
from modelgate.core.process import stop_process
from modelgate.core.redis_checks import check_redis
from modelgate.core.settings import GatewaySettings
from modelgate.gateway.app import redis_clients
from modelgate.gateway.dispatch import Dispatcher

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
