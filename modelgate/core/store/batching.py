"""The batch sizes each pool runs at, and the throughput curves they were chosen from.

A worker measures its model's curve at load (``modelgate.worker.tuning``) unless the cache
holds one for the same content on the same kind of host, then publishes the pool's
:class:`~modelgate.core.batching.BatchPlan` before it reports ready. Gateways bundle to the
plan's cap, the autoscaler reads the curve for its service-time estimate, ``modelgate status``
and model metadata show it.

The cache lives in Redis, not on disk: every worker of a deployment reaches it wherever it
runs (a container's model volume is often read-only, and a fresh container has no disk of its
own worth trusting), and keying it by CPU model, ORT threads and runtime version keeps hosts of
different kinds from sharing a curve. A Redis that lost it costs one measurement (at most
``WorkerSettings.tuning_budget_s`` per model) at the next start. Its bound: one hash per
model content, one field (under 1 KiB) per kind of host, gone :data:`CACHE_TTL_S` after the
last write.
"""

from __future__ import annotations

import hashlib

from modelgate.core.store import PREFIX

# A curve nobody measured again for this long is dropped (each start that uses it renews it).
CACHE_TTL_S = 30 * 24 * 3600


def plan(pool: str) -> str:
    """The pool's BatchPlan (JSON), written by its workers when they load; goes with the
    pool's other keys."""
    return f"{PREFIX}:pool:{pool}:batching"


def cache(sha256: str) -> str:
    """Curves measured for one model content (hash: host signature -> BatchPlan JSON)."""
    return f"{PREFIX}:tuning:{sha256}"


def measuring(sha256: str, host_id: str) -> str:
    """Held (the measurer's pid, with a TTL) by the one worker measuring this content on this
    kind of host (:func:`host_id`); workers starting meanwhile wait for its curve instead of
    measuring too."""
    return f"{PREFIX}:tuning:{sha256}:measuring:{host_id}"


def host_id(host: str) -> str:
    """A host signature (the cache's field) as a short key part."""
    return hashlib.sha256(host.encode()).hexdigest()[:16]


KEYS = (
    (plan, "string", "BatchPlan (JSON): run size cap, preferred sizes, rows/s curve"),
    (cache, "hash", "host (CPU model, threads, ORT) -> BatchPlan JSON; 30 days after the last "
                    "write"),
    (measuring, "string", "pid of the worker measuring; expires after twice the tuning budget "
                          "plus 5 s"),
)
