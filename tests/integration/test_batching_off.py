"""``batching: false`` end to end: a model whose rows depend on each other, under concurrent
calls, answers every call as if it ran alone (real gateway, real worker, real Redis)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests import models
from tests.conftest import ServeFactory

pytestmark = pytest.mark.integration

CALLS = 48


@pytest.mark.timeout(120)
def test_concurrent_calls_to_a_batching_false_model_never_share_a_run(
        serve: ServeFactory, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Batch-centred outputs (x minus the mean over the run's rows): a call bundled with others
    or batched in one run with them would get its rows centred on their mean too."""
    model = models.batch_centred_model()
    repo = models.write_repository(tmp_path_factory.mktemp("unbatched"),
                                   {"centred": model}, {"centred": "batching: false\n"})
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((int(rng.integers(1, 4)), 3)).astype(np.float32)
              for _ in range(CALLS)]
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = [session.run(None, {"x": x})[0] for x in inputs]

    async def call_all(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v2/models/centred/infer", json={
                "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.reshape(-1).tolist()}]}) for x in inputs))

    with serve(repo, [("centred", 1)]) as base:
        assert httpx.get(f"{base}/v2/models/centred").json()["parameters"][
            "max_batch_size"] == 0
        responses = asyncio.run(call_all(base))
    assert [r.status_code for r in responses] == [200] * CALLS, responses[0].text
    for response, x, want in zip(responses, inputs, expected, strict=True):
        (output,) = response.json()["outputs"]
        got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(x))
