"""Model control: keeps the shared state of which versions are served (``core/store/models.py``)
in step with the repository and the API, one decision per model per tick (``versions.py``).

Modes, with Triton's names: ``none`` serves what the repository held at start; ``poll`` scans
it every ``poll_s`` and applies new, removed and changed version folders and configs; in
``explicit`` only the repository API's load and unload change anything, and what they loaded
is stored in Redis so every process, restarted or not, comes back with it. Only the holder of
the control lease runs this (one decider per deployment); the autoscaler then scales every
pool the state names.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import redis

from modelgate.autoscaler.rollout import TRAFFIC_OPS, Rollouts
from modelgate.autoscaler.versions import (
    PoolStatus,
    Wanted,
    decide_model,
)
from modelgate.core.pool_figures import FiguresQuery
from modelgate.core.repository import ModelScan, ModelVersion, RepositoryError, scan_model
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


def wanted_from(scan: ModelScan) -> Wanted:
    """What one model folder asks to serve: its policy over the loadable versions, and the
    versions the policy would pick that cannot load (with why)."""
    if scan.error or scan.config is None:
        return Wanted((), None, {}, error=scan.error or "no config")
    loadable = scan.loadable()
    served = scan.served()
    candidates = scan.config.version_policy.select(list(scan.versions))
    broken = {v: scan.versions[v].error for v in candidates if v not in loadable}
    return Wanted(tuple(served), scan.default(served),
                  {v: loadable[v].sha256 for v in served}, broken)


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
    traffic: dict[str, TrafficPolicy] = field(default_factory=dict)
    rollouts: Rollouts = field(init=False)

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
        policy = self.traffic.get(name)
        if policy is not None and policy.default is not None:
            return replace(wanted, default=policy.default)
        scan = self.scans.get(name)
        state = self.states.get(name)
        if scan is not None and scan.config is not None and scan.config.promotion is not None \
                and state is not None and state.default is not None:
            return replace(wanted, default=state.default)
        return wanted

    def _pool_status(self, states: dict[str, ModelState]) -> dict[str, dict[str, PoolStatus]]:
        refs = [(m, v) for m, s in states.items() for v in s.versions]
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
        self._pending[command.id] = _Pending(command, now)
        self._result(command, CommandResult("pending"))
        self._event(ControlEvent(now, command.model, "", command.op, "asked through the API",
                                 command.by))

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
                if want is not None and want.error:
                    result = CommandResult("failed", want.error)
                elif want is not None and state is not None:
                    result = _load_result(name, want, state)
                elif want is not None and not want.served:
                    result = CommandResult("failed", "; ".join(
                        f"version {v}: {reason}" for v, reason in want.broken.items())
                        or f"model {name!r} has no version its version_policy serves")
            if result is not None:
                self._result(pending.command, result)
                del self._pending[command_id]

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
        wanted = self._wanted()
        statuses = self.statuses = self._pool_status(self.states)
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
        for event in events:
            log.info("model %s version %s: %s (%s)", event.model, event.version or "-",
                     event.change, event.reason)
            self._event(event)
        for pool in removed:
            self._remove_pool(pool)
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
