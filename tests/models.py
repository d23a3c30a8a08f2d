"""Tiny ONNX models built with ``onnx.helper`` (opset 17, IR 8) and repositories of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelgate.cli import demo

OPSET = 17
IR_VERSION = 8


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def add2_model() -> onnx.ModelProto:
    """Two inputs ``a``, ``b`` FP32 [-1, 3]; outputs ``sum`` and ``diff``."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]),
         helper.make_node("Sub", ["a", "b"], ["diff"])],
        "add2",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("diff", TensorProto.FLOAT, ["batch", 3])],
    )
    return finish(graph)


def scalar_model() -> onnx.ModelProto:
    """``y = x * scale`` with ``x`` FP32 [-1, 2] and a scalar (shape []) ``scale``."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    return finish(graph)


def state_model() -> onnx.ModelProto:
    """A recurrent-style state FP32 [2, -1, 4] batched on dim 1: ``next_state = 2 * state``."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["state", "two"], ["next_state"])],
        "state",
        [helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4])],
        [helper.make_tensor_value_info("next_state", TensorProto.FLOAT, [2, "batch", 4])],
        [two],
    )
    return finish(graph)


def symbolic_model() -> onnx.ModelProto:
    """Symbolic and unknown dims in several positions: x FP32 [batch, 3, height, ?]."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "symbolic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, "height", None])],
    )
    return finish(graph)


def int64_model() -> onnx.ModelProto:
    """``next = ids + 1`` on INT64 [-1, -1]."""
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "one"], ["next"])],
        "int64",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("next", TensorProto.INT64, ["batch", "length"])],
        [one],
    )
    return finish(graph)


def bytes_model() -> onnx.ModelProto:
    """Identity on a STRING tensor [-1]: the BYTES datatype end to end."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "bytes",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["batch"])],
    )
    return finish(graph)


def gather_model() -> onnx.ModelProto:
    """Rows of a constant 5x2 table by INT64 index: an index >= 5 fails at run time."""
    table = numpy_helper.from_array(np.arange(10, dtype=np.float32).reshape(5, 2), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 2])],
        [table],
    )
    return finish(graph)


def write_repository(root: Path, models: dict[str, onnx.ModelProto | Sequence[onnx.ModelProto]],
                     configs: dict[str, str] | None = None) -> Path:
    """``{name: model or [v1, v2, ...]}`` as MODELS/name/version/model.onnx, plus config.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        versions = [model] if isinstance(model, onnx.ModelProto) else list(model)
        for number, version in enumerate(versions, start=1):
            demo.write_model(version, root, name, number)
    for name, text in (configs or {}).items():
        (root / name / "config.yaml").write_text(text)
    return root


def total_model() -> onnx.ModelProto:
    """``total = sum(x)`` over every axis of x FP32 [-1, 3]: batchable input, but the output has
    no row per input row, so a batch of several requests cannot be split back."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)],
        "total",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
    )
    return finish(graph)


def matmul_chain(width: int, depth: int) -> onnx.ModelProto:
    """``y = tanh(... tanh(x @ W) ... @ W)``, ``depth`` times with one shared ``W``: a slow
    model (milliseconds per row) that stays small on disk."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(
        (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "w")
    nodes, previous = [], "input"
    for k in range(depth):
        nodes += [helper.make_node("MatMul", [previous, "w"], [f"m{k}"]),
                  helper.make_node("Tanh", [f"m{k}"], [f"t{k}"])]
        previous = f"t{k}"
    nodes.append(helper.make_node("Identity", [previous], ["probabilities"]))
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", width])],
        [w])
    return finish(graph)


def batch_centred_model() -> onnx.ModelProto:
    """``y = x - mean(x over rows)`` with x FP32 [-1, 3]: a variable first dimension, yet each
    row's answer depends on every other row of the run (as batch normalisation in training
    mode does), so calls must never share a run."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
         helper.make_node("Sub", ["x", "mean"], ["y"])],
        "batch_centred",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    return finish(graph)


def perturbed_mlp(seed: int = 1, scale: float = 0.01) -> onnx.ModelProto:
    """The demo MLP of ``seed`` with every weight nudged by ``scale`` of noise: a candidate that
    answers like it (top-1 agreement near 1)."""
    model = demo.mlp_model(seed=seed)
    rng = np.random.default_rng(seed + 1000)
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array(
            (array + rng.normal(0, scale, array.shape)).astype(np.float32), tensor.name))
    return model


def swapped_mlp(seed: int = 1, classes: tuple[int, int] = (0, 1)) -> onnx.ModelProto:
    """The demo MLP of ``seed`` with two classes' outputs swapped: a candidate that is wrong
    whenever it predicts one of them."""
    model = demo.mlp_model(seed=seed)
    for tensor in model.graph.initializer:
        if tensor.name in ("w_out", "b_out"):
            array = numpy_helper.to_array(tensor).copy()
            a, b = classes
            array[..., [a, b]] = array[..., [b, a]]
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return model


def guarded_mlp(seed: int = 1, threshold: float = 3.0) -> onnx.ModelProto:
    """The demo MLP of ``seed`` (the same answers), except that a run fails (a runtime error,
    not a refused input) when any row's first feature is above ``threshold``: a candidate that
    errors on some inputs only."""
    model = demo.mlp_model(seed=seed)
    graph = model.graph
    core = next(n for n in graph.node if n.op_type == "Softmax")
    core.output[0] = "probabilities_core"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0], np.int64), "g_start"),
        numpy_helper.from_array(np.array([1], np.int64), "g_end"),
        numpy_helper.from_array(np.array([1], np.int64), "g_axis"),
        numpy_helper.from_array(np.array(threshold, np.float32), "g_threshold"),
        numpy_helper.from_array(np.array(4, np.int64), "g_width"),
        numpy_helper.from_array(np.array([-1], np.int64), "g_rows"),
        numpy_helper.from_array(np.array(0.0, np.float32), "g_zero"),
    ])
    graph.node.extend([
        helper.make_node("Slice", ["input", "g_start", "g_end", "g_axis"], ["g_first"]),
        helper.make_node("Greater", ["g_first", "g_threshold"], ["g_over"]),
        helper.make_node("Cast", ["g_over"], ["g_over_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["g_over_f"], ["g_any"], keepdims=0),
        helper.make_node("Cast", ["g_any"], ["g_any_i"], to=TensorProto.INT64),
        helper.make_node("Add", ["g_any_i", "g_width"], ["g_cols"]),
        helper.make_node("Unsqueeze", ["g_cols", "g_start"], ["g_cols_1"]),
        helper.make_node("Concat", ["g_rows", "g_cols_1"], ["g_shape"], axis=0),
        # [rows, 4] reshaped to [-1, 5] fails when any first feature is over the threshold.
        helper.make_node("Reshape", ["input", "g_shape"], ["g_reshaped"]),
        helper.make_node("ReduceSum", ["g_reshaped", "g_axis"], ["g_sum"], keepdims=1),
        helper.make_node("Mul", ["g_sum", "g_zero"], ["g_nothing"]),
        helper.make_node("Add", ["probabilities_core", "g_nothing"], ["probabilities"]),
    ])
    onnx.checker.check_model(model)
    return model


def wide_sum_model(width: int) -> onnx.ModelProto:
    """``y = sum(x over its columns)`` with x FP32 [-1, width]: a wide row that costs the
    gateway far more to parse from JSON than the worker to run."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)], "wide_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")])
    return finish(graph)
