"""Observations of every pool, read from Redis alone (no Prometheus server needed).

One pipelined round trip per tick reads, per pool: the queued-requests count (backlog: waiting
plus in work, see keys.pool_queued), live and starting workers, and the last seconds of
per-second counters that gateways and workers flush (see modelgate.core.stats).
"""

from __future__ import annotations

import time

import redis

from modelgate.autoscaler.policy import Observation
from modelgate.core import keys
from modelgate.core.stats import percentile_ms

RATE_WINDOW_S = 3  # arrivals: short, so a load step shows within ~2 s (the policy widens its
# tolerance band by this window's Poisson noise, so the noise does not flip the count)
LATENCY_WINDOW_S = 10  # p95 and service time: longer, so one slow second does not dominate


def _sum(buckets: list[dict[bytes, bytes]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bucket in buckets:
        for name, value in bucket.items():
            key = name.decode()
            total[key] = total.get(key, 0.0) + float(value)
    return total


class Observer:
    def __init__(self, client: redis.Redis, worker_ttl_s: float = 5.0,
                 starting_grace_s: float = 120.0) -> None:
        self.client = client
        self.worker_ttl_s = worker_ttl_s
        self.starting_grace_s = starting_grace_s

    def observe(self, pools: dict[str, int], now: float | None = None) -> dict[str, Observation]:
        """Observations for ``pools`` (pool id -> replicas the backend runs)."""
        now = time.time() if now is None else now
        second = int(now)
        seconds = list(range(second - LATENCY_WINDOW_S, second))
        pipe = self.client.pipeline(transaction=False)
        for pool in pools:
            pipe.get(keys.pool_queued(pool))
            pipe.zcount(keys.pool_workers(pool), now - self.worker_ttl_s, "+inf")
            pipe.zcount(keys.pool_starting(pool), now - self.starting_grace_s, "+inf")
            for s in seconds:
                pipe.hgetall(keys.pool_stats(pool, s))
        results = pipe.execute()
        per_pool = 3 + len(seconds)
        observations = {}
        for i, (pool, replicas) in enumerate(pools.items()):
            chunk = results[i * per_pool:(i + 1) * per_pool]
            backlog = keys.queued_count(chunk[0])
            live, starting = int(chunk[1]), int(chunk[2])
            buckets = chunk[3:]
            recent = _sum(buckets[-RATE_WINDOW_S:])
            longer = _sum(buckets)
            completed = longer.get("completed", 0.0)
            observations[pool] = Observation(
                pool=pool,
                workers=replicas,
                backlog=backlog,
                # Refused calls are demand too: count them, or a full queue would hide load.
                arrival_rate=(recent.get("arrivals", 0.0) + recent.get("rejected", 0.0))
                / RATE_WINDOW_S,
                completion_rate=recent.get("completed", 0.0) / RATE_WINDOW_S,
                service_s=(longer.get("compute_ms", 0.0) / completed / 1000.0
                           if completed else None),
                latency_p95_ms=percentile_ms(longer, 0.95),
                rate_window_s=RATE_WINDOW_S,
                live_workers=live,
                starting_workers=starting,
            )
        return observations
