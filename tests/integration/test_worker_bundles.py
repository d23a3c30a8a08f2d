"""Bundles through the worker against a real Redis: one entry of several requests is answered
with one reply that cuts per request, and a dead worker's bundle is split, or parked whole.

No worker process here: Consumers (with a Reclaimer where a dead worker is involved) run in the
test on real ORT sessions, and a "dead" worker is a consumer name that reads and never answers.
Entries are added as a gateway adds them: the bundle and the pool's queued count together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import redis

from modelgate.core import wire
from modelgate.core.repository import Model
from modelgate.core.store import pools, replies
from modelgate.worker.consumer import Consumer
from modelgate.worker.reclaim import Reclaimer
from modelgate.worker.runner import Runner
from tests.conftest import redis_url_for_db
from tests.procs import entry_fields, wait_until

pytestmark = pytest.mark.integration

REPLY_TO = replies.reply_list("test-gateway")
CLAIM_FLOOR_MS = 50
TIMEOUT_S = 10.0
ConsumerFactory = Callable[..., Consumer]


@pytest.fixture
def make_consumer(redis_client: redis.Redis,
                  unit_repository: dict[str, Model]) -> ConsumerFactory:
    """``make_consumer(model, max_deliveries=None)``: a live consumer on the model's pool,
    reclaiming (claim timeout floor CLAIM_FLOOR_MS, every step) when max_deliveries is given."""
    runners: dict[str, Runner] = {}

    def make(name: str, max_deliveries: int | None = None) -> Consumer:
        version = unit_repository[name].default
        runner = runners.setdefault(name, Runner(version, intra_op_threads=1))
        reclaimer = None
        if max_deliveries is not None:
            reclaimer = Reclaimer(redis_client, version.pool, "live",
                                  CLAIM_FLOOR_MS, max_deliveries, interval_s=0.0)
        consumer = Consumer(redis_client, version, runner, "live", reply_ttl_s=60,
                            reclaimer=reclaimer)
        consumer.ensure_group()
        return consumer

    return make


def req(**arrays: np.ndarray) -> wire.Request:
    return wire.Request({name: wire.tensor(array) for name, array in arrays.items()})


def fp32(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


def enqueue(client: redis.Redis, pool: str, ids: Sequence[str], requests: list[wire.Request],
            *, budget_ms: int = 60_000, dead_reader: bool = False) -> tuple[bytes, bytes]:
    """One entry holding the requests' bundle and the queued count, as a gateway adds them;
    with ``dead_reader``, also delivered to consumer "dead", which never answers (read in the
    same transaction, so no live consumer can take it first). Returns entry id and payload."""
    stream = pools.requests_stream(pool)
    payload = wire.encode_bundle(wire.combine(list(ids), requests))
    pipe = client.pipeline(transaction=True)
    pipe.xadd(stream, entry_fields(pools.RequestEntry(tuple(ids), REPLY_TO, budget_ms, 1,
                                                      payload)))
    pipe.incrby(pools.queued(pool), len(ids))
    if dead_reader:
        pipe.xreadgroup(pools.WORKER_GROUP, "dead", {stream: ">"}, count=1)
    entry_id, *_ = pipe.execute()
    return entry_id, payload


def raw_replies(client: redis.Redis) -> list[wire.Reply]:
    return [wire.decode_reply(raw) for raw in client.lrange(REPLY_TO, 0, -1)]


def parts_by_id(replies: list[wire.Reply]) -> dict[str, wire.Reply]:
    parts = [part for reply in replies for part in wire.unbundle(reply)]
    by_id = {part.id: part for part in parts}
    assert len(by_id) == len(parts), "a request was answered twice"
    return by_id


def assert_drained(client: redis.Redis, pool: str) -> None:
    """Every entry acknowledged and deleted, and the backlog back to 0."""
    stream = pools.requests_stream(pool)
    assert client.xlen(stream) == 0
    assert client.xpending(stream, pools.WORKER_GROUP)["pending"] == 0
    assert client.get(pools.queued(pool)) == b"0"


def step_until(consumer: Consumer, condition: Callable[[], bool], what: str) -> None:
    wait_until(lambda: consumer.step(block_ms=10) >= 0 and condition(), TIMEOUT_S, what)


# --------------------------------------------------------------------------- one step


def test_a_bundle_in_one_entry_is_answered_with_one_reply_cut_per_request(
        make_consumer: ConsumerFactory, redis_client: redis.Redis,
        ort_run: Callable[..., list[Any]]) -> None:
    consumer = make_consumer("mlp")
    pool = consumer.model.pool
    inputs = {"a": fp32(2, seed=1), "b": fp32(1, seed=2), "c": fp32(3, seed=3)}
    enqueue(redis_client, pool, list(inputs), [req(input=x) for x in inputs.values()])
    inputs["d"] = fp32(1, seed=4)
    enqueue(redis_client, pool, ["d"], [req(input=inputs["d"])])
    assert redis_client.get(pools.queued(pool)) == b"4"

    assert consumer.step(block_ms=100) == 2

    replies = raw_replies(redis_client)
    assert [(r.ids, r.rows) for r in replies] == [(("a", "b", "c"), (2, 1, 3)), (("d",), (1,))]
    parts = parts_by_id(replies)
    assert set(parts) == set(inputs)
    for correlation, x in inputs.items():
        part = parts[correlation]
        assert part.status == "ok", part.error
        assert part.outputs["probabilities"].shape == (len(x), 3)
        np.testing.assert_allclose(part.outputs["probabilities"].data,
                                   ort_run("mlp", {"input": x})[0], rtol=1e-5, atol=1e-6)
        assert part.batch_size == 7  # both entries ran as one 7-row batch
    assert sum(part.batch_leader for part in parts.values()) == 1
    assert consumer.processed == 4
    assert_drained(redis_client, pool)


def test_a_request_the_model_rejects_fails_alone_in_its_bundle(
        make_consumer: ConsumerFactory, redis_client: redis.Redis) -> None:
    """Index 7 is out of the gather model's 5-row table: the bundle's run fails in ORT, its
    requests rerun one by one, and each gets a reply of its own."""
    consumer = make_consumer("gather")
    pool = consumer.model.pool
    indices = {"a": [0, 1], "b": [7], "c": [4]}
    enqueue(redis_client, pool, list(indices),
            [req(idx=np.array(i, np.int64)) for i in indices.values()])

    assert consumer.step(block_ms=100) == 1

    replies = raw_replies(redis_client)
    assert [(r.ids, r.rows) for r in replies] == [(("a",), (2,)), (("b",), (1,)), (("c",), (1,))]
    parts = parts_by_id(replies)
    assert [parts[c].status for c in "abc"] == ["ok", wire.ReplyStatus.BAD_INPUT, "ok"]
    assert "model rejected the input" in parts["b"].error
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    for correlation in "ac":
        np.testing.assert_array_equal(parts[correlation].outputs["rows"].data,
                                      table[indices[correlation]])
    assert_drained(redis_client, pool)


def test_a_bundle_past_its_deadline_is_answered_for_every_request(
        make_consumer: ConsumerFactory, redis_client: redis.Redis) -> None:
    consumer = make_consumer("mlp")
    pool = consumer.model.pool
    enqueue(redis_client, pool, ["a", "b"], [req(input=fp32(1, seed=1)),
                                             req(input=fp32(2, seed=2))], budget_ms=-1)

    assert consumer.step(block_ms=100) == 1

    parts = parts_by_id(raw_replies(redis_client))
    assert {c: (p.status, p.outputs) for c, p in parts.items()} == {
        "a": (wire.ReplyStatus.DEADLINE, {}), "b": (wire.ReplyStatus.DEADLINE, {})}
    assert_drained(redis_client, pool)


# --------------------------------------------------------------------------- a dead worker


def test_an_abandoned_bundle_is_split_and_each_request_answered_alone(
        make_consumer: ConsumerFactory, redis_client: redis.Redis,
        ort_run: Callable[..., list[Any]]) -> None:
    consumer = make_consumer("mlp", max_deliveries=3)
    pool = consumer.model.pool
    inputs = {"a": fp32(1, seed=1), "b": fp32(2, seed=2), "c": fp32(1, seed=3)}
    enqueue(redis_client, pool, list(inputs), [req(input=x) for x in inputs.values()],
            dead_reader=True)

    step_until(consumer, lambda: redis_client.llen(REPLY_TO) == 3, "three replies")

    replies = raw_replies(redis_client)
    assert sorted(r.ids for r in replies) == [("a",), ("b",), ("c",)]
    parts = parts_by_id(replies)
    for correlation, x in inputs.items():
        part = parts[correlation]
        assert part.status == "ok", part.error
        np.testing.assert_allclose(part.outputs["probabilities"].data,
                                   ort_run("mlp", {"input": x})[0], rtol=1e-5, atol=1e-6)
        # Redelivered requests run one at a time: each led a run of its own rows.
        assert part.batch_leader and part.batch_size == len(x)
    assert redis_client.xlen(pools.dead_letters(pool)) == 0
    assert_drained(redis_client, pool)


@pytest.fixture
def dead_reader(redis_url: str) -> Iterator[Callable[[str], list[Any]]]:
    """``start(pool)`` blocks consumer "dead" in XREADGROUP on the pool's stream (returning
    once it is blocked); the returned list receives what it read."""
    client = redis.Redis.from_url(redis_url_for_db(redis_url, 0))  # redis_client's database
    threads: list[threading.Thread] = []

    def start(pool: str) -> list[Any]:
        got: list[Any] = []
        stream = pools.requests_stream(pool)
        thread = threading.Thread(target=lambda: got.extend(client.xreadgroup(
            pools.WORKER_GROUP, "dead", {stream: ">"}, count=10, block=int(TIMEOUT_S * 1000))))
        thread.start()
        threads.append(thread)
        wait_until(lambda: any(c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
                               for c in client.client_list()), TIMEOUT_S,
                   "consumer 'dead' to block in XREADGROUP")
        return got

    try:
        yield start
    finally:
        for thread in threads:
            thread.join(TIMEOUT_S + 1)
        client.close()


def test_split_requests_carry_the_bundles_deliveries_toward_the_dead_letter_limit(
        make_consumer: ConsumerFactory, redis_client: redis.Redis,
        dead_reader: Callable[[str], list[Any]]) -> None:
    """The bundle was delivered twice (to "dead", then claimed): its requests are re-added
    with attempt=2. When "dead" takes those too, their next claim is a third delivery, past
    max_deliveries=2, so they are parked, not run again."""
    consumer = make_consumer("mlp", max_deliveries=2)
    pool = consumer.model.pool
    stream = pools.requests_stream(pool)
    requests = {"a": req(input=fp32(1, seed=1)), "b": req(input=fp32(2, seed=2)),
                "c": req(input=fp32(1, seed=3))}
    bundle_id, _ = enqueue(redis_client, pool, list(requests), list(requests.values()),
                           dead_reader=True)
    got = dead_reader(pool)  # the split requests go to "dead" too

    step_until(consumer, lambda: bool(got), "the split requests to reach consumer 'dead'")

    [(_, split)] = got
    assert [entry_id for entry_id, _ in redis_client.xrange(stream)] == [e for e, _ in split]
    assert bundle_id not in {e for e, _ in split}
    for (_, fields), (correlation, request) in zip(split, requests.items(), strict=True):
        assert fields[b"ids"] == correlation.encode()
        assert fields[b"attempt"] == b"2"
        assert fields[b"reply_to"] == REPLY_TO.encode()
        single = wire.decode_bundle((correlation,), fields[b"payload"])
        assert single.rows == (request.rows,)
        np.testing.assert_array_equal(single.request.inputs["input"].data,
                                      request.inputs["input"].data)
    assert redis_client.get(pools.queued(pool)) == b"3"  # still queued, split or not

    step_until(consumer, lambda: redis_client.llen(REPLY_TO) == 3, "three dead-letter replies")

    parts = parts_by_id(raw_replies(redis_client))
    assert {c: p.status for c, p in parts.items()} == dict.fromkeys(
        requests, wire.ReplyStatus.DEAD_LETTER)
    parked = redis_client.xrange(pools.dead_letters(pool))
    assert sorted(f[b"ids"] for _, f in parked) == [b"a", b"b", b"c"]
    assert {(f[b"attempt"], f[b"deliveries"]) for _, f in parked} == {(b"2", b"3")}
    assert_drained(redis_client, pool)


def test_a_bundle_delivered_too_often_is_parked_whole(
        make_consumer: ConsumerFactory, redis_client: redis.Redis) -> None:
    consumer = make_consumer("mlp", max_deliveries=1)
    pool = consumer.model.pool
    entry_id, payload = enqueue(redis_client, pool, ["a", "b", "c"],
                                [req(input=fp32(rows, seed=rows)) for rows in (1, 2, 1)],
                                dead_reader=True)

    step_until(consumer, lambda: redis_client.llen(REPLY_TO) > 0, "a dead-letter reply")

    [reply] = raw_replies(redis_client)
    assert reply.ids == ("a", "b", "c") and reply.status == wire.ReplyStatus.DEAD_LETTER
    parts = parts_by_id([reply])
    for part in parts.values():
        assert part.status == wire.ReplyStatus.DEAD_LETTER and part.outputs == {}
        assert "delivered 2 times" in part.error
    assert sorted(parts) == ["a", "b", "c"]
    [(_, parked)] = redis_client.xrange(pools.dead_letters(pool))
    assert parked[b"ids"] == b"a,b,c" and parked[b"payload"] == payload
    assert parked[b"original_id"] == entry_id and parked[b"deliveries"] == b"2"
    assert_drained(redis_client, pool)


def test_an_entry_answered_twice_leaves_the_queued_count_right(
        make_consumer: ConsumerFactory, redis_client: redis.Redis) -> None:
    """A slow worker answering an entry that another worker took over and answered already:
    the second answer must not subtract the entry's requests from the backlog again."""
    slow = make_consumer("mlp")
    pool = slow.model.pool
    enqueue(redis_client, pool, ["1", "2"], [req(input=fp32(1, 1)), req(input=fp32(2, 2))])
    enqueue(redis_client, pool, ["3"], [req(input=fp32(1, 3))])
    held = slow._read(count=1, block_ms=None)  # the slow worker takes the bundle ...
    assert [entry.ids for entry in held] == [("1", "2")]
    assert make_consumer("mlp").step(block_ms=10) == 1  # ... while another serves entry "3"
    assert pools.queued_count(redis_client.get(pools.queued(pool))) == 2
    answered = [(entry, entry.bundle, outcome) for entry in held
                for _, outcome in slow.runner.run_batch([entry.bundle])[0]]
    slow._answer(answered, int(time.time() * 1000))
    assert pools.queued_count(redis_client.get(pools.queued(pool))) == 0
    slow._answer(answered, int(time.time() * 1000))  # the same entry answered a second time
    assert int(redis_client.get(pools.queued(pool))) == 0  # not -2


def test_the_queued_count_heals_when_the_stream_is_empty(redis_client: redis.Redis) -> None:
    """pools.QUEUED_REPAIR: a count left off (a resent write, Redis lost a key) reads as and
    becomes 0 once the stream is empty, and is kept while entries are queued."""
    stream, queued = pools.requests_stream("mlp:1"), pools.queued("mlp:1")
    redis_client.set(queued, 7)
    redis_client.xadd(stream, {"ids": "1"})
    assert redis_client.eval(pools.QUEUED_REPAIR, 2, stream, queued) == 7
    assert int(redis_client.get(queued)) == 7
    redis_client.delete(stream)
    assert redis_client.eval(pools.QUEUED_REPAIR, 2, stream, queued) == 0
    assert int(redis_client.get(queued)) == 0
    redis_client.set(queued, -3)  # off the other way: also reset on an empty stream
    assert redis_client.eval(pools.QUEUED_REPAIR, 2, stream, queued) == 0
    assert pools.queued_count(b"-3") == 0
