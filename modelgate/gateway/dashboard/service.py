"""The dashboard's snapshot: every model's last minutes, read from Redis in one round trip.

A snapshot is built at most every ``cache_s`` and shared by every open page (concurrent
requests wait for the one build in progress), so many viewers cost Redis nothing extra. Past
seconds are final once no writer can still add to them, so they are kept in memory and only
the last few seconds, the gauges and the new autoscaler events are read per build: after the
first build a round trip reads a handful of keys per model, not the whole window.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from modelgate.core.errors import BackendUnavailable
from modelgate.core.pool_figures import FiguresQuery
from modelgate.core.stats import decode_bucket, rates
from modelgate.core.store import pools, scaling
from modelgate.gateway.dashboard import series
from modelgate.gateway.dashboard.history import PoolHistory, Sample

WINDOW_S = 300  # seconds on the timeline
CACHE_S = 0.5
# A one-second bucket gets its last writes when its second ends (gateways and workers flush
# what they counted into the bucket of the flush time); after this many more seconds it is
# final and kept in memory. Writers whose clocks run further behind than this are missed.
FINAL_AFTER_S = 5
AUTOSCALER_FRESH_S = 10  # the autoscaler counts as running while its last event is this recent
DECISIONS_LIMIT = 100  # markers per model on the timeline


def _next_id(entry_id: str) -> str:
    """The smallest stream id after ``entry_id`` (an inclusive XRANGE start)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


class Source(Protocol):
    """What the dashboard reads from the gateway: its Redis client, the pools it shows, their
    gauges as of the last refresh, and a hook called after each refresh."""

    client: aioredis.Redis
    on_refresh: list[Callable[[float], None]]

    def shown_pools(self) -> list[tuple[str, str, str]]:
        """(model, version, pool) of every pool on the page, in order."""

    def gauges(self, pool: str) -> pools.PoolGauges:
        """The pool's gauges at the last refresh."""


class Dashboard:
    """Snapshots for ``GET /dashboard/data``; records the plane's gauges after every refresh."""

    def __init__(self, source: Source, window_s: int = WINDOW_S, cache_s: float = CACHE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.window_s = window_s
        self.cache_s = cache_s
        self.clock = clock
        self.history = PoolHistory(window_s)
        self._buckets: dict[tuple[str, int], series.Bucket] = {}
        self._events: deque[series.Event] = deque()
        self._last_event_id: str | None = None
        self._cached: tuple[float, bytes] | None = None
        self._building = asyncio.Lock()
        source.on_refresh.append(self.record)

    def record(self, now: float) -> None:
        """Sample every shown pool's gauges (the source calls this after each refresh)."""
        for _, _, pool in self.source.shown_pools():
            gauges = self.source.gauges(pool)
            self.history.record(pool, Sample(int(now), gauges.backlog, gauges.live_workers,
                                             gauges.starting_workers, gauges.desired))

    async def snapshot(self, drift: bool) -> bytes:
        """The JSON snapshot, at most ``cache_s`` old; ``drift``: the drift route exists."""
        if (cached := self._fresh()) is not None:
            return cached
        async with self._building:
            if (cached := self._fresh()) is not None:
                return cached  # built while this request waited for the lock
            body = orjson.dumps(await self._build(self.clock(), drift))
            self._cached = (time.monotonic(), body)
            return body

    def _fresh(self) -> bytes | None:
        if self._cached is not None and time.monotonic() - self._cached[0] < self.cache_s:
            return self._cached[1]
        return None

    async def _build(self, now: float, drift: bool) -> dict[str, Any]:
        end = int(now) - 1  # the last complete second
        start = end - self.window_s + 1
        shown = self.source.shown_pools()
        pool_ids = [pool for _, _, pool in shown]
        self._buckets = {k: v for k, v in self._buckets.items() if k[1] >= start}
        missing = [(pool, s) for pool in pool_ids for s in range(start, end + 1)
                   if (pool, s) not in self._buckets]
        pipe = self.source.client.pipeline(transaction=False)
        for pool, second in missing:
            pipe.hgetall(pools.stats(pool, second))
        query = FiguresQuery(pool_ids, now, rates=False)
        query.queue(pipe)
        if self._last_event_id is not None and int(self._last_event_id.split("-")[0]) >= (
                start * 1000):
            first_id = _next_id(self._last_event_id)  # only what came since the last build
        else:
            first_id = f"{start * 1000}-0"  # the whole window, afresh
            self._events.clear()
        pipe.xrange(scaling.EVENTS, min=first_id, max="+", count=scaling.EVENTS_MAXLEN)
        pipe.get(scaling.BUDGET)
        try:
            results = await pipe.execute()
        except (RedisError, OSError) as e:
            raise BackendUnavailable(
                f"the dashboard cannot read Redis ({type(e).__name__}); retry shortly") from e

        fetched = dict(zip(missing, (decode_bucket(r) for r in results), strict=False))
        for key, bucket in fetched.items():
            if key[1] <= now - FINAL_AFTER_S:
                self._buckets[key] = bucket
        known_buckets = {**self._buckets, **fetched}
        rest = results[len(missing):]
        figures = query.parse(rest)
        entries, budget = rest[query.size:]
        self._add_events(entries, start)

        models: list[dict[str, Any]] = []
        costs: list[series.Series] = []
        for name, version, pool in shown:
            buckets = [known_buckets.get((pool, s), {}) for s in range(start, end + 1)]
            events = [e for e in self._events if e.pool == pool]
            gauges = figures[pool].gauges
            cost = series.cost_series(start, end, events)
            costs.append(cost)
            now_figures = series.recent_figures(rates(buckets))
            now_figures.update(backlog=gauges.backlog, live=gauges.live_workers,
                               starting=gauges.starting_workers, desired=gauges.desired,
                               cost_per_hour=events[-1].cost_per_hour if events else None)
            per_second: dict[str, series.Series] = {
                **series.counter_series(buckets),
                **series.gauge_series(start, end, self.history.between(pool, start, end),
                                      events),
                "cost_per_hour": cost,
            }
            models.append({
                "name": name, "version": version, "pool": pool,
                "now": now_figures,
                "series": per_second,
                "decisions": series.decisions(events, DECISIONS_LIMIT),
            })
        # Pools the autoscaler runs that this gateway does not list still cost money.
        latest: dict[str, float | None] = {e.pool: e.cost_per_hour for e in self._events}
        others = {e.pool for e in self._events} - set(pool_ids)
        costs.extend(series.cost_series(start, end, [e for e in self._events if e.pool == p])
                     for p in sorted(others))
        known = [c for c in latest.values() if c is not None]
        running = bool(self._events) and self._events[-1].time >= now - AUTOSCALER_FRESH_S
        return {
            "time": round(now, 3), "start": start, "end": end, "window_s": self.window_s,
            "redis": True, "drift": drift,
            "autoscaler": {
                "running": running,
                "cost_per_hour": round(sum(known), 4) if known else None,
                "budget_per_hour": scaling.budget_from(budget),
                "cost": series.total_cost_series(costs),
            },
            "models": models,
        }

    def _add_events(self, entries: list[tuple[bytes, dict[bytes, bytes]]], start: int) -> None:
        for entry_id, fields in entries:
            self._last_event_id = entry_id.decode()
            event = scaling.ScalingEvent.parse(fields)
            if event is not None:
                self._events.append(event)
        while self._events and self._events[0].time < start:
            self._events.popleft()
