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

from modelgate.core.stats import PoolRates, latency_figures
from modelgate.core.store.scaling import ScalingEvent
from modelgate.gateway.dashboard.history import Sample

Bucket = dict[str, float]  # one second's counters (modelgate.core.stats)
Series = list[float | None]

COUNTS = ("completed", "arrivals", "errors", "rejected")
PERCENTILES = (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99))
# A gauge second with no sample keeps the previous value this long (samples and events are
# about a second apart and jitter); past it the line breaks, which is the honest picture.
GAUGE_CARRY_S = 3


# One autoscaler decision for one pool: the record the autoscaler writes.
Event = ScalingEvent


def _round(value: float | None, digits: int = 3) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def latency(bucket: Bucket) -> dict[str, float | None]:
    """Percentiles and the queue/compute split of one bucket (or a sum of buckets), rounded."""
    return {name: _round(value) for name, value in latency_figures(bucket).items()}


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


def recent_figures(rates: PoolRates) -> dict[str, float | None]:
    """The "now" numbers: rates per second and latency, as every reader computes them
    (``modelgate.core.stats.rates``)."""
    return {
        "completed_per_s": _round(rates.completed_per_s),
        "arrivals_per_s": _round(rates.arrivals_per_s),
        "errors_per_s": _round(rates.errors_per_s),
        "rejected_per_s": _round(rates.rejected_per_s),
        **{name: _round(getattr(rates, name)) for name, _ in PERCENTILES},
        "queue_ms": _round(rates.queue_ms), "compute_ms": _round(rates.compute_ms),
        "service_ms": _round(rates.service_ms),
    }


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
