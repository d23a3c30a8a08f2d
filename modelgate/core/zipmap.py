"""ZipMap outputs (scikit-learn classifiers converted by skl2onnx) as plain tensors.

ONNX's ``ZipMap`` turns a ``[N, C]`` probability tensor into a sequence of maps,
``seq(map(int64|string, tensor(float)))``: one ``{class: probability}`` per row. The Open
Inference Protocol has no datatype for that (its ``tensor_data`` holds numbers, strings and
booleans only), so modelgate serves such an output as what it was before the ZipMap: an FP32
tensor ``[N, C]`` whose columns are the node's class labels, in the node's order
(``classlabels_int64s`` or ``classlabels_strings``). The labels are part of the output's
signature (``TensorSpec.classes``): model metadata shows them, and every answer carries them in
the output's ``parameters.classes``. The worker converts the runtime's list of maps
(:func:`to_array`); a caller that asks for the maps (``parameters.zipmap: true`` on a V2 call,
and V1 always) gets them back from the tensor (:func:`to_maps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

Classes = tuple[int, ...] | tuple[str, ...]


def classes_of(graph: onnx.GraphProto, output: str) -> Classes | None:
    """The class labels of the ZipMap node that makes ``output`` (directly or through
    Identity nodes), or None when no ZipMap makes it."""
    producers = {name: node for node in graph.node for name in node.output}
    node = producers.get(output)
    while node is not None and node.op_type == "Identity" and node.input:
        node = producers.get(node.input[0])
    if node is None or node.op_type != "ZipMap":
        return None
    for attribute in node.attribute:
        if attribute.name == "classlabels_int64s" and attribute.ints:
            return tuple(int(c) for c in attribute.ints)
        if attribute.name == "classlabels_strings" and attribute.strings:
            return tuple(s.decode("utf-8") for s in attribute.strings)
    return None


def to_array(rows: Sequence[dict[Any, Any]], classes: Classes) -> np.ndarray:
    """ZipMap rows (one ``{class: probability}`` each, as ONNX Runtime returns them) as FP32
    ``[len(rows), len(classes)]`` in ``classes`` order. Raises ValueError if a row lacks a
    class or is not a map."""
    array = np.empty((len(rows), len(classes)), dtype=np.float32)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"ZipMap row {i} is {type(row).__name__}, not a map")
        try:
            array[i] = [row[c] for c in classes]
        except KeyError as e:
            raise ValueError(f"ZipMap row {i} has no class {e.args[0]!r}") from e
    return array


def to_maps(array: np.ndarray, classes: Classes) -> list[dict[str, float]]:
    """An FP32 ``[N, C]`` tensor as ZipMap rows, keyed by the class label as text (JSON object
    keys are strings)."""
    keys = [str(c) for c in classes]
    return [dict(zip(keys, row, strict=True)) for row in np.asarray(array, float).tolist()]
