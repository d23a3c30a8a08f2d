"""What "the prediction" is: derived from the signature or named in the config."""

from __future__ import annotations

import numpy as np
import pytest

from modelgate.core.prediction import PredictionError, derive, predict


def test_an_integer_output_per_row_is_the_label_and_a_matrix_the_probabilities() -> None:
    spec = derive([("output_label", "INT64", (-1,)), ("output_probability", "FP32", (-1, 3))])
    assert (spec.task, spec.label, spec.probabilities) == (
        "classification", "output_label", "output_probability")
    got = predict(spec, {"output_label": np.array([2, 0]),
                         "output_probability": np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])})
    assert got.classes is not None and got.classes.tolist() == [2, 0]
    assert got.confidence is not None and got.confidence.tolist() == [0.7, 0.6]


def test_probabilities_alone_predict_their_arg_max() -> None:
    spec = derive([("probabilities", "FP32", (-1, 3))])
    got = predict(spec, {"probabilities": np.array([[0.1, 0.8, 0.1]])})
    assert got.classes is not None and got.classes.tolist() == [1]


def test_a_single_float_per_row_is_a_regression_score() -> None:
    spec = derive([("y", "FP32", (-1, 1))])
    assert (spec.task, spec.score) == ("regression", "y")
    got = predict(spec, {"y": np.array([[1.5], [2.0]])})
    assert got.scores is not None and got.scores.tolist() == [1.5, 2.0]


def test_the_config_names_the_outputs_and_the_task() -> None:
    spec = derive([("a", "FP32", (-1, 4)), ("b", "FP32", (-1,))], task="regression",
                  score="b")
    assert (spec.task, spec.score, spec.probabilities) == ("regression", "b", None)


def test_an_answer_without_the_named_output_is_an_error() -> None:
    spec = derive([("probabilities", "FP32", (-1, 3))])
    with pytest.raises(PredictionError):
        predict(spec, {"other": np.zeros((1, 3))})
