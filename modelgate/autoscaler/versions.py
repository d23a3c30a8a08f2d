"""Which versions to serve, and when one may leave: a pure function over what is wanted, what
is stored, what the pools show and ``now``. The model control loop (``control.py``) only reads,
calls :func:`decide_model` and writes what it returns.

The swap that loses nothing, step by step:

1. a version the policy serves and the state lacks enters LOADING: its pool starts and warms
   up (the autoscaler gives a LOADING pool at least one worker);
2. it is READY once a worker serves its content (a worker registers only after warm-up); the
   default moves to it only then, so an unpinned call never waits for a version coming up;
3. a version no longer wanted (gone from disk, out of the policy, unloaded) stays READY while it
   is the default and its successor is not READY yet; otherwise it turns UNLOADING, in the same
   generation as the default's move, so every gateway stops sending it calls at once;
4. it is removed only when every live gateway has applied that generation (nothing new can
   arrive) and its stream is empty with nothing pending (everything admitted was answered);
5. a version that cannot load (its file unreadable, its workers failing to start, none ready in
   ``load_timeout_s``) is UNAVAILABLE with the reason; what was serving is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from modelgate.core.store.models import ModelState, VersionState, VersionStatus

LOADING, READY, UNLOADING, UNAVAILABLE = (VersionStatus.LOADING, VersionStatus.READY,
                                          VersionStatus.UNLOADING, VersionStatus.UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class Wanted:
    """What should be served of one model, from its folder and the control mode."""

    served: tuple[str, ...]  # the versions to serve, highest first
    default: str | None  # of those, the one for unpinned calls
    sha256: dict[str, str]  # content of every loadable version
    broken: dict[str, str] = field(default_factory=dict)  # versions the policy picks that
    # cannot load, with the reason
    error: str = ""  # the model as a whole cannot be read (a bad config): keep what serves


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """What the decider sees of one version's pool."""

    live_workers: int = 0  # serving this version's current content
    entries: int = 0  # in its stream (XLEN)
    pending: int = 0  # read by a worker and not yet acknowledged
    load_error: str = ""  # a worker could not load the model, and said why

    @property
    def drained(self) -> bool:
        return self.entries == 0 and self.pending == 0


@dataclass(frozen=True, slots=True)
class Change:
    version: str
    change: str  # a status name, "default", "reloaded" or "removed"
    reason: str


@dataclass(frozen=True, slots=True)
class ModelDecision:
    state: ModelState | None  # None: the model has no version left
    changes: list[Change]
    removed: list[str]  # versions whose pools are gone: delete their keys, stop their workers

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def decide_model(name: str, wanted: Wanted | None, current: ModelState | None,
                 pools: dict[str, PoolStatus], applied_generation: int, generation: int,
                 now: float, load_timeout_s: float = 120.0) -> ModelDecision:
    """The model's next state. ``wanted`` None: serve nothing of it (unloaded, or gone from
    disk). ``generation`` is the one a change made now is written under;
    ``applied_generation`` the lowest that every live gateway has applied."""
    state = current or ModelState(name)
    versions = dict(state.versions)
    changes: list[Change] = []
    removed: list[str] = []
    if wanted is not None and wanted.error:
        # An unreadable config: keep serving what serves, say why nothing changes.
        if state.reason != wanted.error:
            changes.append(Change("", "error", wanted.error))
        return ModelDecision(replace(state, reason=wanted.error) if state.versions else None,
                             changes, [])
    want = set(wanted.served) if wanted is not None else set()

    def move(version: str, status: VersionStatus, sha: str, reason: str = "") -> None:
        versions[version] = VersionState(status, sha, now, reason, generation)
        changes.append(Change(version, status.value, reason))

    for version in sorted(want, key=int):
        assert wanted is not None
        sha = wanted.sha256[version]
        found = versions.get(version)
        if found is None or (found.status == UNAVAILABLE and found.sha256 != sha):
            move(version, LOADING, sha)
        elif found.status == UNLOADING:
            move(version, LOADING, sha, "wanted again before it was removed")
        elif found.status in (LOADING, READY) and found.sha256 != sha:
            # Changed in place: the new content's workers replace the old ones (which stop
            # reading when they see the new hash) in the same pool; calls wait meanwhile.
            versions[version] = replace(found, sha256=sha, since=now, generation=generation)
            changes.append(Change(version, "reloaded", f"model.onnx changed on disk "
                                                       f"(sha256 {sha[:12]})"))
    if wanted is not None:
        for version, reason in wanted.broken.items():
            found = versions.get(version)
            if found is None or (found.status == UNAVAILABLE and found.reason != reason):
                move(version, UNAVAILABLE, "", reason)
            elif found.status in (LOADING, READY) and found.reason != reason:
                # Broken on disk while serving: the workers running keep their copy in memory;
                # new ones would fail. Say so; the version leaves as any other unwanted one.
                versions[version] = replace(found, reason=f"model.onnx on disk cannot be "
                                                          f"loaded any more: {reason}")
                changes.append(Change(version, "broken", reason))

    for version, found in list(versions.items()):
        pool = pools.get(version, PoolStatus())
        if found.status == LOADING and version in want:
            if pool.load_error:
                move(version, UNAVAILABLE, found.sha256, pool.load_error)
            elif pool.live_workers > 0:
                move(version, READY, found.sha256)
            elif now - found.since > load_timeout_s:
                move(version, UNAVAILABLE, found.sha256,
                     f"no worker became ready within {load_timeout_s:.0f} s")

    default = _default(state.default, wanted, versions)
    if default != state.default:
        changes.append(Change(default or "", "default",
                              f"was {state.default}" if state.default else "first default"))

    for version, found in list(versions.items()):
        if version in want:
            continue
        if found.status == UNAVAILABLE and (wanted is None or version not in wanted.broken):
            del versions[version]
            changes.append(Change(version, "removed", "no longer wanted"))
        elif found.status in (LOADING, READY) and version != default:
            move(version, UNLOADING, found.sha256,
                 "no longer served" if wanted is not None else "unloaded")
        elif found.status == UNLOADING and applied_generation >= found.generation \
                and pools.get(version, PoolStatus()).drained:
            del versions[version]
            removed.append(version)
            changes.append(Change(version, "removed", "drained"))

    if not versions:
        return ModelDecision(None, changes, removed)
    next_state = ModelState(name, versions, default,
                            generation if changes else state.generation, "")
    return ModelDecision(next_state, changes, removed)


def _default(current: str | None, wanted: Wanted | None,
             versions: dict[str, VersionState]) -> str | None:
    """The wanted default once READY; until then the current one while it is READY; else the
    highest READY version that is still wanted."""
    def ready(version: str | None) -> bool:
        return version is not None and version in versions \
            and versions[version].status == READY
    if wanted is None:
        return None
    if ready(wanted.default):
        return wanted.default
    if ready(current):
        return current
    candidates = [v for v in wanted.served if ready(v)]
    return candidates[0] if candidates else None
