"""One reading of pools' live figures -- workers, backlog, the autoscaler's wish and rates --
shared by the gateway, the autoscaler, the dashboard and ``modelgate status``.

A :class:`FiguresQuery` queues its commands on a sync or asyncio pipeline the caller owns
(with whatever else it reads in that round trip) and parses its share of the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modelgate.core import stats
from modelgate.core.store import heartbeats, pools


@dataclass(frozen=True, slots=True)
class PoolFigures:
    gauges: pools.PoolGauges
    rates: stats.PoolRates = field(default_factory=stats.PoolRates)


class FiguresQuery:
    """Gauges of ``pool_ids`` at ``now`` and, with ``rates``, their last LATENCY_WINDOW_S
    complete seconds of counters."""

    def __init__(self, pool_ids: Sequence[str], now: float, rates: bool = True) -> None:
        self.pool_ids = list(pool_ids)
        self.now = now
        self.seconds = (range(int(now) - stats.LATENCY_WINDOW_S, int(now)) if rates
                        else range(0))

    @property
    def size(self) -> int:
        """How many results :meth:`parse` consumes."""
        return len(self.pool_ids) * (pools.GAUGE_COMMANDS + len(self.seconds))

    def queue(self, pipe: Any) -> None:
        for pool in self.pool_ids:
            pools.read_gauges(pipe, pool, self.now, heartbeats.WORKER_TTL_S)
            for second in self.seconds:
                pipe.hgetall(pools.stats(pool, second))

    def parse(self, results: Sequence[Any]) -> dict[str, PoolFigures]:
        per_pool = pools.GAUGE_COMMANDS + len(self.seconds)
        figures = {}
        for i, pool in enumerate(self.pool_ids):
            chunk = results[i * per_pool:(i + 1) * per_pool]
            gauges = pools.gauges_from(chunk)
            if not self.seconds:
                figures[pool] = PoolFigures(gauges)
                continue
            buckets = [stats.decode_bucket(raw) for raw in chunk[pools.GAUGE_COMMANDS:]]
            figures[pool] = PoolFigures(gauges, stats.rates(buckets))
        return figures
