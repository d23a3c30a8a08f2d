"""The cost budget across pools: ``sum(workers x worker_cost_per_hour) <= max_cost_per_hour``.

Every pool first gets its ``min_workers`` (the budget must cover those; loading a version that
would break it is refused). Then workers are handed out one at a time, to the models' default
versions first (candidates and leaving versions wait: the serving version is served first),
each time to the pool under the highest pressure -- the largest shortfall of its desired count
relative to what it holds, SLO overshoot breaking ties -- until each pool has what it asked for
or the next worker would break the budget. Pools that got less than they asked for are "capped
by budget". Workers asked for batch jobs (``job_extra``) come last: only once every pool has
its online need, one at a time to the pool with the fewest, while the budget allows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ask:
    pool: str
    desired: int
    min_workers: int
    cost_per_hour: float
    slo_pressure: float = 0.0  # p95 / SLO (0 when unknown); breaks ties toward late pools
    priority: int = 0  # 0: a model's default version, served first; 1: candidates, leavers
    job_extra: int = 0  # workers past ``desired`` that batch jobs ask for, granted last


def allocate(asks: list[Ask], max_cost_per_hour: float | None) -> dict[str, tuple[int, bool]]:
    """Workers per pool and whether the budget capped its online need."""
    if max_cost_per_hour is None:
        return {a.pool: (a.desired + a.job_extra, False) for a in asks}
    granted = {a.pool: min(a.desired, a.min_workers) for a in asks}
    spent = sum(granted[a.pool] * a.cost_per_hour for a in asks)
    while True:
        wanting = [a for a in asks if granted[a.pool] < a.desired
                   and spent + a.cost_per_hour <= max_cost_per_hour + 1e-9]
        if not wanting:
            break
        best = max(wanting, key=lambda a: (
            -a.priority, (a.desired - granted[a.pool]) / max(granted[a.pool], 1),
            a.slo_pressure))
        granted[best.pool] += 1
        spent += best.cost_per_hour
    online = dict(granted)
    while True:
        wanting = [a for a in asks if granted[a.pool] < online[a.pool] + a.job_extra
                   and granted[a.pool] >= a.desired
                   and spent + a.cost_per_hour <= max_cost_per_hour + 1e-9]
        if not wanting:
            break
        best = min(wanting, key=lambda a: (granted[a.pool] - online[a.pool], a.priority))
        granted[best.pool] += 1
        spent += best.cost_per_hour
    # "Capped" is about online needs (the promotion gate waits on it); a job waits quietly.
    return {a.pool: (granted[a.pool], granted[a.pool] < a.desired) for a in asks}
