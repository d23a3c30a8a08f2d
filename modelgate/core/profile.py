"""Reference profiles for drift detection: ``profile.json`` beside a model version.

``modelgate profile --model NAME --data FILE`` runs the model over the rows it was trained or
validated on and writes, per feature, decile bin edges, the reference share of rows per bin,
mean and standard deviation, and, for label outputs, the class distribution.

Features: each column of a 2-D input or numeric output is one feature (``input[3]``); a 1-D
tensor is one feature; for higher-rank tensors each channel (dim 1) is one feature, reduced to
its mean over the remaining dims (``image[c0]``). Integer 1-D outputs are labels. Non-tensor
(JSON) outputs and models that cannot batch are not profiled.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelgate.core import wire
from modelgate.core.repository import ModelVersion, RepositoryError

PROFILE_FILE = "profile.json"
PROFILE_VERSION = 1
BINS = 10


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    name: str
    kind: str  # "input" or "output"
    tensor: str
    column: int | None  # None for a 1-D tensor
    reduce: str | None  # "channel_mean" for tensors of rank > 2
    edges: tuple[float, ...]  # inner bin edges; len(edges) + 1 bins
    fractions: tuple[float, ...]  # reference share of rows per bin
    mean: float
    std: float


@dataclass(frozen=True, slots=True)
class LabelProfile:
    name: str
    tensor: str
    classes: tuple[int, ...]
    fractions: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Profile:
    model: str
    version: str
    rows: int
    features: tuple[FeatureProfile, ...]
    labels: tuple[LabelProfile, ...] = ()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"profile_version": PROFILE_VERSION, **asdict(self)},
                                   indent=1))

    @classmethod
    def load(cls, path: Path) -> Profile:
        try:
            raw = json.loads(path.read_text())
            if raw.pop("profile_version", None) != PROFILE_VERSION:
                raise ValueError(f"profile_version is not {PROFILE_VERSION}")
            return cls(
                model=raw["model"], version=str(raw["version"]), rows=int(raw["rows"]),
                features=tuple(FeatureProfile(**{**f, "edges": tuple(f["edges"]),
                                                 "fractions": tuple(f["fractions"])})
                               for f in raw["features"]),
                labels=tuple(LabelProfile(**{**lab, "classes": tuple(lab["classes"]),
                                             "fractions": tuple(lab["fractions"])})
                             for lab in raw.get("labels", [])),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RepositoryError(f"{path}: not a readable drift profile ({e}); rebuild it "
                                  "with `modelgate profile`") from e


def profile_path(model: ModelVersion) -> Path:
    return model.path.parent / PROFILE_FILE


def load_profile(model: ModelVersion) -> Profile | None:
    path = profile_path(model)
    return Profile.load(path) if path.is_file() else None


def columns(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A batch tensor as (rows, features) float64, and the reduction used."""
    if array.ndim == 1:
        return array.reshape(-1, 1).astype(np.float64), None
    if array.ndim == 2:
        return array.astype(np.float64), None
    axes = tuple(range(2, array.ndim))
    return array.astype(np.float64).mean(axis=axes), "channel_mean"


def feature_matrix(profile: Profile, inputs: dict[str, np.ndarray],
                   outputs: dict[str, Any]) -> np.ndarray | None:
    """The profiled features of a batch as (rows, features), or None if a tensor is missing."""
    parts = []
    cache: dict[str, np.ndarray] = {}
    for feature in profile.features:
        source = inputs if feature.kind == "input" else outputs
        array = source.get(feature.tensor)
        if not isinstance(array, np.ndarray):
            return None
        if feature.tensor not in cache:
            cache[feature.tensor] = columns(array)[0]
        matrix = cache[feature.tensor]
        parts.append(matrix[:, feature.column or 0])
    return np.stack(parts, axis=1) if parts else None


def _feature_profiles(kind: str, name: str, array: np.ndarray) -> list[FeatureProfile]:
    matrix, reduce = columns(array)
    profiles = []
    for j in range(matrix.shape[1]):
        values = matrix[:, j]
        values = values[np.isfinite(values)]
        edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, values, side="right"),
                             minlength=len(edges) + 1)
        label = (f"{name}[c{j}]" if reduce else f"{name}[{j}]") if array.ndim > 1 else name
        profiles.append(FeatureProfile(
            name=label, kind=kind, tensor=name, column=j if array.ndim > 1 else None,
            reduce=reduce, edges=tuple(float(e) for e in edges),
            fractions=tuple(float(c) / len(values) for c in counts),
            mean=float(values.mean()), std=float(values.std()) or 1.0))
    return profiles


def build_profile(model: ModelVersion, inputs: dict[str, np.ndarray],
                  outputs: dict[str, Any]) -> Profile:
    rows = int(next(iter(inputs.values())).shape[0])
    features: list[FeatureProfile] = []
    labels: list[LabelProfile] = []
    for spec in model.inputs:
        if spec.datatype in wire.NUMPY_DTYPES and spec.datatype != "BOOL":
            features += _feature_profiles("input", spec.name, inputs[spec.name])
    for spec in model.outputs:
        value = outputs.get(spec.name)
        if not isinstance(value, np.ndarray) or spec.datatype not in wire.NUMPY_DTYPES:
            continue
        if value.dtype.kind in "iu" and value.ndim == 1:
            classes, counts = np.unique(value, return_counts=True)
            labels.append(LabelProfile(spec.name, spec.name, tuple(int(c) for c in classes),
                                       tuple(float(c) / len(value) for c in counts)))
        elif value.dtype.kind == "f":
            features += _feature_profiles("output", spec.name, value)
    return Profile(model.name, model.version, rows, tuple(features), tuple(labels))


def read_data(path: Path, model: ModelVersion) -> dict[str, np.ndarray]:
    """Reference rows from CSV (one input; a header row is skipped), .npy (one input) or .npz
    (arrays named after the inputs), cast to the inputs' datatypes."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as archive:
            data = {name: archive[name] for name in archive.files}
    elif suffix in (".npy", ".csv"):
        if len(model.inputs) != 1:
            raise RepositoryError(
                f"{path}: model {model.name!r} has inputs {[i.name for i in model.inputs]}; "
                "give an .npz with one array per input")
        array = np.load(path) if suffix == ".npy" else _read_csv(path)
        data = {model.inputs[0].name: array}
    else:
        raise RepositoryError(f"{path}: use a .csv, .npy or .npz file")
    missing = [i.name for i in model.inputs if i.name not in data]
    if missing:
        raise RepositoryError(f"{path}: no data for input(s) {missing}")
    return {i.name: np.asarray(data[i.name], dtype=wire.NUMPY_DTYPES.get(i.datatype, object))
            for i in model.inputs}


def _read_csv(path: Path) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    try:
        float(rows[0][0])
    except (ValueError, IndexError):
        rows = rows[1:]  # a header
    try:
        return np.array([[float(v) for v in row] for row in rows if row])
    except ValueError as e:
        raise RepositoryError(f"{path}: every value must be a number ({e})") from e


def run_model(model: ModelVersion, inputs: dict[str, np.ndarray],
              batch_rows: int = 1024) -> dict[str, Any]:
    """The model's outputs over all rows, in batches (tensor outputs only)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.outputs]
    rows = int(next(iter(inputs.values())).shape[0])
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, rows, batch_rows):
        feeds = {k: v[start:start + batch_rows] for k, v in inputs.items()}
        for name, value in zip(names, session.run(names, feeds), strict=True):
            if isinstance(value, np.ndarray):
                parts[name].append(value)
    return {n: np.concatenate(p) for n, p in parts.items() if p}
