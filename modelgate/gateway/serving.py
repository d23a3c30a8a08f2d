"""What this gateway serves: every model's versions with their state and signature, and the
rules that turn a call's model and version into the one version it is admitted to.

The table is built from the shared model state the decider keeps in Redis
(``core/store/models.py``), re-read whenever its generation moves. A deployment without a
decider (no state in Redis at all: workers started by hand, or scaled by KEDA) is served from
the repository as it was at start, each model's policy-served versions READY -- model control
``none``, read locally.

Signatures come from the repository folder (shared by every process), read once per version
content (sha256).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelgate.core.errors import ModelNotFound, NoLiveWorker
from modelgate.core.repository import ModelVersion, RepositoryError, read_version, scan_repository
from modelgate.core.store.models import ModelState, VersionState, VersionStatus
from modelgate.core.store.traffic import TrafficPolicy

log = logging.getLogger("modelgate.gateway")

# A version in these states has a pool: calls already admitted to it may still be answered.
POOLED = (VersionStatus.LOADING, VersionStatus.READY, VersionStatus.UNLOADING)


@dataclass(frozen=True, slots=True)
class ServedVersion:
    state: VersionState
    version: ModelVersion | None  # None when its folder cannot be read any more


@dataclass(slots=True)  # one per call: not frozen, as wire.Request
class Routed:
    """Where an unpinned call goes: the version that answers it, by which route (``serving``:
    the default; ``canary``: another version its weight picked), and the version its copy is
    mirrored to after the answer, if any."""

    version: ModelVersion
    route: str
    shadow: ModelVersion | None = None


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    state: ModelState
    versions: dict[str, ServedVersion]
    traffic: TrafficPolicy | None = None

    @property
    def default(self) -> ModelVersion | None:
        found = self.versions.get(self.state.default or "")
        return found.version if found is not None else None

    def ready(self, version: str | None) -> ModelVersion | None:
        found = self.versions.get(version or "")
        if found is None or found.state.status != VersionStatus.READY:
            return None
        return found.version

    def route(self, session: str | None) -> Routed:
        """The version for an unpinned call (``session``: the sticky header's value)."""
        default = self.default
        traffic = self.traffic
        if default is None or traffic is None:
            if default is None:
                raise NoLiveWorker(f"model {self.name!r} has no version ready")
            return Routed(default, "serving")
        chosen = default
        weighted = [(v, w) for v, w in traffic.weights.items()
                    if w > 0 and self.ready(v) is not None]
        if weighted:
            number = pick(weighted, session)
            chosen = self.ready(number) or default
        shadow = None
        mirror = traffic.shadow
        if mirror is not None and mirror.percent > 0:
            candidate = self.ready(mirror.version)
            if candidate is not None and candidate.version != chosen.version and (
                    mirror.percent >= 100 or random.random() * 100 < mirror.percent):
                shadow = candidate
        return Routed(chosen, "serving" if chosen.version == default.version else "canary",
                      shadow)


def pick(weighted: list[tuple[str, int]], session: str | None) -> str:
    """A version by weight: at random, or for a session by weighted rendezvous hashing, so a
    session keeps its version across weight changes unless that version's share shrinks (and
    then only as few sessions move as the shrinking needs), and across gateway restarts (the
    hash is not Python's, which changes per process)."""
    if len(weighted) == 1:
        return weighted[0][0]
    if session is None:
        total = sum(w for _, w in weighted)
        point = random.random() * total
        for version, weight in weighted:
            point -= weight
            if point < 0:
                return version
        return weighted[-1][0]
    best, best_score = weighted[0][0], -math.inf
    for version, weight in weighted:
        digest = hashlib.blake2b(f"{version}\0{session}".encode(), digest_size=8).digest()
        unit = (int.from_bytes(digest, "big") + 0.5) / 2.0 ** 64  # in (0, 1)
        score = -weight / math.log(unit)
        if score > best_score:
            best, best_score = version, score
    return best


Loader = Callable[[str, str], ModelVersion]


class ServingTable:
    def __init__(self, models: dict[str, ServedModel], generation: int | None) -> None:
        self.models = models
        self.generation = generation  # None: served from the repository, no decider's state

    @classmethod
    def empty(cls) -> ServingTable:
        return cls({}, None)

    def pools(self) -> list[str]:
        return [sv.version.pool for m in self.models.values() for sv in m.versions.values()
                if sv.version is not None and sv.state.status in POOLED]

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The version a call is admitted to. Not loaded: 404 at once; loading: 503."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r}; this server has "
                                f"{sorted(self.models)}")
        if version is None:
            default = model.default
            if default is None:
                loading = [v for v, sv in model.versions.items()
                           if sv.state.status == VersionStatus.LOADING]
                if loading:
                    raise NoLiveWorker(f"model {name!r} has no version ready yet: version(s) "
                                       f"{sorted(loading, key=int)} loading; retry shortly")
                raise ModelNotFound(f"model {name!r} has no version ready: "
                                    + _describe(model))
            return default
        found = model.versions.get(version)
        if found is None:
            raise ModelNotFound(f"model {name!r} has no version {version!r} loaded; "
                                + _describe(model))
        status = found.state.status
        if status == VersionStatus.READY and found.version is not None:
            return found.version
        if status == VersionStatus.LOADING:
            raise NoLiveWorker(f"version {version} of model {name!r} is loading; retry shortly")
        if status == VersionStatus.UNLOADING:
            raise ModelNotFound(f"version {version} of model {name!r} is being unloaded and "
                                "takes no new calls; " + _describe(model))
        raise ModelNotFound(f"version {version} of model {name!r} is unavailable: "
                            f"{found.state.reason or 'its file cannot be read'}")


def _describe(model: ServedModel) -> str:
    ready = model.state.ready()
    return (f"ready: {ready}, default {model.state.default}" if ready
            else "no version is ready")


def from_states(states: dict[str, ModelState], generation: int, load: Loader,
                previous: ServingTable | None = None,
                traffic: dict[str, TrafficPolicy] | None = None) -> ServingTable:
    """The table for the decider's state; signatures are reused from ``previous`` when the
    content is the same, else read with ``load``."""
    known: dict[tuple[str, str, str], ModelVersion] = {}
    if previous is not None:
        known = {(m.name, v, sv.version.sha256): sv.version
                 for m in previous.models.values() for v, sv in m.versions.items()
                 if sv.version is not None}
    models = {}
    for name, state in states.items():
        versions = {}
        for number, found in state.versions.items():
            loaded: ModelVersion | None = known.get((name, number, found.sha256))
            if loaded is None and found.status in POOLED:
                try:
                    loaded = load(name, number)
                except RepositoryError as e:
                    log.warning("cannot read version %s of %s for its signature: %s", number,
                                name, e)
            versions[number] = ServedVersion(found, loaded)
        models[name] = ServedModel(name, state, versions, (traffic or {}).get(name))
    return ServingTable(models, generation)


def from_repository(root: Path) -> ServingTable:
    """Without a decider: each model's policy-served versions, READY, as the folder holds them
    now; the default as its config says."""
    models = {}
    for name, scan in scan_repository(root).items():
        if scan.error:
            log.warning("model %s is not served: %s", name, scan.error)
            continue
        served = scan.served()
        loadable = scan.loadable()
        versions = {v: ServedVersion(VersionState(VersionStatus.READY, loadable[v].sha256, 0.0),
                                     loadable[v]) for v in served}
        state = ModelState(name, {v: sv.state for v, sv in versions.items()},
                           scan.default(served))
        models[name] = ServedModel(name, state, versions)
    return ServingTable(models, None)


def loader(root: Path) -> Loader:
    return lambda name, version: read_version(root, name, version)
