"""Where a version came from: its lineage, read from files beside ``model.onnx``.

A version folder may carry, next to ``model.onnx``:

- MLflow's ``MLmodel`` (YAML, what ``mlflow.onnx.save_model`` writes): ``run_id``,
  ``model_uuid``, ``utc_time_created``, ``mlflow_version``, the flavors and the ``signature``;
- a ``metadata.json``: ``run_id``, ``experiment_id``, ``params``, ``metrics``, ``dataset``,
  free ``tags``, and ``registry`` (``name``, ``version``, ``alias``, ``source``,
  ``tracking_uri``) for a version fetched from a model registry (``autoscaler/registry``
  writes it).

Both are optional and neither can make a version unservable: an unreadable file becomes a
warning. Where an ``MLmodel`` signature disagrees with the ONNX graph, the graph is what is
served and :attr:`Lineage.warnings` says how they differ.

A model whose ``config.yaml`` names ``source: models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``)
takes its versions from a registry; which local version the source resolves to now is the
model folder's ``registry.json`` (:class:`SourcePointer`), written atomically by the decider.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

MLMODEL = "MLmodel"
METADATA = "metadata.json"
POINTER = "registry.json"

# Bounds on what a version's lineage carries (it is stored per version in Redis and sent in
# every metadata answer): the first entries of each mapping by name, each value shortened.
MAX_ENTRIES = 200
MAX_VALUE_CHARS = 500

# numpy dtype names, as MLflow's tensor specs write them -> V2 datatypes.
_NUMPY_DATATYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
    "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "str": "BYTES",
    "object": "BYTES", "bytes": "BYTES",
}

SOURCE = re.compile(r"^models:/(?P<name>[^/@\s]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>"
                    r"[1-9][0-9]*))$")


class SourceError(ValueError):
    """A ``source:`` that is not a registry URI modelgate can follow."""


@dataclass(frozen=True, slots=True)
class RegistrySource:
    """``models:/NAME@ALIAS`` (follows the alias) or ``models:/NAME/VERSION`` (pinned)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else \
            f"models:/{self.name}/{self.version}"

    @classmethod
    def parse(cls, text: str) -> RegistrySource:
        found = SOURCE.match(text.strip()) if isinstance(text, str) else None
        if found is None:
            raise SourceError(f"source must be models:/NAME@ALIAS or models:/NAME/VERSION "
                              f"(an MLflow registered model), got {text!r}")
        return cls(found["name"], found["alias"], found["version"])


@dataclass(frozen=True, slots=True)
class SourcePointer:
    """``{model}/registry.json``: the local version a ``source:`` resolves to, and when."""

    source: str
    version: str  # the local version number
    registry_version: str  # the registry's version number
    resolved_at: float

    def encode(self) -> bytes:
        return json.dumps({"source": self.source, "version": self.version,
                           "registry_version": self.registry_version,
                           "resolved_at": self.resolved_at}, indent=1).encode()

    @classmethod
    def read(cls, model_dir: Path) -> SourcePointer | None:
        """The pointer, or None when absent or unreadable (the next resolution rewrites it)."""
        try:
            raw = json.loads((model_dir / POINTER).read_text())
            return cls(str(raw["source"]), str(int(raw["version"])),
                       str(raw["registry_version"]), float(raw["resolved_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, model_dir: Path) -> None:
        write_atomically(model_dir / POINTER, self.encode())


def write_atomically(path: Path, content: bytes) -> None:
    """Write to a temporary name in the same folder, then rename over ``path``."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def public_uri(uri: str | None) -> str | None:
    """A tracking URI fit to show and link to: http(s) only, without user or password."""
    if not uri:
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True, slots=True)
class Lineage:
    """A version's origin: the run that trained it, its parameters and training metrics, and
    the registry entry it was fetched from. Empty when the folder says nothing."""

    run_id: str | None = None
    experiment_id: str | None = None
    model_uuid: str | None = None
    created: str | None = None  # MLmodel's utc_time_created
    mlflow_version: str | None = None
    flavors: tuple[str, ...] = ()
    signature: Mapping[str, Any] | None = None  # MLmodel's, as lists of specs
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    dataset: Any = None
    tags: Mapping[str, str] = field(default_factory=dict)
    registry: Mapping[str, str] = field(default_factory=dict)  # name, version, alias, source
    tracking_uri: str | None = None  # public form, see public_uri
    files: tuple[str, ...] = ()  # which of MLmodel, metadata.json were read
    warnings: tuple[str, ...] = ()
    truncated: bool = False  # the stored copy lost entries to stay within its bound

    @property
    def empty(self) -> bool:
        return not self.files and not self.warnings

    def run_url(self, tracking_uri: str | None = None) -> str | None:
        """The run's page in the MLflow UI, when the tracking server and the run are known."""
        base = self.tracking_uri or public_uri(tracking_uri)
        if not base or not self.run_id:
            return None
        experiment = self.experiment_id or "0"
        return f"{base}/#/experiments/{experiment}/runs/{self.run_id}"

    def body(self) -> dict[str, Any]:
        """As served in metadata and stored beside the pool (JSON)."""
        return {"run_id": self.run_id, "experiment_id": self.experiment_id,
                "model_uuid": self.model_uuid, "created": self.created,
                "mlflow_version": self.mlflow_version, "flavors": list(self.flavors),
                "signature": self.signature, "params": dict(self.params),
                "metrics": dict(self.metrics), "dataset": self.dataset, "tags": dict(self.tags),
                "registry": dict(self.registry), "tracking_uri": self.tracking_uri,
                "files": list(self.files), "warnings": list(self.warnings),
                "truncated": self.truncated}

    @classmethod
    def from_body(cls, raw: Mapping[str, Any]) -> Lineage:
        """The inverse of :meth:`body` (for the copy stored in Redis)."""
        return cls(raw.get("run_id"), raw.get("experiment_id"), raw.get("model_uuid"),
                   raw.get("created"), raw.get("mlflow_version"),
                   tuple(raw.get("flavors") or ()), raw.get("signature"),
                   dict(raw.get("params") or {}), dict(raw.get("metrics") or {}),
                   raw.get("dataset"), dict(raw.get("tags") or {}),
                   dict(raw.get("registry") or {}), raw.get("tracking_uri"),
                   tuple(raw.get("files") or ()), tuple(raw.get("warnings") or ()),
                   bool(raw.get("truncated")))


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_VALUE_CHARS]


def _strings(raw: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k)[:MAX_VALUE_CHARS]: _text(v) for k, v in sorted(raw.items())[:MAX_ENTRIES]}


def _numbers(raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        return {}
    found = {}
    for key, value in sorted(raw.items())[:MAX_ENTRIES]:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            found[str(key)[:MAX_VALUE_CHARS]] = number
    return found


def _optional(raw: Any) -> str | None:
    return None if raw is None or raw == "" else _text(raw)


def _specs(raw: Any) -> list[dict[str, Any]] | None:
    """MLmodel signature inputs/outputs: a JSON string of specs (or already a list)."""
    if raw is None:
        return None
    value = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(value, list):
        raise ValueError(f"expected a list of specs, got {type(value).__name__}")
    return [v for v in value if isinstance(v, dict)]


def signature_warnings(signature: Mapping[str, Any] | None,
                       inputs: Sequence[Any], outputs: Sequence[Any]) -> list[str]:
    """How an MLmodel signature's tensor specs disagree with the graph's ``inputs`` and
    ``outputs`` (``TensorSpec``-like: ``name``, ``datatype``, ``shape``). Column-based specs
    (pandas DataFrames) describe a different input than the graph's tensors: not compared."""
    if not signature:
        return []
    found: list[str] = []
    for side, graph in (("inputs", inputs), ("outputs", outputs)):
        specs = signature.get(side) or []
        tensors = [s for s in specs if s.get("type") == "tensor"]
        if not tensors or len(tensors) != len(specs):
            continue
        by_name = {t.name: t for t in graph}
        named = all(s.get("name") for s in tensors)
        if named:
            pairs = []
            for spec in tensors:
                target = by_name.get(spec["name"])
                if target is None:
                    if side == "inputs":
                        found.append(f"MLmodel signature names input {spec['name']!r}, which "
                                     f"the graph does not have (it has {sorted(by_name)})")
                    continue
                pairs.append((spec, target))
            if side == "inputs":
                missing = sorted(set(by_name) - {s["name"] for s in tensors})
                if missing:
                    found.append(f"the graph's input(s) {missing} are not in the MLmodel "
                                 "signature")
        elif len(tensors) == len(graph):
            pairs = list(zip(tensors, graph, strict=True))
        else:
            if side == "inputs":
                found.append(f"MLmodel signature has {len(tensors)} input(s), the graph "
                             f"{len(graph)}")
            continue
        for spec, target in pairs:
            tensor = spec.get("tensor-spec") or {}
            label = f"{side[:-1]} {target.name!r}"
            dtype = _NUMPY_DATATYPES.get(str(tensor.get("dtype")))
            if dtype is not None and dtype != target.datatype:
                found.append(f"{label}: MLmodel signature says {tensor.get('dtype')} "
                             f"({dtype}), the graph {target.datatype}")
            shape = tensor.get("shape")
            if isinstance(shape, list) and target.datatype != "JSON" and not _fits(
                    shape, list(target.shape)):
                found.append(f"{label}: MLmodel signature says shape {shape}, the graph "
                             f"{list(target.shape)}")
    return found


def _fits(declared: list[Any], graph: list[int]) -> bool:
    if len(declared) != len(graph):
        return False
    return all(d in (-1, None) or g == -1 or d == g for d, g in zip(declared, graph,
                                                                       strict=True))


def read_lineage(version_dir: Path, inputs: Sequence[Any] = (),
                 outputs: Sequence[Any] = ()) -> Lineage:
    """The lineage in ``version_dir`` (empty when it holds neither file). Never raises for
    the files' content: what cannot be read becomes a warning."""
    values: dict[str, Any] = {}
    files: list[str] = []
    warnings: list[str] = []
    mlmodel_path = version_dir / MLMODEL
    if mlmodel_path.is_file():
        files.append(MLMODEL)
        try:
            raw = yaml.safe_load(mlmodel_path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a mapping")
            values.update(run_id=_optional(raw.get("run_id")),
                          model_uuid=_optional(raw.get("model_uuid")),
                          created=_optional(raw.get("utc_time_created")),
                          mlflow_version=_optional(raw.get("mlflow_version")),
                          flavors=tuple(sorted(str(f) for f in raw.get("flavors") or {})))
            signature = raw.get("signature")
            if isinstance(signature, dict):
                specs = {side: _specs(signature.get(side)) for side in ("inputs", "outputs")}
                values["signature"] = specs
                warnings += signature_warnings(specs, inputs, outputs)
        except (OSError, yaml.YAMLError, ValueError, TypeError) as e:
            warnings.append(f"{MLMODEL} is unreadable ({e}); its lineage is left out")
    metadata_path = version_dir / METADATA
    if metadata_path.is_file():
        files.append(METADATA)
        try:
            raw = json.loads(metadata_path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            for key in ("run_id", "experiment_id"):
                if raw.get(key) is not None:
                    values[key] = _optional(raw[key])
            values.update(params=_strings(raw.get("params")),
                          metrics=_numbers(raw.get("metrics")),
                          tags=_strings(raw.get("tags")),
                          registry=_strings(raw.get("registry")),
                          tracking_uri=public_uri(raw.get("tracking_uri")))
            dataset = raw.get("dataset")
            if dataset is not None:
                small = len(json.dumps(dataset, default=str)) <= MAX_VALUE_CHARS * 4
                values["dataset"] = dataset if small and not isinstance(dataset, str) \
                    else _text(dataset)
        except (OSError, ValueError, TypeError) as e:
            warnings.append(f"{METADATA} is unreadable ({e}); its lineage is left out")
    return Lineage(**values, files=tuple(files), warnings=tuple(warnings))


__all__ = [
    "METADATA",
    "MLMODEL",
    "POINTER",
    "Lineage",
    "RegistrySource",
    "SourceError",
    "SourcePointer",
    "public_uri",
    "read_lineage",
    "signature_warnings",
    "write_atomically",
]
