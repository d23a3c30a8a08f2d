"""Pool plans: every version the model state serves (or is loading, or draining) is a pool,
with per-model config over the command-line defaults."""

from __future__ import annotations

from modelgate.autoscaler.backends.base import PoolRef
from modelgate.autoscaler.loop import PoolPlan
from modelgate.autoscaler.policy import PolicyConfig
from modelgate.autoscaler.versions import PoolStatus
from modelgate.core.repository import DEFAULT_MAX_BATCH_SIZE, ModelConfig, ModelVersion
from modelgate.core.settings import ScalingSettings
from modelgate.core.store.models import ModelState, VersionStatus


def plan_for(ref: PoolRef, status: VersionStatus, version: ModelVersion | None,
             scaling: ScalingSettings, pool: PoolStatus | None = None,
             default: bool = True) -> PoolPlan:
    """A LOADING pool gets at least one worker (it must show it can load); a READY one its
    bounds; an UNLOADING one keeps a worker while it still holds calls, then none."""
    config = version.config if version is not None else ModelConfig()
    low = scaling.min_workers if config.min_workers is None else config.min_workers
    high = scaling.max_workers if config.max_workers is None else config.max_workers
    if status == VersionStatus.LOADING:
        low = max(1, low)
    elif status == VersionStatus.UNLOADING:
        low = 0 if pool is not None and pool.drained else 1
    batch = version.max_batch_size if version is not None else DEFAULT_MAX_BATCH_SIZE
    return PoolPlan(
        ref=ref,
        # A worker takes up to max_batch_size rows per run: a backlog of one batch per
        # worker is one run away from done, not a queue worth another worker.
        policy=PolicyConfig(min_workers=low, max_workers=max(high, low),
                            target_backlog_per_worker=float(max(8, batch)),
                            slo_p95_ms=config.slo_p95_ms,
                            scale_down_delay_s=scaling.scale_down_delay_s),
        cost_per_hour=config.worker_cost_per_hour,
        priority=0 if default else 1,
    )


def plans_for(states: dict[str, ModelState],
              versions: dict[tuple[str, str], ModelVersion | None],
              scaling: ScalingSettings,
              statuses: dict[str, dict[str, PoolStatus]] | None = None) -> list[PoolPlan]:
    """A plan per pool of every version not UNAVAILABLE; ``versions`` gives each one's
    signature and config (None once its folder is gone)."""
    plans = []
    for name, state in sorted(states.items()):
        for version, found in sorted(state.versions.items(), key=lambda kv: int(kv[0])):
            if found.status == VersionStatus.UNAVAILABLE:
                continue
            pool = (statuses or {}).get(name, {}).get(version)
            plans.append(plan_for(PoolRef(name, version), found.status,
                                  versions.get((name, version)), scaling, pool,
                                  default=version == state.default))
    return plans


