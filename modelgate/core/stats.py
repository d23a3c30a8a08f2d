"""Per-pool counters in one-second Redis hashes: the signals the autoscaler scales on.

Gateways add ``arrivals`` and ``rejected``; workers add, per ORT run and per request,
``completed``, ``errors``, ``runs``, ``rows``, ``compute_ms`` (busy time), ``queue_ms`` and a
latency histogram (``lat:<bound>``: requests whose queue wait + compute was at most ``bound`` ms
and over the previous bound). Both sides count in memory and flush once a second, so the hot
path pays nothing; the autoscaler sums a short window of buckets.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict
from typing import Any

from modelgate.core import keys

LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000,
                     math.inf)
BUCKET_TTL_S = 600


def latency_field(latency_ms: float) -> str:
    """The histogram field of a latency (the smallest bound at or above it)."""
    bound = LATENCY_BOUNDS_MS[bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)]
    return f"lat:{bound if bound != math.inf else 'inf'}"


class StatsAccumulator:
    """Counters for one pool, safe to add to from one thread and flush from another."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        # int-valued until a float is added: flush sends whole numbers with HINCRBY.
        self._counts: defaultdict[str, float] = defaultdict(int)

    def add(self, **fields: float) -> None:
        with self._lock:
            for name, value in fields.items():
                self._counts[name] += value

    def add_run(self, requests: int, rows: int, compute_ms: float, queue_ms: list[float],
                errors: int) -> None:
        with self._lock:
            c = self._counts
            c["completed"] += requests
            c["errors"] += errors
            c["runs"] += 1
            c["rows"] += rows
            c["compute_ms"] += compute_ms
            for q in queue_ms:
                c["queue_ms"] += q
                c[latency_field(q + compute_ms)] += 1

    def flush(self, pipe: Any, epoch_s: int) -> bool:
        """Queue the counters on a Redis pipeline and reset them; False if there was nothing."""
        with self._lock:
            counts, self._counts = self._counts, defaultdict(int)
        if not counts:
            return False
        key = keys.pool_stats(self.pool, epoch_s)
        for name, value in counts.items():
            if isinstance(value, float) and not value.is_integer():
                pipe.hincrbyfloat(key, name, value)
            else:
                pipe.hincrby(key, name, int(value))
        pipe.expire(key, BUCKET_TTL_S)
        return True


def percentile_ms(histogram: dict[str, float], q: float) -> float | None:
    """The q-quantile in ms: found in the bucket that holds it, then interpolated linearly
    between that bucket's bounds (its latencies taken as spread evenly). Past the last finite
    bound it is twice that bound, "at least this slow". None for an empty histogram."""
    total = sum(histogram.get(latency_field(b), 0.0) for b in LATENCY_BOUNDS_MS)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    lower = 0.0
    for bound in LATENCY_BOUNDS_MS:
        count = histogram.get(latency_field(bound), 0.0)
        if count > 0 and seen + count >= rank:
            if bound == math.inf:
                return lower * 2  # past the last finite bound: say "at least twice that"
            return lower + (rank - seen) / count * (bound - lower)  # linear within the bucket
        seen += count
        lower = float(bound)
    return lower
