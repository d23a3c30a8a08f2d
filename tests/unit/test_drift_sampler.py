"""The worker's drift sampler: what it folds in, what it flushes, and what it refuses."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from modelgate.core import drift, wire
from modelgate.core.profile import FeatureProfile, LabelProfile, Profile
from modelgate.core.store import drift as drift_store
from modelgate.worker.drift_sampler import CHUNK_ROWS, DriftSampler


class RecordingPipe:
    """Collects what would go to Redis (the sampler only queues XADDs on a pipeline)."""

    def __init__(self) -> None:
        self.added: list[dict[str, Any]] = []

    def xadd(self, key: str, fields: dict[str, bytes], **_: Any) -> None:
        self.added.append({"key": key, **msgpack.unpackb(fields["batch"])})


def feature(column: int) -> FeatureProfile:
    return FeatureProfile(name=f"input[{column}]", kind="input", tensor="input", column=column,
                          reduce=None, edges=(-1.0, 0.0, 1.0), fractions=(0.25,) * 4,
                          mean=0.0, std=1.0)


def outputs(labels: np.ndarray) -> dict[str, wire.Tensor]:
    return {"label": wire.tensor(labels)}


def test_flush_sends_chunk_sums_bin_counts_and_label_counts() -> None:
    profile = Profile("m", "1", 100, (feature(0), feature(1)),
                      (LabelProfile("label", "label", (0, 1), (0.5, 0.5)),))
    sampler = DriftSampler("m:1", profile, max_rows_per_s=1000)
    x = np.array([[-2.0, 0.5]] * 20 + [[0.5, 2.0]] * 20, dtype=np.float32)
    sampler.observe({"input": x}, outputs(np.array([0] * 30 + [1] * 9 + [7])))
    pipe = RecordingPipe()
    assert sampler.flush(pipe) is True
    (batch,) = pipe.added
    assert batch["key"] == drift_store.batches("m:1")
    assert batch["rows"] == [CHUNK_ROWS, CHUNK_ROWS, 40 - 2 * CHUNK_ROWS]
    z = np.frombuffer(batch["z"], dtype="<f8").reshape(3, 2)
    np.testing.assert_allclose(z.sum(axis=0), x.sum(axis=0))
    assert batch["bins"][0] == [20, 0, 20, 0] and batch["bins"][1] == [0, 0, 20, 20]
    assert batch["bins"][2] == [30, 9, 1]  # classes 0, 1, and one never seen (7)
    assert sampler.flush(RecordingPipe()) is False  # nothing new since


def test_rate_cap_bounds_what_is_buffered() -> None:
    sampler = DriftSampler("m:1", Profile("m", "1", 1, (feature(0),)), max_rows_per_s=50)
    for _ in range(10):
        sampler.observe({"input": np.zeros((20, 1), dtype=np.float32)}, {})
    pipe = RecordingPipe()
    sampler.flush(pipe)
    assert sum(pipe.added[0]["rows"]) == 50


def test_a_profile_with_nothing_to_sample_does_not_fail() -> None:
    sampler = DriftSampler("m:1", Profile("m", "1", 1, ()))
    sampler.observe({"input": np.zeros((3, 1), dtype=np.float32)}, {})
    assert sampler.flush(RecordingPipe()) is False


def test_requests_missing_a_profiled_tensor_are_skipped() -> None:
    sampler = DriftSampler("m:1", Profile("m", "1", 1, (feature(0),)))
    sampler.observe({"other": np.zeros((3, 1), dtype=np.float32)}, {})
    assert sampler.flush(RecordingPipe()) is False


def _batch_of(added: dict[str, Any], features: int) -> drift.Batch:
    """A flushed batch as the gateway's detectors take it (no labels here)."""
    z = np.frombuffer(added["z"], dtype="<f8").reshape(len(added["rows"]), features)
    return drift.Batch(z, np.asarray(added["rows"], dtype=float),
                       [np.asarray(b, dtype=float) for b in added["bins"]],
                       np.asarray(added["sums"], dtype=float),
                       np.asarray(added["squares"], dtype=float))


def test_rows_with_nan_or_inf_are_dropped_as_the_profile_builder_drops_them() -> None:
    """A call carrying NaN or Inf must not move the detectors: its rows are not sampled."""
    profile = Profile("m", "1", 100, (feature(0), feature(1)))
    clean = np.random.default_rng(0).standard_normal((40, 2)).astype(np.float32)
    dirty = clean.copy()
    dirty[[3, 17, 29], [0, 1, 0]] = [np.nan, np.inf, -np.inf]
    sampled = {}
    for name, x in (("clean", np.delete(clean, [3, 17, 29], axis=0)), ("dirty", dirty)):
        sampler = DriftSampler("m:1", profile, max_rows_per_s=1000)
        sampler.observe({"input": x}, {})
        pipe = RecordingPipe()
        assert sampler.flush(pipe) is True
        sampled[name] = pipe.added[0]
    assert sum(sampled["dirty"]["rows"]) == 37
    for field in ("rows", "bins", "sums", "squares", "z"):
        assert sampled["dirty"][field] == sampled["clean"][field], field


def test_nan_and_inf_rows_never_raise_a_drift_alert() -> None:
    """End to end through the detectors: in-distribution rows with a share of NaN and Inf rows
    (every one of them far outside the reference) stay quiet and keep finite statistics."""
    edges = tuple(float(e) for e in np.quantile(np.random.default_rng(1).standard_normal(
        100_000), np.linspace(0, 1, 11)[1:-1]))
    columns = tuple(FeatureProfile(f"input[{j}]", "input", "input", j, None, edges,
                                   (0.1,) * 10, 0.0, 1.0) for j in range(2))
    profile = Profile("m", "1", 100_000, columns)
    thresholds = drift.Thresholds.for_features(2, 10)
    states = [drift.FeatureState(np.full(10, 0.1), thresholds.chi2) for _ in range(2)]
    sampler = DriftSampler("m:1", profile, max_rows_per_s=100_000)
    rng = np.random.default_rng(2)
    events = []
    for _ in range(20):
        x = rng.standard_normal((200, 2)).astype(np.float32)
        x[rng.random(200) < 0.2, 0] = np.nan
        x[rng.random(200) < 0.2, 1] = np.inf
        x[rng.random(200) < 0.05, 1] = -np.inf
        sampler.observe({"input": x}, {})
        pipe = RecordingPipe()
        sampler.flush(pipe)
        events += drift.fold(states, thresholds, _batch_of(pipe.added[0], 2))
    assert events == []
    for state in states:
        assert np.isfinite([state.s_pos, state.s_neg, state.last_chi2]).all()
        assert state.last_mean is not None and np.isfinite(state.last_mean)
        assert drift.score(state, thresholds) < 1.0
