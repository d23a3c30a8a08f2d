"""Agreement between two versions on the same call: the serving version's answer and a
candidate's answer to a shadowed copy of it, row by row, by what the prediction is
(``modelgate.core.prediction``): for classifiers whether the top-1 class matches, and for every
model |delta| of its prediction (the largest difference of the class probabilities, or of the
scores)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modelgate.core.prediction import PredictionError, PredictionSpec, predict


def compare(spec: PredictionSpec, serving: Mapping[str, np.ndarray],
            candidate: Mapping[str, np.ndarray]) -> tuple[int, int | None, list[float]]:
    """(rows, rows whose class matched (None for a regressor), |delta| per row).

    Raises PredictionError when an answer lacks the prediction or the two disagree in rows.
    """
    first, second = predict(spec, serving), predict(spec, candidate)
    rows = first.rows
    if second.rows != rows:
        raise PredictionError(f"the answers have {rows} and {second.rows} rows")
    if spec.task == "regression":
        assert first.scores is not None and second.scores is not None
        deltas = np.abs(first.scores - second.scores)
        return rows, None, [float(d) for d in deltas]
    assert first.classes is not None and second.classes is not None
    matches = int(np.sum(first.classes == second.classes))
    if first.probabilities is not None and second.probabilities is not None and \
            first.probabilities.shape == second.probabilities.shape:
        deltas = np.abs(first.probabilities - second.probabilities).max(axis=1)
    else:
        deltas = (first.classes != second.classes).astype(float)
    return rows, matches, [float(d) for d in deltas]
