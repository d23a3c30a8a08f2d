"""What "the prediction" of a model is: one definition for agreement between versions,
quality against ground truth, prediction drift and batch rows.

A model's ``config.yaml`` may say ``task: classification|regression`` and ``prediction:``
(``label``: the output holding the class label; ``probabilities``: the output of class
probabilities; ``score``: a regressor's output). Otherwise it is derived from the signature:
an integer output of one value per row is a label; a float output ``[N, C]`` (C > 1) is class
probabilities (taken as such when its rows sum to 1); otherwise the model is a regressor and its
first numeric output, one value per row, is the score.

:func:`predict` turns one answer's outputs into per-row predictions: the class (the label, else
the arg-max of the probabilities, named by its class label when the output has them) and its
probability, or the score. A scikit-learn classifier's ZipMap output is such a probabilities
output, ``[N, C]`` FP32 with its class labels (``modelgate.core.zipmap``):
:func:`of_signature` takes them from the signature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelgate.core.repository import ModelVersion, TensorSpec

INTEGER_DATATYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
FLOAT_DATATYPES = {"FP16", "FP32", "FP64"}


@dataclass(frozen=True, slots=True)
class PredictionSpec:
    task: str  # classification | regression
    label: str | None = None  # output name of the class label
    probabilities: str | None = None  # output name of the class probabilities [N, C]
    score: str | None = None  # output name of the regression score
    # The class labels of the probabilities' columns, if known (a ZipMap output's, from the
    # graph): a label is then looked up among them, and the arg-max names one of them.
    classes: tuple[int | str, ...] = ()


@dataclass(frozen=True, slots=True)
class Predictions:
    """Per-row predictions of one answer."""

    classes: np.ndarray | None = None  # predicted class per row (int or str values)
    confidence: np.ndarray | None = None  # probability of the predicted class per row
    probabilities: np.ndarray | None = None  # [N, C] when known
    scores: np.ndarray | None = None  # regression

    @property
    def rows(self) -> int:
        for value in (self.classes, self.scores):
            if value is not None:
                return len(value)
        return 0


class PredictionError(ValueError):
    """Outputs that do not hold the prediction the spec names."""


def of_signature(outputs: Sequence[TensorSpec], task: str | None = None,
                 label: str | None = None, probabilities: str | None = None,
                 score: str | None = None) -> PredictionSpec:
    """:func:`derive` from a model version's outputs: a ZipMap output's classes come from its
    signature (``TensorSpec.classes``)."""
    return derive([(o.name, o.datatype, o.shape) for o in outputs], task, label,
                  probabilities, score, {o.name: o.classes for o in outputs if o.classes})


def derive(outputs: list[tuple[str, str, tuple[int, ...]]], task: str | None = None,
           label: str | None = None, probabilities: str | None = None,
           score: str | None = None,
           classes: Mapping[str, tuple[int | str, ...]] | None = None) -> PredictionSpec:
    """The spec from (name, datatype, shape) of every output and what the config says."""
    def per_row(shape: tuple[int, ...]) -> bool:
        return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)

    if label is None and task != "regression":
        label = next((n for n, d, s in outputs if d in INTEGER_DATATYPES and per_row(s)), None)
    if probabilities is None and task != "regression":
        probabilities = next((n for n, d, s in outputs if d in FLOAT_DATATYPES and len(s) == 2
                              and s[1] != 1), None)
    found_task = task or ("classification" if label or probabilities else "regression")
    if found_task == "regression" and score is None:
        score = next((n for n, d, s in outputs if (d in FLOAT_DATATYPES or
                                                    d in INTEGER_DATATYPES) and per_row(s)),
                     None)
    known = (classes or {}).get(probabilities or "", ())
    return PredictionSpec(found_task, label, probabilities, score, tuple(known))


def predict(spec: PredictionSpec, outputs: Mapping[str, np.ndarray]) -> Predictions:
    """Per-row predictions from one answer's outputs (raises PredictionError if missing)."""
    if spec.task == "regression":
        if spec.score is None or spec.score not in outputs:
            raise PredictionError(f"the answer lacks the score output {spec.score!r}")
        return Predictions(scores=np.asarray(outputs[spec.score], dtype=float).reshape(-1))
    probabilities = None
    if spec.probabilities is not None and spec.probabilities in outputs:
        probabilities = np.asarray(outputs[spec.probabilities], dtype=float)
        if probabilities.ndim != 2:
            raise PredictionError(f"output {spec.probabilities!r} is not [rows, classes]")
    known = spec.classes if probabilities is not None and \
        len(spec.classes) == probabilities.shape[1] else ()
    if spec.label is not None and spec.label in outputs:
        labels = np.asarray(outputs[spec.label]).reshape(-1)
        confidence = None
        if known:
            column = {c: i for i, c in enumerate(known)}
            found = [column.get(v) for v in labels.tolist()]
            if probabilities is not None and all(i is not None for i in found):
                confidence = probabilities[np.arange(len(labels)), np.asarray(found, int)]
        elif probabilities is not None and np.issubdtype(labels.dtype, np.integer) and \
                probabilities.shape[1] > int(labels.max(initial=0)) and labels.min(initial=0) >= 0:
            confidence = probabilities[np.arange(len(labels)), labels]
        return Predictions(labels, confidence, probabilities)
    if probabilities is not None:
        best = probabilities.argmax(axis=1)
        named = np.asarray(known)[best] if known else best
        return Predictions(named, probabilities[np.arange(len(best)), best], probabilities)
    raise PredictionError("the answer holds neither the label nor the probabilities output")


def spec_for(version: ModelVersion) -> PredictionSpec:
    """The spec of one served version: its config's ``task``/``prediction``, else derived from
    its tensor outputs (a ZipMap output is one, with its classes)."""
    config = version.config
    named = dict(config.prediction)
    return of_signature([o for o in version.outputs if o.is_tensor], task=config.task,
                        label=named.get("label"), probabilities=named.get("probabilities"),
                        score=named.get("score"))
