"""The handler layer between HTTP routes and the queue; it knows nothing about HTTP.

It resolves models and versions, enqueues through the dispatcher, turns error replies into
domain errors, and keeps a view of which pools have live workers and how deep their backlog is
(refreshed from Redis by a monitor task, so readiness never costs a Redis call per request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from modelgate import keys, wire
from modelgate.errors import ModelNotFound, NoLiveWorker
from modelgate.repository import Model, ModelVersion
from modelgate.settings import GatewaySettings
from gateway.dispatch import Dispatcher
from gateway.errors import ERROR_OF_REPLY
from gateway.metrics import Metrics

log = logging.getLogger("modelgate.gateway")


@dataclass(slots=True)
class PoolView:
    live_workers: int = 0
    backlog: int = 0


class DataPlane:
    def __init__(self, settings: GatewaySettings, models: dict[str, Model],
                 client: aioredis.Redis, gateway_id: str, metrics: Metrics) -> None:
        self.settings = settings
        self.models = models
        self.client = client
        self.metrics = metrics
        self.dispatcher = Dispatcher(client, gateway_id)
        self.redis_ok = False
        self.pools: dict[str, PoolView] = {
            v.pool: PoolView() for m in models.values() for v in m.versions.values()
        }
        self._monitor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self.dispatcher.start()
        self._monitor = asyncio.create_task(self._monitor_loop(), name="pool-monitor")

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        await self.dispatcher.stop()

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r}; this server has {sorted(self.models)}")
        if version is None:
            return model.default
        found = model.versions.get(version)
        if found is None:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; it has "
                f"{sorted(model.versions, key=int)}"
            )
        return found

    def model_ready(self, model: ModelVersion) -> bool:
        return self.redis_ok and self.pools[model.pool].live_workers > 0

    def ready(self) -> bool:
        """Every model's default version can be served right now."""
        return self.redis_ok and all(self.model_ready(m.default) for m in self.models.values())

    async def infer(self, model: ModelVersion, request: wire.Request,
                    timeout_ms: int) -> wire.Reply:
        if not self.model_ready(model):
            raise NoLiveWorker(
                f"no live worker serves model {model.name!r} version {model.version}; start one "
                f"with `modelgate worker --model {model.name}` or wait for the autoscaler"
            )
        deadline_ms = int(time.time() * 1000) + timeout_ms
        future = self.dispatcher.submit(keys.requests_stream(model.pool),
                                        wire.encode_request(request), deadline_ms)
        reply = await future
        self.metrics.observe_reply(model.name, reply)
        if reply.status != wire.ReplyStatus.OK:
            raise ERROR_OF_REPLY.get(reply.status, NoLiveWorker)(reply.error)
        return reply

    async def refresh(self) -> None:
        """Live workers and backlog per pool, in one pipelined round trip."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pools = list(self.pools)
        for pool in pools:
            pipe.zremrangebyscore(keys.pool_workers(pool), "-inf", now - self.settings.worker_ttl_s)
            pipe.zcard(keys.pool_workers(pool))
            pipe.xlen(keys.requests_stream(pool))
        try:
            results = await pipe.execute()
        except (RedisError, OSError) as e:
            if self.redis_ok:
                log.warning("redis unreachable: %s", e)
            self.redis_ok = False
            return
        self.redis_ok = True
        for i, pool in enumerate(pools):
            view = self.pools[pool]
            view.live_workers = int(results[3 * i + 1])
            # Entries are deleted once answered, so the stream length is the backlog
            # (waiting + in work).
            view.backlog = int(results[3 * i + 2])
        for model in self.models.values():
            view = self.pools[model.default.pool]
            self.metrics.workers.labels(model.name).set(view.live_workers)
            self.metrics.queue_depth.labels(model.name).set(view.backlog)

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.monitor_interval_s)
            await self.refresh()
