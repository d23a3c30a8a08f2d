"""Latency percentiles from the per-pool histograms: core.stats.percentile_ms.

Workers count each request under the smallest bound at or above its latency (``lat:<bound>``);
the autoscaler's p95 and the dashboard's p50/p95/p99 are read back from those counts.
"""

from __future__ import annotations

import bisect

import numpy as np
import pytest

from modelgate.core.pool_figures import FiguresQuery
from modelgate.core.stats import LATENCY_BOUNDS_MS, decode_bucket, latency_field, percentile_ms


def histogram(latencies_ms: list[float]) -> dict[str, float]:
    """What a worker's counters add up to for these latencies."""
    counts: dict[str, float] = {}
    for latency in latencies_ms:
        field = latency_field(latency)
        counts[field] = counts.get(field, 0.0) + 1
    return counts


@pytest.mark.parametrize("counts", [
    {},
    {"lat:10": 0.0, "lat:inf": 0.0},
    {"completed": 7.0, "queue_ms": 30.0},  # other counters of the same hash are not latencies
])
def test_an_empty_histogram_has_no_percentile(counts: dict[str, float]) -> None:
    assert percentile_ms(counts, 0.95) is None


def test_within_one_bucket_the_percentile_is_interpolated_between_its_bounds() -> None:
    counts = {"lat:10": 4.0}  # four requests in (5, 10] ms
    assert percentile_ms(counts, 0.0) == 5.0
    assert percentile_ms(counts, 0.25) == 6.25
    assert percentile_ms(counts, 0.5) == 7.5
    assert percentile_ms(counts, 1.0) == 10.0


def test_the_first_bucket_starts_at_zero() -> None:
    assert percentile_ms({"lat:1": 2.0}, 0.5) == 0.5


def test_the_rank_picks_the_bucket_and_the_place_within_it() -> None:
    counts = {"lat:1": 50.0, "lat:100": 50.0}  # half in (0, 1], half in (50, 100]
    assert percentile_ms(counts, 0.5) == 1.0  # the last request of the first bucket
    assert percentile_ms(counts, 0.75) == 75.0  # halfway through (50, 100]
    assert percentile_ms(counts, 0.99) == pytest.approx(99.0)


def test_empty_buckets_between_the_counted_ones_are_skipped() -> None:
    counts = {"lat:2": 1.0, "lat:20": 0.0, "lat:1000": 1.0}
    assert percentile_ms(counts, 0.5) == 2.0
    assert percentile_ms(counts, 1.0) == 1000.0
    assert percentile_ms(counts, 0.75) == 750.0  # halfway through (500, 1000]


def test_past_the_last_finite_bound_the_percentile_is_twice_that_bound() -> None:
    last_finite = LATENCY_BOUNDS_MS[-2]
    assert percentile_ms({"lat:inf": 3.0}, 0.5) == 2 * last_finite
    counts = {"lat:10": 90.0, "lat:inf": 10.0}
    assert percentile_ms(counts, 0.9) == 10.0
    assert percentile_ms(counts, 0.95) == 2 * last_finite
    assert latency_field(last_finite + 1) == "lat:inf"


def test_counts_added_as_floats_are_read_like_whole_ones() -> None:
    assert percentile_ms({"lat:10": 2.0, "lat:20": 2.0}, 0.75) == 15.0


def test_percentiles_rise_with_q_and_stay_in_the_bucket_of_the_true_quantile() -> None:
    rng = np.random.default_rng(7)
    latencies = list(rng.lognormal(mean=3.0, sigma=1.2, size=2000))  # ~20 ms, long tail
    counts = histogram(latencies)
    bounds = (0.0, *LATENCY_BOUNDS_MS)
    previous = 0.0
    for q in (0.01, 0.1, 0.5, 0.9, 0.95, 0.99):
        estimate = percentile_ms(counts, q)
        assert estimate is not None and estimate >= previous
        previous = estimate
        true = float(np.quantile(latencies, q, method="inverted_cdf"))
        bucket = bisect.bisect_left(LATENCY_BOUNDS_MS, true)  # as latency_field files it
        assert bounds[bucket] <= estimate <= bounds[bucket + 1], (q, true, estimate)


@pytest.mark.parametrize("value", [b"inf", b"nan", b"-3", b"1e400", b"many", b"\xff"])
def test_a_counter_that_is_not_a_count_is_left_out_and_named(value: bytes) -> None:
    """An infinite arrival rate made the autoscaler's policy raise OverflowError (issue 12)."""
    problems: list[str] = []
    bucket = decode_bucket({b"arrivals": value, b"completed": b"4"}, problems)
    assert bucket == {"completed": 4.0}
    assert len(problems) == 1 and "arrivals" in problems[0]


def test_figures_of_a_pool_with_bad_data_name_it_and_say_whether_they_are_a_reading() -> None:
    """Refused reads come back as exceptions from a pipeline run with raise_on_error=False."""
    refused = RuntimeError("WRONGTYPE Operation against a key holding the wrong kind of value")
    query = FiguresQuery(["a:1", "b:1", "c:1"], now=1000.0)
    seconds = len(query.seconds)
    # Per pool: the gauges, the batch plan, then the seconds' buckets.
    results = ([1, 0, 2, b"3", None] + [{b"arrivals": b"inf"}] + [{}] * (seconds - 1)
               + [refused, 0, 0, None, b"not a plan"] + [{}] * seconds
               + [1, 0, 0, None, None] + [refused] + [{}] * (seconds - 1))
    figures = query.parse(results)
    assert (figures["a:1"].readable, figures["a:1"].gauges.live_workers) == (True, 1)
    assert figures["a:1"].rates.arrivals_per_s == 0.0
    assert len(figures["a:1"].problems) == 1
    assert not figures["b:1"].readable and figures["b:1"].problems[0].startswith("workers")
    assert figures["b:1"].plan is None and figures["b:1"].problems[1].startswith("batching")
    assert figures["c:1"].readable and figures["c:1"].problems[0].startswith("stats")
