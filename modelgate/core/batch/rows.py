"""Rows of named columns into model inputs: which columns feed which input, each row's value
checked against the input's datatype and shape, and chunks of the rows that passed.

The rule (tabular formats: CSV, Parquet, JSONL objects): a column named as the input holds the
whole of a row's value (a number, or a JSON list for inputs of several values); else columns
``NAME[0]``, ``NAME[1]``, ... hold its values in order (flattened row-major); else, for a model
of one input, every column but the id column, in file order. A file whose columns cannot feed
the model is refused whole (:class:`InputError`); a row that does not fit becomes that row's
error, and its neighbours run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelgate.core import wire
from modelgate.core.errors import InvalidInput
from modelgate.core.repository import ModelVersion, TensorSpec


class InputError(InvalidInput):
    """An input file that cannot feed the model at all; the message says how to fix it."""

@dataclass(slots=True)
class Chunk:
    """Rows cut from the input: their positions and ids, the errors of rows that failed
    validation (by offset in the chunk) and the valid rows' inputs, stacked."""

    positions: list[int]
    ids: list[Any]
    errors: dict[int, str] = field(default_factory=dict)
    valid: list[int] = field(default_factory=list)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.positions)


def feature_shape(spec: TensorSpec) -> tuple[int, ...]:
    return tuple(spec.shape[1:])


def numpy_dtype_of(spec: TensorSpec) -> Any:
    if spec.datatype == wire.BYTES:
        return object
    if spec.datatype not in wire.NUMPY_DTYPES:
        raise InputError(f"input {spec.name!r} has datatype {spec.datatype}, which batch jobs "
                         "cannot fill from a file")
    return wire.NUMPY_DTYPES[spec.datatype]


_INDEXED = re.compile(r"^(?P<name>.+)\[(?P<index>\d+)\]$")


@dataclass(frozen=True, slots=True)
class Column:
    """How one model input is read from a row of named columns."""

    spec: TensorSpec
    whole: str | None  # one column holds the value
    parts: tuple[str, ...] = ()  # else these, in order


def column_plan(version: ModelVersion, columns: list[str], id_column: str | None,
                where: str) -> list[Column]:
    """Which columns feed each input; raises InputError when one has none."""
    if version.max_batch_size <= 0 and not version.rows_axis:
        raise InputError(f"model {version.name!r} version {version.version} takes no batch of "
                         "rows (its inputs have no variable first dimension), so it cannot run "
                         "batch jobs")
    names = [c for c in columns if c != id_column]
    indexed: dict[str, dict[int, str]] = {}
    for column in names:
        match = _INDEXED.match(column)
        if match:
            indexed.setdefault(match["name"], {})[int(match["index"])] = column
    plan = []
    for spec in version.inputs:
        numpy_dtype_of(spec)
        if spec.name in names:
            plan.append(Column(spec, spec.name))
        elif spec.name in indexed:
            parts = indexed[spec.name]
            if sorted(parts) != list(range(len(parts))):
                raise InputError(f"{where}: columns {spec.name}[i] must run from "
                                 f"{spec.name}[0] to {spec.name}[{len(parts) - 1}] without gaps")
            plan.append(Column(spec, None, tuple(parts[i] for i in range(len(parts)))))
        elif len(version.inputs) == 1 and names and _fits(spec, len(names)):
            plan.append(Column(spec, None, tuple(names)))
        else:
            raise InputError(
                f"{where} has no column for input {spec.name!r} of model {version.name!r}: "
                f"name a column {spec.name!r} (the whole value) or {spec.name}[0], "
                f"{spec.name}[1], ... (its values in order); the columns are {names[:20]}")
    if id_column is not None and id_column not in columns:
        raise InputError(f"{where} has no id column {id_column!r}; the columns are "
                         f"{columns[:20]}")
    return plan


def _fits(spec: TensorSpec, count: int) -> bool:
    """Whether ``count`` columns can hold one row of the input (its feature size, when fixed)."""
    shape = feature_shape(spec)
    return any(d < 0 for d in shape) or math.prod(shape) == count


def _value_of(raw: Any, spec: TensorSpec) -> np.ndarray:
    """One row's value for one input, as an array of its feature shape; ValueError says why."""
    if isinstance(raw, str) and raw.lstrip().startswith("["):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"{raw[:40]!r} is not a JSON list") from e
    if raw is None or raw == "":
        raise ValueError("the value is missing")
    dtype = numpy_dtype_of(spec)
    if dtype is object:
        array = np.array(raw, dtype=object)
        array = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(),
                             otypes=[object])(array)
    else:
        try:
            array = np.asarray(raw, dtype=np.float64 if dtype.kind == "f" else None)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{str(raw)[:40]!r} is not a number or a list of numbers") from e
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{str(raw)[:40]!r} is not a number or a list of numbers")
        if dtype.kind in "iub" and array.dtype.kind == "f" and not (
                np.all(np.isfinite(array)) and np.all(array == np.round(array))):
            raise ValueError(f"{str(raw)[:40]!r} is not an integer")
        if dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ValueError(f"{str(raw)[:40]!r} is not a finite number")
        array = array.astype(dtype)
    return shaped(array, spec)


def shaped(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    shape = feature_shape(spec)
    if all(d >= 0 for d in shape):
        if array.size != math.prod(shape):
            raise ValueError(f"input {spec.name!r} takes {math.prod(shape)} values per row "
                             f"(shape {list(shape)}), this row has {array.size}")
        return array.reshape(shape)
    if array.ndim != len(shape) or any(d >= 0 and d != a
                                       for d, a in zip(shape, array.shape, strict=True)):
        raise ValueError(f"input {spec.name!r} takes values of shape {list(shape)} per row, "
                         f"this row has {list(array.shape)}")
    return array


def _parts_value(row: dict[str, Any], column: Column) -> np.ndarray:
    values = []
    for name in column.parts:
        value = row.get(name)
        if value is None or value == "":
            raise ValueError(f"column {name!r} is missing")
        values.append(value)
    dtype = numpy_dtype_of(column.spec)
    if dtype is object:
        return _value_of(values, column.spec)
    try:
        floats = [float(v) for v in values]
    except (ValueError, TypeError):
        bad = next(v for v in values if not _is_number(v))
        raise ValueError(f"{str(bad)[:40]!r} is not a number") from None
    return _value_of(floats, column.spec)


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (ValueError, TypeError):
        return False


def id_of(raw: Any) -> Any:
    """A CSV id that is an integer is one; anything else stays as written."""
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw)
    return raw


class RowMapper:
    """Rows of named columns -> per-input arrays, and the chunk they build."""

    def __init__(self, plan: list[Column], id_column: str | None) -> None:
        self.plan = plan
        self.id_column = id_column

    def inputs_of(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        found = {}
        for column in self.plan:
            try:
                if column.whole is not None:
                    found[column.spec.name] = _value_of(row.get(column.whole), column.spec)
                else:
                    found[column.spec.name] = _parts_value(row, column)
            except ValueError as e:
                where = column.whole or f"{column.parts[0]}..{column.parts[-1]}"
                raise ValueError(f"input {column.spec.name!r} (column {where}): {e}") from e
        return found


def build_chunk(positions: list[int], ids: list[Any],
                rows: list[dict[str, np.ndarray] | str], version: ModelVersion) -> Chunk:
    """A chunk from validated rows (a dict of inputs) and failed ones (their error)."""
    chunk = Chunk(positions, ids)
    stacks: dict[str, list[np.ndarray]] = {spec.name: [] for spec in version.inputs}
    for offset, row in enumerate(rows):
        if isinstance(row, str):
            chunk.errors[offset] = row
            continue
        chunk.valid.append(offset)
        for name, value in row.items():
            stacks[name].append(value)
    if chunk.valid:
        for spec in version.inputs:
            values = stacks[spec.name]
            shapes = {v.shape for v in values}
            if len(shapes) > 1:  # variable feature dims: the first shape runs, others fail
                first = values[0].shape
                for i in range(len(values) - 1, -1, -1):
                    if values[i].shape != first:
                        offset = chunk.valid[i]
                        chunk.errors[offset] = (f"input {spec.name!r} has shape "
                                                f"{list(values[i].shape)} in this row but "
                                                f"{list(first)} in the rows it runs with")
                del_offsets = set(chunk.errors)
                return build_chunk(positions, ids, [
                    chunk.errors[o] if o in del_offsets else r for o, r in enumerate(rows)],
                    version)
            chunk.inputs[spec.name] = np.stack(values).astype(numpy_dtype_of(spec), copy=False)
    return chunk
