"""The model repository: signatures read from ONNX graphs, versions, and config overrides."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from modelgate.cli.demo import write_model
from modelgate.core.repository import (
    DEFAULT_MAX_BATCH_SIZE,
    Model,
    RepositoryError,
    TensorSpec,
    check_name,
    file_sha256,
    load_model,
    load_repository,
    read_version,
    scan_model,
)
from tests.models import finish, write_repository


def signature(model: Model) -> tuple[list[tuple], list[tuple]]:
    v = model.default
    return ([(i.name, i.datatype, i.shape) for i in v.inputs],
            [(o.name, o.datatype, o.shape) for o in v.outputs])


def test_mlp_signature_and_default_batching(unit_repository: dict[str, Model]) -> None:
    mlp = unit_repository["mlp"]
    assert signature(mlp) == ([("input", "FP32", (-1, 4))], [("probabilities", "FP32", (-1, 3))])
    assert mlp.default.max_batch_size == DEFAULT_MAX_BATCH_SIZE > 0
    assert mlp.default.batchable
    assert mlp.default.pool == "mlp:1"


def test_symbolic_and_unknown_dims_become_minus_one(unit_repository: dict[str, Model]) -> None:
    inputs, outputs = signature(unit_repository["symbolic"])
    assert inputs == [("x", "FP32", (-1, 3, -1, -1))]
    assert outputs == [("y", "FP32", (-1, 3, -1, -1))]
    assert unit_repository["symbolic"].default.batchable


def test_multiple_inputs_and_outputs_keep_graph_order(unit_repository: dict[str, Model]) -> None:
    inputs, outputs = signature(unit_repository["add2"])
    assert inputs == [("a", "FP32", (-1, 3)), ("b", "FP32", (-1, 3))]
    assert outputs == [("sum", "FP32", (-1, 3)), ("diff", "FP32", (-1, 3))]
    assert unit_repository["add2"].default.batchable
    assert unit_repository["add2"].default.input("b") == TensorSpec("b", "FP32", (-1, 3),
                                                                    "tensor(float)")
    assert unit_repository["add2"].default.input("c") is None


def test_scalar_input_makes_a_model_unbatchable(unit_repository: dict[str, Model]) -> None:
    v = unit_repository["scalar"].default
    assert [(i.name, i.shape) for i in v.inputs] == [("x", (-1, 2)), ("scale", ())]
    assert v.max_batch_size == 0
    assert not v.batchable


def test_state_batched_on_dim_1_is_not_batchable(unit_repository: dict[str, Model]) -> None:
    v = unit_repository["state"].default
    assert [(i.name, i.shape) for i in v.inputs] == [("state", (2, -1, 4))]
    assert v.max_batch_size == 0
    assert not v.batchable


def test_int64_and_string_datatypes(unit_repository: dict[str, Model]) -> None:
    assert signature(unit_repository["int64"]) == (
        [("ids", "INT64", (-1, -1))], [("next", "INT64", (-1, -1))])
    assert signature(unit_repository["bytes"]) == (
        [("text", "BYTES", (-1,))], [("same", "BYTES", (-1,))])


def test_a_zipmap_output_is_an_fp32_tensor_of_its_classes(
        unit_repository: dict[str, Model]) -> None:
    v = unit_repository["iris"].default
    outputs = {o.name: o for o in v.outputs}
    assert outputs["output_label"].datatype == "INT64"
    assert outputs["output_label"].shape == (-1,)
    probabilities = outputs["output_probability"]
    assert (probabilities.datatype, probabilities.shape) == ("FP32", (-1, 3))
    assert probabilities.classes == (0, 1, 2)  # the ZipMap node's classlabels_int64s
    assert probabilities.onnx_type == "seq(map(int64,tensor(float)))"
    assert probabilities.metadata() == {"name": "output_probability", "datatype": "FP32",
                                        "shape": [-1, 3], "parameters": {"classes": [0, 1, 2]}}
    assert v.batchable  # the input is a plain FP32 [-1, 4]


def test_string_class_labels_and_other_sequences(tmp_path: Path) -> None:
    """String labels are kept as the graph names them; a sequence no ZipMap makes stays JSON."""
    from onnx import TensorProto, helper

    zipmap = helper.make_node("ZipMap", ["p"], ["maps"], domain="ai.onnx.ml",
                              classlabels_strings=["cat", "dog"])
    identity = helper.make_node("Identity", ["maps"], ["probabilities"])
    to_seq = helper.make_node("SplitToSequence", ["p"], ["rows"], keepdims=0)
    maps_type = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    graph = helper.make_graph(
        [zipmap, identity, to_seq], "zipped",
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_value_info("probabilities", maps_type),
         helper.make_tensor_sequence_value_info("rows", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    write_model(model, tmp_path, "zipped")
    outputs = {o.name: o for o in load_repository(tmp_path)["zipped"].default.outputs}
    assert outputs["probabilities"].classes == ("cat", "dog")
    assert (outputs["probabilities"].datatype, outputs["probabilities"].shape) == (
        "FP32", (-1, 2))
    assert outputs["rows"].datatype == "JSON" and not outputs["rows"].is_tensor


def test_highest_version_is_the_default(tmp_path: Path,
                                        onnx_models: dict[str, onnx.ModelProto]) -> None:
    for version in (1, 2, 10):  # 10 > 2 numerically, though not as text
        write_model(onnx_models["mlp"], tmp_path, "m", version)
    (tmp_path / "m" / "0").mkdir()  # not a valid version: ignored
    (tmp_path / "m" / "notes").mkdir()  # not a version: ignored
    (tmp_path / "m" / "3").mkdir()  # no model.onnx: ignored

    scan = scan_model(tmp_path / "m")
    assert sorted(scan.versions, key=int) == ["1", "2", "3", "10"]
    assert "missing" in scan.versions["3"].error  # a folder without its model is reported
    model = load_repository(tmp_path)["m"]

    assert list(model.versions) == ["10"]  # the default policy serves the latest one
    assert model.default_version == "10"
    assert model.default.pool == "m:10"
    assert model.default.sha256 == file_sha256(tmp_path / "m" / "10" / "model.onnx")


def test_config_yaml_overrides(tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    write_repository(tmp_path, {"mlp": onnx_models["mlp"]}, {"mlp": (
        "max_batch_size: 8\nmax_queue_delay_ms: 2.5\nmax_queue: 100\ntimeout_ms: 1500\n"
        "min_workers: 2\nmax_workers: 5\nworker_cost_per_hour: 0.25\nintra_op_threads: 2\n"
        "slo_p95_ms: 40\n")})
    v = load_repository(tmp_path)["mlp"].default
    assert v.max_batch_size == 8
    c = v.config
    assert (c.max_batch_size, c.max_queue_delay_ms, c.max_queue, c.timeout_ms) == (8, 2.5, 100,
                                                                                   1500)
    assert (c.min_workers, c.max_workers, c.intra_op_threads) == (2, 5, 2)
    assert c.worker_cost_per_hour == 0.25
    assert c.slo_p95_ms == 40


def test_config_json_overrides_and_zero_turns_batching_off(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    write_repository(tmp_path, {"mlp": onnx_models["mlp"]})
    (tmp_path / "mlp" / "config.json").write_text('{"max_batch_size": 0, "timeout_ms": 700}')
    v = load_repository(tmp_path)["mlp"].default
    assert v.max_batch_size == 0
    assert not v.batchable
    assert v.config.timeout_ms == 700


def test_batching_false_runs_each_call_alone_on_a_batchable_graph(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    """A model that mixes rows across the batch keeps its rows axis (drift profiles, row
    checks) but never combines calls: effective max_batch_size 0."""
    write_repository(tmp_path, {"mlp": onnx_models["mlp"]}, {"mlp": "batching: false\n"})
    v = load_repository(tmp_path)["mlp"].default
    assert v.config.batching is False
    assert v.max_batch_size == 0 and not v.batchable
    assert v.rows_axis


@pytest.mark.parametrize("text, match", [
    ("batching: false\nmax_batch_size: 8\n", "batching: false"),
    ("batching: false\npreferred_batch_sizes: [4]\n", "preferred_batch_sizes"),
    ("batching: 0\n", "batching must be true or false"),
    ("batching: 'no'\n", "batching must be true or false"),
])
def test_batching_false_contradicted_or_malformed_is_an_error(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto], text: str, match: str) -> None:
    write_repository(tmp_path, {"mlp": onnx_models["mlp"]}, {"mlp": text})
    with pytest.raises(RepositoryError, match=match):
        load_repository(tmp_path)


def test_batching_true_on_an_unbatchable_graph_is_an_error(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    write_repository(tmp_path, {"state": onnx_models["state"]}, {"state": "batching: true\n"})
    with pytest.raises(RepositoryError, match="no variable first dimension"):
        load_repository(tmp_path)


def test_empty_config_file_means_defaults(tmp_path: Path,
                                          onnx_models: dict[str, onnx.ModelProto]) -> None:
    write_repository(tmp_path, {"mlp": onnx_models["mlp"]}, {"mlp": "# nothing set\n"})
    v = load_repository(tmp_path)["mlp"].default
    assert v.max_batch_size == DEFAULT_MAX_BATCH_SIZE


@pytest.mark.parametrize("text, match", [
    ("max_batch_sise: 8\n", r"unknown setting.*max_batch_sise"),
    ("max_batch_size: -1\n", "must not be negative"),
    ("max_batch_size: eight\n", "must be a number"),
    ("max_batch_size: true\n", "must be a number"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("max_batch_size: [1\n", "cannot parse"),
])
def test_bad_config_is_an_error_naming_the_file(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto], text: str, match: str) -> None:
    write_repository(tmp_path, {"mlp": onnx_models["mlp"]}, {"mlp": text})
    with pytest.raises(RepositoryError, match=match) as error:
        load_repository(tmp_path)
    assert "config.yaml" in str(error.value)


@pytest.mark.parametrize("name, culprit", [("state", "state"), ("scalar", "scale")])
def test_max_batch_size_on_an_unbatchable_model_is_an_error(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto], name: str, culprit: str) -> None:
    write_repository(tmp_path, {name: onnx_models[name]}, {name: "max_batch_size: 4\n"})
    with pytest.raises(RepositoryError, match="max_batch_size") as error:
        load_repository(tmp_path)
    assert repr(culprit) in str(error.value)


def test_max_batch_size_zero_on_an_unbatchable_model_is_fine(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    write_repository(tmp_path, {"state": onnx_models["state"]}, {"state": "max_batch_size: 0\n"})
    assert load_repository(tmp_path)["state"].default.max_batch_size == 0


def test_empty_repository_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="has no models"):
        load_repository(tmp_path)
    with pytest.raises(RepositoryError, match="does not exist"):
        load_repository(tmp_path / "missing")


def test_model_folder_without_a_version_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "1").mkdir(parents=True)
    with pytest.raises(RepositoryError, match=r"empty/1/model\.onnx"):
        load_repository(tmp_path)


def test_unreadable_onnx_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "broken" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not protobuf \xff\xfe")
    with pytest.raises(RepositoryError, match="not a readable ONNX model"):
        load_repository(tmp_path)


def test_bad_model_name_is_an_error(tmp_path: Path,
                                    onnx_models: dict[str, onnx.ModelProto]) -> None:
    write_repository(tmp_path, {"no:colons": onnx_models["mlp"]})
    with pytest.raises(RepositoryError, match="model name"):
        load_model(tmp_path / "no:colons")


def test_hidden_folders_are_not_models(tmp_path: Path,
                                       onnx_models: dict[str, onnx.ModelProto]) -> None:
    write_repository(tmp_path, {"mlp": onnx_models["mlp"]})
    (tmp_path / ".cache").mkdir()
    assert list(load_repository(tmp_path)) == ["mlp"]


def test_sequence_input_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["items"], ["count"])], "seq",
        [helper.make_tensor_sequence_value_info("items", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("count", TensorProto.INT64, [])],
    )
    write_repository(tmp_path, {"seq": finish(graph)})
    with pytest.raises(RepositoryError, match="tensor inputs only"):
        load_repository(tmp_path)


def test_unsupported_element_type_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["z"], ["w"])], "complex",
        [helper.make_tensor_value_info("z", TensorProto.COMPLEX64, ["batch"])],
        [helper.make_tensor_value_info("w", TensorProto.COMPLEX64, ["batch"])],
    )
    write_repository(tmp_path, {"complex": finish(graph)})
    with pytest.raises(RepositoryError, match="cannot carry"):
        load_repository(tmp_path)


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path: Path,
                                                      onnx_models: dict[str,
                                                                        onnx.ModelProto]) -> None:
    """Older exporters list weights among the graph inputs; they are not part of the call."""
    model = onnx.ModelProto()
    model.CopyFrom(onnx_models["mlp"])
    for weight in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(
            weight.name, weight.data_type, list(weight.dims)))
    write_repository(tmp_path, {"old": model})
    v = load_repository(tmp_path)["old"].default
    assert [i.name for i in v.inputs] == ["input"]
    assert v.batchable


@pytest.mark.parametrize(("policy", "served", "default"), [
    ("", ["3"], "3"),
    ("version_policy: {latest: {num_versions: 2}}", ["3", "2"], "3"),
    ("version_policy: {all: {}}", ["3", "2", "1"], "3"),
    ("version_policy: {specific: {versions: [1, 3]}}", ["3", "1"], "3"),
    ("version_policy: {all: {}}\ndefault_version: 2", ["3", "2", "1"], "2"),
    ("version_policy: {latest: {num_versions: 1}}\ndefault_version: 1", ["3"], "3"),
], ids=["default", "latest 2", "all", "specific", "default_version", "default not served"])
def test_version_policy_picks_served_versions_and_the_default(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto], policy: str,
        served: list[str], default: str) -> None:
    for version in (1, 2, 3):
        write_model(onnx_models["mlp"], tmp_path, "m", version)
    (tmp_path / "m" / "config.yaml").write_text(policy + "\n")
    scan = scan_model(tmp_path / "m")
    assert scan.served() == served
    assert scan.default(scan.served()) == default


@pytest.mark.parametrize("policy", [
    "version_policy: latest", "version_policy: {latest: {num_versions: 0}}",
    "version_policy: {specific: {versions: []}}", "version_policy: {newest: {}}",
    "version_policy: {all: {}, latest: {}}", "default_version: two",
])
def test_a_bad_version_policy_is_an_error_naming_the_shape(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto], policy: str) -> None:
    write_model(onnx_models["mlp"], tmp_path, "m", 1)
    (tmp_path / "m" / "config.yaml").write_text(policy + "\n")
    scan = scan_model(tmp_path / "m")
    assert scan.error and "config.yaml" in scan.error


def test_one_broken_version_leaves_the_others_servable(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    write_model(onnx_models["mlp"], tmp_path, "m", 1)
    write_model(onnx_models["mlp"], tmp_path, "m", 2)
    whole = (tmp_path / "m" / "2" / "model.onnx").read_bytes()
    (tmp_path / "m" / "2" / "model.onnx").write_bytes(whole[:len(whole) // 2])  # truncated
    scan = scan_model(tmp_path / "m")
    assert scan.versions["2"].loaded is None and "not a readable ONNX model" in \
        scan.versions["2"].error
    assert scan.served() == ["1"]  # the latest loadable one
    assert load_model(tmp_path / "m").default_version == "1"


@pytest.mark.parametrize(("name", "what"), [
    ("..", "model"), (".", "model"), ("a/b", "model"), ("", "model"), (".hidden", "model"),
    ("0", "version"), ("01", "version"), ("-1", "version"), ("1/../2", "version"),
    ("x", "version"),
])
def test_names_that_could_build_a_path_are_refused(name: str, what: str) -> None:
    with pytest.raises(RepositoryError, match="not allowed"):
        check_name(name, what)


def test_read_version_reads_one_version_whatever_the_policy(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    for version in (1, 2):
        write_model(onnx_models["mlp"], tmp_path, "m", version)
    assert read_version(tmp_path, "m", "1").version == "1"
    with pytest.raises(RepositoryError, match="no version 5"):
        read_version(tmp_path, "m", "5")
