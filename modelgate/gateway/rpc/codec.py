"""Open Inference Protocol gRPC messages <-> wire requests and replies, validated against a
signature with the same checks (and messages) as the HTTP bodies (``gateway/protocol.py``).

Pure: no gRPC server, no Redis. Inputs come as ``raw_input_contents`` (the fast path: one
little-endian, row-major buffer per input, decoded without a copy, as Triton's binary
extension) or as typed ``contents``; the answer uses the same form as the call (raw unless the
call sent typed contents, and raw whenever an output has no typed field, such as FP16).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson

from modelgate.core import wire
from modelgate.core.errors import InvalidInput
from modelgate.core.repository import ModelVersion, TensorSpec
from modelgate.gateway.binary import decode_tensor, encode_tensor
from modelgate.gateway.protocol import (
    ZIPMAP_PARAMETER,
    check_input,
    check_inputs,
    requested_outputs,
    to_array,
)
from modelgate.gateway.rpc import grpc_predict_v2_pb2 as pb

# The typed contents field of each datatype (FP16 has none: it goes raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# The output parameter holding a ZipMap output's classes: a JSON array as text, since an
# InferParameter holds one scalar.
CLASSES_PARAMETER = "classes"


def parameter_value(parameter: pb.InferParameter) -> Any:
    """An InferParameter as a plain value (None when none of its choices is set)."""
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice is not None else None


def parameters_of(raw: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {name: parameter_value(value) for name, value in raw.items()}


def _typed(name: str, datatype: str, shape: tuple[int, ...],
           contents: pb.InferTensorContents) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input {name!r}: {datatype} has no typed contents in the protocol; "
                           "send it in raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {count} values, "
                           f"contents.{field} holds {len(values)}")
    other = [f.name for f, _ in contents.ListFields() if f.name != field]
    if other:
        raise InvalidInput(f"input {name!r} of datatype {datatype} takes contents.{field}, "
                           f"got {other}")
    if datatype == wire.BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    # The same range and kind checks as JSON data (an INT8 input given 300 is refused).
    return to_array(name, datatype, np.asarray(values), shape)


def parse_infer(request: pb.ModelInferRequest,
                model: ModelVersion) -> tuple[wire.Request, bool]:
    """A ModelInfer call as a wire request, and whether it sent typed contents (then the
    answer does too)."""
    if not request.inputs:
        raise InvalidInput("'inputs' must be a non-empty list of {name, shape, datatype, data}")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for "
                           f"{len(request.inputs)} inputs; give one per input, in the order "
                           "of 'inputs'")
    inputs: dict[str, wire.Tensor] = {}
    for position, item in enumerate(request.inputs):
        datatype, shape = check_input(model, item.name, item.datatype, list(item.shape), inputs)
        if raw:
            if item.HasField("contents"):
                raise InvalidInput(f"input {item.name!r} has contents while the call uses "
                                   "raw_input_contents; use one or the other for every input")
            array = decode_tensor(item.name, datatype, shape, memoryview(raw[position]))
        else:
            array = _typed(item.name, datatype, shape, item.contents)
        inputs[item.name] = wire.Tensor(datatype, shape, array)
    check_inputs(inputs, model)
    outputs = requested_outputs([{"name": o.name} for o in request.outputs] or None, model)
    parameters = parameters_of(request.parameters)
    if parameters.get(ZIPMAP_PARAMETER):
        raise InvalidInput(f"parameters.{ZIPMAP_PARAMETER}: ZipMap outputs as maps are an HTTP "
                           "V2 option; over gRPC they are FP32 [N, C] tensors with their "
                           f"classes in the output's parameters.{CLASSES_PARAMETER}")
    return wire.Request(inputs, outputs, parameters), not raw


def _json_as_bytes(t: wire.Tensor) -> wire.Tensor:
    """A non-tensor (JSON) output, which the protocol's gRPC messages cannot hold, as BYTES:
    each row's JSON text."""
    rows = t.data if isinstance(t.data, list) else [t.data]
    array = np.empty(len(rows), dtype=object)
    array[:] = [orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS) for row in rows]
    return wire.Tensor(wire.BYTES, (len(rows),), array)


def format_infer(model: ModelVersion, reply: wire.Reply, request_id: str,
                 typed: bool = False) -> pb.ModelInferResponse:
    """The answer to a ModelInfer call: raw_output_contents, or typed contents when the call
    sent typed contents and every output has a typed field."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version,
                                     id=request_id)
    specs = {o.name: o for o in model.outputs}
    tensors = {name: _json_as_bytes(t) if t.datatype == wire.JSON else t
               for name, t in reply.outputs.items()}
    typed = typed and all(t.datatype in CONTENTS_FIELD for t in tensors.values())
    for name, t in tensors.items():
        out = response.outputs.add(name=name, datatype=t.datatype, shape=t.shape)
        spec = specs.get(name)
        if spec is not None and spec.classes:
            out.parameters[CLASSES_PARAMETER].string_param = orjson.dumps(
                list(spec.classes)).decode()
        if typed:
            values = getattr(out.contents, CONTENTS_FIELD[t.datatype])
            values.extend(list(t.data.reshape(-1)) if t.datatype == wire.BYTES
                          else t.data.reshape(-1).tolist())
        else:
            response.raw_output_contents.append(encode_tensor(t))
    return response


def _tensor_metadata(specs: Iterable[TensorSpec]
                     ) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(
        name=s.name, datatype=wire.BYTES if s.datatype == wire.JSON else s.datatype,
        shape=s.shape) for s in specs]


def model_metadata(model: ModelVersion, versions: list[str]) -> pb.ModelMetadataResponse:
    """The protocol's model metadata (its TensorMetadata has no parameters: a ZipMap output's
    classes are in each answer's output parameters)."""
    return pb.ModelMetadataResponse(
        name=model.name, versions=versions, platform="onnxruntime_onnx",
        inputs=_tensor_metadata(model.inputs), outputs=_tensor_metadata(model.outputs))
