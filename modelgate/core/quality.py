"""Quality against ground truth: scoring labelled rows, the figures they add up to, and the
alarm on a drop of accuracy. Pure functions and small records; Redis holds the merged state
(``core/store/feedback.py``).

**Scoring.** A label joined to a stored answer row (:class:`~modelgate.core.store.feedback.
AnswerRecord`) becomes an :class:`Outcome`: for a classifier whether the predicted class is the
label, the probability of the predicted class (calibration) and of the label (log-loss, clipped
at 1e-15 like scikit-learn); for a regressor the label and the score. Outcomes add up to
:class:`Totals` (counters, merged in Redis by ``HINCRBYFLOAT``) and are kept, newest first, in
a window of the last labelled rows; :func:`figures` computes accuracy, per-class precision and
recall, log-loss and expected calibration error (10 equal-width confidence bins) for
classifiers, MAE and RMSE for regressors, from either.

**The alarm.** A one-sided Bernoulli CUSUM on per-row correctness: with reference accuracy
``p0`` (the version's training accuracy from its lineage, else the accuracy of its first
``baseline_rows`` labelled rows) and the drop to detect ``d`` (``p1 = p0 - d``), each labelled
row adds its log-likelihood ratio, ``log(p1/p0)`` if correct, ``log((1-p1)/(1-p0))`` if not,
and ``S = max(0, S + llr)``. It alarms when ``S > h`` after at least ``min_labels`` rows.
Under the reference, ``exp(S)`` started at any row is a likelihood ratio, a martingale: by
Ville's inequality it ever reaches ``e^h`` with probability at most ``e^-h``, so the chance of
any false alarm within ``N`` labelled rows is at most ``N e^-h``. :func:`threshold` sets
``h = ln(N / alpha)``: by default at most a 1% chance of a false alarm in 1,000,000 clean
labelled rows (``h = 18.4``). That holds exactly when the reference is the live accuracy; a
baseline window estimates it (2,000 rows: within about 1 point), and a training accuracy above
the live one is itself what the alarm reports. ``S`` is capped at ``2h`` so that an alarm
clears (``S`` back to 0) within a few hundred good rows once quality recovers.

Expected detection delay is ``h / KL`` rows where KL is the mean llr at the new accuracy: a
3-class model at 95% that turns wrong on one class (to about 63%) gains 0.22 a row: ~85 rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import msgpack
import numpy as np

from modelgate.core.store.feedback import AnswerRecord

ECE_BINS = 10
LOG_LOSS_CLIP = 1e-15
MAX_CLASS_FIELDS = 100  # per-class counters kept at most per version; others add to "other"


@dataclass(frozen=True, slots=True)
class AlarmConfig:
    drop: float = 0.05  # absolute accuracy drop the alarm is tuned to find fastest
    h: float = 18.42  # threshold(): at most 1% chance of a false alarm in 1e6 rows
    min_labels: int = 100  # no alarm before this many rows were judged
    baseline_rows: int = 2000  # rows that make the reference when no lineage accuracy


def threshold(false_alarm_chance: float, rows: int) -> float:
    """The CUSUM threshold ``h`` giving at most ``false_alarm_chance`` of any false alarm in
    ``rows`` labelled rows (``rows * e^-h <= chance``)."""
    return math.log(rows / false_alarm_chance)


@dataclass(frozen=True, slots=True)
class AlarmState:
    """The CUSUM of one version, as ``store/feedback.py`` ``SCORE`` keeps it."""

    s: float = 0.0
    n: int = 0  # rows judged against the reference
    p0: float | None = None
    reference: str | None = None  # lineage | baseline
    base_n: int = 0
    base_correct: int = 0
    alert: bool = False
    peak: float = 0.0
    fired_n: int | None = None  # rows judged when it last fired

    @classmethod
    def parse(cls, raw: Mapping[bytes, bytes]) -> AlarmState:
        text = {k.decode(): v.decode() for k, v in raw.items()}

        def number(name: str, default: float) -> float:
            try:
                return float(text[name])
            except (KeyError, ValueError):
                return default

        p0 = number("p0", -1.0)
        fired = number("fired_n", -1.0)
        return cls(number("s", 0.0), int(number("n", 0)), p0 if p0 >= 0 else None,
                   text.get("reference"), int(number("base_n", 0)),
                   int(number("base_correct", 0)), number("alert", 0) == 1,
                   number("peak", 0.0), int(fired) if fired >= 0 else None)


def cusum_step(state: AlarmState, correct: bool, reference: float | None,
               config: AlarmConfig) -> AlarmState:
    """One labelled row through the alarm (the same arithmetic as ``SCORE``)."""
    if state.p0 is None and reference is not None:
        state = replace(state, p0=min(max(reference, 0.0), 1 - 1e-3), reference="lineage")
    if state.p0 is None:
        base_n, base_correct = state.base_n + 1, state.base_correct + int(correct)
        if base_n >= config.baseline_rows:
            return replace(state, base_n=base_n, base_correct=base_correct,
                           p0=min(max(base_correct / base_n, 0.0), 1 - 1e-3),
                           reference="baseline")
        return replace(state, base_n=base_n, base_correct=base_correct)
    p0 = state.p0
    p1 = p0 - config.drop
    if p1 <= 0:
        return state
    llr = math.log(p1 / p0) if correct else math.log((1 - p1) / (1 - p0))
    s = min(max(0.0, state.s + llr), 2 * config.h)
    n = state.n + 1
    alert, fired = state.alert, state.fired_n
    if not alert and n >= config.min_labels and s > config.h:
        alert, fired = True, n
    elif alert and s == 0:
        alert = False
    return replace(state, s=s, n=n, alert=alert, peak=max(state.peak, s), fired_n=fired)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One labelled row, scored."""

    label: str | float
    predicted: str | float
    delay_s: float
    correct: bool | None = None  # classifiers
    confidence: float | None = None  # probability of the predicted class
    p_label: float | None = None  # probability of the label's class

    def line(self) -> bytes:
        """Its entry in the window list."""
        return msgpack.packb([self.label, self.predicted, round(self.delay_s, 3),
                              self.correct, self.confidence, self.p_label])

    @classmethod
    def of_line(cls, raw: bytes) -> Outcome | None:
        try:
            label, predicted, delay, correct, confidence, p_label = msgpack.unpackb(raw)
            return cls(label, predicted, float(delay), correct, confidence, p_label)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None


class LabelError(ValueError):
    """A label that cannot be scored against the answer it names."""


def score(record: AnswerRecord, row: int, label: object, now: float) -> Outcome:
    """The outcome of ``label`` for one row of a stored answer (raises LabelError)."""
    delay = max(0.0, now - record.time)
    if record.scores is not None:
        if isinstance(label, bool) or not isinstance(label, int | float | str):
            raise LabelError(f"a regressor's label is a number, got {label!r}")
        try:
            value = float(label)
        except ValueError as e:
            raise LabelError(f"a regressor's label is a number, got {label!r}") from e
        if not math.isfinite(value):
            raise LabelError(f"a label must be finite, got {label!r}")
        return Outcome(value, float(record.scores[row]), delay)
    if isinstance(label, bool) or not isinstance(label, int | str | float):
        raise LabelError(f"a classifier's label is a class (a string or an integer), got "
                         f"{label!r}")
    name = class_name(label)
    predicted = record.classes[row]
    confidence = float(record.confidence[row]) if record.confidence is not None else None
    p_label = None
    if record.probabilities is not None:
        columns = record.columns or tuple(str(i) for i in range(record.probabilities.shape[1]))
        if name not in columns:
            raise LabelError(f"{label!r} is none of the model's classes {list(columns)[:20]}")
        p_label = float(record.probabilities[row, columns.index(name)])
    return Outcome(name, predicted, delay, name == predicted, confidence, p_label)


def class_name(label: object) -> str:
    """A class label as stored: integers (and whole floats, as CSV files hold them) by their
    digits, strings as they are."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


@dataclass(slots=True)
class Totals:
    """Counters of a version's outcomes, as fields that add up across gateways."""

    fields: dict[str, float] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        f = self.fields

        def inc(name: str, by: float = 1.0) -> None:
            f[name] = f.get(name, 0.0) + by

        inc("n")
        inc("delay_sum", outcome.delay_s)
        if outcome.correct is None:
            error = float(outcome.predicted) - float(outcome.label)
            inc("abs_sum", abs(error))
            inc("sq_sum", error * error)
            return
        inc("correct", int(outcome.correct))
        inc(f"true:{outcome.label}")
        inc(f"pred:{outcome.predicted}")
        if outcome.correct:
            inc(f"tp:{outcome.label}")
        if outcome.p_label is not None:
            inc("ll_n")
            inc("ll_sum", -math.log(min(max(outcome.p_label, LOG_LOSS_CLIP), 1.0)))
        if outcome.confidence is not None:
            b = min(int(outcome.confidence * ECE_BINS), ECE_BINS - 1)
            inc(f"b{b}:n")
            inc(f"b{b}:conf", outcome.confidence)
            inc(f"b{b}:ok", int(outcome.correct))

    def limited(self, known: Iterable[str]) -> dict[str, float]:
        """The fields, with per-class counters past MAX_CLASS_FIELDS classes (``known``: the
        classes already counted) folded into class ``other``."""
        seen = set(known)
        out: dict[str, float] = {}
        for name, value in self.fields.items():
            kind, _, cls = name.partition(":")
            if kind in ("true", "pred", "tp") and cls not in seen:
                if len(seen) >= MAX_CLASS_FIELDS:
                    name = f"{kind}:other"
                else:
                    seen.add(cls)
            out[name] = out.get(name, 0.0) + value
        return out

    @classmethod
    def parse(cls, raw: Mapping[bytes, bytes]) -> Totals:
        fields: dict[str, float] = {}
        for k, v in raw.items():
            try:
                fields[k.decode()] = float(v)
            except (ValueError, UnicodeDecodeError):
                continue
        return cls(fields)

    @classmethod
    def of(cls, outcomes: Iterable[Outcome]) -> Totals:
        totals = cls()
        for outcome in outcomes:
            totals.add(outcome)
        return totals


def figures(totals: Totals) -> dict[str, object]:
    """Quality figures of a set of outcomes: rows, then accuracy, log-loss, ECE and per-class
    precision and recall (classifiers) or MAE and RMSE (regressors); a figure without the rows
    it needs is left out."""
    f = totals.fields
    n = int(f.get("n", 0))
    out: dict[str, object] = {"rows": n}
    if n == 0:
        return out
    if "correct" in f:
        out["accuracy"] = round(f["correct"] / n, 6)
        if f.get("ll_n"):
            out["log_loss"] = round(f["ll_sum"] / f["ll_n"], 6)
        binned = [(f.get(f"b{b}:n", 0.0), f.get(f"b{b}:conf", 0.0), f.get(f"b{b}:ok", 0.0))
                  for b in range(ECE_BINS)]
        judged = sum(b[0] for b in binned)
        if judged:
            out["ece"] = round(sum(abs(ok - conf) for count, conf, ok in binned if count)
                               / judged, 6)
        classes = sorted({name.partition(":")[2] for name in f
                          if name.startswith(("true:", "pred:"))})
        out["per_class"] = {
            c: {"precision": _ratio(f.get(f"tp:{c}", 0.0), f.get(f"pred:{c}", 0.0)),
                "recall": _ratio(f.get(f"tp:{c}", 0.0), f.get(f"true:{c}", 0.0)),
                "support": int(f.get(f"true:{c}", 0.0))}
            for c in classes}
    elif "abs_sum" in f:
        out["mae"] = round(f["abs_sum"] / n, 6)
        out["rmse"] = round(math.sqrt(f["sq_sum"] / n), 6)
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 6) if b else None


def median_delay_s(outcomes: Sequence[Outcome]) -> float | None:
    if not outcomes:
        return None
    return round(float(np.median([o.delay_s for o in outcomes])), 3)


def reference_accuracy(metrics: Mapping[str, float]) -> float | None:
    """The training accuracy a version's lineage records, if any (held-out figures first)."""
    for name in ("test_accuracy", "val_accuracy", "validation_accuracy", "accuracy"):
        value = metrics.get(name)
        if value is not None and 0.0 < float(value) <= 1.0:
            return float(value)
    return None
