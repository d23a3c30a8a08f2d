"""Large inputs are written to Redis as the requests' own buffers (``wire.encode_bundle_parts``
and ``dispatch.packed_xadd``): the bytes that arrive must decode exactly as the one-message
encoding does."""

from __future__ import annotations

import numpy as np
import pytest
from redis.connection import Encoder, PythonRespSerializer

from modelgate.core import wire
from modelgate.gateway.dispatch import packed_xadd
from tests.tensors import assert_same_request

RNG = np.random.default_rng(3)


def _request(rows: int, width: int = 40_000, **extra: wire.Tensor) -> wire.Request:
    image = RNG.random((rows, width)).astype(np.float32)
    return wire.Request({"image": wire.tensor(image), **extra}, ("probabilities",),
                        {"timeout_ms": 500})


def _same_bundle(parts: list[bytes | memoryview], expected: wire.Bundle) -> None:
    payload = b"".join(bytes(p) for p in parts)
    found = wire.decode_bundle(expected.ids, payload)
    assert found.rows == expected.rows
    assert_same_request(found.request, expected.request)


@pytest.mark.parametrize("rows", [[1], [1, 3, 2], [2, 0, 1]])
def test_parts_decode_to_the_bundle_one_message_would_carry(rows: list[int]) -> None:
    requests = [_request(n) for n in rows]
    ids = [f"c{i}" for i in range(len(rows))]
    parts = wire.encode_bundle_parts(requests)
    _same_bundle(parts, wire.decode_bundle(tuple(ids), wire.encode_bundle(
        wire.combine(ids, requests))))
    # The tensors' data is not copied into the pieces: each request's array is one of them.
    big = [p for p in parts if isinstance(p, memoryview)]
    assert len(big) == sum(1 for n in rows if n)
    assert wire.input_bytes(requests) == sum(len(p) for p in big)


def test_bytes_and_small_inputs_beside_a_large_one_survive_too() -> None:
    names = np.array([b"a", b"bc"], dtype=object).reshape(2, 1)
    requests = [_request(2, ids=wire.Tensor(wire.BYTES, (2, 1), names),
                         flag=wire.tensor(np.array([[1], [0]], np.int64))) for _ in range(2)]
    ids = ["x", "y"]
    _same_bundle(wire.encode_bundle_parts(requests), wire.decode_bundle(
        tuple(ids), wire.encode_bundle(wire.combine(ids, requests))))


def test_a_packed_xadd_is_what_redis_py_would_send() -> None:
    payload = wire.encode_bundle_parts([_request(2)])
    fields: list[bytes | str | int] = ["ids", "a,b", "reply_to", "mg:r", "budget_ms", 900,
                                       "attempt", 1, "payload"]
    ours = b"".join(bytes(p) for p in packed_xadd("mg:pool:m:1:requests", fields, payload))
    theirs = b"".join(PythonRespSerializer(1 << 30, Encoder("utf-8", "strict", False).encode)
                      .pack("XADD", "mg:pool:m:1:requests", "*", *fields,
                            b"".join(bytes(p) for p in payload)))
    assert ours == theirs
