"""Lineage read from a version folder (MLmodel, metadata.json), the signature check against the
graph, and a registry source's pointer deciding what is served -- no MLflow, no Redis."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import yaml

from modelgate.core.lineage import Lineage, RegistrySource, SourceError, SourcePointer, public_uri
from modelgate.core.repository import RepositoryError, scan_model
from modelgate.core.store import lineage as lineage_store

MLMODEL = {
    "run_id": "abc123", "model_uuid": "u-1", "utc_time_created": "2026-01-02 03:04:05.6",
    "mlflow_version": "3.17.2",
    "flavors": {"onnx": {"data": "model.onnx"}, "python_function": {}},
    "signature": {
        "inputs": json.dumps([{"type": "tensor",
                               "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]),
        "outputs": json.dumps([{"type": "tensor",
                                "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}])},
}


def _model(root: Path, onnx_models: dict[str, onnx.ModelProto], version: str = "1") -> Path:
    folder = root / "mlp" / version
    folder.mkdir(parents=True)
    onnx.save(onnx_models["mlp"], str(folder / "model.onnx"))
    return folder


def test_an_mlmodel_beside_the_graph_is_the_versions_lineage(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    folder = _model(tmp_path, onnx_models)
    (folder / "MLmodel").write_text(yaml.safe_dump(MLMODEL))
    lineage = scan_model(tmp_path / "mlp").loadable()["1"].lineage
    assert (lineage.run_id, lineage.model_uuid, lineage.mlflow_version) == \
        ("abc123", "u-1", "3.17.2")
    assert lineage.flavors == ("onnx", "python_function") and lineage.warnings == ()
    assert lineage.files == ("MLmodel",) and not lineage.empty
    assert Lineage.from_body(lineage.body()) == lineage


def test_a_signature_that_disagrees_with_the_graph_is_a_warning_not_a_failure(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    folder = _model(tmp_path, onnx_models)
    wrong = dict(MLMODEL, signature={"inputs": json.dumps([
        {"name": "features", "type": "tensor",
         "tensor-spec": {"dtype": "float64", "shape": [-1, 5]}}])})
    (folder / "MLmodel").write_text(yaml.safe_dump(wrong))
    scan = scan_model(tmp_path / "mlp")
    assert scan.served() == ["1"]  # served by the graph
    warnings = scan.loadable()["1"].lineage.warnings
    assert any("'features'" in w for w in warnings)
    assert any("['input']" in w and "not in the MLmodel signature" in w for w in warnings)
    dtype = dict(MLMODEL, signature={"inputs": json.dumps([
        {"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 5]}}])})
    (folder / "MLmodel").write_text(yaml.safe_dump(dtype))
    warnings = scan_model(tmp_path / "mlp").loadable()["1"].lineage.warnings
    assert any("float64 (FP64), the graph FP32" in w for w in warnings)
    assert any("shape [-1, 5], the graph [-1, 4]" in w for w in warnings)


def test_metadata_json_adds_params_metrics_and_the_registry_and_bad_files_only_warn(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    folder = _model(tmp_path, onnx_models)
    (folder / "metadata.json").write_text(json.dumps({
        "run_id": "r9", "experiment_id": "4", "params": {"C": 0.5, "solver": "lbfgs"},
        "metrics": {"accuracy": 0.9, "bad": "n/a"}, "dataset": {"name": "iris"},
        "tags": {"team": "fraud"}, "registry": {"name": "m", "version": "7"},
        "tracking_uri": "https://user:secret@mlflow.example:5000/"}))
    lineage = scan_model(tmp_path / "mlp").loadable()["1"].lineage
    assert lineage.params == {"C": "0.5", "solver": "lbfgs"}
    assert lineage.metrics == {"accuracy": 0.9}
    assert lineage.registry == {"name": "m", "version": "7"}
    assert lineage.tracking_uri == "https://mlflow.example:5000"  # never the password
    assert lineage.run_url() == "https://mlflow.example:5000/#/experiments/4/runs/r9"
    (folder / "metadata.json").write_text("{not json")
    (folder / "MLmodel").write_text(": : :")
    scan = scan_model(tmp_path / "mlp")
    assert scan.served() == ["1"]
    assert len(scan.loadable()["1"].lineage.warnings) == 2


def test_a_source_model_serves_what_its_pointer_names_and_nothing_before(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    for version in ("1", "2", "3"):
        _model(tmp_path, onnx_models, version)
    (tmp_path / "mlp" / "config.yaml").write_text("source: models:/fraud@champion\n")
    scan = scan_model(tmp_path / "mlp")
    assert scan.served() == [] and scan.sourced() is None
    SourcePointer("models:/fraud@champion", "2", "12", 1.0).write(tmp_path / "mlp")
    scan = scan_model(tmp_path / "mlp")
    assert scan.served() == ["2"] and scan.default(scan.served()) == "2"
    assert scan.unserved_reason("3") == "not the version models:/fraud@champion points at"
    # A pointer left by another source is not followed.
    (tmp_path / "mlp" / "config.yaml").write_text("source: models:/fraud/12\n")
    assert scan_model(tmp_path / "mlp").served() == []


@pytest.mark.parametrize("text", ["models:/x", "runs:/abc/model", "models:/a@b/c",
                                  "models:/a/0", ""])
def test_a_source_must_be_a_registry_uri(text: str) -> None:
    with pytest.raises(SourceError):
        RegistrySource.parse(text)


def test_a_source_excludes_the_version_policy(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    assert RegistrySource.parse("models:/a.b-c@prod") == RegistrySource("a.b-c", "prod")
    assert RegistrySource.parse("models:/a/12").uri == "models:/a/12"
    _model(tmp_path, onnx_models)
    (tmp_path / "mlp" / "config.yaml").write_text(
        "source: models:/a@b\nversion_policy: {all: {}}\n")
    scan = scan_model(tmp_path / "mlp")
    assert "remove version_policy" in scan.error
    with pytest.raises(RepositoryError):
        raise RepositoryError(scan.error)


def test_only_http_tracking_uris_are_shown_and_linked() -> None:
    assert public_uri("file:///tmp/mlruns") is None
    assert public_uri("databricks") is None
    assert public_uri("http://127.0.0.1:5000/") == "http://127.0.0.1:5000"


def test_the_stored_lineage_stays_within_its_bound() -> None:
    big = Lineage(run_id="r", params={f"p{i:04}": "x" * 400 for i in range(200)},
                  metrics={f"m{i:04}": float(i) for i in range(200)},
                  tags={f"t{i}": "y" * 400 for i in range(200)}, files=("metadata.json",))
    raw = lineage_store.encode_lineage(big)
    assert len(raw) <= lineage_store.LINEAGE_MAX_BYTES
    stored = lineage_store.decode_lineage(raw)
    assert stored is not None and stored.truncated and stored.run_id == "r"
    assert "p0000" in stored.params and stored.tags == {}
    small = Lineage(run_id="r", params={"C": "1"}, files=("MLmodel",))
    assert lineage_store.decode_lineage(lineage_store.encode_lineage(small)) == small
