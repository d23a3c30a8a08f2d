"""The wire format between gateway and workers: the only module that encodes or decodes it.

Everything that crosses the queue is msgpack of plain values: the queue is reachable by anything
that can reach Redis, so nothing here can execute code while decoding (no pickle, no ext types).

A request entry on a pool's stream (its fields: ``modelgate.core.store.pools.RequestEntry``)
carries a *bundle*: one or more requests that a gateway combined because they arrived together
for the same model with compatible inputs. Their inputs are concatenated along dim 0, so a worker
decodes and batches a bundle as one request, and Redis and the worker pay per bundle, not per
request. The entry's ``payload`` is the msgpack map ``{"v": WIRE_VERSION, "rows": [rows of each
request], "inputs": {name: tensor}, "outputs": [names] or None, "parameters": {...}}``,
and a tensor is ``[datatype, shape, data]``: ``data`` is the raw little-endian buffer for
numeric types, a list of byte strings for ``BYTES`` and a plain msgpack value for ``JSON``
(non-tensor outputs other than ZipMap probabilities, which workers turn into FP32
tensors: ``modelgate.core.zipmap``).

A reply answers a whole bundle (or, when the worker had to run its requests apart, one of
them): one msgpack map ``{"v", "ids", "rows", "status", "error", "outputs", "queue_ms",
"compute_ms", "batch_size", "batch_leader"}`` whose outputs hold the rows of every id in order;
:func:`unbundle` cuts it into one reply per id. ``status`` is ``"ok"`` or an error code from
:class:`ReplyStatus`. A reply is validated whole when decoded (types, every tensor's data against
its shape, an ``ok`` bundle's rows against its outputs), so a malformed or forged reply is a
WireError there and nothing downstream can trip on it. Exactly one reply of every ORT run has
``batch_leader`` set, so a gateway can count runs (the ``modelgate_batch_size`` histogram)
without a second channel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np

WIRE_VERSION = 2


class WireError(ValueError):
    """Bytes that are not a valid message of this wire format version."""


class ReplyError(WireError):
    """A reply whose ids could be read but not the rest: its callers can still be answered
    (with an error) at once instead of at their deadline."""

    def __init__(self, message: str, ids: tuple[str, ...]) -> None:
        super().__init__(message)
        self.ids = ids


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
    # The entry's tensors are in a gateway's shared memory that the worker cannot open
    # (``modelgate.core.arena``): the gateway sends that pool's payloads through Redis.
    UNREACHABLE = "payload_unreachable"


# The messages below are built several times per call (parsed, bundled, cut back per call):
# not frozen, because a frozen dataclass's __init__ sets each field through
# object.__setattr__, four times the cost (a Reply: 0.95 against 0.2 us). Nothing changes
# them once built.
@dataclass(slots=True)
class Tensor:
    """A named tensor or, for datatype ``JSON``, a non-tensor value served as JSON."""

    datatype: str
    shape: tuple[int, ...]
    data: Any  # np.ndarray for numeric and BYTES (object array); plain value for JSON

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1


@dataclass(slots=True)
class Request:
    inputs: dict[str, Tensor]
    outputs: tuple[str, ...] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return next(iter(self.inputs.values())).rows


@dataclass(slots=True)
class Bundle:
    """Requests combined into one queue entry: ``request`` holds their inputs concatenated
    along dim 0, ``rows[i]`` of them belonging to ``ids[i]``."""

    ids: tuple[str, ...]
    rows: tuple[int, ...]
    request: Request

    @classmethod
    def single(cls, id: str, request: Request) -> Bundle:
        return cls((id,), (request.rows,), request)

    def singles(self) -> list[Bundle]:
        """One bundle per request, cut from the concatenated inputs (views, no copies)."""
        if len(self.ids) == 1:
            return [self]
        return [Bundle((id_,), (count,), Request(
                    {name: _rows_of(t, start, count) for name, t in self.request.inputs.items()},
                    self.request.outputs, self.request.parameters))
                for id_, start, count in _spans(self.ids, self.rows)]


@dataclass(slots=True)
class Reply:
    ids: tuple[str, ...]
    status: str
    outputs: dict[str, Tensor] = field(default_factory=dict)
    error: str = ""
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    batch_size: int = 0
    batch_leader: bool = False
    rows: tuple[int, ...] = ()  # rows of each id in ``outputs``, in order
    # The worker stored the answers its entry asked it to store (``worker/stored_answers.py``)
    stored: bool = False

    @property
    def id(self) -> str:
        return self.ids[0]


def row_spans(rows: Sequence[int]) -> list[tuple[int, int]]:
    """(first row, row count) of each part of rows concatenated along dim 0, in order."""
    spans = []
    start = 0
    for count in rows:
        spans.append((start, count))
        start += count
    return spans


def _spans(ids: tuple[str, ...], rows: tuple[int, ...]) -> list[tuple[str, int, int]]:
    """(id, first row, row count) of each request in a bundle's concatenated rows."""
    return [(id_, start, count)
            for id_, (start, count) in zip(ids, row_spans(rows), strict=True)]


def _rows_of(t: Tensor, start: int, count: int) -> Tensor:
    """Rows ``start:start+count`` of a tensor whose dim 0 (or JSON list) runs over requests."""
    return Tensor(t.datatype, (count, *t.shape[1:]), t.data[start:start + count])


def combine(ids: list[str], requests: list[Request]) -> Bundle:
    """One bundle from requests with equal :func:`batch_key` and output selection."""
    if len(requests) == 1:
        return Bundle.single(ids[0], requests[0])
    first = requests[0]
    inputs = {}
    for name, t in first.inputs.items():
        parts = [r.inputs[name].data for r in requests]
        data = np.concatenate(parts, axis=0)
        inputs[name] = Tensor(t.datatype, data.shape, data)
    # Parameters stay with the gateway (deadlines); workers do not read them.
    return Bundle(tuple(ids), tuple(r.rows for r in requests), Request(inputs, first.outputs))


def batch_key(request: Request) -> tuple[Any, ...]:
    """Requests with equal keys can be concatenated along dim 0."""
    return tuple((name, t.datatype, t.shape[1:]) for name, t in sorted(request.inputs.items()))


def unbundle(reply: Reply, decoded: bool = False) -> list[Reply]:
    """One reply per id; an ``ok`` reply's outputs are cut by ``rows``.

    A reply from :func:`decode_reply` always cuts (``decoded``: it was checked there, and is
    not again). One built otherwise whose outputs cannot be cut as ``rows`` says raises
    WireError, never anything else: every id is then answered with that error rather than
    with someone else's rows.
    """
    if len(reply.ids) == 1:
        return [reply]
    if reply.status != ReplyStatus.OK:
        return [Reply((id_,), reply.status, {}, reply.error, reply.queue_ms, reply.compute_ms,
                      reply.batch_size, reply.batch_leader and i == 0)
                for i, id_ in enumerate(reply.ids)]
    if not decoded:
        _check_cut(reply.ids, reply.rows, reply.outputs)
    return [Reply((id_,), reply.status,
                  {name: _rows_of(t, start, count) for name, t in reply.outputs.items()}, "",
                  reply.queue_ms, reply.compute_ms, reply.batch_size,
                  reply.batch_leader and i == 0, (), reply.stored)
            for i, (id_, start, count) in enumerate(_spans(reply.ids, reply.rows))]


def _check_cut(ids: tuple[str, ...], rows: tuple[int, ...], outputs: dict[str, Tensor]) -> None:
    """Raise WireError unless every output has exactly ``sum(rows)`` rows along dim 0."""
    total = sum(rows)
    for t in outputs.values():
        if not t.shape or t.shape[0] != total or (
                t.datatype == JSON and not (isinstance(t.data, list) and len(t.data) == total)):
            raise WireError(f"reply for {len(ids)} requests has rows {list(rows)} that do not "
                            "cut its outputs")


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
        # One plain value (shape []) or a list of one value per row (shape [n]), as
        # worker.runner makes them: anything else cannot be cut per request or answered.
        if len(shape) > 1 or (shape and not (isinstance(data, list) and len(data) == shape[0])):
            raise WireError(f"JSON tensor {name!r} of shape {list(shape)} needs a list of "
                            f"{shape[0] if shape else 0} values, or shape [] and one value")
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


def _unpack_map(data: bytes | memoryview, what: str) -> dict[str, Any]:
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


def _rows_for(ids: tuple[str, ...], raw: Any, what: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) != len(ids) or not all(
        isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in raw
    ):
        raise WireError(f"{what} 'rows' must be a count of rows for each of its {len(ids)} ids")
    return tuple(raw)


def encode_bundle(bundle: Bundle) -> bytes:
    request = bundle.request
    return msgpack.packb(
        {
            "v": WIRE_VERSION,
            "rows": list(bundle.rows),
            "inputs": {n: _encode_tensor(t) for n, t in request.inputs.items()},
            "outputs": list(request.outputs) if request.outputs is not None else None,
            "parameters": request.parameters,
        }
    )


# A bundle's numeric inputs past this many bytes are written as the requests' own buffers
# (:func:`encode_bundle_parts`) rather than concatenated and copied into one msgpack message.
LARGE_INPUT_BYTES = 32 * 1024


def encode_bundle_parts(requests: Sequence[Request]) -> list[bytes | memoryview]:
    """``encode_bundle(combine(ids, requests))`` as pieces whose concatenation is a msgpack
    message decoding to the same bundle, with each numeric input's data left in the requests'
    own buffers: a 150 KB image is then copied by nobody between the call's body and the
    socket to Redis (which takes the pieces in one vectored write). BYTES and JSON inputs are
    packed as :func:`encode_bundle` packs them.
    """
    pack = msgpack.packb
    first = requests[0]
    single = len(requests) == 1
    head = [b"\x85", pack("v"), pack(WIRE_VERSION), pack("rows"),
            pack([r.rows for r in requests]), pack("inputs"), _map_header(len(first.inputs))]
    pieces: list[bytes | memoryview] = []
    for name, t in first.inputs.items():
        parts = [r.inputs[name] for r in requests]
        rows = sum(part.rows for part in parts)
        shape = [rows, *t.shape[1:]] if not single else list(t.shape)
        if t.datatype in (JSON, BYTES):
            data = t if single else Tensor(t.datatype, tuple(shape), np.concatenate(
                [part.data for part in parts], axis=0))
            head.append(pack(name) + pack(_encode_tensor(data)))
            continue
        dtype = NUMPY_DTYPES[t.datatype]
        arrays = [np.ascontiguousarray(part.data, dtype=dtype) for part in parts]
        size = sum(a.nbytes for a in arrays)
        head.append(pack(name) + b"\x93" + pack(t.datatype) + pack(shape) + _bin_header(size))
        pieces.append(b"".join(head))
        head = []
        pieces.extend(a.data.cast("B") for a in arrays if a.nbytes)
    head += [pack("outputs"), pack(list(first.outputs) if first.outputs is not None else None),
             pack("parameters"), pack(first.parameters if single else {})]
    pieces.append(b"".join(head))
    return pieces


def _map_header(size: int) -> bytes:
    if size < 16:
        return bytes([0x80 | size])
    return b"\xde" + size.to_bytes(2, "big") if size < 1 << 16 else \
        b"\xdf" + size.to_bytes(4, "big")


def _bin_header(size: int) -> bytes:
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def input_bytes(requests: Sequence[Request]) -> int:
    """Bytes of numeric input data the requests carry together."""
    return sum(t.data.nbytes for r in requests for t in r.inputs.values()
               if t.datatype not in (JSON, BYTES))


def decode_bundle(ids: tuple[str, ...], payload: bytes | memoryview) -> Bundle:
    """The bundle of an entry whose ``ids`` field gave ``ids``."""
    message = _unpack_map(payload, "request payload")
    rows = _rows_for(ids, message.get("rows"), "request payload")
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
    request = Request(
        inputs={str(n): _decode_tensor(str(n), t) for n, t in inputs.items()},
        outputs=tuple(outputs) if outputs is not None else None,
        parameters=parameters,
    )
    if len(ids) > 1 and any(t.rows != sum(rows) for t in request.inputs.values()):
        raise WireError(f"request payload rows {rows} do not add up to its inputs' dim 0")
    return Bundle(ids, rows, request)


def encode_reply(reply: Reply) -> bytes:
    message: dict[str, Any] = {
        "v": WIRE_VERSION,
        "ids": list(reply.ids),
        # Unknown rows (the entry could not be decoded) go as zeros: only an ok reply of
        # several ids is ever cut by them.
        "rows": list(reply.rows) if reply.rows else [0] * len(reply.ids),
        "status": reply.status,
        "error": reply.error,
        "outputs": {n: _encode_tensor(t) for n, t in reply.outputs.items()},
        "queue_ms": reply.queue_ms,
        "compute_ms": reply.compute_ms,
        "batch_size": reply.batch_size,
        "batch_leader": reply.batch_leader,
    }
    if reply.stored:  # absent otherwise: what a reply of an earlier release looks like
        message["stored"] = True
    return msgpack.packb(message)


def decode_reply(data: bytes) -> Reply:
    """A reply, every field checked: whatever this returns :func:`unbundle` can cut.

    Raises WireError; ReplyError (naming the ids) once the ids were readable.
    """
    message = _unpack_map(data, "reply")
    ids = message.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise WireError("reply 'ids' must be a non-empty list of strings")
    ids = tuple(ids)
    try:
        return _reply_of(ids, message)
    except WireError as e:
        raise ReplyError(str(e), ids) from e


def _reply_of(ids: tuple[str, ...], message: dict[str, Any]) -> Reply:
    rows = _rows_for(ids, message.get("rows"), "reply")
    status = message.get("status")
    if not isinstance(status, str):
        raise WireError(f"reply 'status' must be a string, got {type(status).__name__}")
    error = message.get("error")
    if error is not None and not isinstance(error, str):
        raise WireError(f"reply 'error' must be a string, got {type(error).__name__}")
    raw_outputs = message.get("outputs")
    if raw_outputs is None:
        raw_outputs = {}
    if not isinstance(raw_outputs, dict) or not all(isinstance(n, str) for n in raw_outputs):
        raise WireError("reply 'outputs' must be a map of output names to tensors")
    outputs = {name: _decode_tensor(name, t) for name, t in raw_outputs.items()}
    if status == ReplyStatus.OK and len(ids) > 1:
        _check_cut(ids, rows, outputs)
    batch_size = message.get("batch_size")
    if batch_size is None:
        batch_size = 0
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 0:
        raise WireError(f"reply 'batch_size' must be a count, got {batch_size!r}")
    batch_leader = message.get("batch_leader")
    if batch_leader is not None and not isinstance(batch_leader, bool):
        raise WireError(f"reply 'batch_leader' must be true or false, got {batch_leader!r}")
    stored = message.get("stored")
    if stored is not None and not isinstance(stored, bool):
        raise WireError(f"reply 'stored' must be true or false, got {stored!r}")
    return Reply(ids=ids, rows=rows, status=status, error=error or "", outputs=outputs,
                 queue_ms=_milliseconds(message, "queue_ms"),
                 compute_ms=_milliseconds(message, "compute_ms"),
                 batch_size=batch_size, batch_leader=bool(batch_leader), stored=bool(stored))


def _milliseconds(message: dict[str, Any], name: str) -> float:
    """A duration field: absent is 0; otherwise a finite, non-negative number."""
    value = message.get(name)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise WireError(f"reply {name!r} must be a non-negative number, got {value!r}")
    return float(value)
