"""Per-pool counters in one-second Redis hashes: the signals the autoscaler scales on.

Gateways add ``arrivals`` and ``rejected``; workers add, per ORT run and per request,
``completed``, ``runs``, ``rows``, ``compute_ms`` (busy time), ``queue_ms``, what did not end
well -- ``errors`` (the version's own failures: the model failed on input it accepted, or the
call was parked as a poison pill), ``bad_input`` (the model refused the caller's input),
``expired`` (past its deadline before a worker took it), ``malformed`` (not valid wire format)
-- and a latency histogram (``lat:<bound>``: requests whose queue wait + compute was at most
``bound`` ms and over the previous bound). Both sides count in memory and flush once a second,
so the hot path pays nothing; the autoscaler sums a short window of buckets.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelgate.core.store import pools

# Every reader of these counters takes rates over the last RATE_WINDOW_S complete seconds
# (short, so a load step shows within ~2 s; the autoscaler widens its tolerance band by this
# window's Poisson noise) and latency over LATENCY_WINDOW_S (longer, so one slow second does not
# dominate).
RATE_WINDOW_S = 3
LATENCY_WINDOW_S = 10

LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000,
                     math.inf)
BUCKET_TTL_S = 600


# What each reply status that is not ok counts as: only ``errors`` is the version's fault, the
# error rate a rollout judges a version by.
FAILURE_FIELDS = {"model_error": "errors", "dead_letter": "errors", "bad_input": "bad_input",
                  "deadline": "expired", "wire_error": "malformed"}


def failure_field(status: str) -> str:
    return FAILURE_FIELDS.get(status, "errors")


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
                failures: Mapping[str, int] | None = None) -> None:
        """One ORT run's requests; ``failures`` counts those that did not end well, by field
        (see FAILURE_FIELDS)."""
        with self._lock:
            c = self._counts
            c["completed"] += requests
            for name, count in (failures or {}).items():
                c[name] += count
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
        key = pools.stats(self.pool, epoch_s)
        for name, value in counts.items():
            if isinstance(value, float) and not value.is_integer():
                pipe.hincrbyfloat(key, name, value)
            else:
                pipe.hincrby(key, name, int(value))
        pipe.expire(key, BUCKET_TTL_S)
        return True


def percentile_ms(histogram: Mapping[str, float], q: float) -> float | None:
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


Bucket = dict[str, float]


def decode_bucket(raw: Mapping[bytes, bytes], problems: list[str] | None = None) -> Bucket:
    """One second's hash as read back. Fields that are not a count (not a number, infinite,
    NaN or negative) are left out, and named in ``problems`` when it is given."""
    bucket: Bucket = {}
    for name, value in raw.items():
        try:
            number = float(value)
            if not (math.isfinite(number) and number >= 0):
                raise ValueError(f"{number} is not a count")
            bucket[name.decode()] = number
        except (UnicodeDecodeError, ValueError):
            if problems is not None:
                problems.append(f"stats field {name[:40]!r}: {value[:40]!r} is not a count")
    return bucket


def sum_buckets(buckets: Iterable[Mapping[str, float]]) -> Bucket:
    total: Bucket = {}
    for bucket in buckets:
        for name, value in bucket.items():
            total[name] = total.get(name, 0.0) + value
    return total


@dataclass(frozen=True, slots=True)
class PoolRates:
    """Per-second rates over the last RATE_WINDOW_S seconds and latency over LATENCY_WINDOW_S,
    from the pool's one-second buckets."""

    arrivals_per_s: float = 0.0  # calls admitted
    rejected_per_s: float = 0.0  # calls refused (429): demand all the same
    completed_per_s: float = 0.0
    errors_per_s: float = 0.0
    service_ms: float | None = None  # busy time per request: what capacity is planned on
    queue_ms: float | None = None  # mean wait from enqueue to a worker taking the request
    compute_ms: float | None = None  # mean ORT time of a run
    p50_ms: float | None = None  # of queue wait + compute
    p95_ms: float | None = None
    p99_ms: float | None = None

    @property
    def demand_per_s(self) -> float:
        return self.arrivals_per_s + self.rejected_per_s


def latency_figures(bucket: Mapping[str, float]) -> dict[str, float | None]:
    """Percentiles and the queue/compute split of one bucket (or a sum of buckets)."""
    timed = sum(bucket.get(latency_field(b), 0.0) for b in LATENCY_BOUNDS_MS)
    runs = bucket.get("runs", 0.0)
    completed = bucket.get("completed", 0.0)
    return {
        "p50_ms": percentile_ms(bucket, 0.50), "p95_ms": percentile_ms(bucket, 0.95),
        "p99_ms": percentile_ms(bucket, 0.99),
        "queue_ms": bucket.get("queue_ms", 0.0) / timed if timed else None,
        "compute_ms": bucket.get("compute_ms", 0.0) / runs if runs else None,
        "service_ms": bucket.get("compute_ms", 0.0) / completed if completed and runs else None,
    }


def rates(buckets: Sequence[Mapping[str, float]]) -> PoolRates:
    """The rates of a pool from its buckets, oldest first, ending at the last complete second."""
    recent = sum_buckets(buckets[-RATE_WINDOW_S:])
    return PoolRates(
        arrivals_per_s=recent.get("arrivals", 0.0) / RATE_WINDOW_S,
        rejected_per_s=recent.get("rejected", 0.0) / RATE_WINDOW_S,
        completed_per_s=recent.get("completed", 0.0) / RATE_WINDOW_S,
        errors_per_s=recent.get("errors", 0.0) / RATE_WINDOW_S,
        **latency_figures(sum_buckets(buckets[-LATENCY_WINDOW_S:])))
