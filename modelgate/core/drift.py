"""Streaming drift detection with a stated false-alarm rate: pure functions and small state.

Each feature (a column of a model input or output) is compared with its reference profile by
two detectors that see the same sampled rows:

* **CUSUM** on standardised values ``z = (x - mean_ref) / std_ref``, two-sided, fed in chunks:
  ``S+ = max(0, S+ + sum(z) - k * n)`` and ``S- = max(0, S- - sum(z) - k * n)``. It alarms when
  either exceeds ``h``. ``k = 0.25`` is tuned to a half-sigma mean shift (the shift it must find
  fastest); ``h`` comes from Siegmund's approximation of the in-control run length so that,
  over all features, CUSUM false alarms stay within its share of the budget.
* **Chi-square over reference quantile bins**, on non-overlapping windows of ``window_rows``
  rows (at least 500): it catches changes of shape and spread that leave the mean alone. Its
  threshold is the chi-square quantile for its share of the budget (Wilson-Hilferty
  approximation, with a normal quantile from the standard library), Bonferroni-split across
  features. A fixed PSI band (the usual 0.1/0.25) is not used because its false-alarm rate
  depends on the window size: it alarms constantly on small windows.

The budget is ``false_alarms_per_row`` summed over all features (default 1 per 1,000,000 rows,
ten times inside the 1 per 100,000 the calibration test asserts), split evenly between the two
detectors. An alert raised by either detector clears once a full window passes the chi-square
test with the CUSUM quiet: the distribution has returned.

State per feature is a handful of floats plus one count per bin (see ``state_bytes``): memory
does not grow with traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

LABEL_OTHER_FRACTION = 1e-6  # reference share of "a class never seen": seeing one is drift
CUSUM_K = 0.25  # reference value: half the 0.5-sigma shift to detect fastest
MIN_WINDOW_ROWS = 500


@dataclass(frozen=True, slots=True)
class Thresholds:
    cusum_h: float
    chi2: float  # for the typical bin count; see chi2_for
    window_rows: int
    false_alarms_per_row: float
    features: int = 1

    def chi2_for(self, bins: int) -> float:
        """The chi-square threshold for a feature with ``bins`` bins (labels vary)."""
        alpha = self.false_alarms_per_row / 2.0 * self.window_rows / self.features
        return chi2_quantile(1.0 - alpha, max(bins - 1, 1))

    @classmethod
    def for_features(cls, features: int, bins: int, false_alarms_per_row: float = 1e-6,
                     window_rows: int = MIN_WINDOW_ROWS) -> Thresholds:
        """Thresholds that keep false alarms over ``features`` within the budget."""
        features = max(1, features)
        per_detector = false_alarms_per_row / 2.0
        # CUSUM: two one-sided runs per feature share the detector's budget.
        cusum_arl_rows = 2 * features / per_detector
        # Chi-square: one test per window per feature.
        alpha = per_detector * window_rows / features
        return cls(cusum_h=cusum_h_for_arl(cusum_arl_rows, CUSUM_K),
                   chi2=chi2_quantile(1.0 - alpha, max(bins - 1, 1)),
                   window_rows=max(window_rows, MIN_WINDOW_ROWS),
                   false_alarms_per_row=false_alarms_per_row, features=features)


def siegmund_arl(h: float, k: float, drift: float = 0.0) -> float:
    """Average run length of a one-sided CUSUM on N(drift, 1) data (Siegmund, 1985)."""
    b = h + 1.166
    delta = drift - k
    if abs(delta) < 1e-9:
        return b * b
    return (math.exp(-2 * delta * b) + 2 * delta * b - 1) / (2 * delta * delta)


def cusum_h_for_arl(arl_rows: float, k: float) -> float:
    """The smallest h whose in-control run length reaches ``arl_rows`` (bisection)."""
    low, high = 0.0, 200.0
    for _ in range(100):
        mid = (low + high) / 2
        if siegmund_arl(mid, k) < arl_rows:
            low = mid
        else:
            high = mid
    return high


def chi2_quantile(p: float, dof: int) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (good to ~1% here)."""
    z = NormalDist().inv_cdf(p)
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + z * math.sqrt(c)) ** 3


def chi2_statistic(counts: np.ndarray, reference_fractions: np.ndarray) -> float:
    n = float(counts.sum())
    if n <= 0:
        return 0.0
    expected = n * reference_fractions
    mask = expected > 0
    return float((((counts - expected) ** 2)[mask] / expected[mask]).sum())


@dataclass(slots=True)
class FeatureState:
    """Detector state of one feature; the reference fixes its bins.

    Labels (class distributions) have ``cusum=False``: only the windowed test applies.
    """

    reference_fractions: np.ndarray
    chi2_threshold: float
    cusum: bool = True
    s_pos: float = 0.0
    s_neg: float = 0.0
    window_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    window_n: int = 0
    window_sum: float = 0.0  # raw values, for the current mean and std
    window_sq: float = 0.0
    last_counts: np.ndarray | None = None  # the last full window, for "current" summaries
    last_mean: float | None = None
    last_std: float | None = None
    last_chi2: float = 0.0
    alert: bool = False
    alert_since: float | None = None
    cusum_fired_in_window: bool = False
    rows: int = 0

    def __post_init__(self) -> None:
        if self.window_counts.size == 0:
            self.window_counts = np.zeros(len(self.reference_fractions))

    def state_bytes(self) -> int:
        """Bytes this feature's state holds: bins twice (current and last window) plus scalars."""
        return int(self.window_counts.nbytes * 2 + self.reference_fractions.nbytes + 8 * 12)


@dataclass(frozen=True, slots=True)
class DriftEvent:
    feature: int
    statistic: str  # "cusum", "chi2" or "cleared"
    value: float
    threshold: float
    window_rows: int
    rows_seen: int  # rows of this feature folded in so far (for detection delays)
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class Batch:
    """Sampled rows of one flush: CUSUM chunk sums plus the flush's bin counts and moments.

    ``z_sums`` is (chunks, features) of standardised sums and ``chunk_rows`` the rows per
    chunk; ``bin_counts[f]`` counts feature f's rows per reference bin; ``sums`` and
    ``squares`` are raw-value sums per feature (for current mean and std).
    """

    z_sums: np.ndarray
    chunk_rows: np.ndarray
    bin_counts: list[np.ndarray]
    sums: np.ndarray
    squares: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.chunk_rows.sum())


def fold(states: list[FeatureState], thresholds: Thresholds, batch: Batch,
         now: float = 0.0) -> list[DriftEvent]:
    """Fold one batch into every feature's detectors; returns alerts raised and cleared."""
    events: list[DriftEvent] = []
    n = batch.rows
    if n <= 0:
        return events
    h = thresholds.cusum_h
    for f, state in enumerate(states):
        if state.cusum:
            for z_sum, rows in zip(batch.z_sums[:, f], batch.chunk_rows, strict=True):
                state.rows += int(rows)
                slack = CUSUM_K * float(rows)
                state.s_pos = max(0.0, state.s_pos + float(z_sum) - slack)
                state.s_neg = max(0.0, state.s_neg - float(z_sum) - slack)
                if state.s_pos > h or state.s_neg > h:
                    value = max(state.s_pos, state.s_neg)
                    state.s_pos = state.s_neg = 0.0
                    state.cusum_fired_in_window = True
                    if not state.alert:
                        state.alert, state.alert_since = True, now
                        events.append(DriftEvent(f, "cusum", value, h, state.window_n,
                                                 state.rows, now))
        else:
            state.rows += n
        state.window_counts += batch.bin_counts[f]
        state.window_n += n
        state.window_sum += float(batch.sums[f])
        state.window_sq += float(batch.squares[f])
        if state.window_n >= thresholds.window_rows:
            events += _close_window(f, state, now)
    return events


def _close_window(f: int, state: FeatureState, now: float) -> list[DriftEvent]:
    events = []
    chi2 = chi2_statistic(state.window_counts, state.reference_fractions)
    state.last_chi2 = chi2
    if chi2 > state.chi2_threshold:
        if not state.alert:
            state.alert, state.alert_since = True, now
            events.append(DriftEvent(f, "chi2", chi2, state.chi2_threshold, state.window_n,
                                     state.rows, now))
    elif state.alert and not state.cusum_fired_in_window:
        state.alert, state.alert_since = False, None
        events.append(DriftEvent(f, "cleared", chi2, state.chi2_threshold, state.window_n,
                                 state.rows, now))
    mean = state.window_sum / state.window_n
    state.last_mean = mean
    state.last_std = max(state.window_sq / state.window_n - mean * mean, 0.0) ** 0.5
    state.last_counts = state.window_counts.copy()
    state.window_counts[:] = 0
    state.window_n = 0
    state.window_sum = state.window_sq = 0.0
    state.cusum_fired_in_window = False
    return events


def score(state: FeatureState, thresholds: Thresholds) -> float:
    """How close the feature is to alarming: 1.0 is the threshold of either detector."""
    cusum = max(state.s_pos, state.s_neg) / thresholds.cusum_h if state.cusum else 0.0
    return max(cusum, state.last_chi2 / state.chi2_threshold)
