"""Large V2 JSON bodies: float data read straight into numpy arrays (simdjson), and every other
body, answer and error exactly as orjson's reading gives them."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from modelgate.core.errors import InvalidInput
from modelgate.core.repository import Model, ModelVersion
from modelgate.gateway import protocol
from modelgate.gateway.parsing import V2, parse_body, parse_loaded

SHAPE = [1, 3, 64, 40]  # the symbolic model's x: FP32 [batch, 3, height, ?]
COUNT = 3 * 64 * 40


@pytest.fixture(scope="module")
def models(unit_repository: dict[str, Model]) -> dict[str, ModelVersion]:
    return {name: model.default for name, model in unit_repository.items()}


def body(data: Any, name: str = "x", datatype: str = "FP32", shape: list[int] = SHAPE,
         **extra: Any) -> bytes:
    text = orjson.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                                     "data": data}], **extra})
    assert len(text) >= protocol.FAST_FLOATS_BODY_BYTES  # the fast reading is what is tested
    return text


def slow_parse(text: bytes, model: ModelVersion) -> Any:
    """What the gateway made of the body before: orjson, then the same checks."""
    return parse_loaded(V2, protocol.loads(text), None, model)


def error_of(call: Any) -> str:
    with pytest.raises(InvalidInput) as caught:
        call()
    return str(caught.value)


def test_float_data_of_a_large_body_comes_as_an_array_equal_to_orjsons_reading(
        models: dict[str, ModelVersion]) -> None:
    values = np.random.default_rng(3).normal(size=COUNT) * 1e3
    data: list[Any] = [float(v) for v in values]
    data[:4] = [0, -7, 1e-45, 3.4e38]  # whole numbers and FP32's extremes among the floats
    text = body(data, parameters={"timeout_ms": 500}, id="big", outputs=[{"name": "y"}])
    loaded = protocol.loads_v2(text)
    assert isinstance(loaded["inputs"][0]["data"], np.ndarray)  # no Python float per value
    assert loaded["parameters"] == {"timeout_ms": 500} and loaded["id"] == "big"
    fast = parse_body(V2, text, None, models["symbolic"])
    slow = slow_parse(text, models["symbolic"])
    assert (fast.request_id, fast.request.outputs, fast.request.parameters) == \
        (slow.request_id, slow.request.outputs, slow.request.parameters)
    x = fast.request.inputs["x"]
    assert (x.datatype, x.shape, x.data.dtype) == ("FP32", tuple(SHAPE), np.float32)
    assert x.data.tobytes() == slow.request.inputs["x"].data.tobytes()


def test_fp64_data_keeps_every_bit_and_small_bodies_read_as_before() -> None:
    values = [float(v) for v in np.random.default_rng(4).random(COUNT)]
    loaded = protocol.loads_v2(body(values, datatype="FP64"))
    np.testing.assert_array_equal(loaded["inputs"][0]["data"], np.array(values))
    small = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 1, 1],
                                      "data": [1.5, 2.5, 3.5]}]})
    assert protocol.loads_v2(small) == orjson.loads(small)


@pytest.mark.parametrize("bad, message", [
    ("text", "data must be numbers for datatype FP32, found strings"),
    (None, "data must be numbers"),
    (True, "found true/false"),
])
def test_data_that_is_not_all_numbers_gets_the_same_400(
        models: dict[str, ModelVersion], bad: Any, message: str) -> None:
    data: list[Any] = [0.5] * COUNT
    data[COUNT // 2] = bad
    if bad is True:
        data = [True] * COUNT
    text = body(data)
    fast = error_of(lambda: parse_body(V2, text, None, models["symbolic"]))
    assert fast == error_of(lambda: slow_parse(text, models["symbolic"]))
    assert message in fast


def test_nested_data_is_read_as_nested_lists_so_ragged_data_is_still_refused(
        models: dict[str, ModelVersion]) -> None:
    nested = np.arange(COUNT, dtype=np.float32).reshape(SHAPE).tolist()
    fast = parse_body(V2, body(nested), None, models["symbolic"]).request.inputs["x"].data
    np.testing.assert_array_equal(fast, np.arange(COUNT, dtype=np.float32).reshape(SHAPE))
    # Right count of values, wrong nesting: one row short here, one long there.
    rows = np.arange(COUNT, dtype=np.float32).reshape(3 * 64, 40).tolist()
    rows[0].append(rows[1].pop())
    text = body(rows, shape=[1, 3, 64, 40])
    fast_error = error_of(lambda: parse_body(V2, text, None, models["symbolic"]))
    assert fast_error == error_of(lambda: slow_parse(text, models["symbolic"]))


def test_values_past_fp32_shape_mismatches_and_int_data_as_before(
        models: dict[str, ModelVersion]) -> None:
    too_large = [1.0] * COUNT
    too_large[7] = 1e39
    text = body(too_large)
    assert "values must lie in" in error_of(
        lambda: parse_body(V2, text, None, models["symbolic"]))
    short = body([1.0] * (COUNT - 1))
    fast = error_of(lambda: parse_body(V2, short, None, models["symbolic"]))
    assert fast == error_of(lambda: slow_parse(short, models["symbolic"]))
    assert f"needs {COUNT} values, got {COUNT - 1}" in fast
    # INT64 data never goes through doubles: 2**53 + 1 stays itself.
    ids = [2**53 + 1] * 5000
    text = body(ids, name="ids", datatype="INT64", shape=[1, 5000])
    request = parse_body(V2, text, None, models["int64"]).request
    assert request.inputs["ids"].data.dtype == np.int64
    assert int(request.inputs["ids"].data[0, 0]) == 2**53 + 1


def test_bodies_the_fast_reading_does_not_take_are_read_by_orjson(
        models: dict[str, ModelVersion]) -> None:
    data = [0.25] * COUNT
    # Duplicate keys: orjson keeps the last, and so does the gateway.
    good = orjson.dumps({"name": "x", "datatype": "FP32", "shape": SHAPE, "data": data})
    duplicated = b'{"inputs": [' + good[:-1] + b', "name": "nope"}]}'
    assert len(duplicated) >= protocol.FAST_FLOATS_BODY_BYTES
    assert protocol.loads_v2(duplicated) == orjson.loads(duplicated)
    assert "unknown input 'nope'" in error_of(
        lambda: parse_body(V2, duplicated, None, models["symbolic"]))
    # Invalid JSON: orjson's message, as for a small body.
    broken = body(data)[:-1]
    assert error_of(lambda: protocol.loads_v2(broken)) == error_of(
        lambda: protocol.loads(broken))
    assert "is not valid JSON" in error_of(lambda: protocol.loads_v2(broken))
    # A top level that is not an object.
    listed = orjson.dumps([data])
    assert "must be a JSON object" in error_of(
        lambda: parse_body(V2, listed, None, models["symbolic"]))


def test_a_parser_still_holding_a_document_leaves_the_next_body_to_orjson() -> None:
    text = body([0.5] * COUNT)
    protocol.loads_v2(text)  # this thread's parser exists now
    held = protocol._simdjson.parser.parse(b'{"held": [1, 2]}')
    try:
        loaded = protocol.loads_v2(text)
        assert isinstance(loaded["inputs"][0]["data"], list)  # orjson's reading
        assert loaded == orjson.loads(text)
    finally:
        del held
    assert isinstance(protocol.loads_v2(text)["inputs"][0]["data"], np.ndarray)
    protocol.forget_parser()
    assert isinstance(protocol.loads_v2(text)["inputs"][0]["data"], np.ndarray)
