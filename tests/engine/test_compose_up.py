"""`docker compose up` of the gateway, Redis and one worker per demo model, on a real engine.

The stack is compose.yaml as shipped (Redis from the locally built image); the calls come from
the host through the published port, and every answer is compared with ONNX Runtime run here
on the model files copied out of the same image.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from modelgate.core.repository import load_repository
from tests.engine.load import v2_body
from tests.engine.stack import Stack, docker, inspect, inspect_image, open_stack
from tests.procs import wait_until

pytestmark = pytest.mark.engine

SERVICES = ("gateway", "worker", "worker-iris")
HEALTHY_TIMEOUT_S = 60.0  # the image's HEALTHCHECK: first probe 10 s after start


@pytest.fixture(scope="module")
def stack(compose_binary: str, images: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_stack(compose_binary, images, tmp_path_factory.mktemp("compose-up")) as stack:
        stack.up(*SERVICES)
        yield stack


def session(model_file: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])


@pytest.mark.timeout(240)
def test_gateway_answers_v2_calls_from_the_host_equal_to_onnxruntime(
        stack: Stack, image_models: Path) -> None:
    repository = load_repository(image_models)
    assert set(repository) == {"mlp", "iris"}
    rows = np.random.default_rng(17).uniform(0, 8, (16, 4)).astype(np.float32)
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        ready = client.get("/v2/health/ready").json()
        assert {m: s["workers"] for m, s in ready["models"].items()} == {"mlp": 1, "iris": 1}

        mlp = repository["mlp"].default
        answer = client.post("/v2/models/mlp/infer", content=v2_body(rows))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["model_name"], body["model_version"]) == ("mlp", mlp.version)
        [output] = body["outputs"]
        expected = session(mlp.path).run(None, {"input": rows})[0]
        assert output["shape"] == list(expected.shape)
        np.testing.assert_allclose(np.asarray(output["data"], np.float32).reshape(
            expected.shape), expected, rtol=1e-5, atol=1e-6)

        iris = repository["iris"].default
        answer = client.post("/v2/models/iris/infer", content=v2_body(rows))
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        labels, probabilities = session(iris.path).run(
            ["output_label", "output_probability"], {"input": rows})
        assert outputs["output_label"]["data"] == labels.tolist()
        # The ZipMap output is FP32 [N, C], its columns the classes in parameters.classes.
        served = outputs["output_probability"]
        classes = served["parameters"]["classes"]
        got = np.asarray(served["data"], np.float32).reshape(served["shape"])
        np.testing.assert_allclose(got, [[want[c] for c in classes] for want in probabilities],
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.timeout(120)
def test_image_runs_as_non_root_and_its_healthcheck_turns_healthy(
        stack: Stack, images: dict[str, str]) -> None:
    """The gateway's health comes from the image's own HEALTHCHECK (compose.yaml sets none
    for it); the workers, which serve no HTTP, have it turned off."""
    image = inspect_image(images["modelgate"])
    assert image["Config"]["User"] == "10001:10001"
    assert image["Config"]["Healthcheck"]["Test"][0] == "CMD"
    [gateway] = stack.containers("gateway")

    def health() -> str:
        return str(inspect(gateway)["State"]["Health"]["Status"])

    wait_until(lambda: health() == "healthy", HEALTHY_TIMEOUT_S, "the gateway to turn healthy",
               details=lambda: f"{health()}: {inspect(gateway)['State']['Health']['Log'][-3:]}",
               interval_s=0.5)
    assert docker("container", "exec", gateway, "id", "-u").strip() == "10001"
    for service in SERVICES:
        for container in stack.containers(service):
            table = docker("container", "top", container, "-o", "pid,uid").splitlines()[1:]
            uids = [line.split()[1] for line in table]
            assert uids and set(uids) == {"10001"}, f"{service}: processes run as {uids}"
            if service != "gateway":
                assert "Health" not in inspect(container)["State"], service

