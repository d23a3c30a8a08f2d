"""Stored answers' records cut from many answers' predictions at once.

Gateways and workers store an answered call's prediction (``core/store/feedback.py``
``AnswerRecord``) for feedback. Both have many answers at hand at once (a flush's worth, a run's
bundles): predicting each alone would pay numpy's per-call cost once per answer, so answers
whose outputs stack are predicted as one array and each answer's rows cut from it, exactly as
predicting it alone would give.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from modelgate.core import wire
from modelgate.core.prediction import PredictionError, Predictions, PredictionSpec, predict
from modelgate.core.store import feedback as store


def _cuts(spec: PredictionSpec, answered: Sequence[tuple[float, wire.Reply]]
          ) -> Iterator[tuple[int, _Cut, int, int]]:
    """(index, predictions, first row, rows) of each answer holding a prediction."""
    names = [n for n in (spec.label, spec.probabilities, spec.score) if n is not None]
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for index, (_, reply) in enumerate(answered):
        shapes = []
        for name in names:
            t = reply.outputs.get(name)
            if t is not None and t.datatype != wire.JSON:
                shapes.append((name, t.datatype, t.shape[1:], len(t.shape)))
        groups[tuple(shapes)].append(index)
    for key, members in groups.items():
        stacked = _stacked(key, [answered[i][1] for i in members])
        if stacked is not None:
            outputs, counts = stacked
            try:
                predicted = predict(spec, outputs)
            except PredictionError:
                continue  # the same outputs for each: none holds a prediction
            if _cut_well(predicted, counts):
                start = 0
                cut = _Cut(spec, predicted)
                for index, count in zip(members, counts, strict=True):
                    yield index, cut, start, count
                    start += count
                continue
        for index in members:  # one by one: shapes that do not stack
            reply = answered[index][1]
            outputs = {n: t.data for n, t in reply.outputs.items() if t.datatype != wire.JSON}
            try:
                predicted = predict(spec, outputs)
            except PredictionError:
                continue
            yield index, _Cut(spec, predicted), 0, predicted.rows


def _stacked(key: tuple[Any, ...], replies: list[wire.Reply]
             ) -> tuple[dict[str, np.ndarray], list[int]] | None:
    """The prediction outputs of ``replies`` concatenated along rows, with each reply's row
    count; None when they do not stack (no output, or one without a row dimension)."""
    if not key or any(rank == 0 for _, _, _, rank in key):
        return None
    counts = [int(reply.outputs[key[0][0]].shape[0]) for reply in replies]
    outputs = {}
    for name, _, _, _ in key:
        parts = [np.asarray(reply.outputs[name].data) for reply in replies]
        if any(len(part) != count for part, count in zip(parts, counts, strict=True)):
            return None
        outputs[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return outputs, counts


def _cut_well(predicted: Predictions, counts: list[int]) -> bool:
    """Predictions of stacked replies cut back into each reply's rows exactly as predicting
    each alone would: one per row, and a label's confidence found for all or for none."""
    if predicted.rows != sum(counts):
        return False
    # With both a label and probabilities, the confidence is looked up only when every label
    # names a column; stacked, one reply's odd label would take it from all the others.
    return not (predicted.probabilities is not None and predicted.confidence is None
                and len(counts) > 1)


class _Cut:
    """Per-reply answer records cut from predictions over many replies' rows."""

    def __init__(self, spec: PredictionSpec, predicted: Predictions) -> None:
        self.scores = predicted.scores
        self.classes: list[str] = ([str(c) for c in predicted.classes.tolist()]
                                   if predicted.classes is not None else [])
        self.confidence = (predicted.confidence.astype("<f4")
                           if predicted.confidence is not None else None)
        probabilities = predicted.probabilities
        self.columns: tuple[str, ...] = ()
        if probabilities is not None and probabilities.shape[1] > store.MAX_STORED_CLASSES:
            probabilities = None
        if probabilities is not None:
            named = tuple(str(c) for c in spec.classes) if \
                len(spec.classes) == probabilities.shape[1] else ()
            if named != tuple(str(i) for i in range(probabilities.shape[1])):
                self.columns = named
        self.probabilities = (np.ascontiguousarray(probabilities, "<f4")
                              if probabilities is not None else None)
        # The same as bytes once, so each answer's part is a slice of them.
        self.scores_f8 = (np.ascontiguousarray(self.scores, "<f8").tobytes()
                          if self.scores is not None else b"")
        self.confidence_f4 = (self.confidence.tobytes()
                              if self.confidence is not None else None)
        self.probabilities_f4 = (self.probabilities.tobytes()
                                 if self.probabilities is not None else None)

    def encoded(self, version: str, at: float, start: int, count: int) -> bytes | None:
        """The stored value (``AnswerRecord.encode``) of rows ``start:start+count`` (at most
        MAX_ROWS_PER_ANSWER of them), with no record object in between; None for no row."""
        rows = min(count, store.MAX_ROWS_PER_ANSWER)
        if rows == 0:
            return None
        end = start + rows
        if self.scores is not None:
            return store.encode_answer(version, at, (), None, None, 0, (),
                                       self.scores_f8[start * 8:end * 8])
        width = self.probabilities.shape[1] if self.probabilities is not None else 0
        return store.encode_answer(
            version, at, self.classes[start:end],
            self.confidence_f4[start * 4:end * 4] if self.confidence_f4 is not None else None,
            self.probabilities_f4[start * 4 * width:end * 4 * width]
            if self.probabilities_f4 is not None else None,
            width, self.columns, None)


def stored_values(spec: PredictionSpec, version: str,
                  answered: Sequence[tuple[float, wire.Reply, Sequence[str]]]
                  ) -> list[tuple[str, bytes]]:
    """(key, encoded record) of each call to store: ``answered`` holds (time, reply, keys),
    ``keys[i]`` being what ``reply.ids[i]`` is stored under ("": not stored). A reply of
    several calls is cut by its ``rows``; a reply of one call is that call's whole answer."""
    found: list[tuple[str, bytes]] = []
    for index, cut, start, count in _cuts(spec, [(at, reply) for at, reply, _ in answered]):
        at, reply, keys = answered[index]
        spans = wire.row_spans(reply.rows) if len(keys) > 1 else [(0, count)]
        for key, (offset, rows) in zip(keys, spans, strict=True):
            if key:
                value = cut.encoded(version, at, start + offset, rows)
                if value is not None:
                    found.append((key, value))
    return found
