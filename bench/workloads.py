"""What is served and how it is called: a model, one request body, and the answer to expect.

A workload writes its model into a Triton-style repository (``ROOT/{name}/1/model.onnx``), so
every target can serve it from the same files, and says how many ORT worker processes a server
that can scale out may use for it: one where the comparison is per-request overhead (the tiny
MLP, against a single-process baseline), one per core where it is compute (the heavy model).

The expected answer is computed here with an in-process ONNX Runtime session; a target whose
readiness probe returns anything else is not benchmarked (a fast wrong answer is no result).
"""

from __future__ import annotations

import os
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
    workers: int = 1  # ORT worker processes for servers that scale out (modelgate, the peer)
    # Rows per ORT run for servers that batch (modelgate's config.yaml, the peer's batcher);
    # None: modelgate's default.
    max_batch_size: int | None = None

    @property
    def infer_path(self) -> str:
        return f"/v2/models/{self.name}/infer"

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body)

    @property
    def rows_per_request(self) -> int:
        return int(self.body["inputs"][0]["shape"][0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The request's inputs as arrays, shaped as sent."""
        return {i["name"]: np.asarray(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"])
                for i in self.body["inputs"]}

    def feeds(self, rows: int) -> dict[str, np.ndarray]:
        """The request's inputs repeated to ``rows`` rows (for ONNX Runtime without a server)."""
        return {name: np.resize(array, (rows, *array.shape[1:]))
                for name, array in self.arrays().items()}

    def write(self, root: Path) -> Path:
        """Write the model (and its ``config.yaml``, if it has settings) under ``root``; returns
        the ``.onnx`` path."""
        path = root / self.name / "1" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(self.build(), str(path))
        if self.max_batch_size is not None:
            (root / self.name / "config.yaml").write_text(
                f"max_batch_size: {self.max_batch_size}\n")
        return path

    def expected(self, model_path: Path) -> dict[str, np.ndarray]:
        """The outputs for ``body``, computed in process."""
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, self.arrays()), strict=True))


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
    from modelgate.cli.demo import mlp_model

    return Workload(
        name="mlp",
        description="tiny MLP (FP32 [1,4] -> [1,3]), one row per request",
        build=mlp_model,
        body={"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                          "data": [0.1, 0.2, 0.3, 0.4]}]},
    )


# The heavy model's depth: 24 layers of a 256x256 matrix product per row, ~400 M multiply-adds,
# a few ms per row on one core, so ONNX Runtime's time dominates any serving overhead.
HEAVY_LAYERS = 24
HEAVY_FEATURES = 64
# On one thread this model gains nothing from batching and loses past ~16 rows (its per-row
# 256x256 activations leave the cache; see the batch-size table in docs/benchmarks.md), so
# servers are configured as a user reading that table would: small batches, which also share
# the queue evenly between workers instead of one worker taking 64 rows while another idles.
HEAVY_MAX_BATCH_SIZE = 8


def heavy() -> Workload:
    from modelgate.cli.demo import heavy_model

    return Workload(
        name="heavy",
        description=f"compute-bound model (`modelgate.cli.demo.heavy_model(layers={HEAVY_LAYERS})`"
                    ", "
                    f"~{HEAVY_LAYERS * 256 ** 3 / 1e6:.0f} M multiply-adds per row; FP32 "
                    f"[1,{HEAVY_FEATURES}] -> [1,3]), one row per request, batches of up to "
                    f"{HEAVY_MAX_BATCH_SIZE} rows",
        build=lambda: heavy_model(features=HEAVY_FEATURES, layers=HEAVY_LAYERS),
        body={"inputs": [{"name": "input", "shape": [1, HEAVY_FEATURES], "datatype": "FP32",
                          "data": [round(0.01 * i - 0.3, 2) for i in range(HEAVY_FEATURES)]}]},
        workers=len(os.sched_getaffinity(0)),  # one per core
        max_batch_size=HEAVY_MAX_BATCH_SIZE,
    )


WORKLOADS: dict[str, Callable[[], Workload]] = {"mlp": mlp, "heavy": heavy}
