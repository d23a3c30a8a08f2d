"""The quality alarm's statistic, stepped row by row (pure; no Redis), and the figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelgate.core.quality import (
    AlarmConfig,
    AlarmState,
    Outcome,
    Totals,
    cusum_step,
    figures,
    threshold,
)

CONFIG = AlarmConfig()
# The stated detection bound: a 3-class model at 95% that turns wrong on one class (accuracy
# to ~63%) alarms within this many labelled rows (expected ~85, h / 0.22).
DETECTION_ROWS = 200


def run(correct: np.ndarray, reference: float | None,
        state: AlarmState | None = None) -> tuple[AlarmState, int | None]:
    """The state after every row, and the row (1-based) at which it first alerted."""
    state = state or AlarmState()
    first = None
    for i, ok in enumerate(correct.tolist()):
        state = cusum_step(state, bool(ok), reference, CONFIG)
        if state.alert and first is None:
            first = i + 1
    return state, first


def test_threshold_is_the_stated_false_alarm_bound() -> None:
    assert CONFIG.h == pytest.approx(threshold(0.01, 1_000_000), abs=0.01)
    assert 1_000_000 * math.exp(-CONFIG.h) <= 0.0101


@pytest.mark.parametrize("reference", [0.95, None], ids=["lineage", "baseline"])
def test_no_alarm_on_200000_clean_rows(reference: float | None) -> None:
    correct = np.random.default_rng(7).random(200_000) < 0.95
    state, first = run(correct, reference)
    assert first is None
    assert state.peak < CONFIG.h
    assert state.n == 200_000 - (0 if reference is not None else CONFIG.baseline_rows)


@pytest.mark.parametrize("seed", range(5))
def test_alarm_within_the_stated_rows_once_one_class_is_always_wrong(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 3, 20_000)
    right = rng.random(20_000) < 0.95
    clean, _ = run(right[:10_000], 0.95)
    assert not clean.alert
    # From row 10,000 the model is wrong on every row of class 2.
    after = right[10_000:] & (classes[10_000:] != 2)
    state, first = run(after, 0.95, clean)
    assert first is not None and first <= DETECTION_ROWS, first
    assert state.alert


def test_never_alarms_on_the_first_labels() -> None:
    state, first = run(np.zeros(1000, bool), 0.95)
    assert first == CONFIG.min_labels
    assert state.reference == "lineage"


def test_alarm_clears_once_quality_recovers() -> None:
    broken, _ = run(np.zeros(300, bool), 0.95)
    assert broken.alert
    healed, _ = run(np.ones(2000, bool), 0.95, broken)
    assert not healed.alert and healed.s == 0.0


def test_figures_of_classifier_outcomes() -> None:
    outcomes = [Outcome("1", "1", 2.0, True, 0.9, 0.9), Outcome("0", "1", 4.0, False, 0.6, 0.4),
                Outcome("0", "0", 6.0, True, 0.95, 0.95), Outcome("1", "1", 1.0, True, 0.8, 0.8)]
    found = figures(Totals.of(outcomes))
    assert found["rows"] == 4 and found["accuracy"] == 0.75
    assert found["log_loss"] == pytest.approx(
        -np.mean(np.log([0.9, 0.4, 0.95, 0.8])), abs=1e-6)
    # Bins: 0.6 (wrong) | 0.8 (right) | 0.9 and 0.95 (right): |0-0.6| + |1-0.8| + |2-1.85|.
    assert found["ece"] == pytest.approx((0.6 + 0.2 + 0.15) / 4, abs=1e-6)
    assert found["per_class"] == {"0": {"precision": 1.0, "recall": 0.5, "support": 2},
                                  "1": {"precision": 0.666667,
                                        "recall": 1.0, "support": 2}}


def test_figures_of_regressor_outcomes() -> None:
    found = figures(Totals.of([Outcome(1.0, 2.0, 0.0), Outcome(3.0, 0.0, 0.0)]))
    assert found == {"rows": 2, "mae": 2.0, "rmse": round(math.sqrt(5.0), 6)}
