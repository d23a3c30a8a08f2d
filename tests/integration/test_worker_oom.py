"""The worker when Redis is at maxmemory (``noeviction``) or drops its connection: an outage,
never a loss. Answers go ahead unconfirmed (``worker/answers.py``), so each case also checks
what a worker learns one round trip late.

Redis refuses every command that may grow memory (RPUSH, XADD, XGROUP CREATE, HSET, ZADD) and
still runs the others (XREADGROUP, XACK, XCLAIM, PEXPIRE). An entry must never be acknowledged
while its answer could not be written: the worker holds its answers, waits, and delivers them
once Redis has room again. Each test has a Redis of its own (``private_redis_url``), since it
sets ``maxmemory``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from modelgate.core import wire
from modelgate.core.repository import Model
from modelgate.core.store import pools, replies
from modelgate.worker.consumer import Consumer
from modelgate.worker.reclaim import Reclaimer
from modelgate.worker.runner import Runner
from tests.procs import Processes, entry_fields, wait_until

pytestmark = pytest.mark.integration

REPLY_TO = replies.reply_list("oom-gateway")
POOL = "mlp:1"
STREAM = pools.requests_stream(POOL)
CLAIM_FLOOR_MS = 20


@pytest.fixture
def client(private_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis_url)
    try:
        yield client
    finally:
        client.config_set("maxmemory", 0)
        client.close()


def full(client: redis.Redis) -> None:
    """Redis at maxmemory under noeviction: anything over 1 byte is over."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)


def room(client: redis.Redis) -> None:
    client.config_set("maxmemory", 0)


def enqueue(client: redis.Redis, correlation: str, *, reader: str | None = None) -> bytes:
    """A single-call entry and its queued count, as a gateway adds them; with ``reader``, also
    delivered to that consumer in the same transaction."""
    payload = wire.encode_bundle(wire.Bundle.single(correlation, wire.Request(
        {"input": wire.tensor(np.ones((1, 4), np.float32))})))
    pipe = client.pipeline(transaction=True)
    pipe.xadd(STREAM, entry_fields(pools.RequestEntry((correlation,), REPLY_TO, 60_000, 1,
                                                      payload)))
    pipe.incrby(pools.queued(POOL), 1)
    if reader is not None:
        pipe.xreadgroup(pools.WORKER_GROUP, reader, {STREAM: ">"}, count=1)
    return pipe.execute()[0]


def make_consumer(client: redis.Redis, model: Model,
                  max_deliveries: int | None = None) -> Consumer:
    version = model.default
    reclaimer = None
    if max_deliveries is not None:
        reclaimer = Reclaimer(client, version.pool, "live", CLAIM_FLOOR_MS,
                              max_deliveries, interval_s=0.0)
    consumer = Consumer(client, version, Runner(version, intra_op_threads=1), "live",
                        reply_ttl_s=60, reclaimer=reclaimer)
    consumer.ensure_group()
    return consumer


def pending(client: redis.Redis) -> int:
    return int(client.xpending(STREAM, pools.WORKER_GROUP)["pending"])


def test_an_answer_refused_for_memory_is_held_and_its_entry_not_acknowledged(
        client: redis.Redis, unit_repository: dict[str, Model]) -> None:
    consumer = make_consumer(client, unit_repository["mlp"])
    entry_id = enqueue(client, "a")
    full(client)

    # Reads (allowed), runs, and sends the answer ahead, unconfirmed: Redis refuses it.
    assert consumer.step(block_ms=100) == 1
    assert consumer.answers.in_flight == 1

    assert pending(client) == 1 and client.xlen(STREAM) == 1, "acknowledged without an answer"
    assert client.llen(REPLY_TO) == 0
    assert client.get(pools.queued(POOL)) == b"1"
    with pytest.raises(redis.OutOfMemoryError):
        consumer.step(block_ms=100)  # its read learns of the refusal: the answer is held
    assert consumer.answers.held == 1 and consumer.answers.in_flight == 0
    with pytest.raises(redis.OutOfMemoryError):
        consumer.step(block_ms=100)  # still refused: still held, nothing new is read
    assert [p["message_id"] for p in client.xpending_range(
        STREAM, pools.WORKER_GROUP, "-", "+", 10)] == [entry_id]

    room(client)
    consumer.step(block_ms=100)

    [raw] = client.lrange(REPLY_TO, 0, -1)
    reply = wire.decode_reply(raw)
    assert reply.ids == ("a",) and reply.status == wire.ReplyStatus.OK
    assert pending(client) == 0 and client.xlen(STREAM) == 0
    assert client.get(pools.queued(POOL)) == b"0"
    assert consumer.processed == 1


def test_a_poison_pill_is_not_acknowledged_while_its_dead_letter_is_refused(
        client: redis.Redis, unit_repository: dict[str, Model]) -> None:
    consumer = make_consumer(client, unit_repository["mlp"], max_deliveries=1)
    entry_id = enqueue(client, "pill", reader="dead")  # delivered once, to a dead worker
    wait_until(lambda: client.xpending_range(STREAM, pools.WORKER_GROUP, "-", "+", 1)[0][
        "time_since_delivered"] > CLAIM_FLOOR_MS, 5, "the entry to be idle past the floor")
    full(client)

    with pytest.raises(redis.OutOfMemoryError):
        consumer.step(block_ms=10)  # claims it (allowed) and cannot park it

    assert pending(client) == 1 and client.xlen(STREAM) == 1, "acknowledged without an answer"
    assert client.xlen(pools.dead_letters(POOL)) == 0 and client.llen(REPLY_TO) == 0

    room(client)
    consumer.step(block_ms=10)

    [(_, parked)] = client.xrange(pools.dead_letters(POOL))
    assert parked[b"original_id"] == entry_id
    [raw] = client.lrange(REPLY_TO, 0, -1)
    assert wire.decode_reply(raw).status == wire.ReplyStatus.DEAD_LETTER
    assert pending(client) == 0 and client.xlen(STREAM) == 0
    assert client.get(pools.queued(POOL)) == b"0"


@pytest.mark.timeout(90)
def test_a_worker_started_while_redis_is_full_waits_and_then_serves(
        client: redis.Redis, unit_repository: dict[str, Model], tmp_path: Path,
        private_redis_url: str) -> None:
    """XGROUP CREATE and the first heartbeat are refused at start: the worker waits (it used
    to exit with OutOfMemoryError, and every restart did the same), then registers."""
    repo = unit_repository["mlp"].default.path.parents[2]
    full(client)
    processes = Processes(tmp_path)
    worker = processes.spawn("worker", ["worker", "--models", str(repo), "--model", "mlp",
                                        "--redis-url", private_redis_url])
    log = tmp_path / "worker.log"
    try:
        wait_until(lambda: "out of memory" in log.read_text(), 60,
                   "the worker to say Redis is out of memory", processes.check_alive,
                   processes.logs)
        time.sleep(1.0)  # a few more refused attempts: the worker must still be there
        assert worker.poll() is None, log.read_text()
        room(client)
        wait_until(lambda: client.zcard(pools.worker_set(POOL)) == 1, 30,
                   "the worker to register", processes.check_alive, processes.logs)
        enqueue(client, "after")
        popped = client.blpop([REPLY_TO], timeout=10)
        assert popped is not None and wire.decode_reply(popped[1]).status == "ok"
    finally:
        processes.stop()


def test_an_answer_goes_ahead_and_the_next_read_confirms_it(
        client: redis.Redis, unit_repository: dict[str, Model]) -> None:
    """The worker does not wait for Redis to confirm an answer: the caller has its reply and
    the entry is acknowledged, and the worker's next read, sent behind it, reads both."""
    consumer = make_consumer(client, unit_repository["mlp"])
    enqueue(client, "a")
    assert consumer.step(block_ms=100) == 1
    assert consumer.answers.in_flight == 1  # unconfirmed, yet written:
    assert [wire.decode_reply(r).ids for r in client.lrange(REPLY_TO, 0, -1)] == [("a",)]
    assert pending(client) == 0 and client.get(pools.queued(POOL)) == b"0"

    enqueue(client, "b")
    assert consumer.step(block_ms=100) == 1  # read behind a's confirmation
    assert consumer.answers.held == 0 and consumer.answers.in_flight == 1
    assert [wire.decode_reply(r).ids for r in client.lrange(REPLY_TO, 0, -1)] == [("a",), ("b",)]
    assert consumer.step(block_ms=10) == 0 and consumer.answers.in_flight == 0
    assert consumer.processed == 2


def test_a_connection_dropped_with_an_answer_unconfirmed_loses_nothing(
        client: redis.Redis, unit_repository: dict[str, Model]) -> None:
    consumer = make_consumer(client, unit_repository["mlp"])
    enqueue(client, "a")
    assert consumer.step(block_ms=100) == 1 and consumer.answers.in_flight == 1
    killed = client.client_kill_filter(_type="normal", skipme=True)  # the worker's connection
    assert killed >= 1
    enqueue(client, "b")

    deadline = time.monotonic() + 10
    while consumer.processed < 2 or consumer.answers.held or consumer.answers.in_flight:
        assert time.monotonic() < deadline, "the answers were not delivered"
        # The step that learns of the drop raises it; the next one sends the answers again.
        with contextlib.suppress(redis.ConnectionError):
            consumer.step(block_ms=10)

    answered = [wire.decode_reply(r).ids for r in client.lrange(REPLY_TO, 0, -1)]
    assert set(answered) == {("a",), ("b",)}  # a's twice at most: gateways drop duplicates
    assert pending(client) == 0 and client.xlen(STREAM) == 0
    assert client.get(pools.queued(POOL)) == b"0", "an entry was acknowledged twice"
