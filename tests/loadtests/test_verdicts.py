"""The load tests' pure parts: the SLO gate's verdicts, request bodies and answer checks.

``loadtests.slo`` and ``loadtests.payloads`` do not import locust, so they run in-process.
"""

from __future__ import annotations

import numpy as np
import orjson

from loadtests import payloads
from loadtests.slo import Observed, Thresholds, evaluate

MLP = payloads.ModelSpec.from_metadata({
    "name": "mlp",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
})
IRIS = payloads.ModelSpec.from_metadata({
    "name": "iris",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "output_label", "datatype": "INT64", "shape": [-1]},
                {"name": "output_probability", "datatype": "JSON", "shape": [-1]}],
})


def observed(requests: int = 100, failures: int = 0, p95_ms: float = 20.0,
             p99_ms: float = 40.0, exceptions: int = 0) -> Observed:
    return Observed(requests, failures, 10.0, p95_ms, p99_ms, 50.0, exceptions)


def test_a_run_within_every_threshold_passes() -> None:
    verdict = evaluate(Thresholds(p95_ms=100, p99_ms=200, error_rate=0.01), observed())
    assert verdict.passed
    assert verdict.report().startswith("SLO gate PASSED")
    assert "p95 latency 20 ms <= 100 ms" in verdict.report()


def test_each_violated_threshold_is_named_with_observed_and_allowed() -> None:
    verdict = evaluate(Thresholds(p95_ms=100, p99_ms=200, error_rate=0.01),
                       observed(failures=2, p95_ms=300))
    assert not verdict.passed
    report = verdict.report()
    assert report.startswith("SLO gate FAILED: 2 of 5 checks violated")
    assert "FAIL  p95 latency 300 ms > 100 ms allowed  [--slo-p95-ms" in report
    assert "FAIL  error rate 2% (2 of 100) > 1% allowed" in report
    assert "ok    p99 latency 40 ms <= 200 ms" in report
    assert verdict.headline() == ("SLO gate FAILED (exit code 1): error rate 2% (2 of 100) > 1% "
                                  "allowed; p95 latency 300 ms > 100 ms allowed")


def test_no_requests_fail_the_gate_instead_of_passing_vacuously() -> None:
    verdict = evaluate(Thresholds(p95_ms=100), observed(requests=0, p95_ms=0, p99_ms=0))
    assert [c.summary() for c in verdict.violations] == ["requests 0 < 1 required"]
    assert [c.what for c in verdict.checks] == ["requests", "exceptions in locust user code"]


def test_any_failure_fails_by_default_and_unset_latencies_are_not_checked() -> None:
    verdict = evaluate(Thresholds(), observed(failures=1, p99_ms=10_000))
    assert [c.what for c in verdict.violations] == ["error rate"]
    assert "p99 latency" not in verdict.report()


def test_exceptions_in_user_code_fail_the_gate() -> None:
    verdict = evaluate(Thresholds(), observed(exceptions=3))
    assert [c.what for c in verdict.violations] == ["exceptions in locust user code"]


def test_v2_bodies_follow_the_metadata_and_good_answers_pass() -> None:
    body = orjson.loads(payloads.v2_body(MLP, 8, np.random.default_rng(0)))
    [tensor] = body["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("input", "FP32", [8, 4])
    assert np.asarray(tensor["data"]).shape == (8, 4)
    answer = {"model_name": "mlp", "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [8, 3], "data": [0.1] * 24}]}
    assert payloads.v2_problem(MLP, 8, answer) is None


def test_v2_answers_with_wrong_rows_size_or_outputs_are_problems() -> None:
    def answer(shape: list[int], size: int, name: str = "probabilities") -> dict[str, object]:
        return {"outputs": [{"name": name, "datatype": "FP32", "shape": shape,
                             "data": [0.0] * size}]}

    assert "shape [1, 3]" in (payloads.v2_problem(MLP, 8, answer([1, 3], 3)) or "")
    assert "21 values" in (payloads.v2_problem(MLP, 8, answer([8, 3], 21)) or "")
    assert "expected ['probabilities']" in (
        payloads.v2_problem(MLP, 8, answer([8, 3], 24, "logits")) or "")
    assert "no 'outputs'" in (payloads.v2_problem(MLP, 8, {"error": "busy"}) or "")


def test_v1_answers_hold_one_prediction_per_instance_with_every_output() -> None:
    body = orjson.loads(payloads.v1_body(IRIS, 2, np.random.default_rng(0)))
    assert np.asarray(body["instances"]).shape == (2, 4)
    good = {"predictions": [{"output_label": 0, "output_probability": {"0": 1.0}}] * 2}
    assert payloads.v1_problem(IRIS, 2, good) is None
    assert "1 predictions for 2" in (payloads.v1_problem(IRIS, 2, {"predictions": [{}]}) or "")
    missing = {"predictions": [{"output_label": 0}] * 2}
    assert "does not hold the outputs" in (payloads.v1_problem(IRIS, 2, missing) or "")
    assert payloads.v1_problem(MLP, 1, {"predictions": [[0.2, 0.3, 0.5]]}) is None
    assert "does not fit" in (payloads.v1_problem(MLP, 1, {"predictions": [[0.2, 0.8]]}) or "")
