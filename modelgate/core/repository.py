"""The model repository: Triton-style folders, signatures read from the ONNX graph.

Layout::

    MODELS/{name}/{version}/model.onnx
    MODELS/{name}/config.yaml  (or config.json; optional overrides, see ModelConfig)
    MODELS/{name}/{version}/MLmodel, metadata.json  (optional lineage, see core/lineage.py)
    MODELS/{name}/registry.json  (a ``source:`` model: the version its registry entry is)

Versions are positive integers. Which of them are served is the model's ``version_policy``
(Triton's: the latest N, all, or specific ones; default the latest one) and which answers calls
that name no version is ``default_version`` (default: the highest served). Each version is
identified by the sha256 of its ``model.onnx`` as well as its number: versions are immutable
once loaded. Signatures come from the graph without loading an inference session, so the
gateway never holds model weights in memory for long: input and output names, V2 datatypes, and
shapes with ``-1`` for symbolic or unknown dims. A ZipMap output (a scikit-learn classifier's
probabilities, a sequence of maps in the graph) is an FP32 ``[-1, C]`` tensor with its class
labels (``modelgate.core.zipmap``); other non-tensor outputs are served as JSON.

A model whose config names a registry ``source:`` serves exactly the local version that source
resolves to (its ``registry.json``), which is also its default: ``version_policy`` and
``default_version`` do not apply to it.

:func:`scan_model` reads a model folder without letting one bad version hide the others: each
version is either loadable or carries the reason it is not.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import onnx
import yaml

from modelgate.core import promotion
from modelgate.core.lineage import (
    Lineage,
    RegistrySource,
    SourceError,
    SourcePointer,
    read_lineage,
)
from modelgate.core.promotion import PromotionConfig
from modelgate.core.store import pools
from modelgate.core.zipmap import Classes, classes_of

MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # never "." or ".."
VERSION = re.compile(r"^[1-9][0-9]{0,17}$")
DEFAULT_MAX_BATCH_SIZE = 64

# onnx.TensorProto element types -> V2 datatypes.
_ONNX_DATATYPES: dict[int, str] = {  # keyed by TensorProto.elem_type, a plain int
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
}


class RepositoryError(ValueError):
    """A model folder, config or graph modelgate cannot serve; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # a V2 datatype, or "JSON" for non-tensor values (sequences, maps)
    shape: tuple[int, ...]  # -1 for symbolic or unknown dims
    onnx_type: str  # e.g. "tensor(float)" or "seq(map(int64,tensor(float)))"
    # A ZipMap output's class labels, its columns in order: the output is served as FP32
    # [-1, len(classes)] (modelgate.core.zipmap), not as the graph's sequence of maps.
    classes: Classes = ()

    @property
    def is_tensor(self) -> bool:
        return self.datatype != "JSON"

    @property
    def zipmap(self) -> bool:
        return bool(self.classes)

    def metadata(self) -> dict[str, Any]:
        found: dict[str, Any] = {"name": self.name, "datatype": self.datatype,
                                 "shape": list(self.shape)}
        if self.classes:
            found["parameters"] = {"classes": list(self.classes)}
        return found


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions on disk are served, with Triton's names: ``{latest: {num_versions: N}}``
    (the default, N = 1), ``{all: {}}`` or ``{specific: {versions: [1, 3]}}``."""

    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[str, ...] = ()

    def select(self, available: list[str]) -> list[str]:
        """The versions to serve among ``available``, highest first."""
        ordered = sorted(available, key=int, reverse=True)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[:self.num_versions]

    @classmethod
    def from_mapping(cls, raw: Any, source: Path) -> VersionPolicy:
        shape = ("version_policy must be one of {latest: {num_versions: N}}, {all: {}} or "
                 "{specific: {versions: [1, 3]}}")
        if not isinstance(raw, dict) or len(raw) != 1:
            raise RepositoryError(f"{source}: {shape}, got {raw!r}")
        ((kind, body),) = raw.items()
        body = body or {}
        if kind == "all" and isinstance(body, dict) and not body:
            return cls("all")
        if kind == "latest" and isinstance(body, dict) and set(body) <= {"num_versions"}:
            count = body.get("num_versions", 1)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise RepositoryError(f"{source}: latest.num_versions must be a positive "
                                      f"integer, got {count!r}")
            return cls("latest", num_versions=count)
        if kind == "specific" and isinstance(body, dict) and set(body) == {"versions"}:
            versions = body["versions"]
            if not isinstance(versions, list) or not versions or not all(
                    VERSION.match(str(v)) for v in versions):
                raise RepositoryError(f"{source}: specific.versions must be a non-empty list "
                                      f"of version numbers, got {versions!r}")
            return cls("specific", versions=tuple(str(int(v)) for v in versions))
        raise RepositoryError(f"{source}: {shape}, got {raw!r}")

    def describe(self) -> dict[str, Any]:
        """As config.yaml writes it (and model metadata shows it)."""
        if self.kind == "all":
            return {"all": {}}
        if self.kind == "specific":
            return {"specific": {"versions": [int(v) for v in self.versions]}}
        return {"latest": {"num_versions": self.num_versions}}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Per-model overrides from ``config.yaml``/``config.json``; ``None`` means "derive".

    ``batching`` is on by default whenever every input has a variable first dimension: calls
    are then bundled by the gateway and run together by workers, their rows concatenated. A
    model whose rows are not independent (it normalises across the batch, or reduces over
    dim 0) would mix callers' rows: ``batching: false`` makes each call run alone, whole
    (effective ``max_batch_size`` 0), while the rows axis still serves drift profiles.
    """

    batching: bool | None = None  # None = on when the graph can batch
    max_batch_size: int | None = None  # rows per ORT run; 0 = never batch
    max_queue_delay_ms: float = 0.0  # wait this long for more rows before a partial batch
    # Run sizes (rows) to cut batches at when more rows wait than one run takes (Triton's
    # preferred_batch_size): e.g. the sizes a model's kernels are fastest at.
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue: int | None = None  # admission limit on the backlog (entries)
    timeout_ms: int | None = None  # default deadline for this model's requests
    slo_p95_ms: float | None = None
    min_workers: int | None = None
    max_workers: int | None = None
    worker_cost_per_hour: float = 1.0  # price of one worker, for the autoscaler's budget
    intra_op_threads: int | None = None
    drift_sample_share: float = 1.0  # share of served rows sampled for drift detection
    drift_max_rows_per_s: int = 1000  # per worker; bounds the sampling cost
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    default_version: str | None = None  # None: the highest version served
    # A model registry entry to take versions from (models:/NAME@ALIAS or models:/NAME/N):
    # what it resolves to is the one version served, and the default.
    source: str | None = None
    # What the prediction is (modelgate.core.prediction): derived from the outputs unless set.
    task: str | None = None  # classification | regression
    prediction: tuple[tuple[str, str], ...] = ()  # (label|probabilities|score, output name)
    # With one, a new version enters as a candidate and becomes the default only through the
    # promotion gate (or a person): modelgate.core.promotion.
    promotion: PromotionConfig | None = None
    traffic: dict[str, Any] | None = None  # the traffic policy when none is stored
    # Answers kept for feedback (modelgate.gateway.feedback): the share of calls stored, how
    # long, and at most how many rows per model (the oldest go first; a small classifier's
    # row costs ~300 B: docs/architecture.md).
    feedback_sample_share: float = 1.0
    feedback_horizon_s: int = 86_400
    feedback_max_rows: int = 100_000
    # Live quality (modelgate.core.quality): the window of last labelled rows, and the alarm's
    # accuracy drop to find, rows before it may fire, and rows of its baseline when the
    # version's lineage records no accuracy.
    quality_window_rows: int = 1000
    quality_drop_share: float = 0.05
    quality_min_labels: int = 100
    quality_baseline_rows: int = 2000

    @classmethod
    def from_mapping(cls, raw: Any, source: Path) -> ModelConfig:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise RepositoryError(f"{source}: expected a mapping of settings, got {type(raw)}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise RepositoryError(
                f"{source}: unknown setting(s) {unknown}; known settings are {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if value is None:
                continue
            if key == "preferred_batch_sizes":
                values[key] = _sizes(value, source)
                continue
            if key == "version_policy":
                values[key] = VersionPolicy.from_mapping(value, source)
                continue
            if key == "promotion":
                try:
                    values[key] = promotion.parse(value)
                except promotion.PromotionConfigError as e:
                    raise RepositoryError(f"{source}: {e}") from e
                continue
            if key == "traffic":
                if not isinstance(value, dict):
                    raise RepositoryError(f"{source}: traffic must be a mapping like "
                                          "{weights: {1: 90, 2: 10}}")
                values[key] = value
                continue
            if key == "task":
                if value not in ("classification", "regression"):
                    raise RepositoryError(f"{source}: task must be classification or "
                                          f"regression, got {value!r}")
                values[key] = value
                continue
            if key == "prediction":
                if not isinstance(value, dict) or not value or not set(value) <= {
                        "label", "probabilities", "score"} or not all(
                        isinstance(v, str) for v in value.values()):
                    raise RepositoryError(f"{source}: prediction names outputs, e.g. "
                                          "{label: output_label, probabilities: "
                                          f"output_probability}}, got {value!r}")
                values[key] = tuple(sorted(value.items()))
                continue
            if key == "default_version":
                if isinstance(value, bool) or not VERSION.match(str(value)):
                    raise RepositoryError(f"{source}: default_version must be a version "
                                          f"number, got {value!r}")
                values[key] = str(int(value))
                continue
            if key == "source":
                try:
                    values[key] = RegistrySource.parse(value).uri
                except SourceError as e:
                    raise RepositoryError(f"{source}: {e}") from e
                continue
            if key == "batching":
                if not isinstance(value, bool):
                    raise RepositoryError(f"{source}: batching must be true or false, got "
                                          f"{value!r}")
                values[key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RepositoryError(f"{source}: {key} must be a number, got {value!r}")
            if value < 0:
                raise RepositoryError(f"{source}: {key} must not be negative, got {value}")
            if key.endswith("_share") and value > 1:
                raise RepositoryError(f"{source}: {key} is a share in [0, 1], got {value}")
            values[key] = value if key.endswith(("_ms", "_per_hour", "_share")) else int(value)
        if "source" in values and ({"version_policy", "default_version"} & set(values)):
            raise RepositoryError(
                f"{source}: a model with a source serves the version its registry entry "
                "points at; remove version_policy and default_version (or the source)")
        return cls(**values)


def _sizes(value: Any, source: Path) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise RepositoryError(f"{source}: preferred_batch_sizes must be a list of positive "
                              f"integers, got {value!r}")
    return tuple(sorted(set(value)))


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One servable version: where it lives, its signature, and how it batches."""

    name: str
    version: str
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    config: ModelConfig
    max_batch_size: int  # effective: 0 when the graph cannot batch along dim 0
    sha256: str = ""  # of model.onnx: what identifies this version's content everywhere
    lineage: Lineage = field(default_factory=Lineage)  # from MLmodel / metadata.json

    @property
    def pool(self) -> str:
        return pools.pool_id(self.name, self.version)

    @property
    def batchable(self) -> bool:
        """Calls are combined: bundled by the gateway, batched in one run by the worker."""
        return self.max_batch_size > 0

    @property
    def rows_axis(self) -> bool:
        """Every input has a variable first dimension: a call's rows, sampled for drift."""
        return can_batch(self.inputs)

    def input(self, name: str) -> TensorSpec | None:
        return next((i for i in self.inputs if i.name == name), None)


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    versions: dict[str, ModelVersion]  # by version string
    default_version: str

    @property
    def default(self) -> ModelVersion:
        return self.versions[self.default_version]


def _dims(type_proto: onnx.TypeProto) -> tuple[int, ...]:
    if not type_proto.tensor_type.HasField("shape"):
        return (-1,)  # rank unknown: the best we can say is "some tensor"
    return tuple(
        d.dim_value if d.HasField("dim_value") else -1 for d in type_proto.tensor_type.shape.dim
    )


def _type_string(type_proto: onnx.TypeProto) -> str:
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        elem = onnx.TensorProto.DataType.Name(type_proto.tensor_type.elem_type).lower()
        return f"tensor({elem})"
    if kind == "sequence_type":
        return f"seq({_type_string(type_proto.sequence_type.elem_type)})"
    if kind == "map_type":
        key = onnx.TensorProto.DataType.Name(type_proto.map_type.key_type).lower()
        return f"map({key},{_type_string(type_proto.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({_type_string(type_proto.optional_type.elem_type)})"
    return str(kind)


def _spec(value_info: onnx.ValueInfoProto, path: Path,
          graph: onnx.GraphProto | None = None) -> TensorSpec:
    type_proto = value_info.type
    onnx_type = _type_string(type_proto)
    if type_proto.WhichOneof("value") != "tensor_type":
        classes = classes_of(graph, value_info.name) if graph is not None else None
        if classes is not None and onnx_type.startswith("seq(map(") and \
                onnx_type.endswith("tensor(float)))"):
            return TensorSpec(value_info.name, "FP32", (-1, len(classes)), onnx_type, classes)
        return TensorSpec(value_info.name, "JSON", (-1,), onnx_type)
    elem = type_proto.tensor_type.elem_type
    datatype = _ONNX_DATATYPES.get(elem)
    if datatype is None:
        raise RepositoryError(
            f"{path}: {value_info.name!r} has element type {onnx_type}, which modelgate cannot "
            f"carry; supported are {sorted(set(_ONNX_DATATYPES.values()))}"
        )
    return TensorSpec(value_info.name, datatype, _dims(type_proto), onnx_type)


def read_signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of an ONNX graph, without its weights' external data."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # onnx raises DecodeError, OSError and others for bad files
        raise RepositoryError(f"{path}: not a readable ONNX model ({e})") from e
    # Older exporters list initializers among the graph inputs; they are weights, not inputs.
    initializers = {i.name for i in graph.initializer}
    inputs = tuple(_spec(v, path) for v in graph.input if v.name not in initializers)
    outputs = tuple(_spec(v, path, graph) for v in graph.output)
    for spec in inputs:
        if not spec.is_tensor:
            raise RepositoryError(f"{path}: input {spec.name!r} is {spec.onnx_type}; "
                                  "modelgate accepts tensor inputs only")
    return inputs, outputs


def can_batch(inputs: tuple[TensorSpec, ...]) -> bool:
    """True when every input has a variable first dimension to concatenate requests along."""
    return bool(inputs) and all(len(i.shape) >= 1 and i.shape[0] == -1 for i in inputs)


def _read_config(model_dir: Path) -> ModelConfig:
    for filename, parse in (("config.yaml", yaml.safe_load), ("config.yml", yaml.safe_load),
                            ("config.json", json.loads)):
        source = model_dir / filename
        if source.is_file():
            try:
                raw = parse(source.read_text())
            except (yaml.YAMLError, json.JSONDecodeError) as e:
                raise RepositoryError(f"{source}: cannot parse ({e})") from e
            return ModelConfig.from_mapping(raw, source)
    return ModelConfig()


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def file_sha256(path: Path) -> str:
    """The sha256 of a file, hashed once per (size, modification time): a repository is
    scanned every few seconds in ``poll`` mode and models can be large."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    found = _HASHES.get(key)
    if found is None:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        found = _HASHES[key] = digest.hexdigest()
        if len(_HASHES) > 4096:
            _HASHES.clear()
    return found


def load_version(name: str, version: str, path: Path, config: ModelConfig) -> ModelVersion:
    inputs, outputs = read_signature(path)
    batchable = can_batch(inputs)
    fixed = [i.name for i in inputs if not i.shape or i.shape[0] != -1]
    if config.batching is False:
        if config.max_batch_size:
            raise RepositoryError(
                f"{path}: config sets batching: false and max_batch_size="
                f"{config.max_batch_size}; remove one of them")
        max_batch_size = 0
    elif config.batching and not batchable:
        raise RepositoryError(
            f"{path}: config sets batching: true but input(s) {fixed} have no variable first "
            "dimension to batch along; remove the setting or re-export with a dynamic batch "
            "axis")
    elif config.max_batch_size is None:
        max_batch_size = DEFAULT_MAX_BATCH_SIZE if batchable else 0
    elif config.max_batch_size > 0 and not batchable:
        raise RepositoryError(
            f"{path}: config sets max_batch_size={config.max_batch_size} but input(s) "
            f"{fixed} have no variable first dimension to batch along; set max_batch_size: 0 "
            "or re-export with a dynamic batch axis"
        )
    else:
        max_batch_size = config.max_batch_size
    too_big = [s for s in config.preferred_batch_sizes if s > max_batch_size]
    if too_big:
        raise RepositoryError(f"{path}: preferred_batch_sizes {too_big} exceed max_batch_size "
                              f"{max_batch_size}")
    return ModelVersion(name, version, path, inputs, outputs, config, max_batch_size,
                        file_sha256(path), read_lineage(path.parent, inputs, outputs))


@dataclass(frozen=True, slots=True)
class VersionScan:
    """One version folder as found: loadable (``loaded``) or not (``error`` says why)."""

    version: str
    loaded: ModelVersion | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class ModelScan:
    """One model folder as found. ``error`` (a bad name or config) spoils the whole model;
    otherwise each version stands or falls on its own."""

    name: str
    config: ModelConfig | None
    versions: dict[str, VersionScan]
    error: str = ""
    pointer: SourcePointer | None = None  # a source model's registry.json

    def loadable(self) -> dict[str, ModelVersion]:
        return {v: s.loaded for v, s in self.versions.items() if s.loaded is not None}

    @property
    def source(self) -> str | None:
        return self.config.source if self.config is not None else None

    def sourced(self) -> str | None:
        """A source model's version as its registry entry last resolved (None: not yet)."""
        pointer = self.pointer
        if self.source is None or pointer is None or pointer.source != self.source:
            return None
        return pointer.version

    def candidates(self) -> list[str]:
        """The versions the model asks to serve, loadable or not, highest first."""
        if self.config is None:
            return []
        if self.source is not None:
            sourced = self.sourced()
            return [sourced] if sourced in self.versions else []
        return self.config.version_policy.select(list(self.versions))

    def served(self) -> list[str]:
        """The versions the version policy (or the source) serves among the loadable ones,
        highest first."""
        if self.config is None:
            return []
        if self.source is not None:
            return [v for v in self.candidates() if v in self.loadable()]
        return self.config.version_policy.select(list(self.loadable()))

    def default(self, served: list[str]) -> str | None:
        """The source's version; else the configured default version if it is served, else
        the highest served."""
        if not served:
            return None
        if self.source is not None:
            return served[0]
        wanted = self.config.default_version if self.config is not None else None
        return wanted if wanted in served else max(served, key=int)

    def unserved_reason(self, version: str) -> str:
        """Why a loadable version on disk is not served."""
        if self.source is not None:
            return f"not the version {self.source} points at"
        return "not served by its version_policy"


def check_name(name: str, what: str = "model") -> str:
    """``name`` if it can name a model (or a version) folder; never a path of its own."""
    pattern = MODEL_NAME if what == "model" else VERSION
    if not pattern.match(name):
        raise RepositoryError(
            f"{what} name {name[:80]!r} is not allowed: "
            + ("use letters, digits, '_', '.' and '-', starting with a letter, digit or '_'"
               if what == "model" else "versions are positive integers like 1, 2, 3"))
    return name


def scan_model(model_dir: Path) -> ModelScan:
    """Read a model folder; never raises for a problem with the folder's contents."""
    name = model_dir.name
    try:
        check_name(name)
        config = _read_config(model_dir)
    except RepositoryError as e:
        return ModelScan(name, None, {}, str(e))
    versions: dict[str, VersionScan] = {}
    for child in sorted(model_dir.iterdir()):
        if not (child.is_dir() and VERSION.match(child.name)):
            continue
        onnx_file = child / "model.onnx"
        if not onnx_file.is_file():
            versions[child.name] = VersionScan(child.name, None,
                                               f"{onnx_file} is missing")
            continue
        try:
            versions[child.name] = VersionScan(
                child.name, load_version(name, child.name, onnx_file, config))
        except (RepositoryError, OSError) as e:
            versions[child.name] = VersionScan(child.name, None, str(e))
    pointer = SourcePointer.read(model_dir) if config.source is not None else None
    if not versions and config.source is None:
        return ModelScan(name, config, {}, f"{model_dir}: no version folder with a "
                                           f"model.onnx; expected {model_dir}/1/model.onnx")
    return ModelScan(name, config, versions, pointer=pointer)


def scan_repository(root: Path) -> dict[str, ModelScan]:
    """Every model folder under ``root`` (hidden folders skipped), by name."""
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist or is not a folder")
    return {child.name: scan_model(child) for child in sorted(root.iterdir())
            if child.is_dir() and not child.name.startswith(".")}


def read_version(root: Path, name: str, version: str) -> ModelVersion:
    """One version of one model, read from its folder. Raises RepositoryError saying why."""
    check_name(name)
    check_name(version, "version")
    model_dir = Path(root) / name
    if not model_dir.is_dir():
        raise RepositoryError(f"no model {name!r} in the repository {root}")
    onnx_file = model_dir / version / "model.onnx"
    if not onnx_file.is_file():
        raise RepositoryError(f"model {name!r} has no version {version} ({onnx_file} is "
                              "missing)")
    return load_version(name, version, onnx_file, _read_config(model_dir))


def load_model(model_dir: Path) -> Model:
    """The versions of a model its policy serves. Raises RepositoryError if it serves none."""
    scan = scan_model(model_dir)
    if scan.error:
        raise RepositoryError(scan.error)
    served = scan.served()
    default = scan.default(served)
    if default is None:
        reasons = "; ".join(f"version {v}: {s.error}" for v, s in scan.versions.items()
                            if s.error)
        raise RepositoryError(f"{model_dir}: no version to serve"
                              + (f" ({reasons})" if reasons else " under its version_policy"))
    loadable = scan.loadable()
    return Model(scan.name, {v: loadable[v] for v in served}, default)


def load_repository(root: Path) -> dict[str, Model]:
    """Every model under ``root``, by name. Raises RepositoryError naming the folder at fault."""
    scans = scan_repository(root)
    if not scans:
        raise RepositoryError(
            f"model repository {root} has no models; add {root}/NAME/1/model.onnx"
        )
    return {name: load_model(Path(root) / name) for name in scans}


__all__ = [
    "Model",
    "ModelConfig",
    "ModelScan",
    "ModelVersion",
    "RepositoryError",
    "TensorSpec",
    "VersionPolicy",
    "VersionScan",
    "can_batch",
    "check_name",
    "file_sha256",
    "load_model",
    "load_repository",
    "load_version",
    "read_signature",
    "read_version",
    "scan_model",
    "scan_repository",
]
