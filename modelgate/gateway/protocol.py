"""KServe V2 and V1 JSON bodies <-> wire requests and replies, validated against a signature.

Everything here is pure: no HTTP, no Redis. Every rejection is an ``InvalidInput`` whose message
names the input and says what was expected and what was given.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import orjson
import simdjson

from modelgate.core import wire
from modelgate.core.errors import InvalidInput
from modelgate.core.repository import ModelVersion, TensorSpec
from modelgate.core.zipmap import to_maps
from modelgate.gateway.binary import BinarySection, decode_tensor, encode_tensor

_INT_KINDS = "iu"
# numpy sizes a tensor in bytes with int64 arithmetic, zero dims aside: past this many elements
# (of at most 8 bytes) not even an empty tensor such as [2**62, 0] can be made.
MAX_ELEMENTS = (2**63 - 1) // 8


# Every answer names the model version that computed it (V2 also in its body).
MODEL_VERSION_HEADER = "X-Model-Version"
# A V2 call's parameter asking for ZipMap outputs as JSON maps (one {class: probability} per
# row, datatype JSON) instead of the FP32 tensor the protocol can carry; see core/zipmap.py.
ZIPMAP_PARAMETER = "zipmap"


def loads(body: bytes | bytearray) -> Any:
    if not body:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"the request body is not valid JSON: {e}") from e


# A V2 body of this size or more is read with simdjson, which turns a long array of numbers
# for a float input into a numpy array without a Python float per value: a 150 KB image
# as JSON costs ~0.55 ms instead of orjson's ~0.95 plus ~0.8 to make its list an array.
FAST_FLOATS_BODY_BYTES = 16 * 1024
# ... and an input's data of this many values or more, when it is one flat list.
FAST_FLOATS_VALUES = 256
_FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})


_simdjson = threading.local()


class _NotPlain(Exception):
    """The body is one the fast reading leaves to :func:`loads` (duplicate keys)."""


def loads_v2(body: bytes | bytearray) -> Any:
    """A V2 body as :func:`loads` reads it, except that a large body's flat float data comes
    as a float64 numpy array, which :func:`to_array` takes as it takes the list.

    Anything the fast reading does not take as :func:`loads` would (invalid JSON, a number
    past what simdjson reads, duplicate keys, which orjson resolves to the last) is read by
    :func:`loads` instead, so answers and error messages are the same either way.
    """
    if len(body) < FAST_FLOATS_BODY_BYTES:
        return loads(body)
    parser = getattr(_simdjson, "parser", None)
    if parser is None:
        # One per thread, kept: a new parser's first body costs 0.3-0.5 ms more (its
        # buffers are allocated and first touched). A parser whose document is still
        # referenced refuses another body (RuntimeError), and that body is read by loads.
        parser = _simdjson.parser = simdjson.Parser()
    try:
        document = parser.parse(body)
        if isinstance(document, simdjson.Object):
            return _v2_object(document)
    except (ValueError, TypeError, RuntimeError, _NotPlain):
        pass
    return loads(body)


def forget_parser() -> None:
    """Let this thread's simdjson parser go, with the buffers it grew for the largest body
    it read (a parser process does after each body)."""
    _simdjson.parser = None


def _keys(element: simdjson.Object) -> list[str]:
    keys = list(element.keys())
    if len(set(keys)) != len(keys):
        raise _NotPlain
    return keys


def _plain(element: Any) -> Any:
    if isinstance(element, simdjson.Object):
        return element.as_dict()
    if isinstance(element, simdjson.Array):
        return element.as_list()
    return element


def _v2_object(document: simdjson.Object) -> dict[str, Any]:
    body = {}
    for key in _keys(document):
        value = document[key]
        if key == "inputs" and isinstance(value, simdjson.Array):
            body[key] = [_v2_input(item) for item in value]
        else:
            body[key] = _plain(value)
    return body


def _v2_input(item: Any) -> Any:
    if not isinstance(item, simdjson.Object):
        return _plain(item)
    keys = _keys(item)
    fast = "datatype" in keys and item["datatype"] in _FLOAT_DATATYPES
    plain = {}
    for key in keys:
        value = item[key]
        # Nested data goes as lists, to be checked for a rectangular shape (as_buffer would
        # flatten a ragged one too); so does data that is not all numbers, for to_array to
        # say what is wrong.
        if key == "data" and fast and isinstance(value, simdjson.Array) \
                and len(value) >= FAST_FLOATS_VALUES \
                and not isinstance(value[0], simdjson.Array):
            try:
                flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
            except TypeError:
                flat = None
            if flat is not None and flat.size == len(value):  # not flat past the first value
                plain[key] = flat
                continue
        plain[key] = _plain(value)
    return plain


def timeout_ms(parameters: dict[str, Any], model: ModelVersion, default_ms: int) -> int:
    """Per-request ``parameters.timeout_ms``, else the model's, else the server default."""
    raw = parameters.get("timeout_ms")
    if raw is None:
        return model.config.timeout_ms or default_ms
    # At least 1 ms: the deadline is kept in whole milliseconds, and 0 would expire at once.
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 1 <= raw <= 3_600_000:
        raise InvalidInput(f"parameters.timeout_ms must be a number of milliseconds in "
                           f"[1, 3600000], got {raw!r}")
    return int(raw)


def _shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_shape(spec: TensorSpec, shape: tuple[int, ...], model: str) -> None:
    """Shape against the signature: same rank, equal fixed dims (-1 matches anything)."""
    if spec.shape == (-1,) and not spec.is_tensor:
        return
    if len(shape) != len(spec.shape) or any(
        want != -1 and want != got for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise InvalidInput(
            f"input {spec.name!r} has shape {_shape_text(shape)} but model {model!r} expects "
            f"{_shape_text(spec.shape)} (-1 means any size)"
        )


def to_array(name: str, datatype: str, data: Any, shape: tuple[int, ...]) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) as an array of ``shape`` and ``datatype``."""
    count = math.prod(shape)
    if datatype == wire.BYTES:
        flat = np.asarray(data, dtype=object).reshape(-1) if isinstance(data, list) else \
            np.asarray([data], dtype=object)
        if flat.size != count:
            raise InvalidInput(
                f"input {name!r}: shape {_shape_text(shape)} needs {count} values, got {flat.size}"
            )
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise InvalidInput(f"input {name!r}: BYTES data must be strings; item {i} is "
                                   f"{type(item).__name__}")
            flat[i] = item.encode()
        return flat.reshape(shape)
    dtype = wire.NUMPY_DTYPES[datatype]
    try:
        raw = np.asarray(data)
    except ValueError as e:  # ragged nesting
        raise InvalidInput(f"input {name!r}: data is not a rectangular array: {e}") from e
    if raw.size != count:
        raise InvalidInput(
            f"input {name!r}: shape {_shape_text(shape)} needs {count} values, got {raw.size}"
        )
    if raw.dtype.kind not in "biuf":
        raise InvalidInput(
            f"input {name!r}: data must be {'booleans' if datatype == 'BOOL' else 'numbers'} "
            f"for datatype {datatype}, found {(raw.dtype.kind == 'U' and 'strings') or raw.dtype}"
        )
    if raw.dtype.kind == "b" and datatype != "BOOL" and raw.size:
        raise InvalidInput(f"input {name!r}: data must be numbers for datatype {datatype}, "
                           "found true/false; send 1/0, or declare the input BOOL if it is one")
    if dtype.kind in _INT_KINDS and raw.dtype.kind == "f" and (
        not np.all(np.isfinite(raw)) or not np.all(raw == np.floor(raw))
    ):
        raise InvalidInput(f"input {name!r}: datatype {datatype} takes whole numbers only; "
                           "the data has fractions, NaN or Infinity")
    if dtype.kind in _INT_KINDS and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidInput(f"input {name!r}: values must lie in [{info.min}, {info.max}] "
                               f"for {datatype}")
    if datatype == "BOOL" and raw.dtype.kind != "b":
        raise InvalidInput(f"input {name!r}: BOOL data must be true/false")
    if dtype.kind == "f" and raw.dtype != dtype:
        # A value past the type's range would silently become Infinity: the cast says so
        # itself (JSON has no Infinity to begin with), cheaper than two passes for max and min.
        try:
            with np.errstate(over="raise"):
                converted = raw.astype(dtype)
        except FloatingPointError:
            limit = float(np.finfo(dtype).max)
            raise InvalidInput(f"input {name!r}: values must lie in [{-limit:g}, {limit:g}] "
                               f"for {datatype}; send larger ones as FP64 if the model "
                               "takes it") from None
        return converted.reshape(shape)
    return raw.astype(dtype, copy=False).reshape(shape)


def _shape_of(name: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in raw
    ):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of integers, got {raw!r}")
    if any(d < 0 for d in raw):
        raise InvalidInput(f"input {name!r}: shape {raw} has a negative dimension")
    if math.prod(d for d in raw if d) > MAX_ELEMENTS:
        raise InvalidInput(f"input {name!r}: shape {raw} is too large; its dimensions other "
                           f"than 0 may multiply to at most {MAX_ELEMENTS}")
    return tuple(raw)


def parse_v2(body: Any, model: ModelVersion,
             binary: BinarySection | None = None) -> tuple[wire.Request, Any]:
    """A V2 infer body as a wire request plus the caller's ``id`` (to echo).

    With ``binary`` (Triton's binary extension), inputs that set
    ``parameters.binary_data_size`` take their data from it instead of ``data``.
    """
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object with an 'inputs' list")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of {name, shape, datatype, data}")
    inputs: dict[str, wire.Tensor] = {}
    for position, item in enumerate(raw_inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"inputs[{position}] must be an object with a string 'name'")
        name = item["name"]
        datatype, shape = check_input(model, name, item.get("datatype"), item.get("shape"),
                                      inputs)
        size = _binary_size(item)
        if size is not None:
            if binary is None:
                raise InvalidInput(
                    f"input {name!r} sets binary_data_size but the request has no "
                    "Inference-Header-Content-Length header to find the binary data by")
            array = decode_tensor(name, datatype, shape, binary.take(name, size))
        elif "data" not in item:
            raise InvalidInput(f"input {name!r} has no 'data'")
        else:
            array = to_array(name, datatype, item["data"], shape)
        inputs[name] = wire.Tensor(datatype, shape, array)
    check_inputs(inputs, model)
    if binary is not None:
        binary.check_consumed()
    outputs = requested_outputs(body.get("outputs"), model)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    if not isinstance(parameters.get(ZIPMAP_PARAMETER, False), bool):
        raise InvalidInput(f"parameters.{ZIPMAP_PARAMETER} must be true or false, got "
                           f"{parameters[ZIPMAP_PARAMETER]!r}")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {type(request_id).__name__}")
    return wire.Request(inputs, outputs, parameters), request_id


def check_input(model: ModelVersion, name: str, datatype: Any, raw_shape: Any,
                seen: dict[str, wire.Tensor]) -> tuple[str, tuple[int, ...]]:
    """One input's name, datatype and shape against the signature (any transport); its
    datatype and shape. ``seen``: the inputs taken so far."""
    spec = model.input(name)
    if spec is None:
        raise InvalidInput(
            f"unknown input {name!r}; model {model.name!r} takes "
            f"{[i.name for i in model.inputs]}"
        )
    if name in seen:
        raise InvalidInput(f"input {name!r} is given twice")
    if datatype != spec.datatype:
        raise InvalidInput(
            f"input {name!r} has datatype {datatype!r} but model {model.name!r} expects "
            f"{spec.datatype!r}"
        )
    shape = _shape_of(name, raw_shape)
    check_shape(spec, shape, model.name)
    return spec.datatype, shape


def check_inputs(inputs: dict[str, wire.Tensor], model: ModelVersion) -> None:
    """Every input given, and one row count across them when the model batches."""
    missing = [i.name for i in model.inputs if i.name not in inputs]
    if missing:
        raise InvalidInput(f"missing input(s) {missing} for model {model.name!r}")
    _check_rows(inputs, model)


def _binary_size(item: dict[str, Any]) -> Any:
    parameters = item.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise InvalidInput(f"input {item['name']!r}: 'parameters' must be a JSON object")
    return parameters.get("binary_data_size")


def _check_rows(inputs: dict[str, wire.Tensor], model: ModelVersion) -> None:
    if not model.batchable:
        return
    rows = {name: t.shape[0] for name, t in inputs.items()}
    if len(set(rows.values())) > 1:
        raise InvalidInput(f"inputs must have the same first (batch) dimension; got {rows}")


def requested_outputs(raw: Any, model: ModelVersion) -> tuple[str, ...] | None:
    """The outputs a call names (``[{"name": ...}]``), checked; None: all of them."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list of {name}")
    if not raw:
        raise InvalidInput("'outputs' is empty; name at least one output, or leave 'outputs' "
                           "out to get them all")
    known = [o.name for o in model.outputs]
    names = []
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in known:
            raise InvalidInput(f"unknown output {name!r}; model {model.name!r} has {known}")
        names.append(name)
    return tuple(names)


def _data(t: wire.Tensor) -> Any:
    if t.datatype == wire.JSON:
        return t.data
    if t.datatype == wire.BYTES:
        return [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)
                for b in t.data.reshape(-1)]
    return t.data.reshape(-1)  # orjson serialises numpy arrays natively


def format_v2(model: ModelVersion, reply: wire.Reply, request_id: Any,
              maps: bool = False) -> bytes:
    return format_v2_binary(model, reply, request_id, set(), maps)[0]


def wants_maps(request: wire.Request) -> bool:
    """The call asked for ZipMap outputs as JSON maps (``parameters.zipmap: true``)."""
    return request.parameters.get(ZIPMAP_PARAMETER) is True


def format_v2_binary(model: ModelVersion, reply: wire.Reply, request_id: Any,
                     binary: set[str], maps: bool = False) -> tuple[bytes, int | None]:
    """The response body and, when any output went binary, the JSON header's length.

    Outputs named in ``binary`` follow the JSON as raw data (Triton's binary extension);
    non-tensor (JSON) outputs always stay in the JSON. A ZipMap output carries its class
    labels in ``parameters.classes``; with ``maps`` it is answered as JSON maps instead
    (datatype JSON, ``parameters.zipmap: true``), outside the protocol's tensor data.
    """
    outputs = []
    tail = []
    specs = {o.name: o for o in model.outputs}
    for name, t in reply.outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": t.datatype, "shape": list(t.shape)}
        spec = specs.get(name)
        if spec is not None and spec.classes and t.datatype != wire.JSON:
            entry["parameters"] = {"classes": list(spec.classes)}
            if maps:
                entry.update(datatype=wire.JSON, shape=[t.shape[0]],
                             data=to_maps(t.data, spec.classes))
                entry["parameters"]["zipmap"] = True
                outputs.append(entry)
                continue
        if name in binary and t.datatype != wire.JSON:
            data = encode_tensor(t)
            entry["parameters"] = {**entry.get("parameters", {}), "binary_data_size": len(data)}
            tail.append(data)
        else:
            entry["data"] = _data(t)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version,
                            "outputs": outputs}
    if request_id is not None:
        body["id"] = request_id
    header = dumps(body)
    if not tail:
        return header, None
    return b"".join([header, *tail]), len(header)


def dumps(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def parse_v1(body: Any, model: ModelVersion) -> wire.Request:
    """``{"instances": [...]}``: rows of the single input, or objects keyed by input name."""
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise InvalidInput("the body must be a JSON object with an 'instances' list")
    instances = body["instances"]
    if not instances:
        raise InvalidInput("'instances' is empty; send at least one instance")
    if all(isinstance(i, dict) for i in instances):
        columns = {spec.name: [i.get(spec.name) for i in instances] for spec in model.inputs}
        unknown = sorted({k for i in instances for k in i} - set(columns))
        if unknown:
            raise InvalidInput(f"unknown input(s) {unknown}; model {model.name!r} takes "
                               f"{sorted(columns)}")
        for name, column in columns.items():
            if any(v is None for v in column):
                raise InvalidInput(f"every instance needs input {name!r}")
    elif len(model.inputs) == 1:
        columns = {model.inputs[0].name: instances}
    else:
        raise InvalidInput(
            f"model {model.name!r} takes several inputs {[i.name for i in model.inputs]}; "
            "send each instance as an object keyed by input name"
        )
    inputs: dict[str, wire.Tensor] = {}
    for spec in model.inputs:
        array = _instances_array(spec, columns[spec.name])
        check_shape(spec, tuple(array.shape), model.name)
        inputs[spec.name] = wire.Tensor(spec.datatype, tuple(array.shape), array)
    _check_rows(inputs, model)
    return wire.Request(inputs)


def _instances_array(spec: TensorSpec, column: list[Any]) -> np.ndarray:
    try:
        shape = np.shape(np.asarray(column, dtype=object if spec.datatype == wire.BYTES else None))
    except ValueError as e:
        raise InvalidInput(f"input {spec.name!r}: instances are not rectangular: {e}") from e
    return to_array(spec.name, spec.datatype, column, tuple(int(d) for d in shape))


def format_v1(reply: wire.Reply, model: ModelVersion | None = None) -> bytes:
    """Predictions per instance: the row of the single output, or an object of all outputs.

    V1 has no datatypes: a ZipMap output's row is its ``{class: probability}`` map, as the
    graph's ZipMap makes it.
    """
    specs = {o.name: o for o in model.outputs} if model is not None else {}
    columns: dict[str, list[Any]] = {}
    for name, t in reply.outputs.items():
        spec = specs.get(name)
        if spec is not None and spec.classes and t.datatype != wire.JSON:
            columns[name] = list(to_maps(t.data, spec.classes))
        else:
            columns[name] = _rows(t)
    if len(columns) == 1:
        predictions: Any = next(iter(columns.values()))
    else:
        count = min((len(c) for c in columns.values()), default=0)
        predictions = [{name: c[i] for name, c in columns.items()} for i in range(count)]
    return dumps({"predictions": predictions})


def _rows(t: wire.Tensor) -> list[Any]:
    if t.datatype == wire.JSON:
        return list(t.data) if isinstance(t.data, list) else [t.data]
    if t.datatype == wire.BYTES:
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(
            t.data).tolist()
    return t.data.tolist() if t.data.ndim else [t.data.item()]
