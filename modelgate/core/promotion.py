"""A model's promotion rule (``config.yaml`` ``promotion:``): the steps a candidate version
goes through on its way to serving every call, and the rules it must keep at every step.

::

    promotion:
      steps:                      # default: shadow 100 %, then 10 %, 50 %, 100 % of the calls
        - {shadow: 100, min_s: 30, min_calls: 1000}
        - {weight: 10, min_s: 30, min_calls: 500}
        - {weight: 50}
        - {weight: 100}
      rules:
        min_agreement: 0.98       # top-1 match rate with the serving version (classifiers)
        max_mean_abs_delta: null  # mean |delta| of the prediction (any model), if set
        min_samples: 1000         # shadowed rows (and candidate calls) before rules judge
        max_error_rate_increase: 0.001   # its 5xx rate at most the serving one's + 0.1 point
        max_p99_ratio: 1.2        # its p99 at most 1.2x the serving version's
        no_drift_alert: true      # no drift alert on its predictions
        max_accuracy_drop: null   # on labelled traffic (feedback): its accuracy at most this
                                  # far below the serving version's, e.g. 0.02; when set, a
                                  # weight step also waits for min_labelled labelled rows
        min_labelled: 500         # labelled rows of each version before that rule judges

A ``shadow`` step mirrors that share of the calls to the candidate and sends it none; a
``weight`` step sends it that share (the rest still mirrored to it, so agreement keeps being
measured). A step is passed after ``min_s`` seconds and ``min_calls`` calls to the candidate
with every rule holding; the last step passed makes the candidate the default.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


class PromotionConfigError(ValueError):
    """A promotion rule that cannot be used; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class Step:
    shadow: float = 0.0  # percent of the calls mirrored (a shadow step), 0 for a weight step
    weight: int = 0  # percent of the calls the candidate answers
    min_s: float = 30.0
    min_calls: int = 500

    def describe(self) -> str:
        return f"shadow {self.shadow:g}%" if self.shadow else f"{self.weight}% of the calls"


@dataclass(frozen=True, slots=True)
class Rules:
    min_agreement: float | None = 0.98
    max_mean_abs_delta: float | None = None
    min_samples: int = 1000
    max_error_rate_increase: float = 0.001
    max_p99_ratio: float | None = 1.2
    no_drift_alert: bool = True
    max_accuracy_drop: float | None = None
    min_labelled: int = 500


DEFAULT_STEPS = (Step(shadow=100, min_calls=1000), Step(weight=10), Step(weight=50),
                 Step(weight=100))


@dataclass(frozen=True, slots=True)
class PromotionConfig:
    steps: tuple[Step, ...] = DEFAULT_STEPS
    rules: Rules = Rules()


def _fields(cls: type, raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PromotionConfigError(f"{where} must be a mapping, got {raw!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PromotionConfigError(f"{where}: unknown setting(s) {unknown}; known: "
                                   f"{sorted(known)}")
    for key, value in raw.items():
        if value is None:
            continue
        if key == "no_drift_alert":
            if not isinstance(value, bool):
                raise PromotionConfigError(f"{where}.{key} must be true or false")
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise PromotionConfigError(f"{where}.{key} must be a number 0 or more, got "
                                       f"{value!r}")
    # An explicit null turns a rule off (min_agreement, the max_ ones): keep it as None.
    return dict(raw)


def parse(raw: Any) -> PromotionConfig:
    """From the ``promotion:`` mapping of config.yaml; raises PromotionConfigError."""
    if raw is None or raw == {}:
        return PromotionConfig()
    if not isinstance(raw, dict) or set(raw) - {"steps", "rules"}:
        raise PromotionConfigError("promotion must be a mapping of steps and rules")
    steps: tuple[Step, ...] = DEFAULT_STEPS
    if raw.get("steps") is not None:
        if not isinstance(raw["steps"], list) or not raw["steps"]:
            raise PromotionConfigError("promotion.steps must be a non-empty list")
        steps = tuple(Step(**_fields(Step, s, f"promotion.steps[{i}]"))
                      for i, s in enumerate(raw["steps"]))
        for i, step in enumerate(steps):
            if bool(step.shadow) == bool(step.weight) or step.shadow > 100 or step.weight > 100:
                raise PromotionConfigError(
                    f"promotion.steps[{i}] needs either shadow (a percent of the calls "
                    "mirrored) or weight (a percent of the calls answered), within 1..100")
        if steps[-1].weight != 100:
            raise PromotionConfigError("the last promotion step must be {weight: 100}: it is "
                                       "the one that makes the candidate serve every call")
    rules = Rules(**_fields(Rules, raw.get("rules") or {}, "promotion.rules"))
    return PromotionConfig(steps, rules)
