"""KServe V2/V1 JSON bodies <-> wire requests and replies, validated against real signatures."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from modelgate.core import wire
from modelgate.core.errors import InvalidInput
from modelgate.core.repository import Model, ModelVersion
from modelgate.gateway.protocol import format_v1, format_v2, loads, parse_v1, parse_v2


@pytest.fixture(scope="module")
def models(unit_repository: dict[str, Model]) -> dict[str, ModelVersion]:
    return {name: model.default for name, model in unit_repository.items()}


def v2(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **extra}


def tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


# --------------------------------------------------------------------------- V2 requests


def test_flat_and_nested_data_give_the_same_tensor(models: dict[str, ModelVersion]) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.5]]
    flat_data = [x for row in rows for x in row]
    flat, _ = parse_v2(v2(tensor("input", "FP32", [2, 4], flat_data)), models["mlp"])
    nested, _ = parse_v2(v2(tensor("input", "FP32", [2, 4], rows)), models["mlp"])
    for request in (flat, nested):
        t = request.inputs["input"]
        assert (t.datatype, t.shape) == ("FP32", (2, 4))
        assert t.data.dtype == np.float32
        np.testing.assert_array_equal(t.data, np.array(rows, np.float32))
    assert flat.outputs is None


def test_symbolic_dims_accept_any_size_and_fixed_dims_are_enforced(
        models: dict[str, ModelVersion]) -> None:
    data = np.arange(1 * 3 * 2 * 5, dtype=np.float32).reshape(1, 3, 2, 5)
    request, _ = parse_v2(v2(tensor("x", "FP32", [1, 3, 2, 5], data.tolist())),
                          models["symbolic"])
    np.testing.assert_array_equal(request.inputs["x"].data, data)
    with pytest.raises(InvalidInput, match=r"'x' has shape \[1, 4, 2, 5\]"):
        parse_v2(v2(tensor("x", "FP32", [1, 4, 2, 5], [0.0] * 40)), models["symbolic"])


def test_multiple_inputs_outputs_selection_parameters_and_id(
        models: dict[str, ModelVersion]) -> None:
    body = v2(tensor("b", "FP32", [1, 3], [4, 5, 6]), tensor("a", "FP32", [1, 3], [1, 2, 3]),
              outputs=[{"name": "diff"}], parameters={"timeout_ms": 50}, id="call-7")
    request, request_id = parse_v2(body, models["add2"])
    assert request_id == "call-7"
    assert request.outputs == ("diff",)
    assert request.parameters == {"timeout_ms": 50}
    np.testing.assert_array_equal(request.inputs["a"].data, [[1, 2, 3]])
    np.testing.assert_array_equal(request.inputs["b"].data, [[4, 5, 6]])


def test_scalar_input_takes_shape_empty(models: dict[str, ModelVersion]) -> None:
    for data in (2.5, [2.5]):
        request, request_id = parse_v2(
            v2(tensor("x", "FP32", [1, 2], [1, 2]), tensor("scale", "FP32", [], data)),
            models["scalar"])
        assert request_id is None
        assert request.inputs["scale"].shape == ()
        assert request.inputs["scale"].data.item() == 2.5


def test_non_batchable_model_inputs_may_differ_in_dim_0(models: dict[str, ModelVersion]) -> None:
    data = np.ones((2, 3, 4), np.float32)
    request, _ = parse_v2(v2(tensor("state", "FP32", [2, 3, 4], data.tolist())), models["state"])
    assert request.inputs["state"].shape == (2, 3, 4)


def test_int_bool_and_bytes_datatypes(models: dict[str, ModelVersion]) -> None:
    request, _ = parse_v2(v2(tensor("ids", "INT64", [1, 3], [1, 2.0, -(2**40)])),
                          models["int64"])
    assert request.inputs["ids"].data.dtype == np.int64
    np.testing.assert_array_equal(request.inputs["ids"].data, [[1, 2, -(2**40)]])

    request, _ = parse_v2(v2(tensor("text", "BYTES", [2], ["h\u00e9", ""])), models["bytes"])
    assert list(request.inputs["text"].data) == ["h\u00e9".encode(), b""]


def test_empty_batch_is_accepted(models: dict[str, ModelVersion]) -> None:
    request, _ = parse_v2(v2(tensor("input", "FP32", [0, 4], [])), models["mlp"])
    assert request.inputs["input"].data.shape == (0, 4)


def test_loads_rejects_empty_and_invalid_json() -> None:
    assert loads(b'{"inputs": []}') == {"inputs": []}
    for body in (b"", b"{", b"NaN", b"{'single': 'quotes'}"):
        with pytest.raises(InvalidInput, match="JSON"):
            loads(body)


# Every rejection names the input at fault: (model, body, input name, message fragment).
V2_ERRORS = [
    ("mlp", v2(tensor("inputs", "FP32", [1, 4], [1, 2, 3, 4])), "inputs", "unknown input"),
    ("add2", v2(tensor("a", "FP32", [1, 3], [1, 2, 3])), "b", "missing input"),
    ("mlp", v2(tensor("input", "FP64", [1, 4], [1, 2, 3, 4])), "input", "datatype 'FP64'"),
    ("mlp", v2(tensor("input", "INT32", [1, 4], [1, 2, 3, 4])), "input", "expects 'FP32'"),
    ("mlp", v2(tensor("input", "FP32", [1, 5], [1, 2, 3, 4, 5])), "input", "shape [1, 5]"),
    ("mlp", v2(tensor("input", "FP32", [4], [1, 2, 3, 4])), "input", "shape [4]"),
    ("state", v2(tensor("state", "FP32", [3, 1, 4], [0] * 12)), "state", "shape [3, 1, 4]"),
    ("scalar", v2(tensor("x", "FP32", [1, 2], [1, 2]), tensor("scale", "FP32", [1], [2])),
     "scale", "shape [1]"),
    ("mlp", v2(tensor("input", "FP32", [2, 4], [1, 2, 3, 4])), "input", "needs 8 values, got 4"),
    ("mlp", v2(tensor("input", "FP32", [1, 4], [1, 2, 3, 4, 5, 6, 7, 8])), "input",
     "needs 4 values, got 8"),
    ("mlp", v2(tensor("input", "FP32", [1, 4], ["1", "2", "3", "4"])), "input", "strings"),
    ("mlp", v2(tensor("input", "FP32", [1, 4], [1, 2, "x", 4])), "input", "strings"),
    ("mlp", v2(tensor("input", "FP32", [1, 4], [1, 2, None, 4])), "input", "numbers"),
    ("mlp", v2(tensor("input", "FP32", [2, 4], [[1, 2, 3, 4], [5, 6, 7]])), "input",
     "not a rectangular array"),
    ("mlp", v2(tensor("input", "FP32", [2, 4], [[1, 2, 3, 4], 5])), "input",
     "not a rectangular array"),
    ("int64", v2(tensor("ids", "INT64", [1, 2], [1, 2.5])), "ids", "whole numbers"),
    ("int64", v2(tensor("ids", "INT64", [1, 2], [1, math.nan])), "ids", "whole numbers"),
    ("int64", v2(tensor("ids", "INT64", [1, 2], [1, math.inf])), "ids", "whole numbers"),
    ("int64", v2(tensor("ids", "INT64", [1, 1], [2**63])), "ids", "values must lie in"),
    ("mlp", v2(tensor("input", "FP32", [1, 4], [1, 2, 1e39, 4])), "input",
     "values must lie in"),
    ("mlp", v2(tensor("input", "FP32", [1, 4], [1, 2, -1e39, 4])), "input",
     "values must lie in"),
    ("bytes", v2(tensor("text", "BYTES", [2], ["a", 1])), "text", "must be strings"),
    ("bytes", v2(tensor("text", "BYTES", [3], ["a", "b"])), "text", "needs 3 values, got 2"),
    ("mlp", v2(tensor("input", "FP32", [1, -4], [1, 2, 3, 4])), "input", "negative"),
    ("mlp", v2(tensor("input", "FP32", "1,4", [1, 2, 3, 4])), "input", "list of integers"),
    ("mlp", v2(tensor("input", "FP32", [1.0, 4], [1, 2, 3, 4])), "input", "list of integers"),
    ("mlp", v2({"name": "input", "datatype": "FP32", "shape": [1, 4]}), "input", "no 'data'"),
    ("mlp", v2(tensor("input", "FP32", [1, 4], [1, 2, 3, 4]),
               tensor("input", "FP32", [1, 4], [1, 2, 3, 4])), "input", "given twice"),
    ("add2", v2(tensor("a", "FP32", [1, 3], [1, 2, 3]), tensor("b", "FP32", [2, 3], [0] * 6)),
     "a", "same first (batch) dimension"),
    ("mlp", v2(tensor("input", "FP32", [1, 4], [1, 2, 3, 4]), outputs=[{"name": "logits"}]),
     "logits", "unknown output"),
]


@pytest.mark.parametrize("model, body, culprit, fragment", V2_ERRORS,
                         ids=[f"{i}-{case[3] or case[2]}" for i, case in enumerate(V2_ERRORS)])
def test_v2_validation_errors_name_the_input(models: dict[str, ModelVersion], model: str,
                                             body: dict[str, Any], culprit: str,
                                             fragment: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_v2(body, models[model])
    message = str(error.value)
    assert repr(culprit) in message
    assert fragment in message


@pytest.mark.parametrize("body, fragment", [
    ([], "JSON object"),
    ({}, "'inputs'"),
    ({"inputs": []}, "'inputs'"),
    ({"inputs": {"input": [1, 2, 3, 4]}}, "'inputs'"),
    ({"inputs": ["input"]}, "inputs[0]"),
    ({"inputs": [{"name": 3}]}, "inputs[0]"),
    (v2(tensor("input", "FP32", [1, 4], [1, 2, 3, 4]), outputs="probabilities"), "'outputs'"),
    (v2(tensor("input", "FP32", [1, 4], [1, 2, 3, 4]), parameters=[1]), "'parameters'"),
])
def test_v2_malformed_bodies(models: dict[str, ModelVersion], body: Any, fragment: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_v2(body, models["mlp"])
    assert fragment in str(error.value)


# --------------------------------------------------------------------------- V1 requests


def test_v1_rows_of_the_single_input(models: dict[str, ModelVersion]) -> None:
    request = parse_v1({"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}, models["mlp"])
    t = request.inputs["input"]
    assert (t.datatype, t.shape) == ("FP32", (2, 4))
    np.testing.assert_array_equal(t.data, [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert request.outputs is None


def test_v1_objects_keyed_by_input_name(models: dict[str, ModelVersion]) -> None:
    request = parse_v1({"instances": [{"a": [1, 2, 3], "b": [4, 5, 6]},
                                      {"b": [0, 0, 1], "a": [7, 8, 9]}]}, models["add2"])
    np.testing.assert_array_equal(request.inputs["a"].data, [[1, 2, 3], [7, 8, 9]])
    np.testing.assert_array_equal(request.inputs["b"].data, [[4, 5, 6], [0, 0, 1]])


def test_v1_bytes_instances(models: dict[str, ModelVersion]) -> None:
    request = parse_v1({"instances": ["x", "yz"]}, models["bytes"])
    assert list(request.inputs["text"].data) == [b"x", b"yz"]


@pytest.mark.parametrize("model, body, fragment", [
    ("mlp", {"instances": [[1, 2, 3]]}, "'input' has shape [1, 3]"),
    ("mlp", {"instances": [[1, 2, 3, 4], [1, 2, 3]]}, "'input'"),
    ("mlp", {"instances": [[1, 2, 3, "a"]]}, "'input'"),
    ("int64", {"instances": [[1.5, 2]]}, "'ids'"),
    ("add2", {"instances": [[1, 2, 3]]}, "['a', 'b']"),
    ("add2", {"instances": [{"a": [1, 2, 3]}]}, "'b'"),
    ("add2", {"instances": [{"a": [1, 2, 3], "b": [1, 2, 3], "c": [1]}]}, "'c'"),
    ("mlp", {"instances": []}, "'instances'"),
    ("mlp", {"inputs": [[1, 2, 3, 4]]}, "'instances'"),
    ("mlp", [[1, 2, 3, 4]], "'instances'"),
])
def test_v1_validation_errors(models: dict[str, ModelVersion], model: str, body: Any,
                              fragment: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_v1(body, models[model])
    assert fragment in str(error.value)


# --------------------------------------------------------------------------- replies


def _reply(**outputs: wire.Tensor) -> wire.Reply:
    return wire.Reply(ids=("1",), status="ok", outputs=outputs)


def test_format_v2_echoes_the_id_and_flattens_row_major(models: dict[str, ModelVersion]) -> None:
    probabilities = np.array([[0.25, 0.5, 0.25], [1, 0, 0]], np.float32)
    reply = _reply(probabilities=wire.tensor(probabilities))
    body = orjson.loads(format_v2(models["mlp"], reply, "abc"))
    assert body == {
        "model_name": "mlp", "model_version": "1", "id": "abc",
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [2, 3],
                     "data": [0.25, 0.5, 0.25, 1.0, 0.0, 0.0]}],
    }
    assert "id" not in orjson.loads(format_v2(models["mlp"], reply, None))


def test_format_v2_bytes_json_and_int(models: dict[str, ModelVersion]) -> None:
    text = np.array(["h\u00e9".encode(), b"x"], dtype=object)
    reply = _reply(same=wire.tensor(text),
                   other=wire.Tensor(wire.JSON, (1,), [{"a": [1, 2]}]),
                   label=wire.tensor(np.array([3], np.int64)))
    outputs = {o["name"]: o for o in orjson.loads(format_v2(models["iris"], reply, 5))["outputs"]}
    assert outputs["same"] == {"name": "same", "datatype": "BYTES", "shape": [2],
                               "data": ["h\u00e9", "x"]}
    assert outputs["other"]["datatype"] == "JSON"  # a non-tensor output other than ZipMap
    assert outputs["other"]["data"] == [{"a": [1, 2]}]
    assert outputs["label"]["data"] == [3]


def test_a_zipmap_output_is_an_fp32_tensor_with_its_classes(
        models: dict[str, ModelVersion]) -> None:
    """The protocol's tensor_data holds no objects: the probabilities are FP32 [N, C] and the
    class of each column is in the output's parameters; maps only when the call asks."""
    probabilities = np.array([[0.75, 0.25, 0.0], [0.1, 0.2, 0.7]], np.float32)
    reply = _reply(output_label=wire.tensor(np.array([0, 2], np.int64)),
                   output_probability=wire.tensor(probabilities))
    outputs = {o["name"]: o for o in orjson.loads(
        format_v2(models["iris"], reply, None))["outputs"]}
    assert outputs["output_probability"] == {
        "name": "output_probability", "datatype": "FP32", "shape": [2, 3],
        "parameters": {"classes": [0, 1, 2]},
        "data": pytest.approx(probabilities.reshape(-1).tolist())}
    maps = {o["name"]: o for o in orjson.loads(
        format_v2(models["iris"], reply, None, maps=True))["outputs"]}
    assert maps["output_probability"]["datatype"] == "JSON"
    assert maps["output_probability"]["shape"] == [2]
    assert maps["output_probability"]["parameters"] == {"classes": [0, 1, 2], "zipmap": True}
    assert maps["output_probability"]["data"][0] == pytest.approx(
        {"0": 0.75, "1": 0.25, "2": 0.0})
    assert maps["output_label"]["data"] == [0, 2]  # other outputs are untouched


def test_zipmap_must_be_a_boolean(models: dict[str, ModelVersion]) -> None:
    body = v2(tensor("input", "FP32", [1, 4], [1, 2, 3, 4]), parameters={"zipmap": "yes"})
    with pytest.raises(InvalidInput, match="zipmap must be true or false"):
        parse_v2(body, models["iris"])


def test_format_v1_single_output_gives_rows() -> None:
    reply = _reply(y=wire.tensor(np.array([[1, 2], [3, 4]], np.float32)))
    assert orjson.loads(format_v1(reply)) == {"predictions": [[1.0, 2.0], [3.0, 4.0]]}


def test_format_v1_shows_a_zipmap_output_as_maps(models: dict[str, ModelVersion]) -> None:
    reply = _reply(output_label=wire.tensor(np.array([1], np.int64)),
                   output_probability=wire.tensor(np.array([[0.25, 0.5, 0.25]], np.float32)))
    assert orjson.loads(format_v1(reply, models["iris"])) == {"predictions": [
        {"output_label": 1, "output_probability": {"0": 0.25, "1": 0.5, "2": 0.25}}]}


def test_format_v1_several_outputs_give_an_object_per_instance() -> None:
    reply = _reply(label=wire.tensor(np.array([2, 0], np.int64)),
                   proba=wire.Tensor(wire.JSON, (2,), [{0: 0.1, 2: 0.9}, {0: 1.0, 2: 0.0}]),
                   text=wire.tensor(np.array([b"a", b"b"], dtype=object)))
    assert orjson.loads(format_v1(reply)) == {"predictions": [
        {"label": 2, "proba": {"0": 0.1, "2": 0.9}, "text": "a"},
        {"label": 0, "proba": {"0": 1.0, "2": 0.0}, "text": "b"},
    ]}
