"""The queue wire format: lossless round trips, and garbage is rejected, never executed."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from modelgate.core import wire

SHAPES = [(2, 3), (), (0, 4), (1,)]


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values that use the datatype's range (extremes included when there is room)."""
    rng = np.random.default_rng(seed)
    dtype = wire.NUMPY_DTYPES[datatype]
    count = math.prod(shape)
    if dtype.kind == "b":
        flat = rng.integers(0, 2, count).astype(bool)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        flat = rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)
        flat[: min(2, count)] = [info.min, info.max][: min(2, count)]
    else:
        flat = (rng.standard_normal(count) * 100).astype(dtype)
    return flat.astype(dtype).reshape(shape)


def assert_same_tensor(got: wire.Tensor, want: wire.Tensor) -> None:
    assert got.datatype == want.datatype
    assert got.shape == want.shape
    if want.datatype == wire.JSON:
        assert got.data == want.data
        return
    assert isinstance(got.data, np.ndarray)
    assert got.data.shape == want.shape
    if want.datatype == wire.BYTES:
        assert got.data.dtype == object
        assert [bytes(x) for x in got.data.reshape(-1)] == [bytes(x) for x in
                                                            want.data.reshape(-1)]
    else:
        assert got.data.dtype == wire.NUMPY_DTYPES[want.datatype]
        np.testing.assert_array_equal(got.data, want.data)


def encode_request(request: wire.Request) -> bytes:
    """The payload of an entry holding this one request."""
    return wire.encode_bundle(wire.Bundle.single("1", request))


def decode_request(payload: bytes) -> wire.Request:
    """The request of a one-request entry (ids ``"1"``) with this payload."""
    return wire.decode_bundle(("1",), payload).request


def bytes_array(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


BYTES_CASES = [
    bytes_array([b"a", b"", "\u00fcber".encode(), b"\x00\xff", b"x" * 300, b"z"], (2, 3)),
    bytes_array([b"only"], ()),
    bytes_array([], (0, 4)),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", list(wire.NUMPY_DTYPES))
def test_request_round_trip_numeric(datatype: str, shape: tuple[int, ...]) -> None:
    array = sample(datatype, shape)
    request = wire.Request(
        inputs={"x": wire.tensor(array), "second": wire.tensor(sample(datatype, (3,), seed=1))},
        outputs=("out",),
        parameters={"timeout_ms": 250, "tag": "a"},
    )
    assert request.inputs["x"].datatype == datatype

    decoded = decode_request(encode_request(request))

    assert set(decoded.inputs) == {"x", "second"}
    for name in request.inputs:
        assert_same_tensor(decoded.inputs[name], request.inputs[name])
    assert decoded.outputs == ("out",)
    assert decoded.parameters == {"timeout_ms": 250, "tag": "a"}


def test_request_round_trip_big_endian_input_is_carried_little_endian() -> None:
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    decoded = decode_request(encode_request(wire.Request({"x": wire.tensor(array)})))
    assert decoded.inputs["x"].datatype == "INT32"
    np.testing.assert_array_equal(decoded.inputs["x"].data, array)


@pytest.mark.parametrize("array", BYTES_CASES, ids=lambda a: str(a.shape))
def test_request_round_trip_bytes(array: np.ndarray) -> None:
    request = wire.Request({"text": wire.tensor(array)}, outputs=None)
    assert request.inputs["text"].datatype == wire.BYTES

    decoded = decode_request(encode_request(request))

    assert_same_tensor(decoded.inputs["text"], request.inputs["text"])
    assert decoded.outputs is None
    assert decoded.parameters == {}


def test_str_objects_are_sent_as_utf8_bytes() -> None:
    array = np.array(["h\u00e9", "x"], dtype=object)
    decoded = decode_request(encode_request(wire.Request({"t": wire.tensor(array)})))
    assert list(decoded.inputs["t"].data) == ["h\u00e9".encode(), b"x"]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", [*wire.NUMPY_DTYPES, wire.BYTES, wire.JSON])
def test_reply_round_trip(datatype: str, shape: tuple[int, ...]) -> None:
    if datatype == wire.JSON:
        # What the worker makes of a ZipMap: a list of {class: probability} maps.
        out = wire.Tensor(wire.JSON, (2,), [{0: 0.25, 1: 0.75}, {0: 1.0, 1: 0.0}])
    elif datatype == wire.BYTES:
        out = wire.tensor(bytes_array([b"r%d" % i for i in range(math.prod(shape))], shape))
    else:
        out = wire.tensor(sample(datatype, shape, seed=3))
    reply = wire.Reply(ids=("17",), status=wire.ReplyStatus.OK, outputs={"out": out}, error="",
                       queue_ms=1.5, compute_ms=0.25, batch_size=12, batch_leader=True)

    decoded = wire.decode_reply(wire.encode_reply(reply))

    assert_same_tensor(decoded.outputs["out"], out)
    assert (decoded.id, decoded.status, decoded.error) == ("17", "ok", "")
    assert (decoded.queue_ms, decoded.compute_ms) == (1.5, 0.25)
    assert (decoded.batch_size, decoded.batch_leader) == (12, True)


def test_a_reply_says_its_worker_stored_its_answers_and_each_part_keeps_it() -> None:
    out = wire.tensor(np.arange(6, dtype=np.float32).reshape(3, 2))
    reply = wire.Reply(("a", "b"), wire.ReplyStatus.OK, {"out": out}, rows=(1, 2), stored=True)
    decoded = wire.decode_reply(wire.encode_reply(reply))
    assert decoded.stored
    assert [part.stored for part in wire.unbundle(decoded, decoded=True)] == [True, True]
    # Not stored: the field is absent, as in a reply of an earlier release.
    plain = wire.encode_reply(wire.Reply(("a",), wire.ReplyStatus.OK, {"out": out}))
    assert b"stored" not in plain and not wire.decode_reply(plain).stored


def test_a_reply_whose_stored_is_no_boolean_is_refused() -> None:
    message = msgpack.unpackb(wire.encode_reply(wire.Reply(("a",), wire.ReplyStatus.OK)))
    message["stored"] = 1
    with pytest.raises(wire.WireError, match="stored"):
        wire.decode_reply(msgpack.packb(message))


def test_error_reply_round_trip() -> None:
    reply = wire.Reply(ids=("9",), status=wire.ReplyStatus.BAD_INPUT, error="input 'x': bad",
                       rows=(2,))
    decoded = wire.decode_reply(wire.encode_reply(reply))
    assert decoded == wire.Reply(ids=("9",), status="bad_input", error="input 'x': bad",
                                 rows=(2,))


# --------------------------------------------------------------------------- garbage


def _valid_request_message() -> dict:
    return msgpack.unpackb(encode_request(wire.Request(
        {"x": wire.tensor(np.zeros((2, 2), np.float32))})), raw=False)


def _valid_reply_message() -> dict:
    return msgpack.unpackb(wire.encode_reply(wire.Reply(
        ids=("1",), status="ok", outputs={"y": wire.tensor(np.zeros(3, np.int64))})), raw=False)


class _Trap:
    """Unpickling this would create a file: proof that decoding executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _decoders():  # type: ignore[no-untyped-def]
    return [decode_request, wire.decode_reply]


@pytest.mark.parametrize("decode", _decoders(), ids=["request", "reply"])
def test_random_bytes_raise_wire_error(decode) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1234)
    for size in [0, 1, 2, 3, 5, 8, 16, 64, 257, 1000] * 30:
        garbage = rng.bytes(size)
        with pytest.raises(wire.WireError):
            decode(garbage)


@pytest.mark.parametrize("decode", _decoders(), ids=["request", "reply"])
def test_pickles_are_rejected_and_never_executed(decode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "executed"
    payloads = [pickle.dumps({"v": 2, "inputs": {}}, protocol=p) for p in range(6)]
    payloads += [pickle.dumps({"v": 2, "ids": ["1"], "status": "ok", "trap": _Trap(marker)},
                              protocol=p) for p in range(6)]
    for payload in payloads:
        with pytest.raises(wire.WireError):
            decode(payload)
    assert not marker.exists(), "decoding a pickle executed code"


@pytest.mark.parametrize("version", [0, 1, 3, None, "2", 2.5])
def test_wrong_version_is_rejected(version) -> None:  # type: ignore[no-untyped-def]
    for message, decode in [(_valid_request_message(), decode_request),
                            (_valid_reply_message(), wire.decode_reply)]:
        message["v"] = version
        with pytest.raises(wire.WireError, match="version"):
            decode(msgpack.packb(message))
        del message["v"]
        with pytest.raises(wire.WireError, match="version"):
            decode(msgpack.packb(message))


@pytest.mark.parametrize("delta", [-1, 1, -16])
def test_wrong_byte_length_is_rejected(delta: int) -> None:
    message = _valid_request_message()
    data = message["inputs"]["x"][2]
    message["inputs"]["x"][2] = data[:delta] if delta < 0 else data + b"\x00" * delta
    with pytest.raises(wire.WireError, match="bytes"):
        decode_request(msgpack.packb(message))

    reply = _valid_reply_message()
    reply["outputs"]["y"][2] = reply["outputs"]["y"][2][:-1]
    with pytest.raises(wire.WireError, match="bytes"):
        wire.decode_reply(msgpack.packb(reply))


def _request_with_tensor(raw) -> bytes:  # type: ignore[no-untyped-def]
    message = _valid_request_message()
    message["inputs"]["x"] = raw
    return msgpack.packb(message)


@pytest.mark.parametrize("raw", [
    ["FP32", [2, 2]],  # too short
    ["FP32", [2, 2], b"\x00" * 16, "extra"],
    "FP32",
    ["FP32", [-2, -2], b"\x00" * 16],  # negative dims multiply to a "valid" count
    ["FP32", ["a"], b""],
    ["FP32", [float("inf")], b""],  # would overflow int()
    ["FP32", [2.5], b"\x00" * 8],
    ["FP32", "22", b"\x00" * 16],  # a string is not a shape, even if its chars are digits
    ["FP32", {"2": 2}, b"\x00" * 8],
    ["FP32", [2, 2], [0.0, 0.0, 0.0, 0.0]],  # numbers need a raw buffer
    ["FP32", [1], msgpack.ExtType(5, b"\x00" * 4)],
    ["COMPLEX64", [1], b"\x00" * 8],
    [None, [1], b"\x00" * 4],
    ["BYTES", [2], [b"a"]],
    ["BYTES", [2], b"ab"],
    ["BYTES", [2], ["a", "b"]],  # text, not byte strings
    ["BYTES", [1], [1]],
    [["FP32"], [1], b"\x00" * 4],  # an unhashable datatype
    ["FP32", [True], b"\x00" * 4],
], ids=repr)
def test_malformed_tensors_are_rejected(raw) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(wire.WireError):
        decode_request(_request_with_tensor(raw))


@pytest.mark.parametrize("mutate", [
    lambda m: m.update(inputs={}),
    lambda m: m.update(inputs=[["FP32", [1], b"\x00" * 4]]),
    lambda m: m.pop("inputs"),
    lambda m: m.update(outputs="y"),
    lambda m: m.update(outputs=[1, 2]),
    lambda m: m.update(parameters=[1]),
], ids=["empty-inputs", "inputs-list", "no-inputs", "outputs-str", "outputs-ints", "params"])
def test_malformed_request_fields_are_rejected(mutate) -> None:  # type: ignore[no-untyped-def]
    message = _valid_request_message()
    mutate(message)
    with pytest.raises(wire.WireError):
        decode_request(msgpack.packb(message))


@pytest.mark.parametrize("mutate", [
    lambda m: m.pop("ids"),
    lambda m: m.pop("status"),
    lambda m: m.update(outputs=[1, 2]),  # not a map
    lambda m: m.update(outputs={"y": "nope"}),
    lambda m: m.update(queue_ms=[1]),
    lambda m: m.update(batch_size=float("inf")),
    lambda m: m.update(batch_size="many"),
], ids=["no-id", "no-status", "outputs-list", "output-str", "queue-list", "batch-inf",
        "batch-str"])
def test_malformed_reply_fields_are_rejected(mutate) -> None:  # type: ignore[no-untyped-def]
    message = _valid_reply_message()
    mutate(message)
    with pytest.raises(wire.WireError):
        wire.decode_reply(msgpack.packb(message))


@pytest.mark.parametrize("decode", _decoders(), ids=["request", "reply"])
@pytest.mark.parametrize("payload", [
    msgpack.packb([1, 2, 3]),
    msgpack.packb("v"),
    msgpack.packb(None),
    b"\x81\x90\x00",  # a map whose key is a list (unhashable)
    b"\x81\x80\x00",  # a map whose key is a map (unhashable)
    b"\x91" * 100_000,  # deeply nested lists
    msgpack.packb({"v": 2}) + b"\x00",  # trailing data
    msgpack.packb({"v": 2, "inputs": {}})[:-1],  # truncated
], ids=["list", "str", "nil", "list-key", "map-key", "deep", "trailing", "truncated"])
def test_non_map_and_malformed_msgpack_is_rejected(decode, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(wire.WireError):
        decode(payload)


def test_fuzzed_valid_messages_never_raise_anything_but_wire_error() -> None:
    """Flip bytes of real messages: decoding either succeeds or raises WireError."""
    rng = np.random.default_rng(7)
    originals = [
        (decode_request, encode_request(wire.Request(
            {"x": wire.tensor(np.arange(6, dtype=np.float32).reshape(2, 3)),
             "t": wire.tensor(bytes_array([b"ab", b"c"], (2,)))}, ("y",), {"k": 1}))),
        (wire.decode_reply, wire.encode_reply(wire.Reply(
            ("5",), "ok", {"y": wire.tensor(np.ones((2, 2), np.int16)),
                        "p": wire.Tensor(wire.JSON, (1,), [{1: 0.5}])}, "", 1.0, 2.0, 3, True))),
    ]
    rejected = 0
    for decode, original in originals:
        for _ in range(1500):
            mutated = bytearray(original)
            for position in rng.integers(0, len(mutated), rng.integers(1, 4)):
                mutated[position] = int(rng.integers(0, 256))
            try:
                decode(bytes(mutated))
            except wire.WireError:
                rejected += 1
    assert rejected > 0


# --------------------------------------------------------------------------- bundles


BUNDLE_IDS = ("3", "10", "11")
BUNDLE_ROWS = (2, 1, 3)


def bundle_requests() -> list[wire.Request]:
    """Three requests of 2, 1 and 3 rows with a numeric and a BYTES input each."""
    return [
        wire.Request(
            {"x": wire.tensor(sample("FP32", (rows, 4), seed=rows)),
             "t": wire.tensor(bytes_array([b"%d-%d" % (rows, i) for i in range(rows)], (rows,)))},
            outputs=("y",))
        for rows in BUNDLE_ROWS
    ]


def bundle_message() -> dict:
    bundle = wire.combine(list(BUNDLE_IDS), bundle_requests())
    return msgpack.unpackb(wire.encode_bundle(bundle), raw=False)


def test_bundle_round_trip_concatenates_inputs_along_dim_0() -> None:
    requests = bundle_requests()
    bundle = wire.combine(list(BUNDLE_IDS), requests)

    decoded = wire.decode_bundle(BUNDLE_IDS, wire.encode_bundle(bundle))

    assert (decoded.ids, decoded.rows) == (BUNDLE_IDS, BUNDLE_ROWS)
    assert decoded.request.rows == sum(BUNDLE_ROWS)
    assert decoded.request.outputs == ("y",)
    for name in ("x", "t"):
        whole = np.concatenate([r.inputs[name].data for r in requests], axis=0)
        assert_same_tensor(decoded.request.inputs[name], wire.tensor(whole))


def test_combine_then_singles_gives_back_each_request() -> None:
    requests = bundle_requests()
    bundle = wire.combine(list(BUNDLE_IDS), requests)
    assert (bundle.ids, bundle.rows) == (BUNDLE_IDS, BUNDLE_ROWS)

    for encoded in (bundle, wire.decode_bundle(BUNDLE_IDS, wire.encode_bundle(bundle))):
        singles = encoded.singles()
        assert [(s.ids, s.rows) for s in singles] == [((i,), (r,)) for i, r in
                                                      zip(BUNDLE_IDS, BUNDLE_ROWS, strict=True)]
        for single, request in zip(singles, requests, strict=True):
            assert single.request.outputs == ("y",)
            assert set(single.request.inputs) == {"x", "t"}
            for name, want in request.inputs.items():
                assert_same_tensor(single.request.inputs[name], want)


def test_a_single_request_is_its_own_bundle() -> None:
    request = bundle_requests()[1]
    bundle = wire.combine(["8"], [request])
    assert bundle == wire.Bundle.single("8", request)
    assert (bundle.ids, bundle.rows) == (("8",), (1,))
    assert bundle.request is request
    assert bundle.singles() == [bundle]


@pytest.mark.parametrize("ids", [("3", "10"), ("3", "10", "11", "12"), ("3",), ()],
                         ids=["fewer", "more", "one", "none"])
def test_bundle_rows_must_match_the_ids(ids: tuple[str, ...]) -> None:
    payload = msgpack.packb(bundle_message())
    with pytest.raises(wire.WireError, match="rows"):
        wire.decode_bundle(ids, payload)


@pytest.mark.parametrize("rows", [
    [2, 1, 2],  # one row short of the inputs
    [2, 1, 4],
    [6, 0, 0, 0],  # adds up, but one count too many
    [2, -1, 5],
    [2, "1", 3],
    [2, True, 3],
    [2.0, 1, 3],
    "213",
    None,
], ids=repr)
def test_bundle_rows_must_add_up_to_the_inputs(rows: object) -> None:
    message = bundle_message()
    message["rows"] = rows
    with pytest.raises(wire.WireError, match="rows"):
        wire.decode_bundle(BUNDLE_IDS, msgpack.packb(message))


def test_reply_round_trip_with_ids_and_rows() -> None:
    reply = wire.Reply(ids=("4", "5", "6"), rows=(1, 2, 0), status="ok",
                       outputs={"y": wire.tensor(np.arange(6, dtype=np.int32).reshape(3, 2))},
                       queue_ms=2.0, compute_ms=1.0, batch_size=7, batch_leader=True)

    decoded = wire.decode_reply(wire.encode_reply(reply))

    assert (decoded.ids, decoded.rows, decoded.id) == (("4", "5", "6"), (1, 2, 0), "4")
    assert_same_tensor(decoded.outputs["y"], reply.outputs["y"])
    assert (decoded.status, decoded.queue_ms, decoded.compute_ms) == ("ok", 2.0, 1.0)
    assert (decoded.batch_size, decoded.batch_leader) == (7, True)


@pytest.mark.parametrize("mutate", [
    lambda m: m.update(ids=[]),
    lambda m: m.update(ids="4,5"),
    lambda m: m.update(ids=[4, 5]),
    lambda m: m.update(rows=[1]),  # fewer counts than ids
    lambda m: m.update(rows=[1, 1, 1]),
    lambda m: m.update(rows=[1, -1]),
    lambda m: m.pop("rows"),
], ids=["ids-empty", "ids-str", "ids-ints", "rows-short", "rows-long", "rows-negative",
        "no-rows"])
def test_malformed_reply_ids_and_rows_are_rejected(
        mutate: Callable[[dict[str, Any]], object]) -> None:
    message = msgpack.unpackb(wire.encode_reply(wire.Reply(
        ids=("4", "5"), rows=(1, 1), status="ok",
        outputs={"y": wire.tensor(np.zeros(2, np.int64))})), raw=False)
    mutate(message)
    with pytest.raises(wire.WireError):
        wire.decode_reply(msgpack.packb(message))


def test_unbundle_cuts_numeric_bytes_and_json_outputs_per_rows() -> None:
    numeric = sample("FP64", (6, 2), seed=5)
    text = bytes_array([b"t%d" % i for i in range(6)], (6,))
    probabilities = [{0: i / 10, 1: 1 - i / 10} for i in range(6)]
    reply = wire.Reply(
        ids=BUNDLE_IDS, rows=BUNDLE_ROWS, status="ok",
        outputs={"y": wire.tensor(numeric), "t": wire.tensor(text),
                 "p": wire.Tensor(wire.JSON, (6,), probabilities)},
        queue_ms=3.0, compute_ms=4.0, batch_size=9, batch_leader=True)

    parts = wire.unbundle(wire.decode_reply(wire.encode_reply(reply)))

    assert [p.ids for p in parts] == [(i,) for i in BUNDLE_IDS]
    assert [p.batch_leader for p in parts] == [True, False, False]
    starts = [0, 2, 3, 6]
    for part, start, end in zip(parts, starts[:-1], starts[1:], strict=True):
        assert (part.status, part.error) == ("ok", "")
        assert (part.queue_ms, part.compute_ms, part.batch_size) == (3.0, 4.0, 9)
        assert_same_tensor(part.outputs["y"], wire.tensor(numeric[start:end]))
        assert_same_tensor(part.outputs["t"], wire.tensor(text[start:end]))
        assert_same_tensor(part.outputs["p"],
                           wire.Tensor(wire.JSON, (end - start,), probabilities[start:end]))


def test_unbundle_copies_an_error_to_every_id() -> None:
    reply = wire.Reply(ids=BUNDLE_IDS, rows=BUNDLE_ROWS, status=wire.ReplyStatus.DEADLINE,
                       error="too late", queue_ms=5.0, batch_leader=True)

    parts = wire.unbundle(wire.decode_reply(wire.encode_reply(reply)))

    assert [p.ids for p in parts] == [(i,) for i in BUNDLE_IDS]
    assert [(p.status, p.error, p.outputs) for p in parts] == [("deadline", "too late", {})] * 3
    assert [p.queue_ms for p in parts] == [5.0] * 3
    assert [p.batch_leader for p in parts] == [True, False, False]


def test_unbundle_leaves_a_single_reply_whole() -> None:
    reply = wire.Reply(ids=("1",), rows=(1,), status="ok",
                       outputs={"y": wire.tensor(np.array(2.5, np.float32))})
    assert wire.unbundle(reply) == [reply]


@pytest.mark.parametrize("output", [
    wire.tensor(np.zeros((5, 2), np.float32)),  # a row short
    wire.tensor(np.zeros((7,), np.int64)),
    wire.tensor(np.array(1.0, np.float32)),  # no dim 0 at all
    wire.tensor(bytes_array([b"a"] * 4, (4,))),
    wire.Tensor(wire.JSON, (6,), [{0: 1.0}] * 5),  # the shape says 6, the list holds 5
    wire.Tensor(wire.JSON, (), {"total": 1.0}),
], ids=["numeric-short", "numeric-long", "scalar", "bytes-short", "json-short", "json-map"])
def test_unbundle_refuses_outputs_the_rows_do_not_cut(output: wire.Tensor) -> None:
    reply = wire.Reply(ids=BUNDLE_IDS, rows=BUNDLE_ROWS, status="ok",
                       outputs={"ok": wire.tensor(np.zeros((6, 1), np.float32)), "bad": output})
    with pytest.raises(wire.WireError, match="do not cut"):
        wire.unbundle(reply)


# --------------------------------------------------------------------------- replies validated


def _reply_message(outputs: dict[str, Any], ids: tuple[str, ...] = ("4", "5"),
                   rows: tuple[int, ...] = (1, 1)) -> dict[str, Any]:
    message = msgpack.unpackb(wire.encode_reply(wire.Reply(ids=ids, rows=rows, status="ok")),
                              raw=False)
    message["outputs"] = outputs
    return message


@pytest.mark.parametrize("raw", [
    ["JSON", [2], 5],  # issue 12's reproduction: the data is not a list
    ["JSON", [2], [1]],  # one item for a shape of two
    ["JSON", [2], {"a": 1, "b": 2}],  # a map has a length, but is not rows
    ["JSON", [2, 1], [[1], [2]]],  # JSON outputs are a list of rows or one value, no more
    ["JSON", [2], "ab"],  # a string has a length of two too
], ids=["scalar-for-list", "short-list", "map", "rank-2", "string"])
def test_decode_reply_refuses_json_data_that_does_not_fit_its_shape(raw: Any) -> None:
    message = _reply_message({"x": raw})
    with pytest.raises(wire.WireError, match="'x'"):
        wire.decode_reply(msgpack.packb(message))


def test_decode_reply_keeps_a_json_value_of_shape_scalar_whole() -> None:
    message = _reply_message({"x": ["JSON", [], {"total": 1.5}]}, ids=("4",), rows=(1,))
    reply = wire.decode_reply(msgpack.packb(message))
    assert reply.outputs["x"] == wire.Tensor(wire.JSON, (), {"total": 1.5})


@pytest.mark.parametrize("raw", [
    ["FP32", [3, 1], b"\x00" * 12],  # a row too many for rows (1, 1)
    ["INT64", [], b"\x00" * 8],  # no dim 0 at all
    ["JSON", [3], [1, 2, 3]],
    ["JSON", [], 7],
], ids=["numeric-long", "scalar", "json-long", "json-scalar"])
def test_decode_reply_refuses_an_ok_bundle_reply_its_rows_do_not_cut(raw: Any) -> None:
    message = _reply_message({"y": ["FP32", [2, 1], b"\x00" * 8], "x": raw})
    with pytest.raises(wire.WireError, match="do not cut"):
        wire.decode_reply(msgpack.packb(message))


@pytest.mark.parametrize("mutate", [
    lambda m: m.update(status=5),
    lambda m: m.update(status=None),
    lambda m: m.update(error=[1]),
    lambda m: m.update(error=5),
    lambda m: m.update(queue_ms=float("nan")),
    lambda m: m.update(compute_ms=-1.0),
    lambda m: m.update(queue_ms=True),
    lambda m: m.update(batch_size=-3),
    lambda m: m.update(batch_size=2.5),
    lambda m: m.update(batch_leader="no"),  # a truthy string is not a flag
    lambda m: m.update(outputs={5: ["FP32", [2, 1], b"\x00" * 8]}),
], ids=["status-int", "status-nil", "error-list", "error-int", "queue-nan", "compute-negative",
        "queue-bool", "batch-negative", "batch-fraction", "leader-str", "output-name-int"])
def test_decode_reply_refuses_fields_of_the_wrong_type(
        mutate: Callable[[dict[str, Any]], object]) -> None:
    message = _reply_message({"y": ["FP32", [2, 1], b"\x00" * 8]})
    mutate(message)
    with pytest.raises(wire.WireError):
        wire.decode_reply(msgpack.packb(message))


def test_a_reply_that_decodes_always_unbundles() -> None:
    """Flip bytes of a bundle's reply: whatever decodes can be cut per id without raising."""
    rng = np.random.default_rng(12)
    original = wire.encode_reply(wire.Reply(
        ids=BUNDLE_IDS, rows=BUNDLE_ROWS, status="ok",
        outputs={"y": wire.tensor(np.ones((6, 2), np.int16)),
                 "t": wire.tensor(bytes_array([b"x"] * 6, (6,))),
                 "p": wire.Tensor(wire.JSON, (6,), [{1: 0.5}] * 6)},
        queue_ms=1.0, compute_ms=2.0, batch_size=6, batch_leader=True))
    decoded = 0
    for _ in range(3000):
        mutated = bytearray(original)
        for position in rng.integers(0, len(mutated), rng.integers(1, 4)):
            mutated[position] = int(rng.integers(0, 256))
        try:
            reply = wire.decode_reply(bytes(mutated))
        except wire.WireError:
            continue
        decoded += 1
        assert len(wire.unbundle(reply)) == len(reply.ids)
    assert decoded > 0


def test_a_reply_error_after_the_ids_names_them() -> None:
    """The gateway can answer the callers of an unreadable reply at once, not at their
    deadline: the error carries the ids when they could be read."""
    message = _reply_message({"x": ["JSON", [2], 5]})
    with pytest.raises(wire.ReplyError) as raised:
        wire.decode_reply(msgpack.packb(message))
    assert raised.value.ids == ("4", "5")
