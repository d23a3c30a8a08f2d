"""Pool plans from the model repository: per-model config over command-line defaults."""

from __future__ import annotations

from modelgate.autoscaler.loop import PoolPlan
from modelgate.autoscaler.policy import PolicyConfig
from modelgate.core.repository import Model
from modelgate.core.settings import ScalingSettings


def plans_for(models: dict[str, Model], scaling: ScalingSettings) -> list[PoolPlan]:
    plans = []
    for name, model in sorted(models.items()):
        config = model.default.config
        low = scaling.min_workers if config.min_workers is None else config.min_workers
        high = scaling.max_workers if config.max_workers is None else config.max_workers
        plans.append(PoolPlan(
            pool=model.default.pool,
            model=name,
            # A worker takes up to max_batch_size rows per run: a backlog of one batch per
            # worker is one run away from done, not a queue worth another worker.
            policy=PolicyConfig(min_workers=low, max_workers=max(high, low),
                                target_backlog_per_worker=float(
                                    max(8, model.default.max_batch_size)),
                                slo_p95_ms=config.slo_p95_ms,
                                scale_down_delay_s=scaling.scale_down_delay_s),
            cost_per_hour=config.worker_cost_per_hour,
        ))
    return plans
