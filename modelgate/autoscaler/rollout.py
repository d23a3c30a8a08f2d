"""Rollouts on evidence: the promotion gate of every model with a ``promotion:`` rule, run by
the decider after the model decisions of each tick, and the manual overrides
(``modelgate traffic M --promote|--rollback|--pause|--resume``).

Figures come from Redis only: agreement since the candidate loaded (every gateway's counts of
shadowed calls, merged), each pool's per-second counters over the current step (errors, calls,
latency), the candidate's drift alerts, both versions' labelled accuracy since they loaded
(feedback, for the ``max_accuracy_drop`` rule), and whether the budget caps it (this
decider's own last scaling round). A change writes the traffic policy and the gate's state
under a new models generation, so every gateway applies it within a second, and an event with
its inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis

from modelgate.autoscaler.gate import Figures, GateDecision, decide_gate
from modelgate.core.promotion import PromotionConfig
from modelgate.core.repository import ModelScan
from modelgate.core.stats import BUCKET_TTL_S, decode_bucket, percentile_ms, sum_buckets
from modelgate.core.store import drift as drift_store
from modelgate.core.store import feedback as feedback_store
from modelgate.core.store import models as model_store
from modelgate.core.store import pools
from modelgate.core.store import traffic as traffic_store
from modelgate.core.store.models import ControlEvent, ModelState
from modelgate.core.store.traffic import AgreementTally, GateState, TrafficPolicy

log = logging.getLogger("modelgate.autoscaler")

TRAFFIC_OPS = ("promote", "rollback", "pause", "resume")


@dataclass
class Rollouts:
    client: redis.Redis
    capped: Callable[[str], bool] = lambda pool: False  # the budget caps this pool now

    def candidate_of(self, state: ModelState) -> str | None:
        """The highest READY version above the serving one."""
        if state.default is None:
            return None
        above = [v for v in state.ready() if int(v) > int(state.default)]
        return max(above, key=int) if above else None

    def tick(self, states: dict[str, ModelState], scans: dict[str, ModelScan],
             traffic: dict[str, TrafficPolicy], now: float) -> list[ControlEvent]:
        events: list[ControlEvent] = []
        for name, state in sorted(states.items()):
            scan = scans.get(name)
            if scan is None or scan.config is None or scan.config.promotion is None:
                continue
            config = scan.config.promotion
            gate = self._gate(name)
            candidate = self.candidate_of(state)
            policy = traffic.get(name)
            sticky = policy.sticky_header if policy is not None else None
            figures = (self.figures(name, state.default, candidate, gate, scan, now)
                       if state.default and candidate else Figures())
            decision = decide_gate(config, gate, state.default, candidate, figures, sticky,
                                   now)
            if policy is not None and gate is not None and gate.status == "running" and \
                    policy.by != "gate" and policy.time > gate.time:
                # A person set the traffic while the gate ran: the gate stands back.
                decision = GateDecision(gate.moved(status="paused", time=now, reason=(
                    f"paused: {policy.by} changed the traffic by hand")), None,
                    f"paused: {policy.by} changed the traffic by hand")
            changed = decision.state != gate or decision.policy is not None
            if changed and self._write(name, decision, now) and decision.event:
                events.append(ControlEvent(now, name, candidate or "", "gate", decision.event,
                                           "gate"))
        return events

    def command(self, name: str, op: str, state: ModelState | None, config: PromotionConfig
                | None, traffic: TrafficPolicy | None, by: str, now: float) -> str:
        """A person's override; returns what was done (raises ValueError when it cannot)."""
        if state is None or state.default is None:
            raise ValueError(f"model {name!r} has no serving version")
        gate = self._gate(name)
        sticky = traffic.sticky_header if traffic is not None else None
        candidate = gate.candidate if gate is not None else self.candidate_of(state)
        if op == "promote":
            target = candidate or self.candidate_of(state)
            if target is None or target not in state.ready():
                raise ValueError(f"model {name!r} has no READY candidate to promote")
            reason = f"version {target} promoted by {by}"
            policy = TrafficPolicy({}, None, sticky, target, by, reason, now)
            moved = (gate.moved(status="promoted", reason=reason, time=now) if gate is not None
                     else GateState(state.default, target, 0, now, "promoted", reason, now))
            self._write(name, GateDecision(moved, policy, reason), now)
            return reason
        if op == "rollback":
            serving = gate.serving if gate is not None else state.default
            reason = f"rolled back to version {serving} by {by}"
            policy = TrafficPolicy({}, None, sticky, serving, by, reason, now)
            self._write(name, GateDecision(
                gate.moved(status="rolled_back", reason=reason, time=now)
                if gate is not None else None, policy, reason), now)
            return reason
        if gate is None:
            raise ValueError(f"model {name!r} has no promotion gate running"
                             + ("" if config is not None else " (its config has no promotion "
                                "rule)"))
        status = "paused" if op == "pause" else "running"
        reason = f"{'paused' if op == 'pause' else 'resumed'} by {by}"
        self._write(name, GateDecision(gate.moved(status=status, reason=reason, time=now,
                                                  step_started=(now if op == "resume" else
                                                                gate.step_started)),
                                       None, reason), now)
        return reason

    def _gate(self, name: str) -> GateState | None:
        raw = self.client.get(traffic_store.gate(name))
        if raw is None:
            return None
        try:
            return GateState.decode(raw)
        except traffic_store.PolicyError as e:
            log.warning("the gate state of %s is unreadable (%s); starting afresh", name, e)
            return None

    def _write(self, name: str, decision: GateDecision, now: float) -> bool:
        """The gate's state and the new traffic, under a new generation (so every gateway
        re-reads); False when the generation moved meanwhile (the next tick decides again)."""
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(model_store.GENERATION)
                generation = int(pipe.get(model_store.GENERATION) or 0)
                pipe.multi()
                if decision.state is not None:
                    pipe.set(traffic_store.gate(name), decision.state.encode())
                if decision.policy is not None:
                    policy = decision.policy
                    if not policy.time:
                        policy = TrafficPolicy(policy.weights, policy.shadow,
                                               policy.sticky_header, policy.default, policy.by,
                                               policy.reason, now)
                    pipe.set(traffic_store.policy(name), policy.encode())
                    pipe.set(model_store.GENERATION, generation + 1)
                pipe.execute()
            except redis.WatchError:
                return False
        if decision.event:
            log.info("model %s: %s", name, decision.event)
        return True

    def figures(self, name: str, serving: str, candidate: str, gate: GateState | None,
                scan: ModelScan, now: float) -> Figures:
        """The pair's figures: agreement since the candidate loaded, both pools' counters over
        the current step (at most the counters' lifetime), the candidate's drift."""
        started = gate.step_started if gate is not None and gate.candidate == candidate else now
        first = int(max(started, now - BUCKET_TTL_S + 5))
        seconds = range(first, int(now) + 1)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(traffic_store.agreement(name, serving, candidate, "total"))
        for version in (serving, candidate):
            for second in seconds:
                pipe.hgetall(pools.stats(pools.pool_id(name, version), second))
        pipe.xrevrange(drift_store.alerts(pools.pool_id(name, candidate)), count=200)
        for version in (candidate, serving):
            pipe.hmget(feedback_store.quality(name, version), "n", "correct")
        results = pipe.execute()
        (candidate_n, candidate_correct), (serving_n, serving_correct) = (
            (_count(n), _count(correct)) for n, correct in results[-2:])
        results = results[:-2]
        tally = AgreementTally.parse(results[0])
        size = len(seconds)
        serving_stats = sum_buckets(decode_bucket(b) for b in results[1:1 + size])
        candidate_stats = sum_buckets(decode_bucket(b) for b in results[1 + size:1 + 2 * size])
        summary = tally.summary()
        outputs = {o.name for o in scan.loadable()[candidate].outputs} \
            if candidate in scan.loadable() else set()
        return Figures(
            agreement_n=tally.n, top1=_number(summary["top1"]),
            mean_abs_delta=_number(summary["mean_abs_delta"]),
            candidate_calls=int(candidate_stats.get("completed", 0)),
            candidate_errors=int(candidate_stats.get("errors", 0)),
            serving_calls=int(serving_stats.get("completed", 0)),
            serving_errors=int(serving_stats.get("errors", 0)),
            candidate_p99_ms=percentile_ms(candidate_stats, 0.99),
            serving_p99_ms=percentile_ms(serving_stats, 0.99),
            drift_alert=_predictions_drift(results[-1], outputs),
            capped=self.capped(pools.pool_id(name, candidate)),
            candidate_labelled=candidate_n, candidate_correct=candidate_correct,
            serving_labelled=serving_n, serving_correct=serving_correct)


def _count(raw: bytes | None) -> int:
    """A counter of the quality totals (a float hash field); 0 when absent or unreadable."""
    try:
        return int(float(raw)) if raw is not None else 0
    except ValueError:
        return 0


def _number(value: float | int | None) -> float | None:
    return float(value) if value is not None else None


def _predictions_drift(entries: list[tuple[bytes, dict[bytes, bytes]]],
                       outputs: set[str]) -> bool:
    """Whether a drift alert stands on one of the version's outputs (its predictions)."""
    latest: dict[str, str] = {}
    for _, fields in entries:  # newest first
        alert = drift_store.DriftAlert.parse(fields)
        if alert is not None:
            latest.setdefault(alert.feature, alert.statistic)
    return any(statistic != "cleared" and (feature in outputs or feature.split("[")[0] in outputs)
               for feature, statistic in latest.items())
