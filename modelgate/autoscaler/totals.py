"""Each served version's counters since it loaded: the decider folds every pool's finished
one-second buckets into the pool's running totals (``core/store/lineage.py``, :data:`FOLD`).

A second is folded once it is at least :data:`SETTLE_S` old (gateways and workers flush what
they counted into the bucket of their flush time, so a bucket is final shortly after its second
ends) and while its bucket still lives (``stats.BUCKET_TTL_S``). The last second folded is kept
in the totals themselves, so a decider that takes over goes on where its predecessor stopped.
"""

from __future__ import annotations

import redis

from modelgate.core.stats import BUCKET_TTL_S
from modelgate.core.store import lineage as lineage_store
from modelgate.core.store import pools

SETTLE_S = 3


def fold(client: redis.Redis, pool_ids: list[str], now: float) -> None:
    """Fold the finished seconds of ``pool_ids`` into their totals (two round trips)."""
    if not pool_ids:
        return
    last = int(now) - SETTLE_S
    pipe = client.pipeline(transaction=False)
    for pool in pool_ids:
        pipe.hget(lineage_store.totals(pool), "through")
    throughs = pipe.execute()
    pipe = client.pipeline(transaction=False)
    queued = False
    for pool, raw in zip(pool_ids, throughs, strict=True):
        through = raw.decode() if raw is not None else ""
        first = int(float(through)) + 1 if through else last - BUCKET_TTL_S + 1
        first = max(first, last - lineage_store.FOLD_MAX_SECONDS + 1)
        if first > last:
            continue
        keys = [lineage_store.totals(pool)] + [pools.stats(pool, s)
                                               for s in range(first, last + 1)]
        pipe.eval(lineage_store.FOLD, len(keys), *keys, through, first, last)
        queued = True
    if queued:
        pipe.execute()
