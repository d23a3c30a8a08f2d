"""The scaling loop: observe every pool, decide, apply the budget, scale, and say why.

The pools to scale come from the model state each tick (``set_plans``: every version LOADING,
READY or UNLOADING is a pool). Each tick reads all pools in one Redis round trip, calls the pure
policy per pool, shares the
cost budget across pools, and asks the backend for the resulting counts. Every decision is an
event on the ``mg:autoscaler:events`` stream (inputs and reason), a log line when the count
changes, and the ``modelgate_desired_workers`` gauge (also written to Redis so gateways show
it on their ``/metrics``). The cost budget, when there is one, is written to Redis each tick
too, so the gateway's dashboard can draw the cost rate against it.

Nothing read from Redis can stop the loop: a value that is not what its key holds is skipped,
logged when what is wrong changes and counted (``modelgate_malformed_records_total``); a pool
whose figures Redis refuses to read (a key of another type) is held at the workers it runs,
the others are scaled. A tick that fails for any other reason -- Redis down, the platform
refusing, a bug -- holds everything, is logged and counted
(``modelgate_background_errors_total{task="autoscaler"}``) by whoever runs the ticks
(``decider.py``), and the next one retries.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge

from modelgate.autoscaler.backends.base import Backend, PoolRef
from modelgate.autoscaler.budget import Ask, allocate
from modelgate.autoscaler.observe import Observer
from modelgate.autoscaler.policy import (
    Decision,
    Observation,
    PolicyConfig,
    PolicyState,
    decide,
    job_need,
)
from modelgate.core.store import pools, scaling

log = logging.getLogger("modelgate.autoscaler")


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """One pool under control: which model version the backend runs, its policy and price."""

    ref: PoolRef
    policy: PolicyConfig
    cost_per_hour: float = 1.0
    priority: int = 0  # 0: the model's default version; 1: a candidate or a leaving version

    @property
    def pool(self) -> str:
        return self.ref.pool


@dataclass(frozen=True, slots=True)
class Scaled:
    observation: Observation
    decision: Decision
    desired: int  # after the budget
    capped: bool


class Autoscaler:
    def __init__(self, client: redis.Redis, backend: Backend, plans: list[PoolPlan],
                 max_cost_per_hour: float | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.client = client
        self.backend = backend
        self.max_cost_per_hour = max_cost_per_hour
        self.observer = Observer(client)
        self.plans: dict[str, PoolPlan] = {}
        self.states: dict[str, PolicyState] = {}
        self.last: dict[str, Scaled] = {}
        self.registry = registry or CollectorRegistry()
        self.desired_gauge = Gauge("modelgate_desired_workers", "Workers the autoscaler wants",
                                   ["model", "version"], registry=self.registry)
        self.workers_gauge = Gauge("modelgate_workers", "Worker replicas the backend runs",
                                   ["model", "version"], registry=self.registry)
        self.errors = Counter("modelgate_background_errors",
                              "Ticks that failed (Redis, the backend, a bug) and were retried",
                              ["task"], registry=self.registry).labels("autoscaler")
        self.malformed = Counter("modelgate_malformed_records",
                                 "Values read from Redis that were skipped, not being what "
                                 "their key holds", ["record"], registry=self.registry
                                 ).labels("pool")
        self._problems: dict[str, tuple[str, ...]] = {}  # the last ones logged, per pool
        self.set_plans(plans)

    def set_plans(self, plans: list[PoolPlan]) -> None:
        """Scale these pools from now on; a pool no longer planned is removed from the backend
        (its workers drain; on Kubernetes its Deployment is deleted)."""
        new = {p.pool: p for p in plans}
        for pool, plan in self.plans.items():
            if pool not in new:
                log.info("%s: no longer served; removing its workers", pool)
                self.backend.remove(plan.ref)
                self.states.pop(pool, None)
                for gauge in (self.desired_gauge, self.workers_gauge):
                    with contextlib.suppress(KeyError):
                        gauge.remove(plan.ref.model, plan.ref.version)
        self.plans = new
        for pool in new:
            self.states.setdefault(pool, PolicyState())

    @staticmethod
    def _ask(plan: PoolPlan, desired: int, obs: Observation | None) -> Ask:
        pressure = 0.0
        if obs is not None and plan.policy.slo_p95_ms and obs.latency_p95_ms is not None:
            pressure = obs.latency_p95_ms / plan.policy.slo_p95_ms
        jobs = job_need(obs, plan.policy) if obs is not None else 0
        return Ask(plan.pool, desired, plan.policy.min_workers, plan.cost_per_hour, pressure,
                   plan.priority, max(0, jobs - desired))

    def tick(self, now: float | None = None) -> dict[str, Scaled]:
        now = time.time() if now is None else now
        self.backend.supervise()
        replicas = {pool: self.backend.running(plan.ref) for pool, plan in self.plans.items()}
        observed = self.observer.observe(replicas, now)
        observations = {pool: obs for pool, (obs, _) in observed.items()}
        decisions = {}
        for pool, plan in self.plans.items():
            figures = observed[pool][1]
            self._report(pool, figures.problems)
            if not figures.readable:
                decisions[pool] = Decision(
                    replicas[pool], f"holding at {replicas[pool]}: the pool's figures are "
                    f"unreadable ({'; '.join(figures.problems)})", self.states[pool])
                continue
            decision = decide(observations[pool], self.states[pool], now, plan.policy)
            self.states[pool] = decision.state
            decisions[pool] = decision
        granted = allocate(
            [self._ask(self.plans[p], d.desired, observations[p]) for p, d in decisions.items()],
            self.max_cost_per_hour)
        outcomes = {}
        for pool, decision in decisions.items():
            desired, capped = granted[pool]
            outcomes[pool] = Scaled(observations[pool], decision, desired, capped)
        self._apply(outcomes, now)
        self.last = outcomes
        return outcomes

    def _report(self, pool: str, problems: tuple[str, ...]) -> None:
        """Count every tick that met bad data in a pool; log it when what is wrong changes."""
        if problems:
            self.malformed.inc()
            if self._problems.get(pool) != problems:
                log.warning("%s: skipped bad data (counted in "
                            "modelgate_malformed_records_total): %s", pool, "; ".join(problems))
            self._problems[pool] = problems
        elif self._problems.pop(pool, None) is not None:
            log.warning("%s: reads well again", pool)

    def _apply(self, outcomes: dict[str, Scaled], now: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        for pool, outcome in outcomes.items():
            plan = self.plans[pool]
            obs, decision = outcome.observation, outcome.decision
            reason = decision.reason
            if outcome.desired > decision.desired:
                reason += f"; +{outcome.desired - decision.desired} for batch jobs " \
                          f"({obs.job_chunks} chunks waiting)"
            if outcome.capped:
                reason += (f"; capped by budget at {outcome.desired} "
                           f"({self.max_cost_per_hour:.2f}/h across pools)")
            if outcome.desired != obs.workers:
                log.info("%s: %d -> %d workers: %s", pool, obs.workers, outcome.desired, reason)
                self.backend.scale(plan.ref, outcome.desired)
            self.desired_gauge.labels(plan.ref.model, plan.ref.version).set(outcome.desired)
            self.workers_gauge.labels(plan.ref.model, plan.ref.version).set(obs.workers)
            pipe.set(pools.desired(pool), outcome.desired, ex=scaling.DECISION_TTL_S)
            event = scaling.ScalingEvent(
                time=now, pool=pool, current=obs.workers, desired=outcome.desired,
                reason=reason, raw=decision.raw, capped=outcome.capped,
                panic=decision.panicking, backlog=obs.backlog, arrival_rate=obs.arrival_rate,
                completion_rate=obs.completion_rate, p95_ms=obs.latency_p95_ms,
                service_ms=obs.service_s * 1000 if obs.service_s is not None else None,
                live=obs.live_workers, starting=obs.starting_workers,
                cost_per_hour=outcome.desired * plan.cost_per_hour)
            pipe.xadd(scaling.EVENTS, event.fields(), maxlen=scaling.EVENTS_MAXLEN,
                      approximate=True)
        if self.max_cost_per_hour is None:
            pipe.delete(scaling.BUDGET)
        else:
            pipe.set(scaling.BUDGET, f"{self.max_cost_per_hour:.4f}", ex=scaling.DECISION_TTL_S)
        pipe.execute()
