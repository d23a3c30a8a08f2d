"""Calibration of the drift detectors with a fixed seed: false alarms on clean replays and the
detection delay of a +0.5 sigma mean shift, in sampled rows (chunks of 16 rows, as workers
send them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelgate.core.drift import Batch, FeatureState, Thresholds, fold, siegmund_arl
from tests.procs import REPO_ROOT

pytestmark = pytest.mark.slow  # each replays up to a million rows

FEATURES = 20
BINS = 10
CHUNK = 16
rng = np.random.default_rng(20261125)
EDGES = np.quantile(rng.standard_normal(100_000), np.linspace(0, 1, BINS + 1)[1:-1])
FRACTIONS = np.diff(np.concatenate([[0.0], np.searchsorted(
    np.sort(rng.standard_normal(100_000)), EDGES) / 100_000, [1.0]]))


def fresh_states(thresholds: Thresholds) -> list[FeatureState]:
    return [FeatureState(FRACTIONS.copy(), thresholds.chi2_for(BINS)) for _ in range(FEATURES)]


def bin_counts(x: np.ndarray) -> np.ndarray:
    """Counts per bin for each feature of a (rows, features) chunk -> (features, bins)."""
    idx = np.searchsorted(EDGES, x, side="right")  # 0..BINS-1
    counts = np.zeros((x.shape[1], BINS))
    for f in range(x.shape[1]):
        counts[f] = np.bincount(idx[:, f], minlength=BINS)
    return counts


def replay(states: list[FeatureState], thresholds: Thresholds, x: np.ndarray) -> list:  # type: ignore[type-arg]
    events = []
    for start in range(0, len(x), CHUNK):
        chunk = x[start:start + CHUNK]
        batch = Batch(chunk.sum(axis=0)[None, :], np.array([len(chunk)]), list(bin_counts(chunk)),
                      chunk.sum(axis=0), (chunk * chunk).sum(axis=0))
        events += fold(states, thresholds, batch)
    return events


def test_clean_replays_stay_within_one_false_alarm_per_100k_rows() -> None:
    thresholds = Thresholds.for_features(FEATURES, BINS)
    rows = 1_000_000
    states = fresh_states(thresholds)
    alarms = 0
    generator = np.random.default_rng(1)
    for _ in range(rows // 50_000):
        alarms += sum(1 for e in replay(states, thresholds, generator.standard_normal(
            (50_000, FEATURES))) if e.statistic != "cleared")
    rate_per_100k = alarms / rows * 100_000
    state_bytes = states[0].state_bytes()
    figures = {"clean_rows": rows, "features": FEATURES, "false_alarms": alarms,
               "false_alarms_per_100k_rows": rate_per_100k, "state_bytes_per_feature": state_bytes,
               "cusum_h": round(thresholds.cusum_h, 2), "chi2_threshold": round(thresholds.chi2, 2),
               "window_rows": thresholds.window_rows}
    print("drift calibration (clean):", json.dumps(figures))
    _record("clean", figures)
    assert rate_per_100k <= 1.0
    assert state_bytes <= 16 * 1024


def test_half_sigma_shift_is_found_within_150_rows_median_300_p90() -> None:
    thresholds = Thresholds.for_features(FEATURES, BINS)
    delays = []
    generator = np.random.default_rng(2)
    for _ in range(200):
        states = fresh_states(thresholds)
        replay(states, thresholds, generator.standard_normal((1_000, FEATURES)))  # warm, clean
        shifted = generator.standard_normal((2_000, FEATURES))
        shifted[:, 3] += 0.5
        before = states[3].rows
        found = [e for e in replay(states, thresholds, shifted)
                 if e.feature == 3 and e.statistic != "cleared"]
        delays.append(found[0].rows_seen - before if found else 10_000)
    median, p90 = float(np.median(delays)), float(np.percentile(delays, 90))
    figures = {"shift_sigma": 0.5, "trials": len(delays), "median_delay_rows": median,
               "p90_delay_rows": p90, "missed": sum(d >= 10_000 for d in delays),
               "siegmund_expected_rows": round(siegmund_arl(thresholds.cusum_h, 0.25, 0.5))}
    print("drift calibration (shift):", json.dumps(figures))
    _record("shift", figures)
    assert median <= 150 and p90 <= 300


def _record(name: str, figures: dict) -> None:  # type: ignore[type-arg]
    path = REPO_ROOT / "test-artifacts" / "drift-calibration.json"
    path.parent.mkdir(exist_ok=True)
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[name] = figures
    path.write_text(json.dumps(existing, indent=2))
