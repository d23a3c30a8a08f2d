"""How a model's unpinned calls are shared between its versions, how its candidates are judged,
and the figures they are judged on.

A :class:`TrafficPolicy` (per model) weighs the READY versions (a canary), mirrors a share of
the calls to a candidate (a shadow) and may pin a caller to a version by a header (sticky).
Gateways read it with the model state (a change bumps the models' generation) and route by
it; ``PUT /v2/models/{m}/traffic`` replaces it, and the promotion gate writes it as it moves.
The gate's progress is a :class:`GateState`. Agreement between a serving version and a
candidate, counted by every gateway on shadowed calls, is merged in Redis: a hash per second
(and one since the candidate loaded) of :class:`AgreementTally` fields.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from modelgate.core.store import PREFIX

AGREEMENT_TTL_S = 600  # the seconds a sliding window can reach back
HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def policy(model: str) -> str:
    """The model's :class:`TrafficPolicy` (JSON); absent: every unpinned call to the default."""
    return f"{PREFIX}:model:{model}:traffic"


def gate(model: str) -> str:
    """The promotion gate's :class:`GateState` for the model (JSON)."""
    return f"{PREFIX}:model:{model}:gate"


def agreement(model: str, serving: str, candidate: str, epoch_s: int | str) -> str:
    """One second's :class:`AgreementTally` of a pair (a hash; expires), or ``total``: since
    the candidate loaded (removed with it)."""
    return f"{PREFIX}:model:{model}:agreement:{serving}:{candidate}:{epoch_s}"


class PolicyError(ValueError):
    """A traffic policy that cannot be applied; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class Shadow:
    version: str
    percent: float  # of the unpinned calls, mirrored after the primary's answer


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    weights: dict[str, int] = field(default_factory=dict)  # version -> weight; {}: default
    shadow: Shadow | None = None
    sticky_header: str | None = None
    default: str | None = None  # the version for unpinned calls without weights; the gate's
    # serving version; None: the repository's default
    by: str = ""  # who set it: a key id, "gate", "config"
    reason: str = ""
    time: float = 0.0

    def body(self) -> dict[str, Any]:
        return {"weights": dict(self.weights),
                "shadow": ({"version": self.shadow.version, "percent": self.shadow.percent}
                           if self.shadow else None),
                "sticky_header": self.sticky_header, "default": self.default,
                "by": self.by, "reason": self.reason, "time": round(self.time, 3)}

    def encode(self) -> bytes:
        return orjson.dumps({"v": 1, **self.body()})

    @classmethod
    def decode(cls, raw: bytes | str) -> TrafficPolicy:
        try:
            message = orjson.loads(raw)
            if message.get("v") != 1:
                raise PolicyError(f"traffic policy of format {message.get('v')!r}")
            return from_body(message, by=str(message.get("by", "")),
                             reason=str(message.get("reason", "")),
                             time=float(message.get("time", 0.0)))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
            raise PolicyError(f"not a traffic policy: {e}") from e

    def versions(self) -> set[str]:
        """Every version the policy names."""
        found = {v for v, w in self.weights.items() if w > 0}
        if self.shadow is not None:
            found.add(self.shadow.version)
        if self.default is not None:
            found.add(self.default)
        return found


def _version(value: Any, what: str) -> str:
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or text.startswith("0"):
        raise PolicyError(f"{what} must name a version number like \"2\", got {value!r}")
    return text


def from_body(body: Any, by: str = "", reason: str = "", time: float = 0.0) -> TrafficPolicy:
    """A policy from its JSON body (``PUT /v2/models/{m}/traffic``, config.yaml ``traffic:``);
    raises PolicyError saying what is wrong."""
    if not isinstance(body, Mapping):
        raise PolicyError('the traffic policy must be an object like {"weights": {"1": 90, '
                          '"2": 10}, "shadow": {"version": "3", "percent": 100}}')
    unknown = set(body) - {"weights", "shadow", "sticky_header", "default", "by", "reason",
                           "time", "v"}
    if unknown:
        raise PolicyError(f"unknown field(s) {sorted(unknown)}; known: weights, shadow, "
                          "sticky_header, default")
    weights: dict[str, int] = {}
    raw_weights = body.get("weights") or {}
    if not isinstance(raw_weights, Mapping):
        raise PolicyError('"weights" must map versions to integers, e.g. {"1": 90, "2": 10}')
    for version, weight in raw_weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0 \
                or weight != int(weight):
            raise PolicyError(f"weight of version {version} must be a whole number 0 or more, "
                              f"got {weight!r}")
        weights[_version(version, "a weight's key")] = int(weight)
    if weights and sum(weights.values()) == 0:
        raise PolicyError("the weights add up to 0: give at least one version a weight")
    shadow = None
    raw_shadow = body.get("shadow")
    if raw_shadow is not None:
        if not isinstance(raw_shadow, Mapping) or "version" not in raw_shadow:
            raise PolicyError('"shadow" must be like {"version": "3", "percent": 100}')
        percent = raw_shadow.get("percent", 100)
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not (
                0 <= percent <= 100):
            raise PolicyError(f"shadow percent must be within 0..100, got {percent!r}")
        shadow = Shadow(_version(raw_shadow["version"], "shadow.version"), float(percent))
    sticky = body.get("sticky_header")
    if sticky is not None and (not isinstance(sticky, str) or not HEADER_NAME.match(sticky)):
        raise PolicyError(f"sticky_header must be a header name like \"x-session-id\", got "
                          f"{sticky!r}")
    default = body.get("default")
    return TrafficPolicy(weights, shadow, sticky.lower() if sticky else None,
                         _version(default, "default") if default is not None else None,
                         by, reason, time)


@dataclass(frozen=True, slots=True)
class GateState:
    """Where one candidate stands in the model's promotion steps."""

    serving: str
    candidate: str
    step: int  # index in the config's steps
    step_started: float  # epoch s
    status: str = "running"  # running | paused | promoted | rolled_back
    reason: str = ""
    time: float = 0.0  # of the last decision

    def encode(self) -> bytes:
        return orjson.dumps({"v": 1, "serving": self.serving, "candidate": self.candidate,
                             "step": self.step, "step_started": self.step_started,
                             "status": self.status, "reason": self.reason, "time": self.time})

    @classmethod
    def decode(cls, raw: bytes | str) -> GateState:
        try:
            m = orjson.loads(raw)
            return cls(str(m["serving"]), str(m["candidate"]), int(m["step"]),
                       float(m["step_started"]), str(m.get("status", "running")),
                       str(m.get("reason", "")), float(m.get("time", 0.0)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"not a gate state: {e}") from e

    def moved(self, **changes: Any) -> GateState:
        return replace(self, **changes)


# |delta| histogram bounds (the p99 is read off it): fine near 0, where versions that agree
# land, and coarse far off.
DELTA_BOUNDS = (1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
                10.0, 100.0, math.inf)


def delta_field(delta: float) -> str:
    bound = DELTA_BOUNDS[bisect.bisect_left(DELTA_BOUNDS, delta)]
    return f"d:{bound:g}" if bound != math.inf else "d:inf"


@dataclass(slots=True)
class AgreementTally:
    """Counts over shadowed rows: how many, how many had the same class (``classified`` rows
    that have one), the sum of |delta| and its histogram."""

    n: int = 0
    classified: int = 0
    matches: int = 0
    sum_abs: float = 0.0
    histogram: dict[str, int] = field(default_factory=dict)

    def add(self, rows: int, matches: int | None, deltas: list[float]) -> None:
        self.n += rows
        if matches is not None:
            self.classified += rows
            self.matches += matches
        for delta in deltas:
            self.sum_abs += delta
            name = delta_field(delta)
            self.histogram[name] = self.histogram.get(name, 0) + 1

    def fields(self) -> dict[str, float]:
        return {"n": self.n, "classified": self.classified, "matches": self.matches,
                "sum_abs": self.sum_abs, **self.histogram}

    @classmethod
    def parse(cls, raw: Mapping[bytes | str, bytes | str]) -> AgreementTally:
        tally = cls()
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else key
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if name in ("n", "classified", "matches"):
                setattr(tally, name, getattr(tally, name) + int(number))
            elif name == "sum_abs":
                tally.sum_abs += number
            elif name.startswith("d:"):
                tally.histogram[name] = tally.histogram.get(name, 0) + int(number)
        return tally

    def merged(self, other: AgreementTally) -> AgreementTally:
        histogram = dict(self.histogram)
        for name, count in other.histogram.items():
            histogram[name] = histogram.get(name, 0) + count
        return AgreementTally(self.n + other.n, self.classified + other.classified,
                              self.matches + other.matches, self.sum_abs + other.sum_abs,
                              histogram)

    def summary(self) -> dict[str, float | int | None]:
        """n, top-1 match rate (classifiers), mean and p99 of |delta|."""
        deltas = sum(self.histogram.values())
        return {
            "n": self.n,
            "top1": round(self.matches / self.classified, 4) if self.classified else None,
            "mean_abs_delta": round(self.sum_abs / deltas, 6) if deltas else None,
            "p99_abs_delta": self._quantile(0.99) if deltas else None,
        }

    def _quantile(self, q: float) -> float:
        total = sum(self.histogram.values())
        seen = 0
        for bound in DELTA_BOUNDS:
            seen += self.histogram.get(delta_field(bound), 0)
            if seen >= q * total:
                return bound if bound != math.inf else DELTA_BOUNDS[-2] * 2
        return DELTA_BOUNDS[-2] * 2


KEYS = (
    (policy, "string", "TrafficPolicy (JSON)"),
    (gate, "string", "GateState (JSON), kept by the decider"),
    (agreement, "hash", "AgreementTally of one second (expires) or 'total' since load"),
)
