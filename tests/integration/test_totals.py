"""A pool's totals since it loaded: the decider folds finished one-second buckets into them
once each, whichever decider does it (real Redis)."""

from __future__ import annotations

import redis

from modelgate.autoscaler import totals
from modelgate.core.stats import latency_field, percentile_ms
from modelgate.core.store import lineage as lineage_store
from modelgate.core.store import pools


def test_finished_seconds_are_folded_once_and_the_totals_say_since_when(
        redis_client: redis.Redis) -> None:
    pool = pools.pool_id("m", "1")
    now = 1_000_000
    for second, completed in ((now - 10, 3), (now - 5, 4), (now - 1, 100)):
        redis_client.hset(pools.stats(pool, second), mapping={
            "completed": completed, "errors": 1, latency_field(4.0): completed})
    totals.fold(redis_client, [pool], now)
    totals.fold(redis_client, [pool], now)  # the same seconds again: nothing added
    found = lineage_store.decode_totals(redis_client.hgetall(lineage_store.totals(pool)))
    # now - 1 is not settled yet (SETTLE_S): it waits for a later fold.
    assert found["completed"] == 7 and found["errors"] == 2
    assert found["since"] == now - 10 and found["through"] == now - totals.SETTLE_S
    totals.fold(redis_client, [pool], now + 5)
    found = lineage_store.decode_totals(redis_client.hgetall(lineage_store.totals(pool)))
    assert found["completed"] == 107
    assert 2 < (percentile_ms(found, 0.5) or 0) <= 5
    # A second decider that read the cursor before the fold above changes nothing.
    keys = [lineage_store.totals(pool), pools.stats(pool, now - 1)]
    assert redis_client.eval(lineage_store.FOLD, 2, *keys, str(now - totals.SETTLE_S),
                             now - 1, now - 1) == 0
    # The totals go with the pool's other keys.
    assert lineage_store.totals(pool) in [k.decode() for k in redis_client.scan_iter(
        match=pools.pool_pattern(pool))]
