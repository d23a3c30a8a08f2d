"""Every answer on the protocol's REST paths against KServe's published schemas: a gateway's
recorded answers to each kind of call (metadata, infer in JSON and binary, a scikit-learn
classifier, errors) validate, and the checker itself finds what does not."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import orjson
import pytest

from modelgate.core.embedded_redis import free_port
from tests import models
from tests.conftest import redis_url_for_db
from tests.procs import Processes, wait_until
from tests.protocol.conformance import check_recorded, violations

pytestmark = pytest.mark.integration

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import tritonclient.http as triton

INPUT = {"name": "input", "shape": [2, 4], "datatype": "FP32",
         "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}


def test_every_kind_of_answer_validates(tmp_path: Path, redis_url: str,
                                        onnx_models: dict[str, onnx.ModelProto]) -> None:
    repo = models.write_repository(tmp_path / "models",
                                   {n: onnx_models[n] for n in ("mlp", "iris", "bytes")})
    processes = Processes(tmp_path)
    port = free_port()
    url = redis_url_for_db(redis_url, 60)
    base = f"http://127.0.0.1:{port}"
    try:
        for name in ("mlp", "iris", "bytes"):
            processes.spawn(f"worker-{name}", ["worker", "--models", str(repo), "--model", name,
                                               "--redis-url", url])
        processes.spawn("gateway", ["gateway", "--models", str(repo), "--redis-url", url,
                                    "--port", str(port)])
        with httpx.Client(base_url=base, timeout=10) as client:
            wait_until(lambda: _ok(client, "/v2/health/ready"), 60, "the gateway",
                       processes.check_alive, processes.logs)
            for path in ("/v2", "/v2/", "/v2/health/live", "/v2/models/iris",
                         "/v2/models/iris/versions/1", "/v2/models/mlp/ready",
                         "/v2/models/nope", "/v2/models/iris/versions/9"):
                client.get(path)
            assert client.get("/v2/").json()["name"] == "modelgate"  # not a 307
            for model in ("mlp", "iris"):
                assert client.post(f"/v2/models/{model}/infer",
                                   json={"id": "a", "inputs": [INPUT]}).status_code == 200
            client.post("/v2/models/iris/infer",
                        json={"inputs": [INPUT], "parameters": {"zipmap": True}})
            client.post("/v2/models/bytes/infer", json={"inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
            for bad in ({"inputs": []}, {"inputs": [{**INPUT, "shape": [3, 4]}]}):
                assert client.post("/v2/models/mlp/infer", json=bad).status_code == 400
            assert client.post("/v2/models/nope/infer", json={"inputs": [INPUT]}
                               ).status_code == 404
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            triton_client = triton.InferenceServerClient(url=base.removeprefix("http://"))
        try:  # binary answers: the JSON header validates, the data follows it
            inp = triton.InferInput("input", [2, 4], "FP32")
            inp.set_data_from_numpy(np.asarray(INPUT["data"], np.float32))
            result = triton_client.infer("iris", [inp])
            assert result.as_numpy("output_probability").shape == (2, 3)
        finally:
            triton_client.close()
    finally:
        processes.stop(labels_first=("gateway",))  # checks the answers too
    recorded = [orjson.loads(line) for log in (tmp_path / "answers").glob("*.jsonl")
                for line in log.read_bytes().splitlines()]
    assert len(recorded) >= 15, "the gateway recorded no answers to check"
    assert any(r.get("header_length") for r in recorded)
    assert check_recorded(tmp_path / "answers") == []


def _ok(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def _answer(path: str, status: int, body: Any, **extra: Any) -> dict[str, Any]:
    return {"method": "POST" if path.endswith("/infer") else "GET", "path": path,
            "status": status, "content_type": "application/json",
            "body": orjson.dumps(body).decode(), **extra}


def test_the_checker_finds_what_does_not_conform() -> None:
    """The JSON maps of a ZipMap output (the encoding before issue 18), a 307 turned into
    a body without the server's name, an error without 'error': each a violation."""
    maps = {"model_name": "iris", "outputs": [{"name": "p", "datatype": "JSON", "shape": [1],
                                               "data": [{"0": 0.9, "1": 0.1}]}]}
    found = violations([
        _answer("/v2/models/iris/infer", 200, maps),
        _answer("/v2/", 200, {"version": "1", "extensions": []}),
        _answer("/v2/models/iris", 404, {"detail": "no"}),
    ])
    assert len(found) == 3, found
    assert "outputs/0/data/0" in found[0]
    binary = {"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1],
                                              "parameters": {"binary_data_size": 4}}]}
    asked = {"model_name": "iris", "outputs": [{**maps["outputs"][0],  # type: ignore[index]
                                                "parameters": {"zipmap": True}}]}
    assert violations([_answer("/v2/models/m/infer", 200, binary, header_length=90),
                       _answer("/v2/models/iris/infer", 200, asked),
                       _answer("/v1/models/iris:predict", 200, {"predictions": [{}]})]) == []
