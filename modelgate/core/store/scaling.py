"""The autoscaler's record: one event per pool per tick (its inputs, its decision and why),
and the cost budget it works within."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelgate.core.store import PREFIX

# Stream of ScalingEvent, capped to about this many entries (minutes of ticks for a few pools).
EVENTS = f"{PREFIX}:autoscaler:events"
EVENTS_MAXLEN = 10_000

# The budget across pools (per hour); absent when the autoscaler runs without one. It and each
# pool's ``pools.desired`` expire after this unless the autoscaler renews them, so they
# disappear with it.
BUDGET = f"{PREFIX}:autoscaler:budget"
DECISION_TTL_S = 30


def _optional(text: str) -> float | None:
    return float(text) if text else None


def _text(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True, slots=True)
class ScalingEvent:
    """One decision for one pool: what was observed, what was wanted, what was granted."""

    time: float  # epoch s
    pool: str
    current: int  # replicas the backend ran
    desired: int  # after the budget
    reason: str
    raw: int = 0  # before rounding and bounds
    capped: bool = False  # the budget granted less than wanted
    panic: bool = False
    backlog: int = 0
    arrival_rate: float = 0.0
    completion_rate: float = 0.0
    p95_ms: float | None = None
    service_ms: float | None = None
    live: int = 0
    starting: int = 0
    cost_per_hour: float | None = None  # of the desired count

    @property
    def second(self) -> int:
        return int(self.time)

    @property
    def changes(self) -> bool:
        return self.desired != self.current

    def fields(self) -> dict[str, str | int]:
        return {
            "time": f"{self.time:.3f}", "pool": self.pool, "current": self.current,
            "desired": self.desired, "raw": self.raw, "capped": int(self.capped),
            "panic": int(self.panic), "backlog": self.backlog,
            "arrival_rate": f"{self.arrival_rate:.2f}",
            "completion_rate": f"{self.completion_rate:.2f}",
            "p95_ms": _text(self.p95_ms, 1), "service_ms": _text(self.service_ms, 2),
            "live": self.live, "starting": self.starting,
            "cost_per_hour": _text(self.cost_per_hour, 4), "reason": self.reason,
        }

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes]) -> ScalingEvent | None:
        """None when a required field is missing or malformed (written by another release)."""
        try:
            text = {k.decode(): v.decode() for k, v in fields.items()}
            return cls(
                time=float(text["time"]), pool=text["pool"], current=int(text["current"]),
                desired=int(text["desired"]), reason=text.get("reason", ""),
                raw=int(text.get("raw", text["desired"])), capped=text.get("capped") == "1",
                panic=text.get("panic") == "1", backlog=int(text.get("backlog", 0)),
                arrival_rate=float(text.get("arrival_rate") or 0.0),
                completion_rate=float(text.get("completion_rate") or 0.0),
                p95_ms=_optional(text.get("p95_ms", "")),
                service_ms=_optional(text.get("service_ms", "")),
                live=int(text.get("live", text["current"])),
                starting=int(text.get("starting", 0)),
                cost_per_hour=_optional(text.get("cost_per_hour", "")))
        except (KeyError, ValueError, UnicodeDecodeError):
            return None


def budget_from(raw: bytes | str | None) -> float | None:
    """The value of :data:`BUDGET` as read back (None when absent or malformed)."""
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


KEYS = (
    (EVENTS, "stream", "ScalingEvent, capped at EVENTS_MAXLEN"),
    (BUDGET, "string", "the budget per hour; expires with the autoscaler"),
)
