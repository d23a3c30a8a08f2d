"""Feedback end to end on a real scikit-learn classifier: answers stored under their call's
id (given or generated), labels joined to them and counted item by item, live quality equal
to the same figures computed offline, and the store's bounds (rows, horizon) held."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_iris

from modelgate.cli import demo
from modelgate.cli.main import main
from tests import metrics
from tests.conftest import ServeFactory
from tests.models import finish
from tests.procs import wait_until

SHORT_HORIZON_S = 2


WEIGHTS = np.array([[0.5], [-1.0], [2.0]], np.float32)


def regressor() -> onnx.ModelProto:
    """``y = x @ WEIGHTS``: FP32 [N, 3] -> [N, 1], one score per row."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "reg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(WEIGHTS, "w")])
    return finish(graph)


@pytest.fixture(scope="module")
def stack(serve: ServeFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("feedback-models")
    demo.write_model(demo.iris_classifier(), root, "iris")
    demo.write_model(demo.iris_classifier(), root, "bounded")
    demo.write_model(regressor(), root, "reg")
    (root / "bounded" / "config.yaml").write_text(
        f"feedback_horizon_s: {SHORT_HORIZON_S}\nfeedback_max_rows: 40\n")
    with serve(Path(root), [("iris", 1), ("bounded", 1), ("reg", 1)]) as base:
        yield base


def infer(client: httpx.Client, model: str, rows: np.ndarray,
          call: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "FP32",
                                        "shape": list(rows.shape),
                                        "data": rows.reshape(-1).tolist()}]}
    if call is not None:
        body["id"] = call
    response = client.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    return response


def predicted(answer: dict[str, Any]) -> list[int]:
    label = next(o for o in answer["outputs"] if o["name"] == "output_label")
    return [int(v) for v in label["data"]]


def feedback(client: httpx.Client, model: str, items: Any) -> dict[str, Any]:
    response = client.post(f"/v2/models/{model}/feedback", json=items)
    assert response.status_code == 200, response.text
    return response.json()


def stored_count(client: httpx.Client, model: str) -> int:
    return int(client.get(f"/v2/models/{model}/quality").json()["stored"]["answers_stored"])


def stored(client: httpx.Client, model: str, before: int, calls: list[str]) -> None:
    """Wait until the gateway's writer has stored these calls (it writes off the response
    path, every 0.2 s): ``before`` were stored before them."""
    wait_until(lambda: stored_count(client, model) >= before + len(calls), 10,
               f"{len(calls)} answers of {model} to be stored")


def test_every_answer_carries_an_id(stack: str) -> None:
    row = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    with httpx.Client(base_url=stack, timeout=10) as client:
        given = infer(client, "iris", row, "my-call-1")
        assert given.json()["id"] == "my-call-1"
        assert given.headers["x-request-id"] == "my-call-1"
        generated = infer(client, "iris", row)
        assert len(generated.json()["id"]) == 32
        assert generated.headers["x-request-id"] == generated.json()["id"]
        # An id no header can carry is answered in the body only, and still stored.
        unicode = infer(client, "iris", row, "commande-é\u0001")
        assert unicode.json()["id"] == "commande-é\u0001"
        assert "x-request-id" not in unicode.headers
        v1 = client.post("/v1/models/iris:predict", json={"instances": row.tolist()},
                         headers={"X-Request-Id": "v1-call"})
        assert v1.status_code == 200 and v1.headers["x-request-id"] == "v1-call"
        v1_generated = client.post("/v1/models/iris:predict",
                                   json={"instances": row.tolist()})
        assert len(v1_generated.headers["x-request-id"]) == 32


def test_live_quality_equals_offline_figures(stack: str) -> None:
    features, labels = load_iris(return_X_y=True)
    rows = features.astype(np.float32)
    with httpx.Client(base_url=stack, timeout=10) as client:
        before = stored_count(client, "iris")
        calls, answers = [], []
        for i, row in enumerate(rows):
            answer = infer(client, "iris", row[None, :], f"q-{i}").json()
            calls.append(answer["id"])
            answers.append(answer)
        # One multi-row call: its rows are labelled one by one.
        multi = infer(client, "iris", rows[:5], "q-multi").json()
        stored(client, "iris", before, [*calls, "q-multi"])
        probabilities = np.array([next(o for o in a["outputs"]
                                       if o["name"] == "output_probability")["data"]
                                  for a in answers])
        # Labels arrive out of order; every tenth as a string, as CSV files hold them.
        order = np.random.default_rng(0).permutation(len(calls))
        items = [{"id": calls[i], "label": str(labels[i]) if i % 10 == 0 else int(labels[i])}
                 for i in order]
        counts = feedback(client, "iris", items)
        assert (counts["matched"], counts["invalid"], counts["unknown"]) == (150, 0, 0)
        multi_items = [{"id": "q-multi", "label": int(labels[r]), "row": r} for r in range(5)]
        assert feedback(client, "iris", multi_items)["matched"] == 5
        # Every kind of bad item is counted; the good one among them still counts.
        mixed = feedback(client, "iris", [
            {"id": calls[0], "label": int(labels[0])},  # already labelled
            {"id": "never-answered", "label": 1},
            {"id": "q-multi", "label": 1, "row": 9},  # no such row
            {"id": "q-multi", "label": 1, "row": -1},
            {"id": calls[1], "label": "no-such-class"},
            {"label": 1},
            "not an object",
        ])
        assert (mixed["already_labelled"], mixed["unknown"], mixed["invalid"],
                mixed["matched"]) == (1, 1, 5, 0), mixed
        assert len(mixed["errors"]) == 5
        quality = client.get("/v2/models/iris/quality").json()
    version = quality["versions"][0]
    all_predicted = np.array([predicted(a)[0] for a in answers] + predicted(multi))
    all_labels = np.concatenate([labels, labels[:5]])
    assert version["labelled"] == 155
    assert version["since_load"]["accuracy"] == round(
        float(np.mean(all_predicted == all_labels)), 6)
    p_label = np.concatenate([probabilities[np.arange(150), labels],
                              np.array(next(o for o in multi["outputs"]
                                            if o["name"] == "output_probability")["data"]
                                       ).reshape(5, 3)[np.arange(5), labels[:5]]])
    log_loss = float(np.mean(-np.log(np.clip(p_label.astype(np.float32), 1e-15, 1))))
    assert version["since_load"]["log_loss"] == pytest.approx(log_loss, rel=1e-5)
    recall_0 = np.mean(all_predicted[all_labels == 0] == 0)
    assert version["since_load"]["per_class"]["0"]["recall"] == round(float(recall_0), 6)
    # The window holds the last 1000 labelled rows: here all of them.
    assert version["window"]["rows"] == 155
    assert version["window"]["accuracy"] == version["since_load"]["accuracy"]
    assert version["unmatched"] == 0  # the label of no class was refused before matching
    assert version["alert"] is False and version["alarm"] is None
    assert quality["labels"]["matched"] == 155
    # The gauges follow within their 5 s refresh.
    wait_until(lambda: metrics.value(metrics.scrape(stack), "modelgate_quality", model="iris",
                                     version="1", metric="accuracy")
               == version["since_load"]["accuracy"], 10, "modelgate_quality to be set")
    samples = metrics.scrape(stack)
    assert metrics.value(samples, "modelgate_quality", model="iris", metric="labelled") == 155
    assert metrics.value(samples, "modelgate_feedback_labels_total", model="iris",
                         result="matched") == 155
    assert next(s for s in samples if s[0] == "modelgate_quality_alert"
                and s[1]["model"] == "iris")[2] == 0


def test_store_keeps_its_bounds_and_counts_reused_ids(stack: str) -> None:
    row = np.array([[6.3, 3.3, 6.0, 2.5]], np.float32)
    with httpx.Client(base_url=stack, timeout=10) as client:
        for i in range(60):
            infer(client, "bounded", row, f"b-{i}")
        infer(client, "bounded", row, "b-59")  # a reused id replaces the earlier record
        wait_until(lambda: stored_count(client, "bounded") >= 61, 10,
                   "the answers to be stored")
        answer = client.get("/v2/models/bounded/quality").json()["stored"]
        assert answer["rows"] == 40 and answer["replaced"] == 1
        assert answer["trimmed_rows"] == 20
        assert feedback(client, "bounded", [{"id": "b-0", "label": 2}])["unknown"] == 1
        time.sleep(SHORT_HORIZON_S + 0.2)
        # Past the horizon, not yet trimmed: expired.
        assert feedback(client, "bounded", [{"id": "b-30", "label": 2}])["expired"] == 1
        infer(client, "bounded", row, "b-late")
        wait_until(lambda: client.get("/v2/models/bounded/quality").json()["stored"]
                   ["rows"] == 1, 10, "the old answers to be trimmed")
        assert feedback(client, "bounded", [{"id": "b-31", "label": 2}])["unknown"] == 1
        assert feedback(client, "bounded", [{"id": "b-late", "label": 2}])["matched"] == 1


def test_malformed_bodies_are_json_400(stack: str) -> None:
    with httpx.Client(base_url=stack, timeout=10) as client:
        for content in (b"", b"{not json", b"42", b"[]"):
            response = client.post("/v2/models/iris/feedback", content=content,
                                   headers={"content-type": "application/json"})
            assert response.status_code == 400, content
            assert "label" in response.json()["error"] or "JSON" in response.json()["error"]
        too_many = [{"id": "x", "label": 1}] * 10_001
        response = client.post("/v2/models/iris/feedback", json=too_many)
        assert response.status_code == 400 and "at most" in response.json()["error"]
        assert client.post("/v2/models/nope/feedback",
                           json={"id": "x", "label": 1}).status_code == 404


def test_feedback_command_sends_a_csv_and_a_jsonl(stack: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    row = np.array([[5.9, 3.0, 5.1, 1.8]], np.float32)
    with httpx.Client(base_url=stack, timeout=10) as client:
        before = stored_count(client, "iris")
        calls = [infer(client, "iris", row).json()["id"] for _ in range(4)]
        stored(client, "iris", before, calls)
    table = tmp_path / "labels.csv"
    table.write_text("id,label,row\n" + "".join(f"{c},2,\n" for c in calls[:3]) +
                     "unknown-call,2,0\n")
    lines = tmp_path / "labels.jsonl"
    lines.write_text(f'{{"id": "{calls[3]}", "label": 2}}\n{{"id": "{calls[0]}", "label": 2}}\n')
    assert main(["feedback", str(table), "--model", "iris", "--url", stack]) == 0
    assert "4 labels for iris: 3 matched, 1 unknown" in capsys.readouterr().out
    assert main(["feedback", str(lines), "--model", "iris", "--url", stack]) == 0
    assert "1 matched, 0 unknown, 0 expired, 1 already labelled" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("call,truth\nx,1\n")
    assert main(["feedback", str(bad), "--model", "iris", "--url", stack]) == 2
    assert "columns id and label" in capsys.readouterr().err


def test_a_regressor_is_scored_by_mae_and_rmse(stack: str) -> None:
    rows = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    truth = np.array([1.0, -0.5, 2.0, 0.25])
    with httpx.Client(base_url=stack, timeout=10) as client:
        before = stored_count(client, "reg")
        answer = client.post("/v2/models/reg/infer", json={"id": "r-1", "inputs": [{
            "name": "x", "datatype": "FP32", "shape": [4, 3],
            "data": rows.reshape(-1).tolist()}]}).json()
        stored(client, "reg", before, ["r-1"])
        predicted = np.array(answer["outputs"][0]["data"], np.float64)
        counts = feedback(client, "reg", [
            {"id": "r-1", "row": r, "label": str(truth[r]) if r == 3 else truth[r]}
            for r in range(4)] + [{"id": "r-1", "row": 0, "label": "abc"}])
        assert (counts["matched"], counts["invalid"], counts["already_labelled"]) == (4, 1, 0)
        version = client.get("/v2/models/reg/quality").json()["versions"][0]
    errors = predicted.astype(np.float32).astype(np.float64) - truth
    assert version["labelled"] == 4 and version["alarm"] is None
    assert version["since_load"]["mae"] == pytest.approx(np.mean(np.abs(errors)), abs=1e-6)
    assert version["since_load"]["rmse"] == pytest.approx(np.sqrt(np.mean(errors ** 2)),
                                                          abs=1e-6)
    assert version["window"]["mae"] == version["since_load"]["mae"]


def test_labels_past_one_script_chunk_are_all_counted(stack: str) -> None:
    row = np.array([[6.0, 2.2, 4.0, 1.0]], np.float32)
    with httpx.Client(base_url=stack, timeout=30) as client:
        before = stored_count(client, "iris")
        calls = [infer(client, "iris", row, f"chunk-{i}").json()["id"] for i in range(3)]
        stored(client, "iris", before, calls)
        items: list[dict[str, Any]] = [{"id": f"none-{i}", "label": 1} for i in range(2500)]
        for position, call in zip((999, 1000, 2499), calls, strict=True):
            items.insert(position, {"id": call, "label": 1})
        counts = feedback(client, "iris", items)
    assert (counts["received"], counts["matched"], counts["unknown"]) == (2503, 3, 2500)
