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
    # Rows per ORT run for the peer's batcher. modelgate's config.yaml does not set it: its
    # workers measure the model and choose (modelgate.worker.tuning), which the page shows.
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
        """Write the model under ``root``; returns the ``.onnx`` path."""
        path = root / self.name / "1" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(self.build(), str(path))
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


def binary_body(body: Mapping[str, Any]) -> tuple[bytes, int]:
    """``body`` in the binary tensor extension: the JSON header (each input's data replaced by
    ``parameters.binary_data_size``), then the inputs' raw little-endian bytes; and the length
    of the header (the ``Inference-Header-Content-Length``)."""
    inputs, blobs = [], []
    for tensor in body["inputs"]:
        raw = np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]]).tobytes()
        inputs.append({k: v for k, v in tensor.items() if k != "data"}
                      | {"parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    header = orjson.dumps({**body, "inputs": inputs})
    return header + b"".join(blobs), len(header)


def mlp() -> Workload:
    from modelgate.cli.demo import mlp_model

    return Workload(
        name="mlp",
        description="tiny MLP (FP32 [1,4] -> [1,3]), one row per request",
        build=mlp_model,
        body={"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                          "data": [0.1, 0.2, 0.3, 0.4]}]},
    )


MLP64_SIZES = (64, 256, 256, 10)


def mlp64() -> Workload:
    from modelgate.cli.demo import mlp_model

    inputs, hidden, _, outputs = MLP64_SIZES
    row = np.random.default_rng(2).normal(0, 1, inputs).round(3)
    return Workload(
        name="mlp64",
        description=f"mid-size MLP ({'->'.join(map(str, MLP64_SIZES))}, ReLU, softmax; "
                    f"FP32 [1,{inputs}] -> [1,{outputs}]), one row per request",
        build=lambda: mlp_model(inputs=inputs, hidden=hidden, outputs=outputs, layers=2),
        body={"inputs": [{"name": "input", "shape": [1, inputs], "datatype": "FP32",
                          "data": row.tolist()}]},
    )


# The heavy model's depth: 24 layers of a 256x256 matrix product per row, ~400 M multiply-adds,
# a few ms per row on one core, so ONNX Runtime's time dominates any serving overhead.
HEAVY_LAYERS = 24
HEAVY_FEATURES = 64
# On one thread this model gains nothing from batching and loses past ~16 rows (its per-row
# 256x256 activations leave the cache; see the batch-size table in docs/benchmarks.md): the
# peer's batcher is configured as a user reading that table would; modelgate's workers measure
# it and choose for themselves.
HEAVY_MAX_BATCH_SIZE = 8


def heavy() -> Workload:
    from modelgate.cli.demo import heavy_model

    return Workload(
        name="heavy",
        description=f"compute-bound model (`modelgate.cli.demo.heavy_model(layers={HEAVY_LAYERS})`"
                    ", "
                    f"~{HEAVY_LAYERS * 256 ** 3 / 1e6:.0f} M multiply-adds per row; FP32 "
                    f"[1,{HEAVY_FEATURES}] -> [1,3]), one row per request",
        build=lambda: heavy_model(features=HEAVY_FEATURES, layers=HEAVY_LAYERS),
        body={"inputs": [{"name": "input", "shape": [1, HEAVY_FEATURES], "datatype": "FP32",
                          "data": [round(0.01 * i - 0.3, 2) for i in range(HEAVY_FEATURES)]}]},
        workers=len(os.sched_getaffinity(0)),  # one per core
        max_batch_size=HEAVY_MAX_BATCH_SIZE,
    )


# A MobileNet-style CNN: 3x112x112 images (the JSON body stays under the gateway's
# --large-body-bytes, so both transports parse in the gateway process), depthwise-separable
# conv / batch-norm / ReLU stages (MobileNet v1's, to 512 channels), random weights; ~85 M
# multiply-adds per image.
CNN_SIZE = 112
STAGES = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1))


def cnn_model(size: int = CNN_SIZE, seed: int = 0) -> onnx.ModelProto:
    """Conv 3x3/2 (3->32), then depthwise 3x3 + pointwise 1x1 stages (``STAGES``: channels
    and stride), each with batch norm and ReLU, global average pool, a dense layer to 10
    classes and softmax. Input FP32 [-1, 3, size, size]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []

    def tensor(name: str, array: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn_relu(x: str, name: str, cin: int, cout: int, kernel: int, stride: int,
                     group: int) -> str:
        fan_in = cin // group * kernel * kernel
        w = tensor(f"{name}_w", rng.normal(0, np.sqrt(2 / fan_in),
                                           (cout, cin // group, kernel, kernel)))
        nodes.append(helper.make_node("Conv", [x, w], [f"{name}_c"], strides=[stride] * 2,
                                      pads=[kernel // 2] * 4, group=group))
        bn = [tensor(f"{name}_{k}", v) for k, v in (
            ("scale", rng.uniform(0.5, 1.5, cout)), ("bias", rng.normal(0, 0.1, cout)),
            ("mean", rng.normal(0, 0.1, cout)), ("var", rng.uniform(0.5, 1.5, cout)))]
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_c", *bn], [f"{name}_b"]))
        nodes.append(helper.make_node("Relu", [f"{name}_b"], [f"{name}_r"]))
        return f"{name}_r"

    x = conv_bn_relu("input", "stem", 3, 32, 3, 2, 1)
    width = 32
    for i, (out, stride) in enumerate(STAGES):
        x = conv_bn_relu(x, f"dw{i}", width, width, 3, stride, width)
        x = conv_bn_relu(x, f"pw{i}", width, out, 1, 1, 1)
        width = out
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["features"]),
              helper.make_node("Gemm", ["features", tensor("fc_w", rng.normal(
                  0, 1 / np.sqrt(width), (width, 10))), tensor("fc_b", np.zeros(10))],
                  ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cnn() -> Workload:
    pixels = np.random.default_rng(1).uniform(0, 1, (1, 3, CNN_SIZE, CNN_SIZE)).round(2)
    return Workload(
        name="cnn",
        description=f"MobileNet-style CNN (`bench.workloads.cnn_model`: FP32 [1,3,{CNN_SIZE},"
                    f"{CNN_SIZE}] -> [1,10], depthwise-separable conv/batch-norm/ReLU stages, "
                    "random weights), one image per request (JSON, and binary tensors for "
                    "modelgate-binary)",
        build=cnn_model,
        body={"inputs": [{"name": "input", "shape": list(pixels.shape), "datatype": "FP32",
                          "data": pixels.reshape(-1).tolist()}]},
        workers=len(os.sched_getaffinity(0)),  # one per core
        max_batch_size=8,
    )


WORKLOADS: dict[str, Callable[[], Workload]] = {"mlp": mlp, "mlp64": mlp64, "heavy": heavy,
                                               "cnn": cnn}
