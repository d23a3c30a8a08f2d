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
from typing import Any

import orjson
from redis.exceptions import RedisError

from modelgate.core import keys
from modelgate.core.errors import BackendUnavailable
from modelgate.gateway.dashboard import series
from modelgate.gateway.dashboard.history import PoolHistory, Sample
from modelgate.gateway.dataplane import STARTING_GRACE_S, DataPlane

WINDOW_S = 300  # seconds on the timeline
CACHE_S = 0.5
# A one-second bucket gets its last writes when its second ends (gateways and workers flush
# what they counted into the bucket of the flush time); after this many more seconds it is
# final and kept in memory. Writers whose clocks run further behind than this are missed.
FINAL_AFTER_S = 5
RATE_WINDOW_S = 5  # the "now" rates: the last complete seconds (workers flush once a second)
LATENCY_WINDOW_S = 10  # the "now" percentiles, as the autoscaler computes its p95
AUTOSCALER_FRESH_S = 10  # the autoscaler counts as running while its last event is this recent
DECISIONS_LIMIT = 100  # markers per model on the timeline
EVENTS_PER_READ = 10_000  # the events stream keeps about this many (autoscaler.loop)


def _next_id(entry_id: str) -> str:
    """The smallest stream id after ``entry_id`` (an inclusive XRANGE start)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _decode(raw: dict[bytes, bytes]) -> series.Bucket:
    bucket: series.Bucket = {}
    for name, value in raw.items():
        try:
            bucket[name.decode()] = float(value)
        except (UnicodeDecodeError, ValueError):
            continue  # a field this version does not know how to read
    return bucket


def _number(raw: bytes | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


class Dashboard:
    """Snapshots for ``GET /dashboard/data``; records the plane's gauges after every refresh."""

    def __init__(self, plane: DataPlane, window_s: int = WINDOW_S, cache_s: float = CACHE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.plane = plane
        self.window_s = window_s
        self.cache_s = cache_s
        self.clock = clock
        self.history = PoolHistory(window_s)
        self._pools = {name: model.default for name, model in sorted(plane.models.items())}
        self._buckets: dict[tuple[str, int], series.Bucket] = {}
        self._events: deque[series.Event] = deque()
        self._last_event_id: str | None = None
        self._cached: tuple[float, bytes] | None = None
        self._building = asyncio.Lock()
        plane.on_refresh.append(self.record)

    def record(self, now: float) -> None:
        """Sample every default pool's view (the plane calls this after each refresh)."""
        for model in self._pools.values():
            view = self.plane.pools[model.pool]
            self.history.record(model.pool, Sample(int(now), view.backlog, view.live_workers,
                                                   view.starting_workers, view.desired))

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
        pools = [m.pool for m in self._pools.values()]
        self._buckets = {k: v for k, v in self._buckets.items() if k[1] >= start}
        missing = [(pool, s) for pool in pools for s in range(start, end + 1)
                   if (pool, s) not in self._buckets]
        pipe = self.plane.client.pipeline(transaction=False)
        for pool, second in missing:
            pipe.hgetall(keys.pool_stats(pool, second))
        for pool in pools:
            pipe.get(keys.pool_queued(pool))
            pipe.zcount(keys.pool_workers(pool), now - self.plane.settings.worker_ttl_s, "+inf")
            pipe.zcount(keys.pool_starting(pool), now - STARTING_GRACE_S, "+inf")
            pipe.get(keys.pool_desired(pool))
        if self._last_event_id is not None and int(self._last_event_id.split("-")[0]) >= (
                start * 1000):
            first_id = _next_id(self._last_event_id)  # only what came since the last build
        else:
            first_id = f"{start * 1000}-0"  # the whole window, afresh
            self._events.clear()
        pipe.xrange(keys.AUTOSCALER_EVENTS, min=first_id, max="+", count=EVENTS_PER_READ)
        pipe.get(keys.AUTOSCALER_BUDGET)
        try:
            results = await pipe.execute()
        except (RedisError, OSError) as e:
            raise BackendUnavailable(
                f"the dashboard cannot read Redis ({type(e).__name__}); retry shortly") from e

        fetched = dict(zip(missing, (_decode(r) for r in results), strict=False))
        for key, bucket in fetched.items():
            if key[1] <= now - FINAL_AFTER_S:
                self._buckets[key] = bucket
        known_buckets = {**self._buckets, **fetched}
        rest = results[len(missing):]
        gauges, (entries, budget) = rest[:4 * len(pools)], rest[4 * len(pools):]
        self._add_events(entries, start)

        models: list[dict[str, Any]] = []
        costs: list[series.Series] = []
        for i, (name, model) in enumerate(self._pools.items()):
            pool = model.pool
            buckets = [known_buckets.get((pool, s), {}) for s in range(start, end + 1)]
            events = [e for e in self._events if e.pool == pool]
            backlog, live, starting, desired = gauges[4 * i:4 * i + 4]
            cost = series.cost_series(start, end, events)
            costs.append(cost)
            now_figures = series.recent_figures(buckets, RATE_WINDOW_S, LATENCY_WINDOW_S)
            now_figures.update(backlog=keys.queued_count(backlog), live=int(live),
                               starting=int(starting),
                               desired=int(desired) if desired is not None else None,
                               cost_per_hour=events[-1].cost_per_hour if events else None)
            per_second: dict[str, series.Series] = {
                **series.counter_series(buckets),
                **series.gauge_series(start, end, self.history.between(pool, start, end),
                                      events),
                "cost_per_hour": cost,
            }
            models.append({
                "name": name, "version": model.version, "pool": pool,
                "now": now_figures,
                "series": per_second,
                "decisions": series.decisions(events, DECISIONS_LIMIT),
            })
        # Pools the autoscaler runs that this gateway does not list still cost money.
        latest: dict[str, float | None] = {e.pool: e.cost_per_hour for e in self._events}
        others = {e.pool for e in self._events} - set(pools)
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
                "budget_per_hour": _number(budget),
                "cost": series.total_cost_series(costs),
            },
            "models": models,
        }

    def _add_events(self, entries: list[tuple[bytes, dict[bytes, bytes]]], start: int) -> None:
        for entry_id, fields in entries:
            self._last_event_id = entry_id.decode()
            event = series.parse_event(fields)
            if event is not None:
                self._events.append(event)
        while self._events and self._events[0].time < start:
            self._events.popleft()
