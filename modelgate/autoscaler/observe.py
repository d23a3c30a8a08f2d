"""Observations of every pool for the policy, from the shared reading of pools' figures
(``modelgate.core.pool_figures``): one round trip per tick, Redis alone (no Prometheus)."""

from __future__ import annotations

import time

import redis

from modelgate.autoscaler.policy import Observation
from modelgate.core.pool_figures import FiguresQuery, PoolFigures
from modelgate.core.stats import RATE_WINDOW_S


def observation(pool: str, replicas: int, figures: PoolFigures) -> Observation:
    gauges, rates = figures.gauges, figures.rates
    return Observation(
        pool=pool,
        workers=replicas,
        backlog=gauges.backlog,
        # Refused calls are demand too: count them, or a full queue would hide load.
        arrival_rate=rates.demand_per_s,
        completion_rate=rates.completed_per_s,
        service_s=rates.service_ms / 1000.0 if rates.service_ms is not None else None,
        latency_p95_ms=rates.p95_ms,
        rate_window_s=RATE_WINDOW_S,
        live_workers=gauges.live_workers,
        starting_workers=gauges.starting_workers,
    )


class Observer:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def observe(self, replicas: dict[str, int], now: float | None = None
                ) -> dict[str, Observation]:
        """Observations for the pools in ``replicas`` (pool id -> replicas the backend runs)."""
        query = FiguresQuery(list(replicas), time.time() if now is None else now)
        pipe = self.client.pipeline(transaction=False)
        query.queue(pipe)
        figures = query.parse(pipe.execute())
        return {pool: observation(pool, count, figures[pool]) for pool, count in replicas.items()}
