"""The demo model repository, built locally (nothing is downloaded):

- ``mlp``: a small multilayer perceptron made with ``onnx.helper`` (FP32 [-1, 4] -> [-1, 3]).
- ``iris``: a scikit-learn logistic regression trained on the iris data that ships with
  scikit-learn, converted with skl2onnx; its probabilities output is a ZipMap,
  ``seq(map(int64, tensor(float)))``, served as an FP32 ``[N, 3]`` tensor with its classes
  (``modelgate.core.zipmap``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def mlp_model(inputs: int = 4, hidden: int = 16, outputs: int = 3, seed: int = 0,
              layers: int = 1) -> onnx.ModelProto:
    """Dense ReLU layers then softmax, with fixed random weights; batch dim is symbolic."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    previous, width = "input", inputs
    for layer in range(layers):
        w = numpy_helper.from_array(
            rng.normal(0, 1 / np.sqrt(width), (width, hidden)).astype(np.float32), f"w{layer}")
        b = numpy_helper.from_array(rng.normal(0, 0.1, hidden).astype(np.float32), f"b{layer}")
        initializers += [w, b]
        nodes += [helper.make_node("Gemm", [previous, f"w{layer}", f"b{layer}"], [f"h{layer}"]),
                  helper.make_node("Relu", [f"h{layer}"], [f"a{layer}"])]
        previous, width = f"a{layer}", hidden
    w_out = numpy_helper.from_array(
        rng.normal(0, 1 / np.sqrt(width), (width, outputs)).astype(np.float32), "w_out")
    b_out = numpy_helper.from_array(np.zeros(outputs, np.float32), "b_out")
    initializers += [w_out, b_out]
    nodes += [helper.make_node("Gemm", [previous, "w_out", "b_out"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", outputs])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def iris_classifier() -> onnx.ModelProto:
    """Logistic regression on scikit-learn's bundled iris data, with a ZipMap output."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True)
    classifier = LogisticRegression(max_iter=500).fit(features.astype(np.float32), labels)
    model = convert_sklearn(
        classifier, initial_types=[("input", FloatTensorType([None, 4]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    return model


def write_model(model: onnx.ModelProto, root: Path, name: str, version: int = 1) -> Path:
    path = Path(root) / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_demo_repository(root: Path) -> list[str]:
    """Write the demo models and their drift profiles under ``root``; returns their names."""
    from sklearn.datasets import load_iris

    from modelgate.core.profile import build_profile, profile_path, run_model
    from modelgate.core.repository import load_model

    write_model(mlp_model(), root, "mlp")
    write_model(iris_classifier(), root, "iris")
    references = {
        "mlp": np.random.default_rng(0).standard_normal((5000, 4)).astype(np.float32),
        "iris": load_iris(return_X_y=True)[0].astype(np.float32),
    }
    for name, rows in references.items():
        version = load_model(Path(root) / name).default
        inputs = {"input": rows}
        build_profile(version, inputs, run_model(version, inputs)).save(profile_path(version))
    (Path(root) / "iris" / "config.yaml").write_text(
        "# Per-model overrides; see README 'Add your own model'.\n"
        "max_batch_size: 32\n"
        "timeout_ms: 10000\n"
    )
    return ["iris", "mlp"]


def heavy_model(features: int = 64, width: int = 256, layers: int = 6,
                seed: int = 0) -> onnx.ModelProto:
    """A compute-bound model with few weights: about ``layers * width**3`` multiply-adds per
    row (100 M for the defaults), so ONNX Runtime time dominates any serving overhead.

    Each row is projected to ``width``, broadcast to a ``width x width`` matrix and multiplied
    ``layers`` times by one shared weight, then reduced to three scores.
    """
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(width)
    initializers = [
        numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(features), (features, width))
                                .astype(np.float32), "w_in"),
        numpy_helper.from_array(rng.normal(0, scale, (width, width)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, scale, (width, 3)).astype(np.float32), "w_out"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([1, width, 1], dtype=np.int64), "tile"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w_in"], ["projected"]),
        helper.make_node("Unsqueeze", ["projected", "axis1"], ["row"]),
        helper.make_node("Tile", ["row", "tile"], ["m0"]),
    ]
    for layer in range(layers):
        nodes += [helper.make_node("MatMul", [f"m{layer}", "w"], [f"p{layer}"]),
                  helper.make_node("Tanh", [f"p{layer}"], [f"m{layer + 1}"])]
    nodes += [
        helper.make_node("ReduceMean", [f"m{layers}"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w_out"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
