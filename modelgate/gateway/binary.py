"""Triton's binary tensor data extension for the V2 HTTP API.

A request may carry ``Inference-Header-Content-Length: N``: the first N bytes of the body are
the JSON request, the rest is raw tensor data. An input whose ``parameters.binary_data_size``
is set takes that many bytes, in input order, little-endian and row-major; BYTES elements are
each a 4-byte little-endian length and the bytes. An output is returned the same way when the
request asks (``outputs[i].parameters.binary_data`` or ``parameters.binary_data_output``); the
response then carries the same header. This is what ``tritonclient.http`` sends and expects by
default.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from modelgate.core import wire
from modelgate.core.errors import InvalidInput

HEADER = "inference-header-content-length"
_LENGTH = struct.Struct("<I")


class BinarySection:
    """The binary part of a request body, consumed input by input in order."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def take(self, name: str, size: Any) -> memoryview:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"input {name!r}: parameters.binary_data_size must be a "
                               f"non-negative integer, got {size!r}")
        end = self.offset + size
        if end > len(self.data):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size} runs past the binary data "
                f"({len(self.data) - self.offset} bytes left after the JSON header)")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def check_consumed(self) -> None:
        if self.offset != len(self.data):
            raise InvalidInput(
                f"the body has {len(self.data) - self.offset} bytes of binary data that no "
                "input's binary_data_size accounts for")


def split_body(body: bytes | bytearray, header_length: str | None
               ) -> tuple[bytes | bytearray, BinarySection | None]:
    """JSON part and binary section of a body per the Inference-Header-Content-Length header."""
    if header_length is None:
        return body, None
    length = header_length.strip()
    # ASCII digits only: str.isdigit() also takes superscripts ('²', a Latin-1 header byte),
    # which int() refuses.
    if not (length.isascii() and length.isdigit()) or int(length) > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {header_length!r} but the body has "
            f"{len(body)} bytes; it must be the byte length of the JSON header")
    cut = int(length)
    return body[:cut], BinarySection(memoryview(body)[cut:])


def decode_tensor(name: str, datatype: str, shape: tuple[int, ...], raw: memoryview) -> Any:
    """A binary input as an array of ``shape``: zero-copy for numeric types."""
    count = math.prod(shape)  # exact (np.prod wraps past int64), and no array made for it
    if datatype == wire.BYTES:
        items: list[bytes] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise InvalidInput(f"input {name!r}: BYTES binary data ends inside a length")
            (length,) = _LENGTH.unpack_from(raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise InvalidInput(f"input {name!r}: a BYTES element runs past its data")
            items.append(bytes(raw[offset:offset + length]))
            offset += length
        if len(items) != count:
            raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {count} BYTES "
                               f"elements, the binary data holds {len(items)}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = wire.NUMPY_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize} bytes, binary_data_size is {len(raw)}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise InvalidInput(f"input {name!r}: BOOL binary data must be bytes 0 or 1")
    return array


def binary_outputs(body: dict[str, Any], names: list[str]) -> set[str]:
    """The outputs the caller wants as binary data."""
    wanted: set[str] = set()
    parameters = body.get("parameters")
    if isinstance(parameters, dict) and parameters.get("binary_data_output") is True:
        wanted.update(names)
    for item in body.get("outputs") or []:
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if not isinstance(name, str):
            continue
        flag = (item.get("parameters") or {}).get("binary_data") \
            if isinstance(item.get("parameters") or {}, dict) else None
        if flag is True:
            wanted.add(name)
        elif flag is False:
            wanted.discard(name)
    return wanted


def encode_tensor(t: wire.Tensor) -> bytes:
    if t.datatype == wire.BYTES:
        parts = []
        for item in t.data.reshape(-1):
            value = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LENGTH.pack(len(value)))
            parts.append(value)
        return b"".join(parts)
    return np.ascontiguousarray(t.data, dtype=wire.NUMPY_DTYPES[t.datatype]).tobytes()
