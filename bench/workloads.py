"""What is served and how it is called: a model, one request body, and the answer to expect.

A workload writes its model into a Triton-style repository (``ROOT/{name}/1/model.onnx``), so
every target can serve it from the same files. The expected answer is computed here with an
in-process ONNX Runtime session; a target whose readiness probe returns anything else is not
benchmarked (a fast wrong answer is no result).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import orjson

from bench.naive_server import DTYPES


@dataclass(frozen=True, slots=True)
class Workload:
    name: str  # the model's name in the repository and in URLs
    description: str
    build: Callable[[], onnx.ModelProto]
    body: dict[str, Any]  # one V2 infer request

    @property
    def infer_path(self) -> str:
        return f"/v2/models/{self.name}/infer"

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body)

    def write(self, root: Path) -> Path:
        """Write the model under ``root``; returns the ``.onnx`` path."""
        path = root / self.name / "1" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(self.build(), str(path))
        return path

    def expected(self, model_path: Path) -> dict[str, np.ndarray]:
        """The outputs for ``body``, computed in process."""
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        feeds = {i["name"]: np.asarray(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"])
                 for i in self.body["inputs"]}
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))


class WrongAnswer(RuntimeError):
    """A server answered the probe request, but not with what the model computes."""


def check_answer(body: bytes, expected: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`WrongAnswer` unless ``body`` is a V2 answer with the expected outputs."""
    try:
        outputs = {o["name"]: o for o in orjson.loads(body)["outputs"]}
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise WrongAnswer(f"not a V2 infer answer: {body[:200]!r}") from e
    for name, want in expected.items():
        if name not in outputs:
            raise WrongAnswer(f"output {name!r} missing from {sorted(outputs)}")
        got = np.asarray(outputs[name]["data"], dtype=want.dtype)
        if got.size != want.size or list(outputs[name]["shape"]) != list(want.shape) or \
                not np.allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-6):
            raise WrongAnswer(f"output {name!r} is {outputs[name]}, expected {want.tolist()}")


def mlp() -> Workload:
    from modelgate.demo import mlp_model

    return Workload(
        name="mlp",
        description="tiny MLP (FP32 [1,4] -> [1,3]), one row per request",
        build=mlp_model,
        body={"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                          "data": [0.1, 0.2, 0.3, 0.4]}]},
    )


WORKLOADS: dict[str, Callable[[], Workload]] = {"mlp": mlp}
