"""The Open Inference Protocol over gRPC with Triton's own clients, unchanged: tritonclient.grpc
(sync and aio) against a real gateway and workers. Metadata, infer with several inputs and
outputs, BYTES, typed contents, a ZipMap classifier, and every failure with the status code a
Triton client expects and the message the HTTP answer carries."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import pytest

from modelgate.core.embedded_redis import free_port
from tests import metrics, models
from tests.procs import wait_until

pytestmark = pytest.mark.integration

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import tritonclient.grpc as triton
    import tritonclient.grpc.aio as triton_aio
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException

KEY = "grpc-test-key"
# KServe's SDK, in a venv of its own (see kserve_client.py), built once and kept under the
# project's venv (`make clean` removes it); its install time counts in the CI budget (~1 min).
KSERVE_SDK = "kserve==0.21.0"
KSERVE_VENV = Path(sys.prefix) / "kserve-sdk"
KSERVE_INSTALL_TIMEOUT_S = 600
SLOW = "slow"  # ~100 ms a row: for deadlines and overload


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, onnx_models: dict[str, onnx.ModelProto],
          serve: Any) -> Iterator[tuple[str, str]]:
    """(HTTP base URL, gRPC address) of one gateway with workers for every model but
    ``idle`` (none: no worker, no autoscaler)."""
    repo = models.write_repository(
        tmp_path_factory.mktemp("grpc-models"),
        {**{name: onnx_models[name] for name in ("mlp", "add2", "bytes", "iris", "int64")},
         SLOW: models.matmul_chain(1024, 1200), "idle": onnx_models["mlp"]},
        configs={SLOW: "max_queue: 2\nmax_batch_size: 1\n"})
    port = free_port()
    plan = [("mlp", 1), ("add2", 1), ("bytes", 1), ("iris", 1), ("int64", 1), (SLOW, 1)]
    with serve(Path(repo), plan, grpc_port=port) as base:
        yield base, f"127.0.0.1:{port}"


@pytest.fixture
def client(stack: tuple[str, str]) -> Iterator[Any]:
    c = triton.InferenceServerClient(url=stack[1])
    yield c
    c.close()


def _error(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert not client.is_server_ready()  # as over HTTP: model "idle" has no worker
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("idle")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "modelgate" and "model_repository" in server["extensions"]
    meta = client.get_model_metadata("add2", as_json=True)
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("a", "FP32", ["-1", "3"]), ("b", "FP32", ["-1", "3"])]  # int64 as JSON text
    assert [o["name"] for o in meta["outputs"]] == ["sum", "diff"]


def test_several_inputs_and_outputs_equal_onnxruntime(
        client: Any, ort_run: Callable[..., list[Any]]) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 0.5, np.float32)
    inputs = [triton.InferInput("a", [2, 3], "FP32"), triton.InferInput("b", [2, 3], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add2", inputs, request_id="call-9")
    expected = ort_run("add2", {"a": a, "b": b})
    np.testing.assert_allclose(result.as_numpy("sum"), expected[0])
    np.testing.assert_allclose(result.as_numpy("diff"), expected[1])
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("call-9", "add2", "1")
    only = client.infer("add2", inputs, model_version="1",
                        outputs=[triton.InferRequestedOutput("diff")])
    assert [o.name for o in only.get_response().outputs] == ["diff"]


def test_bytes_and_int64_tensors(client: Any) -> None:
    text = np.array([b"hello", b"", "gr\u00fc\u00df".encode()], dtype=np.object_)
    inp = triton.InferInput("text", [3], "BYTES")
    inp.set_data_from_numpy(text)
    assert list(client.infer("bytes", [inp]).as_numpy("same")) == list(text)
    ids = np.array([[1, 2**40], [-3, 4]], np.int64)
    inp = triton.InferInput("ids", [2, 2], "INT64")
    inp.set_data_from_numpy(ids)
    np.testing.assert_array_equal(client.infer("int64", [inp]).as_numpy("next"), ids + 1)


def test_typed_contents_in_typed_contents_out(stack: tuple[str, str]) -> None:
    """The protocol's other form: typed ``contents`` instead of raw bytes (Triton's own
    messages, sent through its generated stub)."""
    with grpc.insecure_channel(stack[1]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="mlp")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 4])
        tensor.contents.fp32_contents.extend([0.1, 0.2, 0.3, 0.4, 1, 2, 3, 4])
        response = stub.ModelInfer(request)
        assert not response.raw_output_contents
        [out] = response.outputs
        assert (out.name, out.datatype, list(out.shape)) == ("probabilities", "FP32", [2, 3])
        rows = np.asarray(out.contents.fp32_contents).reshape(2, 3)
        np.testing.assert_allclose(rows.sum(axis=1), [1, 1], rtol=1e-5)
        # A call without an id gets one, and its answer is kept for feedback like HTTP's.
        assert len(response.id) == 32
        label = [{"id": response.id, "label": int(np.argmax(rows[r])), "row": r} for r in (0, 1)]

        def labelled() -> bool:  # the answer is stored within 0.2 s, off the response path
            httpx.post(f"{stack[0]}/v2/models/mlp/feedback", json=label).raise_for_status()
            quality = httpx.get(f"{stack[0]}/v2/models/mlp/quality").json()
            return bool(quality["labels"]["matched"] == 2)

        wait_until(labelled, 10, "the gRPC answer's rows to be labelled")
        bad = service_pb2.ModelInferRequest(model_name="mlp")
        tensor = bad.inputs.add(name="input", datatype="FP32", shape=[2, 4])
        tensor.contents.fp32_contents.extend([1.0] * 7)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs 8 values" in (caught.value.details() or "")


def test_a_zipmap_classifier_answers_its_probabilities_as_a_tensor(
        client: Any, ort_run: Callable[..., list[Any]]) -> None:
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    inp = triton.InferInput("input", [2, 4], "FP32")
    inp.set_data_from_numpy(flowers)
    result = client.infer("iris", [inp])
    labels, probabilities = ort_run("iris", {"input": flowers})
    np.testing.assert_array_equal(result.as_numpy("output_label"), labels)
    out = result.get_output("output_probability")
    assert out.parameters["classes"].string_param == "[0,1,2]"
    np.testing.assert_allclose(result.as_numpy("output_probability"),
                               [[row[c] for c in (0, 1, 2)] for row in probabilities],
                               rtol=1e-6)


def _same_message_as_http(stack: tuple[str, str], path: str, body: dict[str, Any],
                          status: int) -> str:
    answer = httpx.post(f"{stack[0]}{path}", json=body)
    assert answer.status_code == status, answer.text
    return str(answer.json()["error"])


def test_failures_get_triton_codes_and_the_http_message(client: Any,
                                                        stack: tuple[str, str]) -> None:
    x = np.zeros((1, 4), np.float32)
    inp = triton.InferInput("input", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    unknown = _error(lambda: client.infer("nope", [inp]))
    assert unknown.status() == "StatusCode.NOT_FOUND"
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                        "data": [0, 0, 0, 0]}]}
    assert unknown.message() == _same_message_as_http(stack, "/v2/models/nope/infer", body, 404)

    wrong = triton.InferInput("input", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3), np.float32))
    invalid = _error(lambda: client.infer("mlp", [wrong]))
    assert invalid.status() == "StatusCode.INVALID_ARGUMENT"
    body["inputs"][0].update(shape=[1, 3], data=[0, 0, 0])
    assert invalid.message() == _same_message_as_http(stack, "/v2/models/mlp/infer", body, 400)

    missing = _error(lambda: client.infer("idle", [inp]))  # no worker, no autoscaler
    assert missing.status() == "StatusCode.UNAVAILABLE"
    assert "no live worker" in str(missing.message())
    assert _error(lambda: client.get_model_metadata("nope")).status() == "StatusCode.NOT_FOUND"


def test_the_grpc_deadline_is_the_calls_deadline(client: Any, stack: tuple[str, str]) -> None:
    """A deadline shorter than the work: DEADLINE_EXCEEDED for the caller, and the gateway is
    done with the call by then (not at the 30 s default): DEADLINE_EXCEEDED when its own timer
    fired first, CANCELLED when the client's cancellation arrived first."""

    def ended() -> float:
        return sum(_grpc_count(stack[0], SLOW, code)
                   for code in ("DEADLINE_EXCEEDED", "CANCELLED"))

    before = ended()
    inp = triton.InferInput("input", [1, 1024], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1024), np.float32))
    late = _error(lambda: client.infer(SLOW, [inp], client_timeout=0.03))
    assert late.status() == "StatusCode.DEADLINE_EXCEEDED"
    wait_until(lambda: ended() > before, 10, "the gateway to count the expired call")


def test_overload_is_resource_exhausted_with_the_http_message(stack: tuple[str, str]) -> None:
    """max_queue 2 on a slow model: the calls past it are refused at once."""

    async def burst() -> list[Any]:
        client = triton_aio.InferenceServerClient(url=stack[1])
        try:
            inp = triton_aio.InferInput("input", [1, 1024], "FP32")
            inp.set_data_from_numpy(np.ones((1, 1024), np.float32))
            return await asyncio.gather(*(client.infer(SLOW, [inp]) for _ in range(12)),
                                        return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(burst())
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    assert refused, "no call was refused"
    assert all(r.status() == "StatusCode.RESOURCE_EXHAUSTED" for r in refused), refused
    assert all("requests queued, its limit is 2" in str(r.message()) for r in refused)
    assert any(not isinstance(r, Exception) for r in results)


def test_the_aio_client_runs_many_calls_at_once(stack: tuple[str, str],
                                                ort_run: Callable[..., list[Any]]) -> None:
    rows = np.random.default_rng(5).standard_normal((40, 4)).astype(np.float32)

    async def calls() -> list[np.ndarray]:
        client = triton_aio.InferenceServerClient(url=stack[1])
        try:
            assert await client.is_server_live()
            meta = await client.get_model_metadata("mlp", as_json=True)
            assert meta["name"] == "mlp"

            async def one(row: np.ndarray) -> np.ndarray:
                inp = triton_aio.InferInput("input", [1, 4], "FP32")
                inp.set_data_from_numpy(row[None, :])
                return (await client.infer("mlp", [inp])).as_numpy("probabilities")[0]

            return await asyncio.gather(*(one(row) for row in rows))
        finally:
            await client.close()

    got = asyncio.run(calls())
    np.testing.assert_allclose(np.stack(got), ort_run("mlp", {"input": rows})[0], rtol=1e-5,
                               atol=1e-6)
    assert _grpc_count(stack[0], "mlp", "OK") >= len(rows)


def _grpc_count(base: str, model: str, code: str) -> float:
    return metrics.value(metrics.scrape(base), "modelgate_grpc_requests_total",
                         model=model, grpc_code=code)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, onnx_models: dict[str, onnx.ModelProto],
          serve: Any) -> Iterator[str]:
    repo = models.write_repository(tmp_path_factory.mktemp("grpc-keyed"),
                                   {"mlp": onnx_models["mlp"]})
    port = free_port()
    with serve(Path(repo), [("mlp", 1)], grpc_port=port,
               gateway_env={"MODELGATE_API_KEY": KEY}):
        yield f"127.0.0.1:{port}"


def test_api_keys_come_from_the_authorization_metadata(keyed: str) -> None:
    client = triton.InferenceServerClient(url=keyed)
    try:
        assert client.is_server_live()  # the health RPCs stay open, like HTTP's probes
        inp = triton.InferInput("input", [1, 4], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 4), np.float32))
        refused = _error(lambda: client.infer("mlp", [inp]))
        assert refused.status() == "StatusCode.UNAUTHENTICATED"
        assert "requires an API key" in str(refused.message())
        wrong = _error(lambda: client.infer("mlp", [inp],
                                            headers={"authorization": "Bearer nope"}))
        assert wrong.status() == "StatusCode.UNAUTHENTICATED"
        good = client.infer("mlp", [inp], headers={"authorization": f"Bearer {KEY}"})
        assert good.as_numpy("probabilities").shape == (1, 3)
        assert client.get_model_metadata("mlp", headers={"authorization": f"Bearer {KEY}"})
    finally:
        client.close()


@pytest.fixture(scope="module")
def kserve_python() -> str:
    """The interpreter of a venv holding KServe's SDK, built on first use."""
    python = KSERVE_VENV / "bin" / "python"
    marker = KSERVE_VENV / f".installed-{KSERVE_SDK}"
    if not marker.exists():
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(KSERVE_VENV)], check=True,
                       timeout=120)
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", KSERVE_SDK],
                              capture_output=True, text=True, timeout=KSERVE_INSTALL_TIMEOUT_S)
        assert done.returncode == 0, f"pip install {KSERVE_SDK} failed:\n{done.stderr[-3000:]}"
        marker.write_text(f"{time.monotonic() - started:.0f} s\n")
    return str(python)


def _kserve(python: str, *arguments: str) -> dict[str, Any]:
    script = Path(__file__).with_name("kserve_client.py")
    done = subprocess.run([python, str(script), *arguments], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return seen


def test_kserves_grpc_client_works_unchanged(kserve_python: str, stack: tuple[str, str],
                                              keyed: str) -> None:
    seen = _kserve(kserve_python, stack[1], SLOW)
    assert seen["live"] and not seen["ready"] and seen["model_ready"]  # "idle" has no worker
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert seen["add2"]["id"] == "k-1" and seen["add2"]["model_name"] == "add2"
    np.testing.assert_allclose(seen["add2"]["outputs"]["sum"], a + 0.5)
    np.testing.assert_allclose(seen["add2"]["outputs"]["diff"], a - 0.5)
    assert seen["bytes"] == ["hello", "gr\u00fc\u00df"]
    assert seen["unknown_model"]["failed"]["code"] == "NOT_FOUND"
    assert "unknown model 'nope'" in seen["unknown_model"]["failed"]["message"]
    assert seen["bad_shape"]["failed"]["code"] == "INVALID_ARGUMENT"
    assert "has shape [1, 3]" in seen["bad_shape"]["failed"]["message"]
    assert seen["deadline"]["failed"]["code"] == "DEADLINE_EXCEEDED"

    keys = _kserve(kserve_python, keyed, SLOW, KEY)
    assert keys["live"]
    assert keys["without_key"]["failed"]["code"] == "UNAUTHENTICATED"
    assert np.asarray(keys["with_key"]).shape == (1, 3)
