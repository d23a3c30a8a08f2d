"""Answers stored for feedback are predicted many at a time (``core/answer_records.py``
``records``): each record must be exactly what predicting its answer alone gives."""

from __future__ import annotations

import numpy as np

from modelgate.core import wire
from modelgate.core.answer_records import stored_values
from modelgate.core.prediction import PredictionError, PredictionSpec, derive, predict
from modelgate.core.store import feedback as store

RNG = np.random.default_rng(7)


def _reply(**outputs: np.ndarray) -> wire.Reply:
    return wire.Reply(("x",), wire.ReplyStatus.OK,
                      {name: wire.tensor(data) for name, data in outputs.items()})


def _probabilities(rows: int, classes: int = 3) -> np.ndarray:
    raw = RNG.random((rows, classes)).astype(np.float32)
    return raw / raw.sum(axis=1, keepdims=True)


def _alone(spec: PredictionSpec, answered: list[tuple[float, wire.Reply]]) -> list[object]:
    """The reference: each answer predicted by itself, straight from ``predict``."""
    found: list[object] = []
    for at, reply in answered:
        try:
            one = predict(spec, {n: t.data for n, t in reply.outputs.items()})
        except PredictionError:
            found.append(None)
            continue
        rows = min(one.rows, store.MAX_ROWS_PER_ANSWER)
        if rows == 0:
            found.append(None)
        elif one.scores is not None:
            found.append(store.AnswerRecord("1", at, scores=one.scores[:rows]))
        else:
            assert one.classes is not None
            found.append(store.AnswerRecord(
                "1", at, tuple(str(c) for c in one.classes[:rows].tolist()),
                one.confidence[:rows] if one.confidence is not None else None,
                one.probabilities[:rows] if one.probabilities is not None else None))
    return found


def _same(left: list[object], right: list[object]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert a.encode() == b.encode()  # type: ignore[attr-defined]


def _stored(spec: PredictionSpec, answered: list[tuple[float, wire.Reply]]) -> list[object]:
    """What is stored (``stored_values``) checked against the reference's encoding, and the
    records."""
    expected = [(str(i), r.encode())  # type: ignore[attr-defined]
                for i, r in enumerate(_alone(spec, answered)) if r is not None]
    keyed = [(at, reply, (str(i),)) for i, (at, reply) in enumerate(answered)]
    found = stored_values(spec, "1", keyed)
    assert found == expected
    return _decoded(found, len(answered))


def _decoded(values: list[tuple[str, bytes]], count: int) -> list[object]:
    """The records of stored values keyed by their answer's index, None where none."""
    records: list[object] = [None] * count
    for key, value in values:
        rows, rest = value.split(b":", 1)
        records[int(key)] = store.AnswerRecord.decode(rest[int(rows):])
    return records


def test_stacked_classifier_answers_are_recorded_as_each_alone() -> None:
    spec = derive([("label", "INT64", (-1,)), ("probabilities", "FP32", (-1, 3))])
    answered = []
    for i in range(40):
        rows = 1 + i % 4
        probabilities = _probabilities(rows)
        answered.append((1000.0 + i, _reply(label=probabilities.argmax(axis=1),
                                            probabilities=probabilities)))
    found = _stored(spec, answered)
    assert all(r is not None for r in found)
    assert [r.rows for r in found if r is not None] == [1 + i % 4 for i in range(40)]
    _same(found, _alone(spec, answered))


def test_one_label_outside_the_columns_does_not_take_the_confidence_from_the_others() -> None:
    spec = derive([("label", "INT64", (-1,)), ("probabilities", "FP32", (-1, 3))])
    good = [(1.0, _reply(label=np.array([1]), probabilities=_probabilities(1)))
            for _ in range(5)]
    odd = (2.0, _reply(label=np.array([7]), probabilities=_probabilities(1)))
    answered = [*good[:2], odd, *good[2:]]
    found = _stored(spec, answered)
    assert found[0] is not None and found[0].confidence is not None
    assert found[2] is not None and found[2].confidence is None
    _same(found, _alone(spec, answered))


def test_probabilities_alone_regression_and_unstackable_answers_match_too() -> None:
    spec = derive([("probabilities", "FP32", (-1, 4))])
    answered = [(float(i), _reply(probabilities=_probabilities(2, 4))) for i in range(10)]
    answered.append((11.0, _reply(other=np.zeros((1, 2), np.float32))))  # no prediction
    answered.append((12.0, _reply(probabilities=_probabilities(1, 5))))  # another width
    found = _stored(spec, answered)
    assert found[10] is None and found[11] is not None and found[11].rows == 1
    _same(found, _alone(spec, answered))
    regression = derive([("score", "FP32", (-1, 1))])
    scored = [(float(i), _reply(score=RNG.random((1 + i % 3, 1)).astype(np.float32)))
              for i in range(12)]
    _same(_stored(regression, scored), _alone(regression, scored))
    assert sum(r.rows for r in _stored(regression, scored) if r is not None) == 24  # type: ignore[attr-defined]


def test_answers_of_no_rows_are_not_stored() -> None:
    spec = derive([("probabilities", "FP32", (-1, 3))])
    answered = [(1.0, _reply(probabilities=np.zeros((0, 3), np.float32))),
                (2.0, _reply(probabilities=_probabilities(1)))]
    found = _stored(spec, answered)
    assert found[0] is None and found[1] is not None


def test_a_workers_bundle_is_stored_call_by_call_as_each_call_alone() -> None:
    """A worker stores from a bundle's reply (several calls' rows in one array): each kept
    call's record is what its own rows predicted alone give; a call not kept is not stored."""
    spec = derive([("label", "INT64", (-1,)), ("probabilities", "FP32", (-1, 3))])
    probabilities = _probabilities(6)
    bundle = wire.Reply(("a", "b", "c"), wire.ReplyStatus.OK,
                        {"label": wire.tensor(probabilities.argmax(axis=1)),
                         "probabilities": wire.tensor(probabilities)}, rows=(2, 1, 3))
    single = _reply(label=np.array([0]), probabilities=_probabilities(1))

    found = stored_values(spec, "1", [(5.0, bundle, ("key-a", "", "key-c")),
                                      (6.0, single, ("key-d",))])

    parts = wire.unbundle(bundle)
    alone = _alone(spec, [(5.0, parts[0]), (5.0, parts[2]), (6.0, single)])
    assert found == [(key, record.encode())  # type: ignore[attr-defined]
                     for key, record in zip(("key-a", "key-c", "key-d"), alone, strict=True)]
