"""The dashboard's figures from raw data: pure functions, no Redis."""

from __future__ import annotations

import pytest

from modelgate.core.stats import rates
from modelgate.core.store.scaling import ScalingEvent
from modelgate.gateway.dashboard import series
from modelgate.gateway.dashboard.history import PoolHistory, Sample


def event(second: float, current: int, desired: int, *, capped: bool = False,
          cost: float | None = 1.0, reason: str = "r") -> series.Event:
    return series.Event(time=second, pool="m:1", current=current, desired=desired, live=current,
                        starting=0, backlog=current * 10, cost_per_hour=cost, reason=reason,
                        panic=False, capped=capped)


def test_latency_splits_queue_wait_per_request_and_compute_per_run() -> None:
    # Two runs: 4 requests in all, 10 ms of compute; queue waits 1, 3, 5, 7 ms.
    bucket = {"completed": 4.0, "runs": 2.0, "compute_ms": 10.0, "queue_ms": 16.0,
              "lat:5": 2.0, "lat:10": 2.0}
    figures = series.latency(bucket)
    assert figures["queue_ms"] == 4.0  # 16 ms over the 4 timed requests
    assert figures["compute_ms"] == 5.0  # 10 ms over 2 runs: what each request sat through
    assert figures["service_ms"] == 2.5  # busy time per request
    assert figures["p50_ms"] == 5.0  # (2, 5] holds ranks 1-2: the 2nd is at its top
    assert figures["p95_ms"] == 9.5


def test_latency_of_an_empty_second_is_unknown_not_zero() -> None:
    assert series.latency({}) == {"p50_ms": None, "p95_ms": None, "p99_ms": None,
                                  "queue_ms": None, "compute_ms": None, "service_ms": None}


def test_recent_figures_average_rates_over_their_window() -> None:
    buckets = [{"completed": 100.0}] * 10 + [{"completed": 3.0, "arrivals": 5.0}] * 5
    figures = series.recent_figures(rates(buckets))
    assert figures["completed_per_s"] == 3.0  # over the last RATE_WINDOW_S seconds only
    assert figures["arrivals_per_s"] == 5.0
    assert figures["rejected_per_s"] == 0.0


def test_gauges_prefer_the_gateway_samples_and_fill_from_events() -> None:
    samples = {12: Sample(12, backlog=7, live=2, starting=1, desired=None)}
    events = [event(10.2, 1, 2), event(11.9, 2, 2), event(12.5, 3, 3)]
    gauges = series.gauge_series(10, 13, samples, events)
    assert gauges["backlog"] == [10, 20, 7, 7]  # 13 has nothing: carried from 12
    assert gauges["live"] == [1, 2, 2, 2]
    assert gauges["desired"] == [2, 2, 3, 3]  # no desired in the sample: the event's
    assert gauges["starting"] == [0, 0, 1, 1]


def test_gauges_break_after_a_long_gap() -> None:
    gauges = series.gauge_series(0, 9, {0: Sample(0, 1, 1, 0, 1)}, [])
    assert gauges["live"] == [1, 1, 1, 1, None, None, None, None, None, None]


def test_decisions_are_changes_and_the_start_of_a_budget_cap() -> None:
    events = [event(1, 1, 1), event(2, 1, 2, reason="up"), event(3, 2, 2),
              event(4, 2, 2, capped=True, reason="capped"), event(5, 2, 2, capped=True),
              event(6, 2, 1, reason="down")]
    marked = series.decisions(events, limit=10)
    assert [d["reason"] for d in marked] == ["up", "capped", "down"]
    assert series.decisions(events, limit=1)[0]["reason"] == "down"


def test_total_cost_sums_pools_where_known() -> None:
    assert series.total_cost_series([[1.0, None, None], [2.0, 0.5, None]]) == [3.0, 0.5, None]


@pytest.mark.parametrize("fields", [{}, {b"time": b"x", b"pool": b"p", b"current": b"1",
                                         b"desired": b"1"}])
def test_malformed_events_are_skipped(fields: dict[bytes, bytes]) -> None:
    assert ScalingEvent.parse(fields) is None


def test_history_keeps_the_latest_sample_per_second_within_its_window() -> None:
    history = PoolHistory(window_s=3)
    for second, live in [(1, 1), (1, 2), (2, 2), (3, 3), (4, 4), (5, 5), (4, 9)]:
        history.record("p", Sample(second, 0, live, 0, None))
    kept = history.between("p", 0, 10)
    assert sorted(kept) == [2, 3, 4, 5]  # window + 1 samples; the late 4 was dropped
    assert kept[4].live == 4
    assert history.between("other", 0, 10) == {}
