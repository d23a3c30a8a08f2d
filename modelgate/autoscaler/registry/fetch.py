"""Bring a registry's model version into the repository as a local version (DECISIONS 1, 10).

A registry version already fetched is found again by its registry name and version (in the
version folders' ``metadata.json``), or by its content: a download whose ``model.onnx`` has the
sha256 of a local version reuses that version, so moving an alias back serves the same local
version again. Anything new is written aside (``{model}/.fetch-*``), checked to be an ONNX
model modelgate can read, given its ``metadata.json`` (registry name, version, alias, run id,
params, metrics), and renamed in as the next free local number: a scan never sees half a
version, and a failure leaves the folder as it was.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelgate.autoscaler.registry.client import (
    MlflowClient,
    ModelVersionInfo,
    RegistryError,
    artifact_path,
    local_path,
    walk,
)
from modelgate.core.lineage import METADATA, MLMODEL, RegistrySource, public_uri
from modelgate.core.repository import VERSION, RepositoryError, file_sha256, read_signature

# Files of an MLflow model folder worth keeping beside model.onnx (environment files are not).
KEPT = (MLMODEL,)
# Run tags that say who and where rather than what: left out of the lineage.
SYSTEM_TAG = "mlflow."


@dataclass(frozen=True, slots=True)
class Fetched:
    """The local version a source resolves to now."""

    version: str  # local
    registry_version: str
    run_id: str | None
    new: bool  # written by this fetch (False: an existing local version reused)


def _local_versions(model_dir: Path) -> dict[str, Path]:
    if not model_dir.is_dir():
        return {}
    return {p.name: p for p in model_dir.iterdir()
            if p.is_dir() and VERSION.match(p.name) and (p / "model.onnx").is_file()}


def _registry_of(folder: Path) -> dict[str, Any]:
    try:
        registry = json.loads((folder / METADATA).read_text()).get("registry") or {}
        return registry if isinstance(registry, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def find_fetched(model_dir: Path, name: str, registry_version: str) -> str | None:
    """The local version fetched from registry model ``name`` version ``registry_version``."""
    for number, folder in sorted(_local_versions(model_dir).items(), key=lambda kv: int(kv[0])):
        registry = _registry_of(folder)
        if registry.get("name") == name and str(registry.get("version")) == registry_version:
            return number
    return None


def find_by_content(model_dir: Path, sha256: str) -> str | None:
    for number, folder in sorted(_local_versions(model_dir).items(), key=lambda kv: int(kv[0])):
        if file_sha256(folder / "model.onnx") == sha256:
            return number
    return None


def _onnx_file(mlmodel: Path | None, files: list[str]) -> str:
    """Which file of the artifact is the ONNX model: MLmodel's onnx flavor, else the only
    ``.onnx`` file."""
    if mlmodel is not None and mlmodel.is_file():
        try:
            flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
        except yaml.YAMLError:
            flavors = {}
        data = (flavors.get("onnx") or {}).get("data") if isinstance(flavors, dict) else None
        if isinstance(data, str) and data in files:
            return data
        if isinstance(flavors, dict) and flavors and "onnx" not in flavors:
            raise RegistryError(f"the model is not ONNX: its flavors are {sorted(flavors)}; "
                                "log it with mlflow.onnx.log_model (skl2onnx, torch.onnx, "
                                "tf2onnx convert most models)")
    found = [f for f in files if f.endswith(".onnx")]
    if len(found) != 1:
        raise RegistryError(f"the model's artifact holds {len(found)} .onnx files "
                            f"({sorted(files)[:10]}); expected one ONNX model")
    return found[0]


def _download(client: MlflowClient, uri: str, into: Path) -> None:
    """The model version's files (MLmodel and the ONNX model) into ``into``."""
    folder = local_path(uri)
    root = artifact_path(uri)
    if folder is not None:
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        for name in KEPT:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, into / name)
        onnx_name = _onnx_file(into / MLMODEL if (into / MLMODEL).is_file() else None, files)
        shutil.copyfile(folder / onnx_name, into / "model.onnx")
        return
    if root is None:
        raise RegistryError(f"the model's files are at {uri}, which modelgate cannot read: "
                            "run mlflow server with --serve-artifacts (mlflow-artifacts:/ "
                            "URIs), or give the decider the folder (file:)")
    files = [path for path, _ in walk(client, root)]
    if not files:
        raise RegistryError(f"the model's artifact folder {uri} is empty or missing")
    for name in KEPT:
        if name in files:
            client.download(f"{root}/{name}", into / name)
    onnx_name = _onnx_file(into / MLMODEL if (into / MLMODEL).is_file() else None, files)
    client.download(f"{root}/{onnx_name}", into / "model.onnx")


def _lineage(client: MlflowClient, found: ModelVersionInfo, source: RegistrySource,
             tracking_uri: str | None) -> dict[str, Any]:
    """metadata.json for a fetched version: the registry entry and its run."""
    body: dict[str, Any] = {
        "run_id": found.run_id,
        "registry": {"name": found.name, "version": found.version,
                     "alias": source.alias or "", "source": source.uri,
                     "artifact": found.source},
        "tracking_uri": public_uri(tracking_uri),
        "tags": found.tags,
    }
    if found.run_id:
        run = client.run(found.run_id)
        info, data = run.get("info") or {}, run.get("data") or {}
        body["experiment_id"] = info.get("experiment_id")
        body["params"] = {p["key"]: p.get("value") for p in data.get("params") or []
                          if isinstance(p, dict) and "key" in p}
        body["metrics"] = {m["key"]: m.get("value") for m in data.get("metrics") or []
                           if isinstance(m, dict) and "key" in m}
        run_tags = {t["key"]: t.get("value") for t in data.get("tags") or []
                    if isinstance(t, dict) and "key" in t}
        body["tags"] = {**{k: v for k, v in run_tags.items()
                           if not str(k).startswith(SYSTEM_TAG)}, **found.tags}
        if run_tags.get("mlflow.runName"):
            body["tags"]["run_name"] = run_tags["mlflow.runName"]
        datasets = [d.get("dataset") for d in (run.get("inputs") or {}).get(
            "dataset_inputs") or [] if isinstance(d, dict)]
        if datasets:
            body["dataset"] = [{k: d.get(k) for k in ("name", "digest", "source_type",
                                                       "source")}
                               for d in datasets if isinstance(d, dict)]
    return body


def fetch(client: MlflowClient, source: RegistrySource, model_dir: Path,
          tracking_uri: str | None = None) -> Fetched:
    """The local version ``source`` resolves to, fetched into ``model_dir`` when new."""
    found = client.resolve(source)
    known = find_fetched(model_dir, found.name, found.version)
    if known is not None:
        return Fetched(known, found.version, found.run_id, new=False)
    uri = client.download_uri(found.name, found.version)
    model_dir.mkdir(parents=True, exist_ok=True)
    aside = model_dir / f".fetch-{uuid.uuid4().hex}"
    aside.mkdir()
    try:
        _download(client, uri, aside)
        try:
            read_signature(aside / "model.onnx")
        except RepositoryError as e:
            raise RegistryError(f"{source.uri} (version {found.version}) is not an ONNX "
                                f"model modelgate can serve: {e}") from e
        same = find_by_content(model_dir, file_sha256(aside / "model.onnx"))
        if same is not None:
            return Fetched(same, found.version, found.run_id, new=False)
        metadata = _lineage(client, found, source, tracking_uri)
        (aside / METADATA).write_text(json.dumps(metadata, indent=1, default=str))
        for _ in range(100):
            numbers = [int(v) for v in _local_versions(model_dir)] + [
                int(p.name) for p in model_dir.iterdir() if VERSION.match(p.name)]
            number = str(max(numbers, default=0) + 1)
            try:
                aside.rename(model_dir / number)  # atomic; fails if the folder appeared
            except OSError:
                continue
            return Fetched(number, found.version, found.run_id, new=True)
        raise RegistryError(f"no free version number in {model_dir}")
    finally:
        if aside.exists():
            shutil.rmtree(aside, ignore_errors=True)
