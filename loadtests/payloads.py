"""Request bodies and response checks for the load tests, derived from a model's V2 metadata.

Nothing here is specific to the demo models: the input names, datatypes and shapes come from
``GET /v2/models/{name}``, so the locustfile can point at any model of any deployment. Pure
functions without locust (whose import monkey-patches the interpreter with gevent), so unit
tests can call them in-process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

FLOATS = {"FP16", "FP32", "FP64"}
INTEGERS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
JSON = "JSON"  # modelgate's datatype for non-tensor outputs (e.g. scikit-learn's ZipMap)
# Small non-negative integers: valid indices for any model that gathers rows by an INT input.
MAX_INT_VALUE = 4


class MetadataError(ValueError):
    """The model metadata is not a V2 metadata document this module understands."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a variable dimension

    @property
    def batched(self) -> bool:
        """Whether dim 0 is variable: the rows of a call."""
        return bool(self.shape) and self.shape[0] == -1


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_metadata(cls, body: Any) -> ModelSpec:
        """Parse a ``GET /v2/models/{name}`` answer."""
        try:
            return cls(
                name=str(body["name"]),
                inputs=tuple(_tensor(t) for t in body["inputs"]),
                outputs=tuple(_tensor(t) for t in body["outputs"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MetadataError(f"not V2 model metadata ({type(e).__name__}: {e}): "
                                f"{str(body)[:200]}") from e

    @property
    def batchable(self) -> bool:
        """Rows can vary per call: every input has a variable dim 0."""
        return bool(self.inputs) and all(i.batched for i in self.inputs)

    def rows(self, wanted: int) -> int | None:
        """The rows a call will carry: ``wanted`` if the model batches, else None (fixed)."""
        return wanted if self.batchable else None


def _tensor(item: Any) -> TensorSpec:
    return TensorSpec(str(item["name"]), str(item["datatype"]),
                      tuple(int(d) for d in item["shape"]))


def concrete_shape(spec: TensorSpec, rows: int | None) -> tuple[int, ...]:
    """The shape to send: ``rows`` for a variable dim 0, 1 for any other variable dim."""
    dims = [1 if d == -1 else d for d in spec.shape]
    if rows is not None and spec.batched:
        dims[0] = rows
    return tuple(dims)


def random_array(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    """Plausible values for ``spec.datatype`` as nested lists (floats in [0, 8), small ints)."""
    if spec.datatype in FLOATS:
        return np.round(rng.uniform(0.0, 8.0, shape), 3).tolist()
    if spec.datatype in INTEGERS:
        return rng.integers(0, MAX_INT_VALUE + 1, shape).tolist()
    if spec.datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool).tolist()
    if spec.datatype == "BYTES":
        return np.full(shape, "loadtest", dtype=object).tolist()
    raise MetadataError(f"input {spec.name!r}: cannot make load-test data for datatype "
                        f"{spec.datatype!r}")


def v2_body(model: ModelSpec, rows: int | None, rng: np.random.Generator) -> bytes:
    """A V2 inference request for every input of ``model``; ``data`` nested, row-major."""
    inputs = []
    for spec in model.inputs:
        shape = concrete_shape(spec, rows)
        inputs.append({"name": spec.name, "datatype": spec.datatype, "shape": list(shape),
                       "data": random_array(spec, shape, rng)})
    return orjson.dumps({"inputs": inputs})


def v1_body(model: ModelSpec, rows: int | None, rng: np.random.Generator) -> bytes:
    """A V1 ``instances`` request: rows of the single input, else objects keyed by input."""
    columns = {spec.name: random_array(spec, concrete_shape(spec, rows), rng)
               for spec in model.inputs}
    if len(columns) == 1:
        instances: list[Any] = next(iter(columns.values()))
    else:
        count = min(len(c) for c in columns.values())
        instances = [{name: c[i] for name, c in columns.items()} for i in range(count)]
    return orjson.dumps({"instances": instances})


# --------------------------------------------------------------------------- checks


def v2_problem(model: ModelSpec, rows: int | None, body: Any) -> str | None:
    """What is wrong with a V2 inference answer (names, datatypes, shapes, data size), or None.

    Every output of the model is expected, since the requests name none.
    """
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list):
        return f"no 'outputs' list in the answer: {str(body)[:200]}"
    if body.get("model_name", model.name) != model.name:
        return f"answer is for model {body.get('model_name')!r}, expected {model.name!r}"
    got = {o.get("name"): o for o in body["outputs"] if isinstance(o, dict)}
    expected = {o.name for o in model.outputs}
    if set(got) != expected:
        return f"outputs {sorted(map(str, got))}, expected {sorted(expected)}"
    for spec in model.outputs:
        output = got[spec.name]
        if output.get("datatype") != spec.datatype:
            return (f"output {spec.name!r} has datatype {output.get('datatype')!r}, expected "
                    f"{spec.datatype!r}")
        shape = output.get("shape")
        if not isinstance(shape, list) or not _shape_fits(shape, spec, rows):
            return (f"output {spec.name!r} has shape {shape}, expected {list(spec.shape)} "
                    f"with {rows} rows")
        data = output.get("data")
        if spec.datatype == JSON:
            size = len(data) if isinstance(data, list) else 1
            wanted = shape[0] if shape else 1
        else:
            size, wanted = _flat_size(data), math.prod(shape)
        if size != wanted:
            return f"output {spec.name!r} has {size} values for shape {shape}"
    return None


def v1_problem(model: ModelSpec, rows: int | None, body: Any) -> str | None:
    """What is wrong with a V1 ``predictions`` answer, or None.

    One prediction per row: the row of the single output, else an object of all outputs.
    """
    if not isinstance(body, dict) or not isinstance(body.get("predictions"), list):
        return f"no 'predictions' list in the answer: {str(body)[:200]}"
    predictions = body["predictions"]
    if rows is not None and len(predictions) != rows:
        return f"{len(predictions)} predictions for {rows} instances"
    names = {o.name for o in model.outputs}
    for prediction in predictions:
        if len(model.outputs) > 1:
            if not isinstance(prediction, dict) or set(prediction) != names:
                keys = sorted(prediction) if isinstance(prediction, dict) else prediction
                return f"prediction {str(keys)[:100]} does not hold the outputs {sorted(names)}"
            continue
        [spec] = model.outputs
        if spec.datatype != JSON and spec.batched and not _shape_fits(
                [1, *np.shape(prediction)], spec, 1):
            return (f"prediction of shape {list(np.shape(prediction))} does not fit output "
                    f"{spec.name!r} {list(spec.shape)}")
    return None


def _shape_fits(shape: Sequence[Any], spec: TensorSpec, rows: int | None) -> bool:
    if len(shape) != len(spec.shape) or not all(isinstance(d, int) for d in shape):
        return False
    if rows is not None and spec.batched and shape[0] != rows:
        return False
    return all(want in (-1, have) for want, have in zip(spec.shape, shape, strict=True))


def _flat_size(data: Any) -> int:
    if isinstance(data, list):
        return sum(_flat_size(d) for d in data)
    return 1
