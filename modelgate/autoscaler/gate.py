"""The promotion gate: a pure function over a model's promotion rule, the gate's state, the
figures of the serving version and its candidate, and ``now``. The model control loop reads the
figures, calls :func:`decide_gate` and writes the traffic policy and state it returns.

A candidate is the highest READY version above the serving one (the default). The gate puts it
through the rule's steps (shadow, then shares of the calls) and rolls it back -- weight 0,
shadow off, the serving version the default -- at the first evaluation where a rule breaks with
enough samples to judge; it makes it the default once the last step is passed. A rolled-back
candidate stays loaded at weight 0 until a person acts (``modelgate traffic``); the gate never
starts it again by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelgate.core.promotion import PromotionConfig, Step
from modelgate.core.store.traffic import GateState, Shadow, TrafficPolicy


@dataclass(frozen=True, slots=True)
class Figures:
    """What the gate judges, for one (serving, candidate) pair."""

    agreement_n: int = 0  # shadowed rows compared since the candidate loaded
    top1: float | None = None
    mean_abs_delta: float | None = None
    candidate_calls: int = 0  # answered by the candidate in this step (shadow copies too)
    candidate_errors: int = 0
    serving_calls: int = 0  # answered by the serving version in the same window
    serving_errors: int = 0
    candidate_p99_ms: float | None = None
    serving_p99_ms: float | None = None
    drift_alert: bool = False  # on the candidate's predictions
    capped: bool = False  # the budget gives the candidate fewer workers than it needs
    # Labelled rows (feedback) since each version loaded, and how many it got right.
    candidate_labelled: int = 0
    candidate_correct: int = 0
    serving_labelled: int = 0
    serving_correct: int = 0

    def accuracies(self) -> tuple[float | None, float | None]:
        return (self.candidate_correct / self.candidate_labelled
                if self.candidate_labelled else None,
                self.serving_correct / self.serving_labelled if self.serving_labelled else None)

    def error_rates(self) -> tuple[float, float]:
        return (self.candidate_errors / self.candidate_calls if self.candidate_calls else 0.0,
                self.serving_errors / self.serving_calls if self.serving_calls else 0.0)

    def describe(self) -> str:
        candidate_rate, serving_rate = self.error_rates()
        parts = [f"n {self.agreement_n}"]
        if self.top1 is not None:
            parts.append(f"top1 {self.top1:.4f}")
        if self.mean_abs_delta is not None:
            parts.append(f"mean |delta| {self.mean_abs_delta:.4g}")
        parts.append(f"errors {candidate_rate:.2%} vs {serving_rate:.2%} over "
                     f"{self.candidate_calls} calls")
        if self.candidate_p99_ms is not None and self.serving_p99_ms is not None:
            parts.append(f"p99 {self.candidate_p99_ms:.1f} vs {self.serving_p99_ms:.1f} ms")
        if self.drift_alert:
            parts.append("drift alert")
        candidate_accuracy, serving_accuracy = self.accuracies()
        if candidate_accuracy is not None and serving_accuracy is not None:
            parts.append(f"labelled accuracy {candidate_accuracy:.4f} vs "
                         f"{serving_accuracy:.4f} over {self.candidate_labelled} and "
                         f"{self.serving_labelled} rows")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class GateDecision:
    state: GateState | None
    policy: TrafficPolicy | None  # to write (None: leave the stored one)
    event: str  # what happened, with the figures and thresholds ("" when nothing did)


def step_policy(serving: str, candidate: str, step: Step, sticky: str | None) -> TrafficPolicy:
    """The traffic of a step: a shadow step mirrors its share and routes nothing to the
    candidate; a weight step routes its share and mirrors the rest (agreement keeps coming)."""
    if step.shadow:
        return TrafficPolicy({}, Shadow(candidate, step.shadow), sticky, serving, "gate",
                             f"candidate {candidate}: {step.describe()}")
    return TrafficPolicy({serving: 100 - step.weight, candidate: step.weight},
                         Shadow(candidate, 100.0), sticky, serving, "gate",
                         f"candidate {candidate}: {step.describe()}")


def rolled_back(serving: str, sticky: str | None, reason: str) -> TrafficPolicy:
    return TrafficPolicy({}, None, sticky, serving, "gate", reason)


def broken_rule(config: PromotionConfig, figures: Figures) -> str | None:
    """The first rule the figures break, with enough samples to judge it; None if none."""
    rules = config.rules
    if figures.agreement_n >= rules.min_samples:
        if rules.min_agreement is not None and figures.top1 is not None \
                and figures.top1 < rules.min_agreement:
            return f"agreement {figures.top1:.4f} < {rules.min_agreement}"
        if rules.max_mean_abs_delta is not None and figures.mean_abs_delta is not None \
                and figures.mean_abs_delta > rules.max_mean_abs_delta:
            return (f"mean |delta| {figures.mean_abs_delta:.4g} > "
                    f"{rules.max_mean_abs_delta}")
    if figures.candidate_calls >= rules.min_samples:
        candidate_rate, serving_rate = figures.error_rates()
        if candidate_rate > serving_rate + rules.max_error_rate_increase:
            return (f"error rate {candidate_rate:.2%} > the serving version's "
                    f"{serving_rate:.2%} + {rules.max_error_rate_increase:.2%}")
        if rules.max_p99_ratio is not None and figures.candidate_p99_ms is not None \
                and figures.serving_p99_ms is not None and figures.candidate_p99_ms > \
                rules.max_p99_ratio * figures.serving_p99_ms:
            return (f"p99 {figures.candidate_p99_ms:.1f} ms > {rules.max_p99_ratio} x the "
                    f"serving version's {figures.serving_p99_ms:.1f} ms")
    if rules.no_drift_alert and figures.drift_alert:
        return "a drift alert on the candidate's predictions"
    if rules.max_accuracy_drop is not None and min(
            figures.candidate_labelled, figures.serving_labelled) >= rules.min_labelled:
        candidate_accuracy, serving_accuracy = figures.accuracies()
        assert candidate_accuracy is not None and serving_accuracy is not None
        if candidate_accuracy < serving_accuracy - rules.max_accuracy_drop:
            return (f"labelled accuracy {candidate_accuracy:.4f} < the serving version's "
                    f"{serving_accuracy:.4f} - {rules.max_accuracy_drop}")
    return None


def decide_gate(config: PromotionConfig, gate: GateState | None, serving: str | None,
                candidate: str | None, figures: Figures, sticky: str | None,
                now: float) -> GateDecision:
    """The gate's next state and traffic. ``serving`` is the default, ``candidate`` the
    highest READY version above it (None: nothing to judge)."""
    if serving is None or candidate is None:
        return GateDecision(gate, None, "")
    if gate is None or gate.candidate != candidate or gate.serving != serving:
        if gate is not None and gate.candidate == candidate and gate.status == "rolled_back":
            return GateDecision(gate, None, "")  # a person decides what happens next
        first = config.steps[0]
        state = GateState(serving, candidate, 0, now, "running",
                          f"step 1 of {len(config.steps)}: {first.describe()}", now)
        return GateDecision(state, step_policy(serving, candidate, first, sticky),
                            f"candidate {candidate} enters step 1: {first.describe()}")
    if gate.status != "running":
        return GateDecision(gate, None, "")
    broken = broken_rule(config, figures)
    if broken is not None:
        reason = (f"rolled back at step {gate.step + 1} ({config.steps[gate.step].describe()}):"
                  f" {broken} [{figures.describe()}]")
        return GateDecision(gate.moved(status="rolled_back", reason=reason, time=now),
                            rolled_back(serving, sticky, reason), reason)
    step = config.steps[gate.step]
    elapsed = now - gate.step_started
    if figures.capped:
        reason = (f"waiting at step {gate.step + 1}: the budget gives the candidate fewer "
                  "workers than it needs; the serving version is served first")
        return GateDecision(gate.moved(reason=reason, time=now), None,
                            reason if gate.reason != reason else "")
    # With a quality rule, a step that sends the candidate calls (whose answers get labels;
    # shadow copies do not) waits for enough labels to judge it.
    labelled = (config.rules.max_accuracy_drop is None or not step.weight or
                min(figures.candidate_labelled, figures.serving_labelled)
                >= config.rules.min_labelled)
    enough = (elapsed >= step.min_s and figures.candidate_calls >= step.min_calls and
              figures.agreement_n >= config.rules.min_samples and labelled)
    if not enough:
        return GateDecision(gate, None, "")
    if gate.step + 1 == len(config.steps):
        reason = (f"promoted after {len(config.steps)} steps [{figures.describe()}]")
        return GateDecision(
            gate.moved(status="promoted", reason=reason, time=now),
            TrafficPolicy({}, None, sticky, candidate, "gate", reason), reason)
    following = config.steps[gate.step + 1]
    reason = (f"step {gate.step + 1} passed [{figures.describe()}]; step {gate.step + 2}: "
              f"{following.describe()}")
    return GateDecision(gate.moved(step=gate.step + 1, step_started=now, reason=reason,
                                   time=now),
                        step_policy(serving, candidate, following, sticky), reason)
