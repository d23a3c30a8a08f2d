"""Model control: keeps the shared state of which versions are served (``core/store/models.py``)
in step with the repository and the API, one decision per model per tick (``versions.py``).

Modes, with Triton's names: ``none`` serves what the repository held at start; ``poll`` scans
it every ``poll_s`` and applies new, removed and changed version folders and configs; in
``explicit`` only the repository API's load and unload change anything, and what they loaded
is stored in Redis so every process, restarted or not, comes back with it. Only the holder of
the control lease runs this (one decider per deployment); the autoscaler then scales every
pool the state names.

A model whose config names a registry ``source:`` serves the local version its registry entry
resolves to (``registry/``): the registry is asked under the same lease, at most every 5 s, and
a new answer is applied like a load -- the model is rescanned at once and the usual swap serves
it (in ``explicit`` mode only models loaded through the API are followed; in ``none`` mode the
registry is asked until a first version is fetched, then never again). Each version's lineage
is stored beside its pool when it enters LOADING (``core/store/lineage.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import redis

from modelgate.autoscaler.registry.sync import RegistrySync, Resolution
from modelgate.autoscaler.rollout import TRAFFIC_OPS, Rollouts
from modelgate.autoscaler.versions import (
    PoolStatus,
    Wanted,
    decide_model,
)
from modelgate.core.lineage import RegistrySource, SourceError
from modelgate.core.pool_figures import FiguresQuery
from modelgate.core.repository import ModelScan, ModelVersion, RepositoryError, scan_model
from modelgate.core.store import lineage as lineage_store
from modelgate.core.store import models as model_store
from modelgate.core.store import pools
from modelgate.core.store import traffic as traffic_store
from modelgate.core.store.models import (
    CommandResult,
    ControlCommand,
    ControlEvent,
    ModelState,
    VersionStatus,
)
from modelgate.core.store.traffic import TrafficPolicy

log = logging.getLogger("modelgate.autoscaler")

MODES = ("none", "poll", "explicit")
# Longer than a worker's start (ORT session, warm-up) plus the backend's stop of it.
REMOVED_SWEEP_S = 60.0


def wanted_from(scan: ModelScan) -> Wanted:
    """What one model folder asks to serve: its policy over the loadable versions, and the
    versions the policy would pick that cannot load (with why)."""
    if scan.error or scan.config is None:
        return Wanted((), None, {}, error=scan.error or "no config")
    loadable = scan.loadable()
    served = scan.served()
    candidates = scan.candidates()
    broken = {v: scan.versions[v].error for v in candidates if v not in loadable}
    waiting = ""
    if scan.source is not None and scan.sourced() is None:
        waiting = f"waiting for {scan.source} from the model registry"
    # With a ``promotion:`` rule, ``ModelControl._steered`` keeps the default where it is, so a
    # version new to the model -- from poll, load or a registry source alike -- is served
    # beside it as the gate's candidate until the gate (or a person) promotes it.
    return Wanted(tuple(served), scan.default(served),
                  {v: loadable[v].sha256 for v in served}, broken, waiting=waiting)


@dataclass
class _Pending:
    command: ControlCommand
    issued_at: float


@dataclass
class ModelControl:
    client: redis.Redis
    models_dir: Path
    mode: str = "poll"
    poll_s: float = 5.0
    load_models: tuple[str, ...] = ()  # explicit mode: load these at start ("*": every one)
    load_timeout_s: float = 120.0
    max_cost_per_hour: float | None = None
    states: dict[str, ModelState] = field(default_factory=dict)
    scans: dict[str, ModelScan] = field(default_factory=dict)
    _scanned_at: float = -1e9
    _started: bool = False
    _cursor: str = "0-0"  # the last command read (from the newest at start)
    _pending: dict[str, _Pending] = field(default_factory=dict)
    statuses: dict[str, dict[str, PoolStatus]] = field(default_factory=dict)
    registry: RegistrySync | None = None  # follows models' registry sources
    _reported: set[str] = field(default_factory=set)  # models with a registry record
    traffic: dict[str, TrafficPolicy] = field(default_factory=dict)
    rollouts: Rollouts = field(init=False)
    _removed_at: dict[str, float] = field(default_factory=dict)  # pool -> when it was removed

    def __post_init__(self) -> None:
        self.rollouts = Rollouts(self.client)

    # ------------------------------------------------------------------ reading

    def _read_states(self) -> dict[str, ModelState]:
        names = sorted(n.decode() for n in self.client.smembers(model_store.MODELS))
        raw = self.client.mget([model_store.state(n) for n in names]) if names else []
        states = {}
        for name, value in zip(names, raw, strict=True):
            if value is None:
                continue
            try:
                states[name] = ModelState.decode(value)
            except model_store.StateError as e:
                log.warning("model state of %s is unreadable (%s); rebuilding it", name, e)
        return states

    def versions(self) -> dict[tuple[str, str], ModelVersion | None]:
        """Every stored version's signature and config as last scanned."""
        return {(m, v): self.version(m, v) for m, s in self.states.items() for v in s.versions}

    def version(self, model: str, version: str) -> ModelVersion | None:
        """A version's signature and config as last scanned (None once gone from disk)."""
        scan = self.scans.get(model)
        return scan.loadable().get(version) if scan is not None else None

    def _scan(self, names: list[str] | None) -> None:
        """Rescan the named model folders (None: the whole repository)."""
        if names is None:
            found = sorted(p.name for p in self.models_dir.iterdir()
                           if p.is_dir() and not p.name.startswith("."))
            self.scans = {name: scan_model(self.models_dir / name) for name in found}
            return
        for name in names:
            folder = self.models_dir / name
            if folder.is_dir():
                self.scans[name] = scan_model(folder)
            else:
                self.scans.pop(name, None)

    def _explicit(self) -> set[str]:
        return {n.decode() for n in self.client.smembers(model_store.EXPLICIT)}

    def _read_traffic(self, names: list[str]) -> dict[str, TrafficPolicy]:
        found: dict[str, TrafficPolicy] = {}
        raw = self.client.mget([traffic_store.policy(n) for n in names]) if names else []
        for name, value in zip(names, raw, strict=True):
            if value is None:
                continue
            try:
                found[name] = TrafficPolicy.decode(value)
            except traffic_store.PolicyError as e:
                log.warning("the traffic policy of %s is unreadable (%s); ignoring it", name, e)
        return found

    def _wanted(self) -> dict[str, Wanted | None]:
        names = set(self.scans) | set(self.states)
        if self.mode == "explicit":
            chosen = self._explicit()
            wanted = {n: wanted_from(self.scans[n]) if n in chosen and n in self.scans else None
                      for n in names}
        else:
            wanted = {n: wanted_from(self.scans[n]) if n in self.scans else None
                      for n in names}
        return {n: self._steered(n, w) for n, w in wanted.items()}

    def _steered(self, name: str, wanted: Wanted | None) -> Wanted | None:
        """The default as the traffic policy (a person, the gate) says, over the repository's:
        a version rolled back to stays the default even if the version policy moved on; with
        a promotion rule, a new version waits as a candidate and the serving one stays."""
        if wanted is None or wanted.error:
            return wanted
        scan = self.scans.get(name)
        state = self.states.get(name)
        sourced = scan.sourced() if scan is not None else None
        if sourced is not None and state is not None and state.default is not None \
                and int(sourced) < int(state.default):
            # A registry alias moved back to a version fetched before: a rollback by whoever
            # moved it. The default follows at once, gate or not: a gate judges new versions,
            # not a return to one that served.
            return replace(wanted, default=sourced)
        policy = self.traffic.get(name)
        if policy is not None and policy.default is not None:
            return replace(wanted, default=policy.default)
        if scan is not None and scan.config is not None and scan.config.promotion is not None \
                and state is not None and state.default is not None:
            return replace(wanted, default=state.default)
        return wanted

    def _pool_status(self, states: dict[str, ModelState],
                     wanted: dict[str, Wanted | None]) -> dict[str, dict[str, PoolStatus]]:
        """The pools of the stored versions and of those about to be added: a version whose
        workers are already live (a decider starting, or taking over, beside running workers)
        enters READY at once, not LOADING for a tick while gateways answer 503 "loading"."""
        refs = sorted({(m, v) for m, s in states.items() for v in s.versions}
                      | {(m, v) for m, w in wanted.items() if w is not None for v in w.served})
        if not refs:
            return {}
        ids = [pools.pool_id(m, v) for m, v in refs]
        query = FiguresQuery(ids, time.time(), rates=False)
        pipe = self.client.pipeline(transaction=False)
        query.queue(pipe)
        for pool in ids:
            pipe.xlen(pools.requests_stream(pool))
            pipe.get(model_store.load_error(pool))
        results = pipe.execute()
        figures = query.parse(results)
        rest = results[query.size:]
        pending = self._pending_counts(ids)
        found: dict[str, dict[str, PoolStatus]] = {}
        for i, ((model, version), pool) in enumerate(zip(refs, ids, strict=True)):
            entries, error = rest[2 * i], rest[2 * i + 1]
            found.setdefault(model, {})[version] = PoolStatus(
                figures[pool].gauges.live_workers, int(entries), pending.get(pool, 0),
                error.decode() if error else "")
        return found

    def _pending_counts(self, ids: list[str]) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for pool in ids:
            pipe.xpending(pools.requests_stream(pool), pools.WORKER_GROUP)
        counts = {}
        for pool, result in zip(ids, pipe.execute(raise_on_error=False), strict=True):
            # No stream or no group yet (NOGROUP): nothing is pending.
            counts[pool] = int(result["pending"]) if isinstance(result, dict) else 0
        return counts

    def _applied_generation(self, current: int) -> int:
        """The lowest generation any live gateway has applied (``current`` when none runs:
        then nobody can send a call)."""
        keys = list(self.client.scan_iter(match=model_store.gateway_applied("*"), count=500))
        values = [int(v) for v in self.client.mget(keys) if v is not None] if keys else []
        return min(values) if values else current

    # ------------------------------------------------------------------ commands

    def _read_commands(self, now: float) -> None:
        entries = self.client.xread({model_store.COMMANDS: self._cursor}, count=100)
        for _, items in entries or []:
            for entry_id, fields in items:
                self._cursor = entry_id.decode()
                command = ControlCommand.parse(fields)
                if command is not None:
                    self._accept(command, now)

    def _result(self, command: ControlCommand, result: CommandResult) -> None:
        self.client.set(model_store.command_result(command.id), result.encode(),
                        ex=model_store.RESULT_TTL_S)

    def _accept(self, command: ControlCommand, now: float) -> None:
        if command.op == "sync":
            self._sync_command(command, now)
            return
        if command.op in TRAFFIC_OPS:
            scan = self.scans.get(command.model)
            config = scan.config.promotion if scan is not None and scan.config else None
            try:
                done = self.rollouts.command(command.model, command.op,
                                             self.states.get(command.model), config,
                                             self.traffic.get(command.model), command.by, now)
            except ValueError as e:
                self._result(command, CommandResult("failed", str(e)))
                return
            self._result(command, CommandResult("done", done))
            self._event(ControlEvent(now, command.model, "", command.op, done, command.by))
            return
        if self.mode != "explicit":
            self._result(command, CommandResult(
                "refused", f"the model control mode is {self.mode}: load and unload work in "
                           "explicit mode only; change the repository folder instead"
                           + (" (it is scanned every few seconds)" if self.mode == "poll"
                              else " and restart")))
            return
        if command.op == "load":
            if not (self.models_dir / command.model).is_dir():
                self._result(command, CommandResult(
                    "failed", f"no model {command.model!r} in the repository {self.models_dir}"))
                return
            self.client.sadd(model_store.EXPLICIT, command.model)
        else:
            self.client.srem(model_store.EXPLICIT, command.model)
        self._scan([command.model])  # load re-reads the folder and its config
        scan = self.scans.get(command.model)
        if command.op == "load" and self.registry is not None and scan is not None \
                and scan.source is not None:
            self.registry.nudge(command.model)  # a load asks the registry again, at once
        self._pending[command.id] = _Pending(command, now)
        self._result(command, CommandResult("pending"))
        self._event(ControlEvent(now, command.model, "", command.op, "asked through the API",
                                 command.by))

    def _sync_command(self, command: ControlCommand, now: float) -> None:
        """A registry said registry model ``command.model`` changed: ask about it now."""
        followers = []
        for name, scan in self.scans.items():
            try:
                source = RegistrySource.parse(scan.source) if scan.source else None
            except SourceError:
                source = None
            if source is not None and source.name == command.model:
                followers.append(name)
                if self.registry is not None:
                    self.registry.nudge(name)
        self._result(command, CommandResult(
            "done", f"asking the registry about {followers}" if followers
            else f"no model follows registry model {command.model!r}"))

    def _sources(self) -> dict[str, str]:
        """The models whose registry source is followed now, with their source URIs."""
        chosen = self._explicit() if self.mode == "explicit" else None
        return {name: scan.source for name, scan in self.scans.items()
                if scan.source is not None
                and (chosen is None or name in chosen)
                and (self.mode != "none" or scan.sourced() is None)}

    def registry_unanswered(self) -> list[str]:
        """Models whose source the registry has not answered about yet (``up`` waits)."""
        if self.registry is None:
            return []
        return self.registry.unanswered(sorted(self._sources()))

    def _follow_registry(self, now: float) -> None:
        """Ask the registry (in the background) and apply what it answered since: a moved
        source is a rescan of its model, as a load command is."""
        if self.registry is None:
            return
        sources = self._sources()
        results: list[Resolution] = self.registry.tick(sources, now)
        # A model that no longer follows a source (unloaded, its source removed) loses its
        # record; in none mode a source stops being asked once resolved, and keeps it.
        gone = set(self._reported) - set(sources) - (set(self.scans) if self.mode == "none"
                                                     else set())
        if not results and not gone:
            return
        pipe = self.client.pipeline(transaction=False)
        for result in results:
            pipe.set(lineage_store.registry(result.model), result.status.encode())
            self._reported.add(result.model)
        for model in gone:
            pipe.delete(lineage_store.registry(model))
            self._reported.discard(model)
        pipe.execute()
        moved = [r for r in results if r.moved]
        if moved:
            self._scan([r.model for r in moved])
        for result in moved:
            status = result.status
            event = ControlEvent(
                now, result.model, status.version or "", "registry",
                f"{status.source} is registry version {status.registry_version}"
                + (f" (run {status.run_id})" if status.run_id else "")
                + (", fetched" if result.new else ", already here"), "registry")
            log.info("model %s version %s: %s", event.model, event.version, event.reason)
            self._event(event)

    def _settle(self, wanted: dict[str, Wanted | None]) -> None:
        for command_id, pending in list(self._pending.items()):
            name = pending.command.model
            state = self.states.get(name)
            result: CommandResult | None = None
            if pending.command.op == "unload":
                if state is None:
                    result = CommandResult("done", f"model {name!r} unloaded")
            else:
                want = wanted.get(name)
                failure = self._registry_error(name, pending.issued_at)
                if want is not None and want.error:
                    result = CommandResult("failed", want.error)
                elif want is not None and want.waiting:
                    if failure:
                        result = CommandResult("failed", failure)
                elif want is not None and state is not None:
                    result = _load_result(name, want, state)
                elif want is not None and not want.served:
                    result = CommandResult("failed", "; ".join(
                        f"version {v}: {reason}" for v, reason in want.broken.items())
                        or f"model {name!r} has no version its version_policy serves")
            if result is not None:
                self._result(pending.command, result)
                del self._pending[command_id]

    def _registry_error(self, name: str, since: float) -> str:
        """Why the registry could not give ``name`` a version, asked at ``since`` or later."""
        if self.registry is None:
            return "no registry client runs in this decider"
        status = self.registry.statuses.get(name)
        return status.error if status is not None and status.checked_at >= since else ""

    def _event(self, event: ControlEvent) -> None:
        self.client.xadd(model_store.EVENTS, event.fields(), maxlen=model_store.EVENTS_MAXLEN,
                         approximate=True)

    # ------------------------------------------------------------------ the tick

    def start(self) -> None:
        """Claim the state for this repository, and load what the mode says at start."""
        identity = str(self.models_dir.resolve())
        stored = self.client.get(model_store.REPOSITORY)
        if stored is not None and stored.decode() != identity:
            log.warning("the model state in this Redis belongs to the repository %s; starting "
                        "afresh for %s", stored.decode(), identity)
            names = [n.decode() for n in self.client.smembers(model_store.MODELS)]
            self.client.delete(model_store.MODELS, model_store.EXPLICIT,
                               *(model_store.state(n) for n in names))
        self.client.set(model_store.REPOSITORY, identity)
        self._reported = {key.decode().split(":")[2] for key in self.client.scan_iter(
            match=lineage_store.registry("*"), count=500)}
        # Commands older than this decider were for another; their callers have given up.
        newest = self.client.xrevrange(model_store.COMMANDS, count=1)
        self._cursor = newest[0][0].decode() if newest else "0-0"
        if self.mode == "explicit" and self.load_models:
            self._scan(None)
            chosen = list(self.scans) if "*" in self.load_models else list(self.load_models)
            missing = [n for n in chosen if n not in self.scans]
            if missing:
                raise RepositoryError(f"--load-model names {missing}, which the repository "
                                      f"{self.models_dir} does not hold")
            self.client.sadd(model_store.EXPLICIT, *chosen)
        self._started = True

    def tick(self, now: float | None = None) -> dict[str, ModelState]:
        now = time.time() if now is None else now
        if not self._started:
            self.start()
        self.states = self._read_states()
        self.traffic = self._read_traffic(sorted(set(self.states) | set(self.scans)))
        self._read_commands(now)
        due = now - self._scanned_at >= self.poll_s
        if (self.mode == "poll" and due) or self._scanned_at < 0:
            self._scan(None)
            self._scanned_at = now
        self._follow_registry(now)
        wanted = self._wanted()
        statuses = self.statuses = self._pool_status(self.states, wanted)
        generation = int(self.client.get(model_store.GENERATION) or 0)
        applied = self._applied_generation(generation)
        next_generation = generation + 1
        changed: dict[str, ModelState | None] = {}
        removed: list[str] = []
        events: list[ControlEvent] = []
        for name, want in sorted(wanted.items()):
            decision = decide_model(name, want, self.states.get(name), statuses.get(name, {}),
                                    applied, next_generation, now, self.load_timeout_s)
            if not decision.changed:
                continue
            changed[name] = decision.state
            removed += [pools.pool_id(name, v) for v in decision.removed]
            events += [ControlEvent(now, name, c.version, c.change, c.reason)
                       for c in decision.changes]
        changed = self._within_budget(changed, now, events)
        if changed and not self._write(changed, generation):
            return self.states  # the generation moved under us: decide again next tick
        if changed:
            self._write_lineage(events)
        for event in events:
            log.info("model %s version %s: %s (%s)", event.model, event.version or "-",
                     event.change, event.reason)
            self._event(event)
        for pool in removed:
            self._remove_pool(pool)
            self._removed_at[pool] = now
        self._sweep_removed(now)
        for event in self.rollouts.tick(self.states, self.scans, self.traffic, now):
            self._event(event)
        self._config_traffic(now)
        self._settle(wanted)
        return self.states

    def _config_traffic(self, now: float) -> None:
        """A model's ``traffic:`` from config.yaml, stored once the versions it names are
        READY, and only while no policy is stored (the API's and the gate's win)."""
        for name, scan in self.scans.items():
            state = self.states.get(name)
            raw = scan.config.traffic if scan.config is not None else None
            if raw is None or state is None or name in self.traffic:
                continue
            try:
                policy = traffic_store.from_body(raw, by="config", reason="config.yaml",
                                                 time=now)
            except traffic_store.PolicyError as e:
                log.warning("config.yaml traffic of %s ignored: %s", name, e)
                continue
            if not policy.versions() <= set(state.ready()):
                continue  # waits for the versions it names
            written = self.client.set(traffic_store.policy(name), policy.encode(), nx=True)
            if written:
                self.client.incr(model_store.GENERATION)
                self._event(ControlEvent(now, name, "", "traffic", "from config.yaml",
                                         "config"))

    def _within_budget(self, changed: dict[str, ModelState | None], now: float,
                       events: list[ControlEvent]) -> dict[str, ModelState | None]:
        """Refuse, with the reason, a version whose load would put the pools' minimums over
        the budget: everything else keeps serving."""
        if self.max_cost_per_hour is None:
            return changed
        merged = dict(self.states)
        for name, changed_state in changed.items():
            if changed_state is None:
                merged.pop(name, None)
            else:
                merged[name] = changed_state
        floor = 0.0
        for name, state in sorted(merged.items()):
            for version, found in sorted(state.versions.items(), key=lambda kv: int(kv[0])):
                if found.status == VersionStatus.UNAVAILABLE:
                    continue
                loaded = self.version(name, version)
                config = loaded.config if loaded is not None else None
                cost = config.worker_cost_per_hour if config is not None else 1.0
                minimum = max(1, config.min_workers or 0) if config is not None else 1
                if floor + minimum * cost > self.max_cost_per_hour + 1e-9 and \
                        found.status == VersionStatus.LOADING:
                    reason = (f"its minimum of {minimum} worker(s) at {cost:.2f}/h would put "
                              f"the pools over --max-cost-per-hour {self.max_cost_per_hour:.2f}"
                              "; raise the budget or unload a version")
                    state = state.with_version(version, VersionStatus.UNAVAILABLE,
                                               found.sha256, now, found.generation, reason)
                    changed[name] = state
                    events.append(ControlEvent(now, name, version, "UNAVAILABLE", reason))
                    continue
                floor += minimum * cost
        return changed

    def _write(self, changed: dict[str, ModelState | None], read_generation: int) -> bool:
        """Write the changed states under the next generation, unless the generation moved
        since this tick read it (a gateway changed a traffic policy): then nothing is written
        and the next tick decides again on what is there now. True when written."""
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(model_store.GENERATION)
                if int(pipe.get(model_store.GENERATION) or 0) != read_generation:
                    return False
                pipe.multi()
                for name, state in changed.items():
                    if state is None:
                        pipe.delete(model_store.state(name))
                        pipe.srem(model_store.MODELS, name)
                    else:
                        pipe.set(model_store.state(name), state.encode())
                        pipe.sadd(model_store.MODELS, name)
                pipe.set(model_store.GENERATION, read_generation + 1)
                pipe.execute()
            except redis.WatchError:
                return False
        for name, state in changed.items():
            if state is None:
                self.states.pop(name, None)
            else:
                self.states[name] = state
        return True

    def _write_lineage(self, events: list[ControlEvent]) -> None:
        """Each version entering LOADING (or changed in place) gets its lineage stored beside
        its pool; a version removed without a pool (UNAVAILABLE) loses it."""
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pool = pools.pool_id(event.model, event.version)
            if event.change in ("LOADING", "reloaded"):
                found = self.version(event.model, event.version)
                if found is not None:
                    pipe.set(lineage_store.lineage(pool),
                             lineage_store.encode_lineage(found.lineage))
                    for warning in found.lineage.warnings:
                        log.warning("model %s version %s: %s; serving by the graph",
                                    event.model, event.version, warning)
            elif event.change == "removed":
                pipe.delete(lineage_store.lineage(pool))
        pipe.execute()

    def _sweep_removed(self, now: float) -> None:
        """A worker that was still starting when its pool was removed makes the pool's stream
        again (its group, before its first read) ahead of the stop that is on its way: for
        REMOVED_SWEEP_S after a removal, what such a worker left is removed too, unless the
        version is served again meanwhile."""
        for pool, removed_at in list(self._removed_at.items()):
            model, _, version = pool.rpartition(":")
            state = self.states.get(model)
            found = state.versions.get(version) if state is not None else None
            served = found is not None and found.status in (VersionStatus.LOADING,
                                                            VersionStatus.READY)
            if served or now - removed_at > REMOVED_SWEEP_S:
                del self._removed_at[pool]
            elif self.client.exists(pools.requests_stream(pool)):
                self._remove_pool(pool)

    def _remove_pool(self, pool: str) -> None:
        """Every key of a pool that left: its stream, counts, sets, dead letters, counters."""
        keys = list(self.client.scan_iter(match=pools.pool_pattern(pool), count=500))
        if keys:
            self.client.delete(*keys)
        log.info("pool %s removed (%d keys)", pool, len(keys))


def _load_result(name: str, want: Wanted, state: ModelState) -> CommandResult | None:
    """A load is done once every version it asked for is READY or UNAVAILABLE."""
    versions = [*want.served, *want.broken]
    found = {v: state.versions.get(v) for v in versions}
    if any(s is None or s.status == VersionStatus.LOADING for s in found.values()):
        return None
    failed = {v: s.reason for v, s in found.items()
              if s is not None and s.status == VersionStatus.UNAVAILABLE}
    if failed:
        return CommandResult("failed", "; ".join(f"version {v}: {reason}"
                                                 for v, reason in sorted(failed.items())))
    return CommandResult("done", f"model {name!r} loaded: versions "
                                 f"{sorted(want.served, key=int)} READY, default "
                                 f"{state.default}")
