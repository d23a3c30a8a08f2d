"""The registry client against a tracking server that is not there (a real closed port on
this machine): what serves stays, and the reason says what to fix."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from modelgate.autoscaler.registry.client import MlflowClient, RegistryError
from modelgate.autoscaler.registry.sync import resolve
from modelgate.core.embedded_redis import free_port
from modelgate.core.lineage import SourcePointer
from modelgate.core.settings import RegistrySettings

pytestmark = pytest.mark.integration


def _model(root: Path, onnx_models: dict[str, onnx.ModelProto], version: str) -> Path:
    folder = root / "mlp" / version
    folder.mkdir(parents=True)
    onnx.save(onnx_models["mlp"], str(folder / "model.onnx"))
    return folder


def test_a_registry_that_cannot_be_reached_keeps_what_serves_and_says_why(
        tmp_path: Path, onnx_models: dict[str, onnx.ModelProto]) -> None:
    _model(tmp_path, onnx_models, "3")
    pointer = SourcePointer("models:/fraud@champion", "3", "12", 1.0)
    pointer.write(tmp_path / "mlp")
    settings = RegistrySettings(tracking_uri=f"http://127.0.0.1:{free_port()}",
                                timeout_s=2.0)
    client = MlflowClient(settings)
    try:
        result = resolve(client, tmp_path, "mlp", "models:/fraud@champion",
                         settings.tracking_uri, 5.0)
    finally:
        client.close()
    assert "cannot reach the MLflow tracking server" in result.status.error
    assert (result.status.version, result.status.registry_version) == ("3", "12")
    assert not result.moved and SourcePointer.read(tmp_path / "mlp") == pointer
    assert sorted(p.name for p in (tmp_path / "mlp").iterdir()) == ["3", "registry.json"]
    with pytest.raises(RegistryError, match="MLFLOW_TRACKING_URI is not set"):
        MlflowClient(RegistrySettings())
