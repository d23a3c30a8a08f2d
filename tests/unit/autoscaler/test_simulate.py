"""The simulator: the shipped traces through the real policy, against static allocations."""

from __future__ import annotations

import numpy as np
import pytest

from modelgate.autoscaler.policy import PolicyConfig
from modelgate.autoscaler.simulate import TRACES_DIR, SimConfig, best_static, read_trace, simulate

POLICY = PolicyConfig(min_workers=1, max_workers=16, slo_p95_ms=250, scale_down_delay_s=30)


@pytest.mark.slow
@pytest.mark.parametrize("trace", ["step", "spike"])
def test_shipped_traces_meet_the_goals(trace: str) -> None:
    """>= 99% of requests within SLO, and <= 1.25x the best static allocation's cost."""
    rates = read_trace(TRACES_DIR / f"{trace}.csv")
    sim = SimConfig()
    dynamic = simulate(rates, POLICY, None, sim, "autoscaler")
    static = best_static(rates, POLICY, sim, max(0.99, dynamic.within_slo))
    print(f"{trace}: within SLO {dynamic.within_slo:.2%}, worker-s {dynamic.worker_seconds:.0f} "
          f"vs {static.label} {static.worker_seconds:.0f} "
          f"({dynamic.worker_seconds / static.worker_seconds:.2f}x)")
    assert dynamic.within_slo >= 0.99
    assert dynamic.worker_seconds <= 1.25 * static.worker_seconds


def test_steady_load_settles_without_further_scale_changes() -> None:
    rates = read_trace(TRACES_DIR / "steady.csv")
    result = simulate(rates, POLICY, None, SimConfig(), "autoscaler")
    workers = result.timeline.workers
    settled = 120
    assert len(set(workers[settled:len(rates)])) == 1, sorted(set(workers[settled:]))


def test_an_underprovisioned_static_pool_misses_the_slo() -> None:
    """The queueing model is not trivially generous: 1 worker cannot serve 100 req/s."""
    rates = np.full(120, 100.0)
    result = simulate(rates, None, 1, SimConfig(), "static 1")
    assert result.within_slo < 0.5


def test_a_trace_needs_its_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.csv"
    bad.write_text("t,r\n1,2\n")
    with pytest.raises(ValueError, match="time_s and rate_rps"):
        read_trace(bad)
