"""Admission control in the gateway's handler layer: DataPlane._admit and _retry_after_s.

No Redis here: the DataPlane gets clients that never connect (redis-py connects on the first
command, and admission sends none), and each test hands ``_admit`` the pool view a refresh
would have left, with what this gateway queued and got answers for since.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
import redis.asyncio as aioredis

from modelgate.core import wire
from modelgate.core.errors import BackendUnavailable, Overloaded
from modelgate.core.repository import ModelVersion
from modelgate.core.settings import GatewaySettings
from modelgate.core.store.pools import PoolGauges
from modelgate.gateway.dataplane import DataPlane, PoolView
from modelgate.gateway.metrics import Metrics
from tests.models import write_repository

DEFAULT_MAX_QUEUE = 10
CAPPED_MAX_QUEUE = 3  # the `capped` model's own max_queue, from its config.yaml
REQUEST = wire.Request({"input": wire.tensor(np.zeros((1, 4), np.float32))})


def queued(backlog: int) -> PoolGauges:
    """Gauges as a refresh reads them: one live worker, ``backlog`` requests queued."""
    return PoolGauges(live_workers=1, starting_workers=0, backlog=backlog, desired=None)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory,
         onnx_models: dict[str, onnx.ModelProto]) -> Path:
    return write_repository(tmp_path_factory.mktemp("admission-models"),
                            {"mlp": onnx_models["mlp"], "capped": onnx_models["mlp"]},
                            configs={"capped": f"max_queue: {CAPPED_MAX_QUEUE}\n"})


def data_plane(repo: Path, max_inflight: int = 100) -> DataPlane:
    settings = GatewaySettings(models_dir=repo, redis_url="redis://127.0.0.1:1/0",
                               max_inflight=max_inflight, max_queue=DEFAULT_MAX_QUEUE)
    client = aioredis.Redis.from_url(settings.redis_url)  # never connects: no command is sent
    return DataPlane(settings, client, client, "test-gateway", Metrics())


def model(plane: DataPlane, name: str = "mlp") -> ModelVersion:
    return plane.resolve(name)


# --------------------------------------------------------------------------- the backlog limit


def test_a_backlog_below_the_limit_is_admitted(repo: Path) -> None:
    plane = data_plane(repo)
    view = PoolView(gauges=queued(DEFAULT_MAX_QUEUE - 1))
    plane._admit(model(plane), view)
    assert view.rejected == 0


def test_a_backlog_at_the_limit_is_refused_and_counted(repo: Path) -> None:
    plane = data_plane(repo)
    view = PoolView(gauges=queued(DEFAULT_MAX_QUEUE), drain_per_s=5.0)
    with pytest.raises(Overloaded) as refused:
        plane._admit(model(plane), view)
    assert view.rejected == 1
    message = str(refused.value)
    assert "'mlp'" in message and f"{DEFAULT_MAX_QUEUE} requests queued" in message
    assert f"limit is {DEFAULT_MAX_QUEUE}" in message
    assert refused.value.retry_after_s == 2  # 10 queued at 5 answered per second


def test_calls_queued_since_the_refresh_count_against_the_limit(repo: Path) -> None:
    plane = data_plane(repo)
    view = PoolView(gauges=queued(6), admitted=4)
    with pytest.raises(Overloaded):
        plane._admit(model(plane), view)
    assert view.rejected == 1


def test_answers_got_since_the_refresh_free_room(repo: Path) -> None:
    """A pool that drains faster than its limit per refresh is not refused with an empty queue:
    answered entries are gone from the stream, though the last refresh still counted them."""
    plane = data_plane(repo)
    view = PoolView(gauges=queued(DEFAULT_MAX_QUEUE), admitted=4, completed=5)
    plane._admit(model(plane), view)
    assert view.rejected == 0


def test_a_models_own_max_queue_overrides_the_gateway_default(repo: Path) -> None:
    plane = data_plane(repo)
    view = PoolView(gauges=queued(CAPPED_MAX_QUEUE))
    with pytest.raises(Overloaded, match=f"limit is {CAPPED_MAX_QUEUE};"):
        plane._admit(model(plane, "capped"), view)
    plane._admit(model(plane, "mlp"), PoolView(gauges=queued(CAPPED_MAX_QUEUE)))  # default: 10


# --------------------------------------------------------------------------- the in-flight cap


def test_past_the_in_flight_cap_this_gateway_refuses_whatever_the_backlog(repo: Path) -> None:
    async def scenario() -> None:
        plane = data_plane(repo, max_inflight=2)
        mlp = model(plane)
        waiting = []
        for _ in range(2):
            plane._admit(mlp, PoolView())
            waiting.append(plane.dispatcher.submit(mlp.pool, REQUEST, 2**62, 8))
        view = PoolView(gauges=queued(0), drain_per_s=0.0)
        with pytest.raises(Overloaded, match="waiting on 2 requests, its limit") as refused:
            plane._admit(mlp, view)
        assert view.rejected == 1
        assert refused.value.retry_after_s == 1
        await plane.dispatcher.stop()  # fails the two waiting calls: none is left pending
        for future in waiting:
            assert isinstance(future.exception(), BackendUnavailable)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(("backlog", "drain_per_s", "seconds"), [
    (100, 10.0, 10),  # the backlog drains in 10 s at the observed rate
    (101, 10.0, 11),  # whole seconds, rounded up: never too early
    (1, 1000.0, 1),  # under a second: at least 1
    (0, 10.0, 1),
    (10_000, 1.0, 60),  # at most a minute
    (50, 0.0, 1),  # no rate seen yet
    (50, -1.0, 1),
])
def test_retry_after_is_the_time_to_drain_the_backlog_within_1_to_60_s(
        backlog: int, drain_per_s: float, seconds: int) -> None:
    assert DataPlane._retry_after_s(backlog, PoolView(drain_per_s=drain_per_s)) == seconds
