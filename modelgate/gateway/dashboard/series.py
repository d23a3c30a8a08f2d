"""The dashboard's figures from raw Redis data: per-second series and "now" numbers. Pure.

Inputs are what ``gateway.dashboard.service`` read: one decoded stats hash per second (see
``modelgate.core.stats``; an empty dict for a second nothing happened in), the gateway's own gauge
samples (``gateway.dashboard.history``) and the autoscaler's decision events.

Latency is split the way a request lives through it: ``queue_ms`` is the mean wait from enqueue
to a worker taking the request (the ``queue_ms`` sum over the requests the histogram counts);
``compute_ms`` is the mean ONNX Runtime time of a run (the ``compute_ms`` sum over ``runs``),
which every request of a batched run waits through. Busy time per request (``compute_ms`` over
``completed``, what capacity is planned on) is smaller when runs batch, so it is reported apart
as ``service_ms``. Percentiles are of queue wait + compute, from the ``lat:`` histogram.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modelgate.core.stats import LATENCY_BOUNDS_MS, latency_field, percentile_ms
from modelgate.gateway.dashboard.history import Sample

Bucket = dict[str, float]
Series = list[float | None]

COUNTS = ("completed", "arrivals", "errors", "rejected")
PERCENTILES = (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99))
LATENCY_FIELDS = tuple(latency_field(b) for b in LATENCY_BOUNDS_MS)
# A gauge second with no sample keeps the previous value this long (samples and events are
# about a second apart and jitter); past it the line breaks, which is the honest picture.
GAUGE_CARRY_S = 3


@dataclass(frozen=True, slots=True)
class Event:
    """One autoscaler decision for one pool (fields of ``mg:autoscaler:events``)."""

    time: float
    pool: str
    current: int
    desired: int
    live: int
    starting: int
    backlog: int
    cost_per_hour: float | None
    reason: str
    panic: bool
    capped: bool

    @property
    def second(self) -> int:
        return int(self.time)

    @property
    def changes(self) -> bool:
        return self.desired != self.current


def parse_event(fields: dict[bytes, bytes]) -> Event | None:
    """An event from its stream fields; None if it lacks a field (written by another version)."""
    try:
        text = {k.decode(): v.decode() for k, v in fields.items()}
        cost = text.get("cost_per_hour", "")
        return Event(
            time=float(text["time"]), pool=text["pool"], current=int(text["current"]),
            desired=int(text["desired"]), live=int(text.get("live", text["current"])),
            starting=int(text.get("starting", 0)), backlog=int(text.get("backlog", 0)),
            cost_per_hour=float(cost) if cost else None, reason=text.get("reason", ""),
            panic=text.get("panic") == "1", capped=text.get("capped") == "1")
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def _round(value: float | None, digits: int = 3) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def _sum(buckets: Iterable[Bucket]) -> Bucket:
    total: Bucket = {}
    for bucket in buckets:
        for name, value in bucket.items():
            total[name] = total.get(name, 0.0) + value
    return total


def latency(bucket: Bucket) -> dict[str, float | None]:
    """Percentiles and the queue/compute split of one bucket (or a sum of buckets)."""
    timed = sum(bucket.get(f, 0.0) for f in LATENCY_FIELDS)
    runs = bucket.get("runs", 0.0)
    completed = bucket.get("completed", 0.0)
    figures: dict[str, float | None] = {
        name: _round(percentile_ms(bucket, q)) for name, q in PERCENTILES}
    figures["queue_ms"] = _round(bucket.get("queue_ms", 0.0) / timed) if timed else None
    figures["compute_ms"] = _round(bucket.get("compute_ms", 0.0) / runs) if runs else None
    figures["service_ms"] = (_round(bucket.get("compute_ms", 0.0) / completed)
                             if completed and runs else None)
    return figures


def counter_series(buckets: Sequence[Bucket]) -> dict[str, Series]:
    """Per-second counts (requests in that second) and latency figures, one per bucket."""
    series: dict[str, Series] = {name: [] for name in COUNTS}
    for name, _ in PERCENTILES:
        series[name] = []
    series["queue_ms"], series["compute_ms"] = [], []
    for bucket in buckets:
        for name in COUNTS:
            series[name].append(_round(bucket.get(name, 0.0)))
        figures = latency(bucket)
        for name, _ in PERCENTILES:
            series[name].append(figures[name])
        series["queue_ms"].append(figures["queue_ms"])
        series["compute_ms"].append(figures["compute_ms"])
    return series


def recent_figures(buckets: Sequence[Bucket], rate_window_s: int,
                   latency_window_s: int) -> dict[str, float | None]:
    """Rates per second over the last ``rate_window_s`` buckets, latency over a longer one."""
    rates = _sum(buckets[-rate_window_s:])
    figures: dict[str, float | None] = {
        f"{name}_per_s": _round(rates.get(name, 0.0) / rate_window_s) for name in COUNTS}
    figures.update(latency(_sum(buckets[-latency_window_s:])))
    return figures


def _carry(values: Series, limit_s: int) -> Series:
    """Fill a gap of at most ``limit_s`` seconds with the value before it."""
    filled: Series = []
    last: float | None = None
    gap = 0
    for value in values:
        if value is not None:
            last, gap = value, 0
            filled.append(value)
            continue
        gap += 1
        filled.append(last if last is not None and gap <= limit_s else None)
    return filled


def gauge_series(start: int, end: int, samples: dict[int, Sample],
                 events: Sequence[Event]) -> dict[str, Series]:
    """Backlog and worker counts per second: the gateway's samples, else the autoscaler's."""
    by_second = {e.second: e for e in events}  # the last event of each second wins
    series: dict[str, Series] = {"backlog": [], "live": [], "starting": [], "desired": []}
    for second in range(start, end + 1):
        sample, event = samples.get(second), by_second.get(second)
        row: tuple[int | None, int | None, int | None, int | None]
        if sample is not None:
            desired = sample.desired if sample.desired is not None else (
                event.desired if event is not None else None)
            row = (sample.backlog, sample.live, sample.starting, desired)
        elif event is not None:
            row = (event.backlog, event.live, event.starting, event.desired)
        else:
            row = (None, None, None, None)
        for name, value in zip(series, row, strict=True):
            series[name].append(value)
    return {name: _carry(values, GAUGE_CARRY_S) for name, values in series.items()}


def cost_series(start: int, end: int, events: Sequence[Event]) -> Series:
    """Cost per hour of the autoscaler's desired count, per second (None without events)."""
    by_second = {e.second: e.cost_per_hour for e in events}
    return _carry([by_second.get(s) for s in range(start, end + 1)], GAUGE_CARRY_S)


def total_cost_series(per_pool: Iterable[Series]) -> Series:
    """The sum across pools per second; None where no pool has a figure."""
    total: Series = []
    for values in zip(*per_pool, strict=True):
        known = [v for v in values if v is not None]
        total.append(_round(sum(known), 4) if known else None)
    return total


def decisions(events: Sequence[Event], limit: int) -> list[dict[str, object]]:
    """The timeline's markers, newest last: events that changed the worker count, and the
    first of a run of events the budget capped (the autoscaler wanted more and was refused)."""
    marked = []
    capped_before = False
    for event in events:
        if event.changes or (event.capped and not capped_before):
            marked.append(event)
        capped_before = event.capped
    return [{"time": round(e.time, 3), "current": e.current, "desired": e.desired,
             "reason": e.reason, "panic": e.panic, "capped": e.capped}
            for e in marked[-limit:]]
