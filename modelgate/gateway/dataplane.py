"""The handler layer between HTTP routes and the queue; it knows nothing about HTTP.

It resolves models and versions (``serving.ServingTable``), applies admission control,
enqueues through the dispatcher, turns error replies into domain errors, and keeps a view of
each pool (live and starting workers, backlog, drain rate) refreshed from Redis by a monitor
task, so neither readiness nor admission costs a Redis call per request. The same refresh
notices a new generation of the served models' state, applies it, and tells the decider which
generation this gateway applied once nothing admitted under the previous one is left unsent.

Its background tasks (the dispatcher's writer and reader, the pool monitor, the drift poller)
run under one supervisor (``gateway/background.py``). What they read from Redis is checked
value by value: a value that is not what its key holds is logged, counted
(``modelgate_malformed_records_total``) and skipped -- a pool whose figures Redis refuses to
read (a key of another type) keeps its last reading -- and is never taken for a Redis outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from modelgate.core import wire
from modelgate.core.arena import open_arena
from modelgate.core.batching import BatchPlan
from modelgate.core.errors import (
    BackendUnavailable,
    ModelFailed,
    NoLiveWorker,
    Overloaded,
)
from modelgate.core.pool_figures import FiguresQuery
from modelgate.core.prediction import PredictionSpec, spec_for
from modelgate.core.redis_checks import OUT_OF_MEMORY
from modelgate.core.repository import ModelVersion
from modelgate.core.settings import GatewaySettings
from modelgate.core.stats import BUCKET_TTL_S
from modelgate.core.store import is_bad_data, pools, scaling
from modelgate.core.store import models as model_store
from modelgate.core.store import traffic as traffic_store
from modelgate.core.store.models import ModelState, VersionStatus
from modelgate.core.trace import tracer
from modelgate.gateway import serving
from modelgate.gateway.background import Background
from modelgate.gateway.dispatch import Dispatcher
from modelgate.gateway.drift import DriftMonitor
from modelgate.gateway.errors import ERROR_OF_REPLY
from modelgate.gateway.feedback import Feedback
from modelgate.gateway.metrics import Metrics
from modelgate.gateway.shadow import Mirror

log = logging.getLogger("modelgate.gateway")

WAIT_POLL_S = 0.05
MONITOR, DRIFT, FEEDBACK = "pool-monitor", "drift", "feedback"


@dataclass(slots=True)
class PoolView:
    """A pool as this gateway sees it: the shared gauges at the last refresh, and what this
    gateway itself did since."""

    gauges: pools.PoolGauges = field(default_factory=lambda: pools.PoolGauges(0, 0, 0, None))
    admitted: int = 0  # requests this gateway queued since the last refresh
    rejected: int = 0  # requests this gateway refused (429) since the last refresh
    completed: int = 0  # replies this gateway got since the last refresh
    drain_per_s: float = 0.0  # smoothed completion rate seen by this gateway
    plan: BatchPlan | None = None  # the batch sizes its workers tuned, once one published

    @property
    def live_workers(self) -> int:
        return self.gauges.live_workers

    @property
    def starting_workers(self) -> int:
        return self.gauges.starting_workers

    @property
    def backlog(self) -> int:
        """Requests queued and not yet answered, as of the last refresh."""
        return self.gauges.backlog

    @property
    def desired(self) -> int | None:
        return self.gauges.desired


class DataPlane:
    def __init__(self, settings: GatewaySettings, client: aioredis.Redis,
                 reader: aioredis.Redis, gateway_id: str, metrics: Metrics) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.background = Background(lambda name: metrics.background_errors.labels(name).inc())
        self.dispatcher = Dispatcher(client, reader, gateway_id, metrics,
                                     open_arena(settings.payload_arena_mb))
        # Stage timestamps of every call, only with --trace-dir (modelgate.core.trace).
        self.tracer = tracer(settings.trace_dir, "gateway")
        self._specs: dict[tuple[str, str], PredictionSpec] = {}
        self.mirrors = Mirror(self.dispatcher, metrics, self.spec_of)
        self.drift = DriftMonitor(metrics)
        self.feedback = Feedback(client, metrics, self.spec_of, self.versions_of)
        self.redis_ok = False
        self.redis_problem = "the queue (Redis) is unreachable"  # why, while not redis_ok
        self._outage = False  # Redis was reachable once and then was not
        # Until the decider's state is read: the repository as it is now (no decider at all).
        self.table = serving.from_repository(settings.models_dir)
        self.decider_mode: str | None = None  # the live decider's control mode; None: none
        self._acknowledged: int | None = None  # the generation to tell the decider about
        self.pools: dict[str, PoolView] = {}
        self._apply(self.table)
        # Called with the refresh's time after each refresh that reached Redis (the
        # dashboard's gauge history); a hook must be quick. One that raises is logged and
        # counted as the task "dashboard", and the refresh goes on.
        self.on_refresh: list[Callable[[float], None]] = []
        self._refreshed_at = time.monotonic()
        self._problems: dict[str, tuple[str, ...]] = {}  # the last ones logged, per record

    @property
    def models(self) -> dict[str, serving.ServedModel]:
        return self.table.models

    async def start(self) -> None:
        await self.refresh()
        self.dispatcher.start(self.background)
        self.background.start(MONITOR, self._monitor_loop)
        # Drift is a side view: restarted when it dies, it never takes the gateway out of
        # service.
        self.background.start(DRIFT, self._drift_loop, critical=False)
        # Stored answers and quality gauges: a side store, never a reason to stop serving.
        self.background.start(FEEDBACK, lambda: self.feedback.run(lambda: list(self.models)),
                              critical=False)

    async def stop(self) -> None:
        await self.background.stop((MONITOR, DRIFT, FEEDBACK))
        with contextlib.suppress(RedisError, OSError):
            await self.feedback.flush()  # what was answered before the stop
        await self.dispatcher.stop()

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        return self.table.resolve(name, version)

    def route(self, name: str, version: str | None,
              headers: Mapping[str, str]) -> serving.Routed:
        """A pinned call goes to its version; an unpinned one by the model's traffic policy
        (its sticky header's value keeps a session on one version)."""
        if version is not None:
            return serving.Routed(self.table.resolve(name, version), "serving")
        model = self.models.get(name)
        if model is None:
            self.table.resolve(name)  # raises the model's not-found error
        assert model is not None
        if model.default is None:
            self.table.resolve(name)  # raises why no version is ready
        sticky = model.traffic.sticky_header if model.traffic is not None else None
        return model.route(headers.get(sticky) if sticky else None)

    def mirror(self, primary: ModelVersion, candidate: ModelVersion, request: wire.Request,
               answer: wire.Reply) -> None:
        """Send a copy of an answered call to a candidate (a shadow), after the answer."""
        self.mirrors.send(primary, candidate, request, answer, self._shadow_admitted)

    def _shadow_admitted(self, candidate: ModelVersion) -> bool:
        """Shadow copies go first under load: only to a live candidate with room, from a
        gateway with room."""
        view = self.pools.get(candidate.pool)
        if not self.redis_ok or view is None or view.live_workers == 0:
            return False
        limit = candidate.config.max_queue or self.settings.max_queue
        if view.backlog + view.admitted - view.completed >= limit // 2:
            return False
        if self.dispatcher.in_flight >= self.settings.max_inflight // 2:
            return False
        view.admitted += 1  # its arrivals are the candidate's (its autoscaling, its cost)
        return True

    def _shadowed_pairs(self) -> list[tuple[str, str, str]]:
        """(model, serving, candidate) of every model mirroring calls now."""
        pairs = []
        for model in self.models.values():
            mirror = model.traffic.shadow if model.traffic is not None else None
            if mirror is not None and model.state.default is not None:
                pairs.append((model.name, model.state.default, mirror.version))
        return pairs

    def versions_of(self, name: str) -> dict[str, ModelVersion]:
        """The versions of a model this gateway serves (none for an unknown model)."""
        model = self.models.get(name)
        if model is None:
            return {}
        return {number: sv.version for number, sv in model.versions.items()
                if sv.version is not None}

    def spec_of(self, version: ModelVersion) -> PredictionSpec:
        """What the prediction of a version is (``core/prediction.py``), derived once."""
        key = (version.pool, version.sha256)
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = spec_for(version)
        return spec

    def shown_pools(self) -> list[tuple[str, str, str]]:
        """(model, version, pool) of every version with a pool, by model and version."""
        return [(name, number, sv.version.pool)
                for name, model in sorted(self.models.items())
                for number, sv in sorted(model.versions.items(), key=lambda kv: int(kv[0]))
                if sv.version is not None and sv.version.pool in self.pools]

    def gauges(self, pool: str) -> pools.PoolGauges:
        return self.pools[pool].gauges

    def model_ready(self, model: ModelVersion) -> bool:
        view = self.pools.get(model.pool)
        return self.redis_ok and view is not None and view.live_workers > 0

    def ready(self) -> bool:
        """Every model with a default version can serve it right now, none is still loading
        its first version, and no critical background task is down (``background.down``)."""
        if not self.redis_ok or self.background.down():
            return False
        for model in self.models.values():
            default = model.default
            if default is None:
                if any(sv.state.status == VersionStatus.LOADING
                       for sv in model.versions.values()):
                    return False
            elif not self.model_ready(default):
                return False
        return True

    def _admit(self, model: ModelVersion, view: PoolView) -> None:
        """429 at once past the in-flight cap or the model's backlog limit."""
        limit = model.config.max_queue or self.settings.max_queue
        # The queued count at the last refresh, plus what this gateway queued since, minus
        # what it got answers for since: answered entries are deleted from the stream. Without
        # the answers, a pool draining faster than max_queue per refresh interval is refused
        # with its queue nearly empty.
        backlog = max(0, view.backlog + view.admitted - view.completed)
        if backlog >= limit:
            view.rejected += 1
            raise Overloaded(
                f"model {model.name!r} has {backlog} requests queued, its limit is {limit}; "
                "retry after the Retry-After seconds or add workers",
                self._retry_after_s(backlog, view))
        if self.dispatcher.in_flight >= self.settings.max_inflight:
            view.rejected += 1
            raise Overloaded(
                f"this gateway is waiting on {self.dispatcher.in_flight} requests, its limit; "
                "retry after the Retry-After seconds", self._retry_after_s(backlog, view))

    @staticmethod
    def _retry_after_s(backlog: int, view: PoolView) -> int:
        """Seconds for the backlog to drain at the observed rate (1..60)."""
        if view.drain_per_s <= 0:
            return 1
        return max(1, min(60, math.ceil(backlog / view.drain_per_s)))

    async def _wait_for_worker(self, model: ModelVersion, deadline_ms: int) -> None:
        """Return once a worker is live; wait for a starting one while the deadline allows;
        with none starting, go ahead only while a live decider will start one (its autoscaler
        sees the backlog), else 503 at once: a call never waits for a worker nobody starts."""
        view = self.pools[model.pool]
        while True:
            if not self.redis_ok:
                raise BackendUnavailable(
                    f"{self.redis_problem}; the request was not queued, retry shortly")
            if view.live_workers > 0:
                return
            if view.starting_workers == 0:
                if self.decider_mode is not None:
                    return  # scale from zero: the backlog wakes the autoscaler
                raise NoLiveWorker(
                    f"no live worker serves model {model.name!r} version {model.version} and "
                    f"no autoscaler runs to start one; start one with `modelgate worker "
                    f"--model {model.name} --version {model.version}`, or run the autoscaler")
            if time.time() * 1000 >= deadline_ms:
                raise NoLiveWorker(
                    f"no live worker serves model {model.name!r} version {model.version}, and "
                    "none started before the deadline; retry, or raise parameters.timeout_ms")
            await asyncio.sleep(WAIT_POLL_S)

    async def infer(self, model: ModelVersion, request: wire.Request,
                    timeout_ms: int, marks: dict[str, object] | None = None,
                    store: str = "") -> wire.Reply:
        """The call's reply; with ``store`` (``Feedback.keep``), its worker stores the answer
        under it for feedback."""
        deadline_ms = int(time.time() * 1000) + timeout_ms
        view = self.pools[model.pool]
        if not (self.redis_ok and view.live_workers > 0):
            await self._wait_for_worker(model, deadline_ms)
        self._admit(model, view)
        view.admitted += 1
        future = self.dispatcher.submit(model.pool, request, deadline_ms, model.max_batch_size,
                                        marks, store)
        reply = await future
        view.completed += 1
        # After this call's answer is written (the rest of this step), not before it.
        self.metrics.later(self.metrics.observe_reply, model.name, model.version, reply)
        if reply.status != wire.ReplyStatus.OK:
            raise ERROR_OF_REPLY.get(reply.status, ModelFailed)(reply.error)
        return reply

    async def refresh(self) -> None:
        """Pool views from Redis, this gateway's arrival counts to it, and what it applied, in
        one round trip (a second one only when the served models changed)."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        query = FiguresQuery(list(self.pools), now, rates=False)
        query.queue(pipe)
        pipe.get(scaling.BUDGET)
        pipe.get(model_store.GENERATION)
        pipe.get(model_store.LEASE)
        shadowed = self._shadowed_pairs()
        for pair in shadowed:
            pipe.hgetall(traffic_store.agreement(*pair, "total"))
        if self._acknowledged is not None:
            pipe.set(model_store.gateway_applied(self.gateway_id), self._acknowledged,
                     ex=int(model_store.GATEWAY_TTL_S))
        self.mirrors.flush(pipe, now)
        flushed = {pool: (view.admitted, view.rejected) for pool, view in self.pools.items()}
        for pool, (admitted, rejected) in flushed.items():
            if admitted or rejected:
                bucket = pools.stats(pool, int(now))
                pipe.hincrby(bucket, "arrivals", admitted)
                pipe.hincrby(bucket, "rejected", rejected)
                pipe.expire(bucket, BUCKET_TTL_S)
        try:
            # Refused commands come back as results: a key holding the wrong type is bad data
            # in one pool, not Redis being down.
            results = await pipe.execute(raise_on_error=False)
            refused = next((r for r in results if isinstance(r, ResponseError)
                            and not is_bad_data(r)), None)
            if refused is not None:
                raise refused
            budget, generation, lease = results[query.size:query.size + 3]
            agreements = results[query.size + 3:query.size + 3 + len(shadowed)]
            generation_number = self._generation_of(generation)
            if generation_number is not None and generation_number != self.table.generation:
                await self._reload(generation_number)
        except (RedisError, OSError) as e:
            # At maxmemory Redis refuses this round's counters: no answer can be written either.
            full = isinstance(e, OutOfMemoryError)
            self.redis_problem = OUT_OF_MEMORY if full else "the queue (Redis) is unreachable"
            if self.redis_ok:
                log.warning("redis unavailable: %s", self.redis_problem if full else e)
            self.redis_ok = False
            self._outage = True
            failed = self.dispatcher.fail_all(BackendUnavailable(
                f"{self.redis_problem} (the request was waiting for its answer: it may or may "
                "not have run); retry shortly"))
            if failed:
                log.warning("failed %d waiting requests with 503", failed)
            return
        if self._outage:
            log.warning("redis reachable again")
            self._outage = False
        self.redis_ok = True
        self.decider_mode = self._lease_mode(lease)
        if self.table.generation is not None and self.dispatcher.idle:
            # Nothing admitted under an earlier generation is left to send: the next refresh
            # tells the decider, which then may remove the pools this generation left.
            self._acknowledged = self.table.generation
        elapsed_s = max(time.monotonic() - self._refreshed_at, 1e-3)
        self._refreshed_at = time.monotonic()
        for pool, figures in query.parse(results).items():
            view = self.pools.get(pool)
            if view is None:
                continue  # left in the reload above
            self._report("pool", pool, figures.problems)
            if figures.readable:
                view.gauges = figures.gauges
            if figures.plan is not None:
                view.plan = figures.plan
                self.dispatcher.run_caps[pool] = figures.plan.max_batch_size
            view.admitted -= flushed[pool][0]
            view.rejected -= flushed[pool][1]
            rate = view.completed / elapsed_s
            view.drain_per_s = (rate if view.drain_per_s == 0
                                else 0.7 * view.drain_per_s + 0.3 * rate)
            view.completed = 0
        for pair, raw in zip(shadowed, agreements, strict=True):
            if isinstance(raw, dict):
                summary = traffic_store.AgreementTally.parse(raw).summary()
                for stat, value in summary.items():
                    if value is not None:
                        self.metrics.agreement.labels(*pair, stat).set(value)
        flush_errors = [r for r in results[query.size + 3 + len(shadowed):]
                        if isinstance(r, Exception)]
        self._report("stats", "this gateway's counts", tuple(str(r) for r in flush_errors[:1]))
        for model in self.models.values():
            for served in model.versions.values():
                version = served.version
                view = self.pools.get(version.pool) if version is not None else None
                if version is None or view is None:
                    continue
                labels = (model.name, version.version)
                self.metrics.workers.labels(*labels).set(view.live_workers)
                self.metrics.queue_depth.labels(*labels).set(view.backlog)
                if view.desired is not None:
                    self.metrics.desired_workers.labels(*labels).set(view.desired)
                    self.metrics.cost_per_hour.labels(*labels).set(
                        view.desired * version.config.worker_cost_per_hour)
        budget_value = None if isinstance(budget, Exception) else scaling.budget_from(budget)
        self._report("budget", scaling.BUDGET, () if budget_value is not None or budget is None
                     else (f"{budget!r:.60} is not a budget",))
        if budget_value is not None:
            self.metrics.budget_per_hour.set(budget_value)
        for hook in self.on_refresh:
            try:
                hook(now)
            except Exception:  # a view of the gauges; never the monitor that keeps them
                log.exception("a refresh hook failed")
                self.metrics.background_errors.labels("dashboard").inc()

    def _report(self, record: str, where: str, problems: tuple[str, ...]) -> None:
        """Count every refresh that met bad data; log it when what is wrong changes, so a key
        that stays bad is one log line, not two a second."""
        key = f"{record}:{where}"
        if problems:
            self.metrics.malformed_records.labels(record).inc()
            if self._problems.get(key) != problems:
                log.warning("skipped bad data in %s %s (counted in "
                            "modelgate_malformed_records_total): %s", record, where,
                            "; ".join(problems))
        elif key in self._problems:
            log.warning("%s %s reads well again", record, where)
        if problems:
            self._problems[key] = problems
        else:
            self._problems.pop(key, None)

    def _generation_of(self, raw: object) -> int | None:
        """The generation of the served models' state as read, or None (absent, or bad data:
        then the models served stay as they are)."""
        problem = ""
        number = None
        if isinstance(raw, Exception):
            problem = f"Redis refused the read ({raw})"
        elif raw is not None:
            try:
                number = int(raw)  # type: ignore[call-overload]
            except ValueError:
                problem = f"{raw!r:.60} is not a generation"
        self._report("models", model_store.GENERATION, (problem,) if problem else ())
        return number

    def _lease_mode(self, raw: object) -> str | None:
        """The live decider's control mode from its lease, or None (none, or bad data)."""
        try:
            if isinstance(raw, Exception):
                raise ValueError(f"Redis refused the read ({raw})")
            mode = model_store.lease_mode(raw)  # type: ignore[arg-type]
        except (ValueError, UnicodeDecodeError) as e:
            self._report("models", model_store.LEASE, (str(e),))
            return None
        self._report("models", model_store.LEASE, ())
        return mode

    async def _reload(self, generation: int) -> None:
        """Read the decider's state of every model and serve it from now on; with bad data in
        the set of models, keep serving what this gateway served."""
        try:
            members = await self.client.smembers(model_store.MODELS)
            names = sorted(n.decode() for n in members)
            raw = await self.client.mget([model_store.state(n) for n in names]) if names else []
            policies = (await self.client.mget([traffic_store.policy(n) for n in names])
                        if names else [])
        except (ResponseError, UnicodeDecodeError) as e:
            if isinstance(e, ResponseError) and not is_bad_data(e):
                raise
            self._report("models", model_store.MODELS, (f"unreadable: {e}",))
            return
        self._report("models", model_store.MODELS, ())
        states = {}
        for name, value in zip(names, raw, strict=True):
            if value is None:
                continue
            try:
                states[name] = ModelState.decode(value)
            except model_store.StateError as e:
                log.warning("the state of model %s is unreadable (%s); keeping what this "
                            "gateway served of it", name, e)
                old = self.models.get(name)
                if old is not None:
                    states[name] = old.state
        traffic: dict[str, traffic_store.TrafficPolicy] = {}
        for name, value in zip(names, policies, strict=True):
            if value is None:
                continue
            try:
                traffic[name] = traffic_store.TrafficPolicy.decode(value)
            except traffic_store.PolicyError as e:
                log.warning("the traffic policy of %s is unreadable (%s); its unpinned calls go "
                            "to its default version", name, e)
        # Signatures come from the repository's files: off the event loop.
        table = await asyncio.to_thread(serving.from_states, states, generation,
                                        serving.loader(self.settings.models_dir), self.table,
                                        traffic)
        self._apply(table)
        log.info("serving model state generation %d: %s", generation, ", ".join(
            f"{m.name} {sorted(m.state.versions, key=int)} default {m.state.default}"
            for m in table.models.values()) or "no model")

    def _apply(self, table: serving.ServingTable) -> None:
        """Serve ``table``: a view per pool it has (calls in flight keep theirs), drift per
        version with a profile."""
        gone = [pool for pool in self.pools if pool not in set(table.pools())]
        for pool in gone:
            model, version = pool.rsplit(":", 1)
            self.metrics.forget_pool(model, version)
        self.table = table
        self._specs.clear()
        wanted = table.pools()
        self.pools = {pool: self.pools.get(pool) or PoolView() for pool in wanted}
        self.drift.sync([sv.version for m in table.models.values()
                         for sv in m.versions.values()
                         if sv.version is not None and sv.version.pool in self.pools])

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.monitor_interval_s)
            await self.refresh()

    async def _drift_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.monitor_interval_s)
            if not self.redis_ok:
                continue
            try:
                await self.drift.poll(self.client)
            except (RedisError, OSError) as e:
                log.warning("drift batches unreadable this round: %s", e)
