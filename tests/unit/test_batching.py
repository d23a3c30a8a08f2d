"""The batch size choice from a measured curve, config.yaml's precedence, the plan's record."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelgate.core.batching import (
    TOLERANCE,
    BatchPlan,
    PlanError,
    Source,
    choose,
    plan_for,
    served_rows_per_s,
    sizes_to_measure,
)
from modelgate.core.repository import load_model
from tests import models

# Like the CNN of issue 20 on one thread: flat to 4, slower per row beyond.
FALLING = ((1, 716.0), (2, 720.0), (4, 712.0), (8, 640.0), (16, 560.0), (32, 550.0),
           (64, 548.0))
# Like a small MLP: per-run overhead amortised, so rows/s climbs until the cache fills.
RISING = ((1, 9_000.0), (2, 17_000.0), (4, 30_000.0), (8, 52_000.0), (16, 80_000.0),
          (32, 98_000.0), (64, 101_000.0))


def test_sizes_are_powers_of_two_up_to_the_limit() -> None:
    assert sizes_to_measure(64) == [1, 2, 4, 8, 16, 32, 64]
    assert sizes_to_measure(48) == [1, 2, 4, 8, 16, 32, 48]
    assert sizes_to_measure(1) == [1]
    assert sizes_to_measure(0) == []


def test_a_model_slower_per_row_in_large_batches_keeps_to_its_flat_part() -> None:
    # Served, a run also costs RUN_OVERHEAD_MS (1.5 ms): 1 row a run 345 rows/s, 2 468, 4 562,
    # 8 571, 16 532. The best is 8; 4 is within 5% of it, and shorter.
    assert [round(served_rows_per_s(size, rate)) for size, rate in FALLING[:5]] == \
        [345, 468, 562, 571, 532]
    assert choose(FALLING) == 4


def test_a_flat_curve_gets_runs_that_pay_the_overhead_once_for_several_rows() -> None:
    # ONNX Runtime alone as fast at 1 as at 64 (the bench CNN on an AMD EPYC VM, noise and
    # all): 8 rows a run serve 4.1% below the best (16), 4 rows 11% below, 1 row 41% below.
    flat = ((1, 501.0), (2, 481.0), (4, 514.0), (8, 510.0), (16, 508.0), (32, 495.0),
            (64, 489.0))
    assert choose(flat) == 8
    # The same CNN measured on a noisier minute: 2 rows looked fastest in ONNX Runtime alone,
    # but served, runs of 8 pay the run's cost once for eight calls (at c=32 through binary
    # tensors 11-39% more calls/s than runs of 2, in alternating runs on that VM).
    noisy = ((1, 427.88), (2, 485.10), (4, 418.33), (8, 403.01), (16, 395.22), (32, 389.71),
             (64, 373.94))
    assert choose(noisy) == 8
    # Without the overhead, 1 row a run would have looked as good as any.
    first = flat[0][1]
    assert first >= max(rate for _, rate in flat) * (1 - TOLERANCE)


def test_a_model_faster_in_large_batches_gets_the_largest_size() -> None:
    # 0.33 ms of ORT for 32 rows, 0.63 for 64: the overhead halves per row at 64.
    assert choose(RISING) == 64


def test_the_latency_budget_bounds_the_run_time() -> None:
    # 32 rows at 98k rows/s run 0.33 ms, 16 at 80k 0.2 ms: a 0.5 ms budget allows 0.25 ms a run.
    assert choose(RISING, latency_budget_ms=0.5) == 16
    # A budget no size fits still serves: one row a run.
    assert choose(RISING, latency_budget_ms=0.0001) == 1


def test_an_empty_curve_chooses_nothing() -> None:
    assert choose(()) == 0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return models.write_repository(tmp_path / "models", {
        "free": models.add2_model(), "capped": models.add2_model(),
        "preferring": models.add2_model(), "alone": models.add2_model()}, {
        "capped": "max_batch_size: 16\n",
        "preferring": "preferred_batch_sizes: [2, 8, 32]\n",
        "alone": "batching: false\n"})


def test_config_max_batch_size_wins_over_the_curve(repo: Path) -> None:
    plan = plan_for(load_model(repo / "capped").default, RISING, Source.MEASURED, "h", 1.0)
    assert (plan.max_batch_size, plan.source) == (16, Source.CONFIG)
    assert plan.curve == RISING  # still measured and shown


def test_batching_off_in_config_stays_off(repo: Path) -> None:
    plan = plan_for(load_model(repo / "alone").default, (), "", "", 1.0)
    assert (plan.max_batch_size, plan.source) == (0, Source.CONFIG)


def test_the_tuned_cap_keeps_the_preferred_sizes_that_fit(repo: Path) -> None:
    plan = plan_for(load_model(repo / "preferring").default, FALLING, Source.MEASURED, "h", 1.0)
    assert (plan.max_batch_size, plan.source) == (4, Source.TUNED)
    assert plan.preferred_batch_sizes == (2,)
    plan = plan_for(load_model(repo / "preferring").default, RISING, Source.CACHED, "h", 1.0)
    assert (plan.max_batch_size, plan.preferred_batch_sizes) == (64, (2, 8, 32))
    assert plan.curve_from == Source.CACHED


def test_without_a_curve_the_version_max_batch_size_serves(repo: Path) -> None:
    version = load_model(repo / "free").default
    plan = plan_for(version, (), Source.MEASURED, "h", 1.0)
    assert (plan.max_batch_size, plan.source, plan.curve_from) == (
        version.max_batch_size, Source.DEFAULT, "")


def test_plan_round_trips_and_answers_service_time(repo: Path) -> None:
    version = load_model(repo / "free").default
    plan = plan_for(version, RISING, Source.MEASURED, "Some CPU; 1 intra-op threads", 5.0)
    again = BatchPlan.decode(plan.encode())
    assert again == plan
    assert again.sha256 == version.sha256
    assert again.rows_per_s(40) == 98_000.0  # the largest measured size not above 40
    assert again.service_s(2) == pytest.approx(2 / 101_000.0)  # at the cap's rate
    assert again.body()["curve"][0] == {"batch": 1, "rows_per_s": 9000.0}
    assert "run size cap 64 (tuned)" in again.describe()


@pytest.mark.parametrize("raw", [b"", b"{}", b"[1]", b'{"max_batch_size": -1}',
                                 plan_for.__name__.encode()])
def test_a_malformed_plan_is_a_plan_error(raw: bytes) -> None:
    with pytest.raises(PlanError):
        BatchPlan.decode(raw)
