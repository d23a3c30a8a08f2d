"""The batch size choice from a measured curve, config.yaml's precedence, the plan's record."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelgate.core.batching import BatchPlan, PlanError, Source, choose, plan_for, sizes_to_measure
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


def test_a_model_slower_per_row_in_large_batches_gets_the_smallest_equally_fast_size() -> None:
    # 1, 2 and 4 are within the tolerance of the best (720): the smallest wins.
    assert choose(FALLING) == 1


def test_a_model_faster_in_large_batches_gets_the_size_within_tolerance_of_the_best() -> None:
    assert choose(RISING) == 32  # 98k is within 5% of 101k at 64: half the batch, same speed


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
    assert (plan.max_batch_size, plan.source) == (1, Source.TUNED)
    assert plan.preferred_batch_sizes == ()
    plan = plan_for(load_model(repo / "preferring").default, RISING, Source.CACHED, "h", 1.0)
    assert (plan.max_batch_size, plan.preferred_batch_sizes) == (32, (2, 8, 32))
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
    assert again.service_s(2) == pytest.approx(2 / 98_000.0)
    assert again.body()["curve"][0] == {"batch": 1, "rows_per_s": 9000.0}
    assert "run size cap 32 (tuned)" in again.describe()


@pytest.mark.parametrize("raw", [b"", b"{}", b"[1]", b'{"max_batch_size": -1}',
                                 plan_for.__name__.encode()])
def test_a_malformed_plan_is_a_plan_error(raw: bytes) -> None:
    with pytest.raises(PlanError):
        BatchPlan.decode(raw)
