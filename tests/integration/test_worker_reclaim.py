"""Taking over entries against a real Redis: only a dead worker's, however long a live
worker's step takes, and only deliveries to dead workers count toward the dead-letter limit.

No worker process here: Consumers run in the test on real ORT sessions. A live worker is a
consumer name with a heartbeat (``worker/heartbeat.py``'s own record) that reads and answers
when the test says; a dead one never beats.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import redis

from modelgate.core import wire
from modelgate.core.repository import Model
from modelgate.core.store import heartbeats, pools, replies
from modelgate.worker.consumer import Consumer
from modelgate.worker.heartbeat import Heartbeat
from modelgate.worker.reclaim import Reclaimer
from modelgate.worker.runner import Runner
from tests.procs import entry_fields, wait_until

pytestmark = pytest.mark.integration

REPLY_TO = replies.reply_list("reclaim-gateway")
POOL = "mlp:1"
STREAM = pools.requests_stream(POOL)
CLAIM_FLOOR_MS = 50


@pytest.fixture
def runner(unit_repository: dict[str, Model]) -> Runner:
    return Runner(unit_repository["mlp"].default, intra_op_threads=1)


@pytest.fixture
def make(redis_client: redis.Redis, unit_repository: dict[str, Model],
         runner: Runner) -> Iterator[Callable[..., Consumer]]:
    """``make(name, reclaiming=False, max_deliveries=3)``: a consumer of the mlp pool."""
    def consumer(name: str, reclaiming: bool = False, max_deliveries: int = 3) -> Consumer:
        version = unit_repository["mlp"].default
        reclaimer = (Reclaimer(redis_client, POOL, name, CLAIM_FLOOR_MS, max_deliveries,
                               interval_s=0.0) if reclaiming else None)
        made = Consumer(redis_client, version, runner, name, reply_ttl_s=60,
                        reclaimer=reclaimer)
        made.ensure_group()
        return made

    yield consumer


def alive(client: redis.Redis, name: str) -> Heartbeat:
    beat = Heartbeat(client, name, POOL, 1.0, heartbeats.WORKER_TTL_S,
                     lambda: {"processed": 0, "busy": 0.0})
    beat.beat()
    return beat


def enqueue(client: redis.Redis, correlation: str, attempt: int = 1) -> bytes:
    payload = wire.encode_bundle(wire.Bundle.single(correlation, wire.Request(
        {"input": wire.tensor(np.ones((1, 4), np.float32))})))
    pipe = client.pipeline(transaction=True)
    pipe.xadd(STREAM, entry_fields(pools.RequestEntry((correlation,), REPLY_TO, 60_000,
                                                      attempt, payload)))
    pipe.incrby(pools.queued(POOL), 1)
    return pipe.execute()[0]


def holders(client: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    """Pending entries: id -> (consumer, times delivered)."""
    return {p["message_id"]: (p["consumer"], int(p["times_delivered"]))
            for p in client.xpending_range(STREAM, pools.WORKER_GROUP, "-", "+", 100)}


def idle_past(client: redis.Redis, ms: int) -> None:
    wait_until(lambda: all(p["time_since_delivered"] > ms for p in client.xpending_range(
        STREAM, pools.WORKER_GROUP, "-", "+", 100)), 10, f"pending entries idle past {ms} ms")


def test_a_live_workers_entry_is_never_taken_over_however_long_its_step(
        redis_client: redis.Redis, make: Callable[..., Consumer]) -> None:
    """The busy worker holds its entry for 10x the claim floor (a heavy model's long batch);
    an idle worker reclaiming every step leaves it alone, and it is answered once."""
    busy = make("busy")
    alive(redis_client, "busy")
    idle = make("idle", reclaiming=True)
    alive(redis_client, "idle")
    entry_id = enqueue(redis_client, "slow")
    held = busy._read(count=1, block_ms=None)
    idle_past(redis_client, 10 * CLAIM_FLOOR_MS)

    for _ in range(5):
        assert idle.step(block_ms=10) == 0

    assert holders(redis_client) == {entry_id: (b"busy", 1)}
    busy._answer([(entry, entry.bundle, outcome) for entry in held
                  for _, outcome in busy.runner.run_batch([entry.bundle])[0]],
                 int(time.time() * 1000))
    [raw] = redis_client.lrange(REPLY_TO, 0, -1)
    assert wire.decode_reply(raw).ids == ("slow",)
    assert holders(redis_client) == {}
    assert idle.reclaimer is not None and idle.reclaimer.reclaimed == 0


def test_a_worker_whose_heartbeat_hash_lives_on_is_alive_while_redis_is_full(
        redis_client: redis.Redis, make: Callable[..., Consumer]) -> None:
    """At maxmemory the heartbeat's HSET and ZADD are refused but its PEXPIRE runs: the hash
    lives, the sorted-set score goes stale, and the worker must still count as alive."""
    make("busy")
    redis_client.hset(heartbeats.heartbeat("busy"), "pool", POOL)
    redis_client.pexpire(heartbeats.heartbeat("busy"), 5_000)
    redis_client.zadd(pools.worker_set(POOL), {"busy": time.time() - 60})
    idle = make("idle", reclaiming=True)
    entry_id = enqueue(redis_client, "held")
    redis_client.xreadgroup(pools.WORKER_GROUP, "busy", {STREAM: ">"}, count=1)
    idle_past(redis_client, 2 * CLAIM_FLOOR_MS)

    assert idle.step(block_ms=10) == 0
    assert holders(redis_client) == {entry_id: (b"busy", 1)}


def test_a_dead_workers_entry_is_taken_over_and_the_dead_consumer_forgotten(
        redis_client: redis.Redis, make: Callable[..., Consumer]) -> None:
    """No heartbeat hash and no fresh score: its entries are claimed (one more delivery),
    answered, and once it holds nothing it leaves the group."""
    redis_client.zadd(pools.worker_set(POOL), {"gone": time.time() - 60})
    live = make("live", reclaiming=True)
    alive(redis_client, "live")
    enqueue(redis_client, "orphan")
    redis_client.xreadgroup(pools.WORKER_GROUP, "gone", {STREAM: ">"}, count=1)
    idle_past(redis_client, CLAIM_FLOOR_MS)

    assert live.step(block_ms=10) == 1
    [raw] = redis_client.lrange(REPLY_TO, 0, -1)
    assert wire.decode_reply(raw).status == "ok"
    assert holders(redis_client) == {}
    live.step(block_ms=10)
    names = {c["name"] for c in redis_client.xinfo_consumers(STREAM, pools.WORKER_GROUP)}
    assert names == {b"live"}


def test_only_deliveries_to_dead_workers_count_toward_the_dead_letter_limit(
        redis_client: redis.Redis, make: Callable[..., Consumer]) -> None:
    """Three workers died holding the call (attempt 3: two deaths before a split, one after):
    it is parked. A live worker's long hold of another call counts for nothing."""
    live = make("live", reclaiming=True, max_deliveries=3)
    alive(redis_client, "live")
    alive(redis_client, "slow")
    pill = enqueue(redis_client, "pill", attempt=3)
    redis_client.xreadgroup(pools.WORKER_GROUP, "dead", {STREAM: ">"}, count=1)
    fine = enqueue(redis_client, "fine", attempt=1)
    redis_client.xreadgroup(pools.WORKER_GROUP, "slow", {STREAM: ">"}, count=1)
    idle_past(redis_client, CLAIM_FLOOR_MS)

    live.step(block_ms=10)

    [raw] = redis_client.lrange(REPLY_TO, 0, -1)
    assert wire.decode_reply(raw).ids == ("pill",)
    assert wire.decode_reply(raw).status == wire.ReplyStatus.DEAD_LETTER
    [(_, parked)] = redis_client.xrange(pools.dead_letters(POOL))
    assert parked[b"original_id"] == pill and parked[b"deliveries"] == b"4"
    assert holders(redis_client) == {fine: (b"slow", 1)}


def test_an_entry_delivered_to_this_worker_unseen_is_taken_back_without_counting(
        redis_client: redis.Redis, make: Callable[..., Consumer]) -> None:
    """A read whose answer the connection lost leaves the entry pending for this very worker,
    which nobody else will take over while it lives: it takes it back on its next round, with
    its delivery count unchanged (nobody died), and answers it."""
    live = make("live", reclaiming=True)
    alive(redis_client, "live")
    entry_id = enqueue(redis_client, "unseen")
    redis_client.xreadgroup(pools.WORKER_GROUP, "live", {STREAM: ">"}, count=1)
    assert holders(redis_client) == {entry_id: (b"live", 1)}

    assert live.step(block_ms=10) == 1

    [raw] = redis_client.lrange(REPLY_TO, 0, -1)
    reply = wire.decode_reply(raw)
    assert reply.ids == ("unseen",) and reply.status == "ok"
    assert reply.batch_size == 1
    assert holders(redis_client) == {}
