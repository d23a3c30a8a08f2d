"""Every Redis key and group name modelgate uses, in one place.

A *pool* is the set of workers serving one version of one model; its id is ``{name}:{version}``.
Model names are restricted by the repository to ``[A-Za-z0-9_.-]``, so ``:`` separates safely.
"""

from __future__ import annotations

PREFIX = "mg"

# Consumer group every worker of a pool reads the pool's request stream in.
WORKER_GROUP = "workers"


def pool_id(model: str, version: str) -> str:
    return f"{model}:{version}"


def requests_stream(pool: str) -> str:
    """Stream of request entries for one pool (XADD by gateways, XREADGROUP by workers)."""
    return f"{PREFIX}:{pool}:requests"


def pool_queued(pool: str) -> str:
    """Requests queued for a pool and not yet answered (the backlog).

    Gateways add a bundle's request count when they enqueue it, workers subtract it when they
    acknowledge the entry; an entry holds several requests, so the stream's length is not it.
    """
    return f"{PREFIX}:{pool}:queued"


# Reads the queued count, resetting it to 0 when the stream is empty: a count left off by a
# write resent after a dropped connection (or lost with Redis) heals once the pool drains.
# Gateways INCRBY after XADD and workers DECRBY with XDEL in one script, so an empty stream
# means nothing is queued.
# KEYS: the pool's requests stream, its queued count.
QUEUED_REPAIR = """
local queued = tonumber(redis.call('GET', KEYS[2]) or '0')
if queued ~= 0 and redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], 0)
  return 0
end
return queued
"""


def queued_count(raw: bytes | str | int | None) -> int:
    """The value of :func:`pool_queued` as read back; absent is 0, and never below zero."""
    return max(0, int(raw)) if raw is not None else 0


def dead_letter_stream(pool: str) -> str:
    """Entries delivered too often without an answer, kept for operators to inspect."""
    return f"{PREFIX}:{pool}:dead"


def pool_workers(pool: str) -> str:
    """Sorted set of worker ids serving a pool, scored by their last heartbeat (epoch s)."""
    return f"{PREFIX}:{pool}:workers"


def pool_starting(pool: str) -> str:
    """Sorted set of worker ids loading their model for a pool, scored by when they began.

    Gateways hold a call for a pool with no live worker while one is starting, within the
    call's deadline (scale from zero, restarts).
    """
    return f"{PREFIX}:{pool}:starting"


def pool_stats(pool: str, epoch_s: int) -> str:
    """Hash of one second's counters for a pool (modelgate.core.stats); expires in minutes."""
    return f"{PREFIX}:{pool}:stats:{epoch_s}"


def drift_stream(pool: str) -> str:
    """Stream of one-second drift batches that workers sample (modelgate.worker.drift_sampler)."""
    return f"{PREFIX}:{pool}:drift"


def drift_alerts(pool: str) -> str:
    """Stream of drift alerts raised and cleared for a pool (feature, statistic, window, time)."""
    return f"{PREFIX}:{pool}:drift:alerts"


def pool_desired(pool: str) -> str:
    """The autoscaler's latest desired worker count for a pool (for gateways' /metrics)."""
    return f"{PREFIX}:{pool}:desired"


# Stream of autoscaler decisions (inputs and reason), capped to the latest entries.
AUTOSCALER_EVENTS = f"{PREFIX}:autoscaler:events"

# The autoscaler's cost budget across pools (per hour); absent when it runs without one. Has a
# TTL refreshed every tick, so it disappears with the autoscaler (read by the dashboard).
AUTOSCALER_BUDGET = f"{PREFIX}:autoscaler:budget"


def worker_heartbeat(worker_id: str) -> str:
    """Hash describing one live worker (pool, pid, host, started, processed, busy); has a TTL."""
    return f"{PREFIX}:workers:{worker_id}"


REPLY_PREFIX = f"{PREFIX}:replies:"


def reply_list(gateway_id: str) -> str:
    """List a gateway process pops its replies from; expires when the gateway is gone."""
    return f"{REPLY_PREFIX}{gateway_id}"
