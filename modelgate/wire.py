"""The wire format between gateway and workers: the only module that encodes or decodes it.

Everything that crosses the queue is msgpack of plain values: the queue is reachable by anything
that can reach Redis, so nothing here can execute code while decoding (no pickle, no ext types).

A request entry on a model's stream has the fields
    ``id``          correlation id, unique within the replying gateway
    ``reply_to``    the list the reply is pushed to
    ``deadline_ms`` absolute epoch milliseconds after which nobody waits for the answer
    ``attempt``     1 on first enqueue
    ``payload``     msgpack map ``{"v": WIRE_VERSION, "inputs": {name: tensor},
                    "outputs": [names] or None, "parameters": {...}}``
and a tensor is ``[datatype, shape, data]``: ``data`` is the raw little-endian buffer for
numeric types, a list of byte strings for ``BYTES`` and a plain msgpack value for ``JSON``
(non-tensor outputs such as scikit-learn's ZipMap probabilities).

A reply is one msgpack map ``{"v", "id", "status", "error", "outputs", "queue_ms",
"compute_ms", "batch_size", "batch_leader"}``; ``status`` is ``"ok"`` or an error code from
:class:`ReplyStatus`. Exactly one reply of every ORT run has ``batch_leader`` set, so a gateway
can count runs (the ``modelgate_batch_size`` histogram) without a second channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np

WIRE_VERSION = 1


class WireError(ValueError):
    """Bytes that are not a valid message of this wire format version."""


# V2 datatype -> numpy dtype (little-endian, as the wire carries it).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
JSON = "JSON"
DATATYPES = (*NUMPY_DTYPES, BYTES)
_DATATYPE_OF_KIND = {(dt.kind, dt.itemsize): name for name, dt in NUMPY_DTYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype name of a numpy array (object/str arrays are ``BYTES``)."""
    if array.dtype.kind in "OSU":
        return BYTES
    try:
        return _DATATYPE_OF_KIND[(array.dtype.kind, array.dtype.itemsize)]
    except KeyError as e:
        raise WireError(f"numpy dtype {array.dtype} has no V2 datatype") from e


class ReplyStatus(StrEnum):
    OK = "ok"
    BAD_INPUT = "bad_input"  # the model rejected the input (shape/type it cannot take)
    MODEL_ERROR = "model_error"  # the runtime failed on input it accepted
    DEADLINE = "deadline"  # the worker saw the entry after its deadline and skipped it
    DEAD_LETTER = "dead_letter"  # delivered too often without an answer; parked for operators
    WIRE = "wire_error"  # the entry was not valid wire format


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor or, for datatype ``JSON``, a non-tensor value served as JSON."""

    datatype: str
    shape: tuple[int, ...]
    data: Any  # np.ndarray for numeric and BYTES (object array); plain value for JSON

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1


@dataclass(frozen=True, slots=True)
class Request:
    inputs: dict[str, Tensor]
    outputs: tuple[str, ...] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    id: str
    status: str
    outputs: dict[str, Tensor] = field(default_factory=dict)
    error: str = ""
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    batch_size: int = 0
    batch_leader: bool = False


def tensor(array: np.ndarray) -> Tensor:
    """Wrap a numpy array (numeric, bool or bytes/str/object) as a wire tensor."""
    return Tensor(datatype_of(array), tuple(int(d) for d in array.shape), array)


def _encode_tensor(t: Tensor) -> list[Any]:
    if t.datatype == JSON:
        return [JSON, list(t.shape), t.data]
    if t.datatype == BYTES:
        items = [x if isinstance(x, bytes) else str(x).encode() for x in t.data.reshape(-1)]
        return [BYTES, list(t.shape), items]
    array = np.ascontiguousarray(t.data, dtype=NUMPY_DTYPES[t.datatype])
    return [t.datatype, list(t.shape), array.data]


def _decode_tensor(name: str, raw: Any) -> Tensor:
    try:
        datatype, shape_list, data = raw
    except (TypeError, ValueError) as e:
        raise WireError(f"tensor {name!r} is not [datatype, shape, data]") from e
    if not isinstance(datatype, str):
        raise WireError(f"tensor {name!r} has datatype {datatype!r}, not a name")
    if not isinstance(shape_list, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape_list
    ):
        raise WireError(f"tensor {name!r} has shape {shape_list!r}, not a list of integers")
    shape = tuple(shape_list)
    if any(d < 0 for d in shape):
        raise WireError(f"tensor {name!r} has a negative dimension in {list(shape)}")
    count = math.prod(shape)
    if datatype == JSON:
        return Tensor(JSON, shape, data)
    if datatype == BYTES:
        if not isinstance(data, list) or len(data) != count:
            raise WireError(f"BYTES tensor {name!r} needs {count} items for shape {list(shape)}")
        if not all(isinstance(item, bytes) for item in data):
            raise WireError(f"BYTES tensor {name!r} has items that are not byte strings")
        array = np.empty(count, dtype=object)
        array[:] = data
        return Tensor(BYTES, shape, _reshape(name, array, shape))
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise WireError(f"tensor {name!r} has unknown datatype {datatype!r}")
    if not isinstance(data, bytes) or len(data) != count * dtype.itemsize:
        raise WireError(
            f"tensor {name!r}: {datatype} shape {list(shape)} needs "
            f"{count * dtype.itemsize} bytes, got "
            f"{len(data) if isinstance(data, bytes) else type(data).__name__}"
        )
    # Zero-copy view on the message buffer; read-only, which ORT accepts.
    return Tensor(datatype, shape, _reshape(name, np.frombuffer(data, dtype=dtype), shape))


def _reshape(name: str, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return flat.reshape(shape)
    except ValueError as e:  # over 64 dims, or too large for numpy even when empty
        raise WireError(f"tensor {name!r} cannot take shape {list(shape)}: {e}") from e


def _unpack_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=False)
    # TypeError: a map key msgpack cannot hash (a list or map used as a key).
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise WireError(f"{what} is not msgpack: {e}") from e
    if not isinstance(message, dict):
        raise WireError(f"{what} is not a msgpack map")
    if message.get("v") != WIRE_VERSION:
        raise WireError(f"{what} has wire version {message.get('v')!r}, expected {WIRE_VERSION}")
    return message


def encode_request(request: Request) -> bytes:
    return msgpack.packb(
        {
            "v": WIRE_VERSION,
            "inputs": {n: _encode_tensor(t) for n, t in request.inputs.items()},
            "outputs": list(request.outputs) if request.outputs is not None else None,
            "parameters": request.parameters,
        }
    )


def decode_request(payload: bytes) -> Request:
    message = _unpack_map(payload, "request payload")
    inputs = message.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise WireError("request payload has no inputs map")
    outputs = message.get("outputs")
    if outputs is not None and not (
        isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)
    ):
        raise WireError("request payload 'outputs' must be a list of names")
    parameters = message.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise WireError("request payload 'parameters' must be a map")
    return Request(
        inputs={str(n): _decode_tensor(str(n), t) for n, t in inputs.items()},
        outputs=tuple(outputs) if outputs is not None else None,
        parameters=parameters,
    )


def encode_reply(reply: Reply) -> bytes:
    return msgpack.packb(
        {
            "v": WIRE_VERSION,
            "id": reply.id,
            "status": reply.status,
            "error": reply.error,
            "outputs": {n: _encode_tensor(t) for n, t in reply.outputs.items()},
            "queue_ms": reply.queue_ms,
            "compute_ms": reply.compute_ms,
            "batch_size": reply.batch_size,
            "batch_leader": reply.batch_leader,
        }
    )


def decode_reply(data: bytes) -> Reply:
    message = _unpack_map(data, "reply")
    if not isinstance(message.get("outputs") or {}, dict):
        raise WireError("reply 'outputs' is not a map")
    try:
        return Reply(
            id=str(message["id"]),
            status=str(message["status"]),
            error=str(message.get("error") or ""),
            outputs={
                str(n): _decode_tensor(str(n), t) for n, t in (message.get("outputs") or {}).items()
            },
            queue_ms=float(message.get("queue_ms") or 0.0),
            compute_ms=float(message.get("compute_ms") or 0.0),
            batch_size=int(message.get("batch_size") or 0),
            batch_leader=bool(message.get("batch_leader")),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise WireError(f"reply is missing or has a malformed field: {e}") from e
