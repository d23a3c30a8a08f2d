"""Observations of every pool for the policy, from the shared reading of pools' figures
(``modelgate.core.pool_figures``): one round trip per tick, Redis alone (no Prometheus)."""

from __future__ import annotations

import time
from dataclasses import replace

import redis

from modelgate.autoscaler.policy import Observation
from modelgate.core.pool_figures import FiguresQuery, PoolFigures
from modelgate.core.stats import RATE_WINDOW_S
from modelgate.core.store import is_bad_data, jobs


def observation(pool: str, replicas: int, figures: PoolFigures) -> Observation:
    gauges, rates = figures.gauges, figures.rates
    return Observation(
        pool=pool,
        workers=replicas,
        backlog=gauges.backlog,
        # Refused calls are demand too: count them, or a full queue would hide load.
        arrival_rate=rates.demand_per_s,
        completion_rate=rates.completed_per_s,
        service_s=_service_s(figures),
        latency_p95_ms=rates.p95_ms,
        rate_window_s=RATE_WINDOW_S,
        live_workers=gauges.live_workers,
        starting_workers=gauges.starting_workers,
    )


def _service_s(figures: PoolFigures) -> float | None:
    """Worker-seconds per request: as measured over the last seconds; before anything ran
    (a pool just loaded, or idle), from the throughput curve its workers measured at load, at
    the run size cap, for one-row requests: a burst on a fresh pool is sized by Little's law
    at once, not by its backlog alone."""
    rates, plan = figures.rates, figures.plan
    if rates.service_ms is not None:
        return rates.service_ms / 1000.0
    return plan.service_s() if plan is not None else None


class Observer:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def observe(self, replicas: dict[str, int], now: float | None = None
                ) -> dict[str, tuple[Observation, PoolFigures]]:
        """Observations for the pools in ``replicas`` (pool id -> replicas the backend runs),
        each with the figures it was made from (their ``problems`` and ``readable`` say what
        bad data was skipped). Raises RedisError when Redis is not serving; a key holding
        something else than it should is bad data in its pool, not an error."""
        query = FiguresQuery(list(replicas), time.time() if now is None else now)
        pipe = self.client.pipeline(transaction=False)
        query.queue(pipe)
        results = pipe.execute(raise_on_error=False)
        refused = next((r for r in results if isinstance(r, redis.ResponseError)
                        and not is_bad_data(r)), None)
        if refused is not None:
            raise refused
        figures = query.parse(results)
        chunks = self._job_chunks(list(replicas))
        return {pool: (replace(observation(pool, count, figures[pool]),
                               job_chunks=chunks.get(pool, 0)), figures[pool])
                for pool, count in replicas.items()}

    def _job_chunks(self, pool_ids: list[str]) -> dict[str, int]:
        """Batch-job chunks waiting or in work per pool (its job stream's length); a stream
        Redis refuses to read counts none."""
        pipe = self.client.pipeline(transaction=False)
        for pool in pool_ids:
            pipe.xlen(jobs.job_stream(pool))
        found = pipe.execute(raise_on_error=False)
        return {pool: count for pool, count in zip(pool_ids, found, strict=True)
                if isinstance(count, int)}
