"""End to end with real processes: a gateway and ONNX Runtime workers around a real Redis.

Every answer is compared with onnxruntime called directly on the same model.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

from tests import metrics
from tests.conftest import ServeFactory
from tests.models import write_repository

pytestmark = pytest.mark.integration

SERVED = ["mlp", "add2", "iris", "state", "int64", "bytes"]


@pytest.fixture(scope="module")
def base_url(serve: ServeFactory, tmp_path_factory: pytest.TempPathFactory,
             onnx_models: dict[str, onnx.ModelProto]) -> Iterator[str]:
    """One gateway and one worker per model, shared by the module's tests."""
    repo = write_repository(tmp_path_factory.mktemp("serving-models"),
                            {name: onnx_models[name] for name in SERVED})
    with serve(repo, [(name, 1) for name in SERVED]) as url:
        yield url


@pytest.fixture(scope="module")
def idle_url(serve: ServeFactory, tmp_path_factory: pytest.TempPathFactory,
             onnx_models: dict[str, onnx.ModelProto]) -> Iterator[str]:
    """A gateway whose only model (two versions) has no worker at all."""
    mlp = onnx_models["mlp"]
    # Both versions served (the default policy would serve only the latest).
    repo = write_repository(tmp_path_factory.mktemp("idle-models"), {"idle": [mlp, mlp]},
                            configs={"idle": "version_policy: {all: {}}\n"})
    with serve(repo, [("idle", 0)]) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30.0) as c:
        yield c


def v2_body(*inputs: tuple[str, str, np.ndarray], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(array.shape),
                        "data": array.reshape(-1).tolist()} for name, datatype, array in inputs],
            **extra}


def output(body: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [o for o in body["outputs"] if o["name"] == name]
    return found


def as_array(out: dict[str, Any], dtype: Any) -> np.ndarray:
    return np.asarray(out["data"], dtype=dtype).reshape(out["shape"])


def scrape(base: str) -> list[metrics.Sample]:
    return metrics.scrape(base)


def metric(samples: list[metrics.Sample], name: str, **labels: str) -> float:
    return metrics.value(samples, name, **labels)


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize("path", ["/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer"])
def test_v2_infer_matches_onnxruntime(client: httpx.Client, ort_run: Callable[..., list[Any]],
                                      path: str) -> None:
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    response = client.post(path, json=v2_body(("input", "FP32", x), id="req-42"))

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("mlp", "1", "req-42")
    out = output(body, "probabilities")
    assert (out["datatype"], out["shape"]) == ("FP32", [3, 3])
    np.testing.assert_allclose(as_array(out, np.float32), ort_run("mlp", {"input": x})[0],
                               rtol=1e-5, atol=1e-6)


def test_v2_nested_data_and_no_id(client: httpx.Client,
                                  ort_run: Callable[..., list[Any]]) -> None:
    """A call without an id gets one (for feedback later), in ``id`` and X-Request-Id."""
    x = np.array([[0.5, -1, 2, 0], [1, 1, 1, 1]], np.float32)
    response = client.post("/v2/models/mlp/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [2, 4], "data": x.tolist()}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["id"]) == 32 and response.headers["x-request-id"] == body["id"]
    np.testing.assert_allclose(as_array(output(body, "probabilities"), np.float32),
                               ort_run("mlp", {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_v1_predict_matches_onnxruntime(client: httpx.Client,
                                        ort_run: Callable[..., list[Any]]) -> None:
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    response = client.post("/v1/models/mlp:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    predictions = np.asarray(response.json()["predictions"], np.float32)
    np.testing.assert_allclose(predictions, ort_run("mlp", {"input": x})[0], rtol=1e-5,
                               atol=1e-6)


def test_v1_predict_with_several_inputs_and_outputs(client: httpx.Client) -> None:
    instances = [{"a": [1, 2, 3], "b": [0.5, 0.5, 0.5]}, {"a": [0, 0, 0], "b": [1, -1, 2]}]
    response = client.post("/v1/models/add2:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [
        {"sum": [1.5, 2.5, 3.5], "diff": [0.5, 1.5, 2.5]},
        {"sum": [1.0, -1.0, 2.0], "diff": [-1.0, 1.0, -2.0]},
    ]}


def test_two_inputs_and_output_selection(client: httpx.Client) -> None:
    a = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    b = np.array([[10, 20, 30], [0.5, 0.25, 0]], np.float32)
    response = client.post("/v2/models/add2/infer", json=v2_body(
        ("b", "FP32", b), ("a", "FP32", a), outputs=[{"name": "diff"}]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [o["name"] for o in body["outputs"]] == ["diff"]
    np.testing.assert_allclose(as_array(output(body, "diff"), np.float32), a - b)


def test_int64_model(client: httpx.Client, ort_run: Callable[..., list[Any]]) -> None:
    ids = np.array([[1, -2, 2**40], [0, 7, -(2**50)]], np.int64)
    response = client.post("/v2/models/int64/infer", json=v2_body(("ids", "INT64", ids)))
    assert response.status_code == 200, response.text
    out = output(response.json(), "next")
    assert out["datatype"] == "INT64"
    np.testing.assert_array_equal(as_array(out, np.int64), ort_run("int64", {"ids": ids})[0])


def test_bytes_model(client: httpx.Client) -> None:
    texts = ["hello", "", "gr\u00fc\u00dfe \U0001f600"]
    response = client.post("/v2/models/bytes/infer", json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]})
    assert response.status_code == 200, response.text
    out = output(response.json(), "same")
    assert (out["datatype"], out["shape"], out["data"]) == ("BYTES", [3], texts)


def test_zipmap_classifier_answers_an_fp32_tensor_with_its_classes(
        client: httpx.Client, ort_run: Callable[..., list[Any]]) -> None:
    """A scikit-learn classifier's ZipMap probabilities: FP32 [N, C] with the class of each
    column in the output's parameters (the protocol's tensor data); the maps when the call
    asks with parameters.zipmap; V1, which has no datatypes, shows the maps."""
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]],
                       np.float32)
    labels, probabilities = ort_run("iris", {"input": flowers})

    response = client.post("/v2/models/iris/infer", json=v2_body(("input", "FP32", flowers)))
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_array_equal(as_array(output(body, "output_label"), np.int64), labels)
    out = output(body, "output_probability")
    assert (out["datatype"], out["shape"]) == ("FP32", [3, 3])
    assert out["parameters"]["classes"] == [0, 1, 2]
    np.testing.assert_allclose(as_array(out, np.float32),
                               [[row[c] for c in (0, 1, 2)] for row in probabilities],
                               rtol=1e-6)

    asked = client.post("/v2/models/iris/infer", json={
        **v2_body(("input", "FP32", flowers)), "parameters": {"zipmap": True}})
    assert asked.status_code == 200, asked.text
    maps = output(asked.json(), "output_probability")
    assert (maps["datatype"], maps["shape"]) == ("JSON", [3])
    assert maps["parameters"] == {"classes": [0, 1, 2], "zipmap": True}
    for got, want in zip(maps["data"], probabilities, strict=True):
        assert got == pytest.approx({str(k): v for k, v in want.items()}, rel=1e-6)

    response = client.post("/v1/models/iris:predict", json={"instances": flowers.tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["output_label"] for p in predictions] == labels.tolist()
    for got, want in zip(predictions, probabilities, strict=True):
        assert got["output_probability"] == pytest.approx({str(k): v for k, v in want.items()})


def test_concurrent_single_row_calls_are_batched_and_each_gets_its_row(
        base_url: str, ort_run: Callable[..., list[Any]]) -> None:
    callers = 32
    rows = np.random.default_rng(3).standard_normal((callers, 4)).astype(np.float32)
    before = scrape(base_url)

    async def call_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=callers, max_keepalive_connections=callers)
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as client:
            return await asyncio.gather(*(
                client.post("/v2/models/mlp/infer",
                            json=v2_body(("input", "FP32", rows[i:i + 1]), id=f"caller-{i}"))
                for i in range(callers)))

    responses = asyncio.run(call_all())

    expected = ort_run("mlp", {"input": rows})[0]
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == f"caller-{i}"
        got = as_array(output(body, "probabilities"), np.float32)
        assert got.shape == (1, 3)
        np.testing.assert_allclose(got[0], expected[i], rtol=1e-5, atol=1e-6)
    after = scrape(base_url)
    runs = (metric(after, "modelgate_batch_size_count", model="mlp")
            - metric(before, "modelgate_batch_size_count", model="mlp"))
    batched_rows = (metric(after, "modelgate_batch_size_sum", model="mlp")
                    - metric(before, "modelgate_batch_size_sum", model="mlp"))
    single_row_runs = (metric(after, "modelgate_batch_size_bucket", model="mlp", le="1.0")
                       - metric(before, "modelgate_batch_size_bucket", model="mlp", le="1.0"))
    assert batched_rows == callers, "every row is counted in exactly one ORT run"
    assert 1 <= runs < callers, f"{callers} single-row calls took {runs} ORT runs: no batching"
    assert single_row_runs < runs, "some ORT run must have taken more than one row"


def test_model_that_cannot_batch_runs_one_request_per_run(
        base_url: str, ort_run: Callable[..., list[Any]]) -> None:
    """The state is batched on dim 1, so concurrent calls must not be concatenated on dim 0."""
    states = [np.random.default_rng(n).standard_normal((2, n, 4)).astype(np.float32)
              for n in (1, 2, 3, 1, 2, 3)]
    before = scrape(base_url)

    async def call_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
            return await asyncio.gather(*(
                client.post("/v2/models/state/infer", json=v2_body(("state", "FP32", s)))
                for s in states))

    responses = asyncio.run(call_all())

    for state, response in zip(states, responses, strict=True):
        assert response.status_code == 200, response.text
        out = output(response.json(), "next_state")
        assert out["shape"] == list(state.shape)
        np.testing.assert_allclose(as_array(out, np.float32),
                                   ort_run("state", {"state": state})[0])
    after = scrape(base_url)
    runs = (metric(after, "modelgate_batch_size_count", model="state")
            - metric(before, "modelgate_batch_size_count", model="state"))
    assert runs == len(states)


# --------------------------------------------------------------------------- metadata, health


def test_server_metadata_and_health(client: httpx.Client) -> None:
    response = client.get("/v2")
    assert response.status_code == 200
    assert response.json()["name"] == "modelgate"
    assert "version" in response.json()

    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert {name: m["ready"] for name, m in ready.json()["models"].items()} == {
        name: True for name in SERVED}


@pytest.mark.parametrize("path", ["/v2/models/mlp", "/v2/models/mlp/versions/1"])
def test_model_metadata(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "mlp"
    assert body["versions"] == ["1"]
    assert body["platform"] == "onnxruntime_onnx"
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert body["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]


def test_metadata_of_other_models(client: httpx.Client) -> None:
    state = client.get("/v2/models/state").json()
    assert state["inputs"] == [{"name": "state", "datatype": "FP32", "shape": [2, -1, 4]}]
    add2 = client.get("/v2/models/add2").json()
    assert [i["name"] for i in add2["inputs"]] == ["a", "b"]
    assert [o["name"] for o in add2["outputs"]] == ["sum", "diff"]
    iris = client.get("/v2/models/iris").json()
    assert {o["name"]: o["datatype"] for o in iris["outputs"]} == {
        "output_label": "INT64", "output_probability": "FP32"}
    assert iris["outputs"][1]["parameters"] == {"classes": [0, 1, 2]}
    assert client.get("/v2/models/bytes").json()["inputs"][0]["datatype"] == "BYTES"


@pytest.mark.parametrize("path", ["/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready"])
def test_model_ready(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"name": "mlp", "ready": True}


def test_metrics_count_requests_by_code(base_url: str, client: httpx.Client) -> None:
    before = scrape(base_url)
    ok = client.post("/v2/models/mlp/infer",
                     json=v2_body(("input", "FP32", np.zeros((1, 4), np.float32))))
    bad = client.post("/v2/models/mlp/infer",
                      json=v2_body(("input", "FP32", np.zeros((1, 5), np.float32))))
    assert (ok.status_code, bad.status_code) == (200, 400)
    after = scrape(base_url)
    for code in ("200", "400"):
        assert (metric(after, "modelgate_requests_total", model="mlp", code=code)
                - metric(before, "modelgate_requests_total", model="mlp", code=code)) == 1
    assert metric(after, "modelgate_workers", model="mlp") == 1
    assert metric(after, "modelgate_request_duration_seconds_count", model="mlp") >= 2
    response = httpx.get(f"{base_url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")


# --------------------------------------------------------------------------- errors

X14 = np.zeros((1, 4), np.float32)

VALIDATION_ERRORS = [
    ("mlp", v2_body(("inputs", "FP32", X14)), "inputs"),  # unknown input name
    ("add2", v2_body(("a", "FP32", np.zeros((1, 3), np.float32))), "b"),  # missing input
    ("mlp", v2_body(("input", "FP64", X14)), "input"),  # wrong datatype
    ("mlp", v2_body(("input", "FP32", np.zeros((1, 3), np.float32))), "input"),  # shape
    ("mlp", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4],
                         "data": [1, 2, 3, 4]}]}, "input"),  # data length
    ("mlp", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                         "data": ["a", "b", "c", "d"]}]}, "input"),  # strings
    ("int64", {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 2],
                           "data": [1, 2.5]}]}, "ids"),  # non-integral
    ("mlp", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4],
                         "data": [[1, 2, 3, 4], [1, 2]]}]}, "input"),  # ragged
    ("state", v2_body(("state", "FP32", np.zeros((3, 1, 4), np.float32))), "state"),
    ("bytes", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                           "data": [5]}]}, "text"),
]


@pytest.mark.parametrize("model, body, culprit", VALIDATION_ERRORS,
                         ids=[f"{m}-{c}-{i}" for i, (m, _, c) in enumerate(VALIDATION_ERRORS)])
def test_validation_errors_are_400_naming_the_input(client: httpx.Client, model: str,
                                                    body: dict[str, Any], culprit: str) -> None:
    response = client.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert repr(culprit) in response.json()["error"]


@pytest.mark.parametrize("content", [b"", b"{", b'{"inputs": [1, NaN]}', b"[]",
                                     b'{"inputs": "x"}'])
def test_malformed_bodies_are_400_json(client: httpx.Client, content: bytes) -> None:
    response = client.post("/v2/models/mlp/infer", content=content,
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def test_v1_validation_error_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/models/mlp:predict", json={"instances": [[1, 2, 3]]})
    assert response.status_code == 400
    assert "'input'" in response.json()["error"]


@pytest.mark.parametrize("timeout_ms", [0, -5, "soon", True])
def test_bad_timeout_parameter_is_400(client: httpx.Client, timeout_ms: Any) -> None:
    response = client.post("/v2/models/mlp/infer", json=v2_body(
        ("input", "FP32", X14), parameters={"timeout_ms": timeout_ms}))
    assert response.status_code == 400
    assert "timeout_ms" in response.json()["error"]


@pytest.mark.parametrize("method, path", [
    ("GET", "/v2/models/nope"),
    ("GET", "/v2/models/nope/ready"),
    ("POST", "/v2/models/nope/infer"),
    ("POST", "/v1/models/nope:predict"),
    ("GET", "/v2/models/mlp/versions/2"),
    ("GET", "/v2/models/mlp/versions/2/ready"),
    ("POST", "/v2/models/mlp/versions/2/infer"),
])
def test_unknown_model_or_version_is_404_json(client: httpx.Client, method: str,
                                              path: str) -> None:
    response = client.request(method, path, json=v2_body(("input", "FP32", X14)))
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert "'nope'" in error or "'2'" in error


def test_unknown_route_is_404_json(client: httpx.Client) -> None:
    response = client.get("/v3/anything")
    assert response.status_code == 404
    assert response.json()["error"]


def test_model_with_no_worker_is_503_json(idle_url: str) -> None:
    with httpx.Client(base_url=idle_url, timeout=10.0) as client:
        for path in ("/v2/models/idle/infer", "/v2/models/idle/versions/1/infer"):
            response = client.post(path, json=v2_body(("input", "FP32", X14)))
            assert response.status_code == 503, response.text
            assert "'idle'" in response.json()["error"]
        response = client.post("/v1/models/idle:predict", json={"instances": X14.tolist()})
        assert response.status_code == 503
        assert response.json()["error"]


def test_readiness_is_false_without_a_worker(idle_url: str) -> None:
    with httpx.Client(base_url=idle_url, timeout=10.0) as client:
        assert client.get("/v2/health/live").status_code == 200
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503
        assert ready.json()["models"]["idle"]["ready"] is False
        model_ready = client.get("/v2/models/idle/ready")
        assert model_ready.status_code == 503
        assert model_ready.json() == {"name": "idle", "ready": False}
        metadata = client.get("/v2/models/idle").json()  # metadata needs no worker
        assert metadata["versions"] == ["1", "2"]
        assert client.get("/v2/models/idle/versions/1").status_code == 200
        assert client.get("/v2/models/idle/versions/3").status_code == 404



def test_an_idle_keep_alive_connection_outlives_common_client_expiry(base_url: str) -> None:
    """Clients such as httpx drop idle connections after 5 s; a server that closes at the same
    moment races them, and a call sent into the close fails with a read error. The gateway
    keeps idle connections longer, so the client always closes first."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)  # never reconnects by itself
    try:
        for pause_s in (6.0, 0.0):  # 6 s: past uvicorn's default keep-alive of 5 s
            conn.request("GET", "/v2/health/live")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b'{"live":true}')
            time.sleep(pause_s)
    finally:
        conn.close()
