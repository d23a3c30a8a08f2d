"""Batch sizes chosen per model on the host it runs on, from its measured throughput curve.

A worker measures its model's rows/s at run sizes 1, 2, 4, ... up to the version's
``max_batch_size`` when it loads (``modelgate.worker.tuning``) and publishes a
:class:`BatchPlan` for its pool (``modelgate.core.store.batching``): the run size cap gateways
bundle to and workers cut runs at, the preferred sizes, and the curve it was chosen from. Many
models do not get faster per row with larger batches on a CPU (a convolution network often gets
slower once its activations leave the cache): a fixed cap of 64 then makes dynamic batching a
loss. ``config.yaml`` values win over the measurement: a ``max_batch_size`` (or ``batching:
false``) set there is the cap, whatever the curve says.

Everything here is pure: the choice is a function of the curve, the limit and the latency budget.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from modelgate.core.repository import ModelVersion

# A smaller run size whose rows/s is within this share of the best one wins: the same
# throughput with shorter runs to wait behind. It also keeps timing noise (a few percent on a
# shared host) from choosing a needlessly large batch.
TOLERANCE = 0.05
# What one run costs beyond ONNX Runtime, whatever its size, in the processes that serve it:
# its entry written by the gateway, held and passed on by Redis, read and answered by the
# worker, its reply resolved. Measured at 0.5 to 2 ms of CPU a run on 2-vCPU VMs (issue 20:
# a CNN through binary tensors, run size cap 1 against 8, the gateway's, Redis's and the
# worker's CPU per call); ~1.3-1.5 ms on an AMD EPYC VM (2026-12-07: the bench CNN at cap 2
# against 64, ~620 us less CPU a call in all processes at c=32 as runs grew from ~2 rows to
# ~12, 6-20% more calls/s at c=32 and 18-38% at c=128). A curve flat in ONNX Runtime alone is
# not flat once served: eight rows in one run pay this once, eight runs of one pay it eight
# times. Taken at 0.5 ms, the low end, a noisy curve sent that CNN to runs of 2.
RUN_OVERHEAD_MS = 1.5
# Of a model's latency budget (``slo_p95_ms``), the share one run may take: a call may wait
# behind one run and then be in the next.
RUN_SHARE_OF_BUDGET = 0.5


class Source:
    """Where a pool's run size cap came from (``source``), and its curve (``curve_from``)."""

    TUNED = "tuned"  # chosen from the curve
    CONFIG = "config"  # config.yaml sets max_batch_size (or batching: false): it wins
    DEFAULT = "default"  # no curve: the version's max_batch_size
    MEASURED = "measured"  # the worker measured the curve when it loaded
    CACHED = "cached"  # a curve measured earlier for the same content, CPU and threads


class PlanError(ValueError):
    """Bytes that are not a batch plan of this format."""


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """How one pool batches: the cap, the preferred run sizes and the curve behind them.

    ``curve`` holds (run size, rows/s) in increasing run size, measured on ``host`` (the CPU
    model, ORT threads and runtime version) by this worker or an earlier one (``curve_from``);
    ``sha256`` is the content it was measured on.
    """

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    source: str
    curve: tuple[tuple[int, float], ...]
    curve_from: str
    host: str
    sha256: str
    measured_at: float  # epoch s

    def rows_per_s(self, batch: int) -> float | None:
        """Measured rows/s at the largest measured run size not above ``batch``."""
        below = [rate for size, rate in self.curve if size <= batch]
        return below[-1] if below else None

    def service_s(self, rows: float = 1.0) -> float | None:
        """Worker-seconds per request of ``rows`` rows when runs are full: what one worker
        takes per request at the cap, from the curve (None without one)."""
        rate = self.rows_per_s(max(1, self.max_batch_size))
        return rows / rate if rate else None

    def body(self) -> dict[str, Any]:
        """As model metadata's ``parameters.batching`` shows it."""
        return {"max_batch_size": self.max_batch_size,
                "preferred_batch_sizes": list(self.preferred_batch_sizes),
                "source": self.source,
                "curve": [{"batch": size, "rows_per_s": round(rate, 1)}
                          for size, rate in self.curve],
                "curve_from": self.curve_from,
                "host": self.host, "measured_at": self.measured_at}

    def describe(self) -> str:
        """One line for the log and ``modelgate status``."""
        curve = ", ".join(f"{size}:{rate:,.0f}" for size, rate in self.curve) or "not measured"
        return (f"run size cap {self.max_batch_size} ({self.source})"
                + (f", preferred {list(self.preferred_batch_sizes)}"
                   if self.preferred_batch_sizes else "")
                + f"; rows/s by batch {curve}"
                + (f" ({self.curve_from})" if self.curve_from else ""))

    def encode(self) -> bytes:
        return orjson.dumps({"max_batch_size": self.max_batch_size,
                             "preferred_batch_sizes": list(self.preferred_batch_sizes),
                             "source": self.source, "curve": [list(p) for p in self.curve],
                             "curve_from": self.curve_from,
                             "host": self.host, "sha256": self.sha256,
                             "measured_at": self.measured_at})

    @classmethod
    def decode(cls, raw: bytes | str) -> BatchPlan:
        """Raises PlanError when ``raw`` is not a plan."""
        try:
            data = orjson.loads(raw)
            curve = tuple((int(size), float(rate)) for size, rate in data["curve"])
            plan = cls(int(data["max_batch_size"]),
                       tuple(int(s) for s in data["preferred_batch_sizes"]),
                       str(data["source"]), curve, str(data["curve_from"]), str(data["host"]),
                       str(data["sha256"]),
                       float(data["measured_at"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise PlanError(f"not a batch plan: {e}") from e
        if plan.max_batch_size < 0 or any(s <= 0 for s in plan.preferred_batch_sizes):
            raise PlanError(f"not a batch plan: sizes {plan.max_batch_size}, "
                            f"{plan.preferred_batch_sizes} are not run sizes")
        return plan


def sizes_to_measure(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit``, and ``limit`` itself."""
    sizes = []
    size = 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return [*sizes, limit] if limit > 0 else []


def served_rows_per_s(size: int, rate: float) -> float:
    """Rows/s of runs of ``size`` rows that ONNX Runtime alone runs at ``rate`` rows/s, once
    each run also costs RUN_OVERHEAD_MS."""
    return size / (size / rate + RUN_OVERHEAD_MS / 1000.0)


def choose(curve: Sequence[tuple[int, float]], latency_budget_ms: float | None = None) -> int:
    """The run size cap for a measured curve: the smallest size within TOLERANCE of the best
    served rows/s (:func:`served_rows_per_s`) among the sizes whose run fits
    RUN_SHARE_OF_BUDGET of the latency budget (size 1 always fits: a call cannot be cut).
    0 for an empty curve."""
    fitting = [(size, served_rows_per_s(size, rate)) for size, rate in curve if rate > 0 and (
        size == 1 or latency_budget_ms is None
        or size / rate * 1000.0 <= latency_budget_ms * RUN_SHARE_OF_BUDGET)]
    if not fitting:
        return min((size for size, _ in curve), default=0)
    best = max(served for _, served in fitting)
    return min(size for size, served in fitting if served >= best * (1.0 - TOLERANCE))


def plan_for(version: ModelVersion, curve: Sequence[tuple[int, float]], curve_from: str,
             host: str, measured_at: float) -> BatchPlan:
    """The plan of a version from its curve; config.yaml's max_batch_size (or batching:
    false) and preferred_batch_sizes win over it."""
    config = version.config
    if not version.batchable or config.max_batch_size is not None:
        cap, source = version.max_batch_size, Source.CONFIG
    elif curve:
        cap, source = min(choose(curve, config.slo_p95_ms), version.max_batch_size), Source.TUNED
    else:
        cap, source = version.max_batch_size, Source.DEFAULT
    preferred = tuple(s for s in config.preferred_batch_sizes if s <= cap)
    return BatchPlan(cap, preferred, source, tuple(curve), curve_from if curve else "", host,
                     version.sha256, measured_at)


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
