"""Triton's own HTTP client, unchanged, against modelgate: its default binary tensor path and
plain JSON, numeric and BYTES tensors, answers equal to onnxruntime called directly."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tests import models

pytestmark = pytest.mark.integration

with warnings.catch_warnings():
    # gevent, which tritonclient.http runs on, warns about its own imports on some versions.
    warnings.simplefilter("ignore")
    import tritonclient.http as triton


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, onnx_models: dict[str, onnx.ModelProto],
           serve: Any) -> Iterator[str]:
    repo = models.write_repository(
        tmp_path_factory.mktemp("triton-models"),
        {name: onnx_models[name] for name in ("mlp", "add2", "bytes")})
    with serve(Path(repo), [("mlp", 1), ("add2", 1), ("bytes", 1)]) as base:
        yield base.removeprefix("http://")


@pytest.fixture
def client(server: str) -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = triton.InferenceServerClient(url=server, concurrency=1)
    yield c
    c.close()


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp")
    meta = client.get_model_metadata("mlp")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_numeric_infer_equals_onnxruntime(client: Any, binary: bool,
                                          ort_run: Callable[..., list[Any]]) -> None:
    x = np.random.default_rng(3).random((5, 4), dtype=np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], request_id="r-1")
    got = result.as_numpy("probabilities")
    np.testing.assert_allclose(got, ort_run("mlp", {"input": x})[0], rtol=1e-5, atol=1e-6)
    assert result.get_response()["id"] == "r-1"


def test_default_outputs_come_back_binary(client: Any, ort_run: Callable[..., list[Any]]) -> None:
    """Without outputs, tritonclient asks for every output as binary (binary_data_output)."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 3), dtype=np.float32)
    inputs = [triton.InferInput("a", [2, 3], "FP32"), triton.InferInput("b", [2, 3], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b, binary_data=False)  # mixed binary and JSON inputs
    result = client.infer("add2", inputs)
    response = result.get_response()
    assert all("binary_data_size" in o.get("parameters", {}) for o in response["outputs"])
    expected = ort_run("add2", {"a": a, "b": b})
    for spec, value in zip(response["outputs"], expected, strict=True):
        np.testing.assert_allclose(result.as_numpy(spec["name"]), value)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_tensors(client: Any, binary: bool) -> None:
    text = np.array([b"hello", b"", "h\u00e9".encode()], dtype=np.object_)
    inp = triton.InferInput("text", [3], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary)
    out = triton.InferRequestedOutput("same", binary_data=binary)
    got = client.infer("bytes", [inp], outputs=[out]).as_numpy("same")
    assert [bytes(v) if not isinstance(v, str) else v.encode() for v in got] == list(text)


def test_a_wrong_binary_size_is_a_400(server: str) -> None:
    """tritonclient checks shapes itself, so the malformed body is built by hand."""
    import httpx
    import orjson

    header = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 12}}]})
    response = httpx.post(f"http://{server}/v2/models/mlp/infer",
                          content=header + np.zeros(3, np.float32).tobytes(),
                          headers={"Inference-Header-Content-Length": str(len(header)),
                                   "Content-Type": "application/octet-stream"})
    assert response.status_code == 400
    assert "needs 16 bytes" in response.json()["error"]
    short = httpx.post(f"http://{server}/v2/models/mlp/infer", content=header,
                       headers={"Inference-Header-Content-Length": str(len(header) + 5)})
    assert short.status_code == 400 and "Inference-Header-Content-Length" in short.json()["error"]
