"""Sampling served rows for drift detection, off the reply path, with flat memory.

After a run is answered, the worker folds a share of its rows (default: all, up to a rate cap)
into a buffer bounded by that cap; once a second the heartbeat thread turns the buffer into one
compact batch -- CUSUM sums per 16-row chunk, counts per reference bin, raw sums -- and appends
it to the pool's ``mg:{pool}:drift`` stream (capped), where gateways run the detectors. No
per-row data leaves the worker and nothing grows with traffic.

Rows with a NaN or infinite value in any profiled feature are not sampled, as the profile
builder (``modelgate.core.profile``) leaves them out of the reference: one such call would
otherwise put an infinite sum into CUSUM and a count into the last bin, an alarm about the
caller rather than the distribution.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from modelgate.core import wire
from modelgate.core.profile import Profile, feature_matrix
from modelgate.core.store import drift as drift_store

CHUNK_ROWS = 16


class DriftSampler:
    def __init__(self, pool: str, profile: Profile, max_rows_per_s: int = 1000,
                 share: float = 1.0, seed: int = 0) -> None:
        self.pool = pool
        self.profile = profile
        self.max_rows_per_s = max_rows_per_s
        self.share = share
        self.rng = np.random.default_rng(seed)
        self.edges = [np.asarray(f.edges) for f in profile.features]
        self.means = np.array([f.mean for f in profile.features])
        self.stds = np.array([f.std for f in profile.features])
        self._lock = threading.Lock()
        self._rows: list[np.ndarray] = []
        self._labels: list[list[np.ndarray]] = []
        self._buffered = 0
        self.sampled = 0

    def observe(self, inputs: dict[str, np.ndarray], outputs: dict[str, wire.Tensor]) -> None:
        """Fold one answered request's rows in (what fits under the rate cap)."""
        if self._buffered >= self.max_rows_per_s:
            return
        plain: dict[str, Any] = {n: t.data for n, t in outputs.items() if t.datatype != wire.JSON}
        matrix = feature_matrix(self.profile, inputs, plain)
        if matrix is None and self.profile.features:
            return
        labels = [plain.get(lab.tensor) for lab in self.profile.labels]
        arrays = [v for v in labels if isinstance(v, np.ndarray)]
        if len(arrays) < len(labels):
            return
        if matrix is None and not arrays:
            return  # a profile with neither features nor labels: nothing to sample
        rows = matrix.shape[0] if matrix is not None else len(arrays[0])
        keep = np.arange(rows) if matrix is None else np.flatnonzero(
            np.isfinite(matrix).all(axis=1))
        if self.share < 1.0:
            keep = keep[self.rng.random(keep.size) < self.share]
        keep = keep[: self.max_rows_per_s - self._buffered]
        if keep.size == 0:
            return
        with self._lock:
            if matrix is not None:
                self._rows.append(matrix[keep])
            self._labels.append([np.asarray(v)[keep] for v in labels])
            self._buffered += int(keep.size)

    def _batch(self) -> drift_store.DriftBatch | None:
        with self._lock:
            rows, labels, count = self._rows, self._labels, self._buffered
            self._rows, self._labels, self._buffered = [], [], 0
        if count == 0:
            return None
        self.sampled += count
        features = len(self.profile.features)
        matrix = np.concatenate(rows) if rows else np.zeros((count, 0))
        chunk_rows = [min(CHUNK_ROWS, count - s) for s in range(0, count, CHUNK_ROWS)]
        z = (matrix - self.means) / self.stds if features else np.zeros((count, 0))
        z_sums = np.add.reduceat(z, np.arange(0, count, CHUNK_ROWS), axis=0) if features \
            else np.zeros((len(chunk_rows), 0))
        bins = [np.bincount(np.searchsorted(edges, matrix[:, f], side="right"),
                            minlength=len(edges) + 1).tolist()
                for f, edges in enumerate(self.edges)]
        sums = matrix.sum(axis=0).tolist() if features else []
        squares = (matrix * matrix).sum(axis=0).tolist() if features else []
        for j, label in enumerate(self.profile.labels):
            values = np.concatenate([part[j] for part in labels])
            index = {c: i for i, c in enumerate(label.classes)}
            counts = [0] * (len(label.classes) + 1)  # the last bin: classes never seen
            for value, n in zip(*np.unique(values, return_counts=True), strict=True):
                counts[index.get(int(value), len(label.classes))] += int(n)
            bins.append(counts)
            sums.append(0.0)
            squares.append(0.0)
        return drift_store.DriftBatch(
            time.time(), tuple(chunk_rows), np.asarray(z_sums, dtype="<f8"),
            tuple(tuple(b) for b in bins), tuple(sums), tuple(squares))

    def flush(self, pipe: Any) -> bool:
        """Queue this second's batch on a Redis pipeline; False if nothing was sampled."""
        batch = self._batch()
        if batch is None:
            return False
        pipe.xadd(drift_store.batches(self.pool), {"batch": batch.encode()},
                  maxlen=drift_store.BATCHES_MAXLEN, approximate=True)
        return True
