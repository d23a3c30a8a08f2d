"""One reading of pools' live figures -- workers, backlog, the autoscaler's wish, rates and the
batch sizes their workers tuned -- shared by the gateway, the autoscaler, the dashboard and
``modelgate status``.

A :class:`FiguresQuery` queues its commands on a sync or asyncio pipeline the caller owns
(with whatever else it reads in that round trip) and parses its share of the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modelgate.core import stats
from modelgate.core.batching import BatchPlan, PlanError
from modelgate.core.store import batching, heartbeats, pools

# Commands per pool besides the rates: the gauges, then the batch plan.
_POOL_COMMANDS = pools.GAUGE_COMMANDS + 1


@dataclass(frozen=True, slots=True)
class PoolFigures:
    gauges: pools.PoolGauges
    rates: stats.PoolRates = field(default_factory=stats.PoolRates)
    # What could not be read, each said in a few words: values that are not what their key
    # holds (left out, or read as absent) and reads Redis refused. Empty when all was well.
    problems: tuple[str, ...] = ()
    # False when Redis refused a gauge's read (a key of another type): the gauges are then not
    # a reading of the pool, and a reader should keep its last one rather than act on them.
    readable: bool = True
    # The batch sizes the pool's workers tuned (None until one has loaded, or unreadable).
    plan: BatchPlan | None = None


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
        return len(self.pool_ids) * (_POOL_COMMANDS + len(self.seconds))

    def queue(self, pipe: Any) -> None:
        for pool in self.pool_ids:
            pools.read_gauges(pipe, pool, self.now, heartbeats.WORKER_TTL_S)
            pipe.get(batching.plan(pool))
            for second in self.seconds:
                pipe.hgetall(pools.stats(pool, second))

    def parse(self, results: Sequence[Any]) -> dict[str, PoolFigures]:
        """Figures per pool from the pipeline's results, which may hold exceptions (run it
        with ``raise_on_error=False``): a bad value or a refused read is a problem of its pool,
        never an exception here."""
        per_pool = _POOL_COMMANDS + len(self.seconds)
        figures = {}
        for i, pool in enumerate(self.pool_ids):
            chunk = results[i * per_pool:(i + 1) * per_pool]
            problems: list[str] = []
            gauges = pools.gauges_from(chunk, problems)
            readable = not any(isinstance(r, Exception) for r in chunk[:pools.GAUGE_COMMANDS])
            plan = _plan_of(chunk[pools.GAUGE_COMMANDS], problems)
            if not self.seconds:
                figures[pool] = PoolFigures(gauges, problems=tuple(problems), readable=readable,
                                            plan=plan)
                continue
            buckets = []
            for raw in chunk[_POOL_COMMANDS:]:
                if isinstance(raw, Exception):
                    problems.append(f"stats: Redis refused the read ({raw})")
                    raw = {}
                buckets.append(stats.decode_bucket(raw, problems))
            figures[pool] = PoolFigures(gauges, stats.rates(buckets), tuple(problems), readable,
                                        plan)
        return figures


def _plan_of(raw: Any, problems: list[str]) -> BatchPlan | None:
    if raw is None:
        return None
    if isinstance(raw, Exception):
        problems.append(f"batching: Redis refused the read ({raw})")
        return None
    try:
        return BatchPlan.decode(raw)
    except PlanError as e:
        problems.append(f"batching: {e}")
        return None
