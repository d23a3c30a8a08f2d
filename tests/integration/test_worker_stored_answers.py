"""Answers kept for feedback are stored by the worker that computed them
(``worker/stored_answers.py``), and the reply says so, against a real Redis.

No worker process here: a Consumer with its AnswerStore runs in the test on a real ORT session,
and entries are added as a gateway adds them, with the ``store`` field naming what each call's
answer is stored under. What is stored is checked against the prediction of ORT's own outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import redis

from modelgate.core import wire
from modelgate.core.prediction import predict, spec_for
from modelgate.core.repository import Model
from modelgate.core.store import feedback as feedback_store
from modelgate.core.store import pools, replies
from modelgate.worker import stored_answers
from modelgate.worker.consumer import Consumer
from modelgate.worker.reclaim import Reclaimer
from modelgate.worker.runner import Runner
from modelgate.worker.stored_answers import AnswerStore
from tests.procs import entry_fields, wait_until

pytestmark = pytest.mark.integration

REPLY_TO = replies.reply_list("test-gateway")
MODEL = "mlp"


@pytest.fixture
def consumer(redis_client: redis.Redis, unit_repository: dict[str, Model]) -> Consumer:
    """A live consumer of the classifier's pool that stores what it is asked to; it takes
    over entries of dead consumers (claim timeout 50 ms) at every step."""
    version = unit_repository[MODEL].default
    made = Consumer(redis_client, version, Runner(version, intra_op_threads=1), "live",
                    reply_ttl_s=60,
                    reclaimer=Reclaimer(redis_client, version.pool, "live", 50, 3,
                                        interval_s=0.0),
                    answer_store=AnswerStore(redis_client, version, spec_for(version)))
    made.ensure_group()
    return made


def rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 4)).astype(np.float32)


def enqueue(client: redis.Redis, pool: str, calls: dict[str, np.ndarray],
            store: Sequence[str] = (), dead_reader: bool = False) -> None:
    """One entry of the calls' bundle, as a gateway adds it, with ``store`` keys; with
    ``dead_reader`` first delivered to a consumer that never answers."""
    ids = list(calls)
    payload = wire.encode_bundle(wire.combine(
        ids, [wire.Request({"input": wire.tensor(x)}) for x in calls.values()]))
    stream = pools.requests_stream(pool)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(stream, entry_fields(pools.RequestEntry(tuple(ids), REPLY_TO, 60_000, 1, payload,
                                                      b"", tuple(store))))
    pipe.incrby(pools.queued(pool), len(ids))
    if dead_reader:
        pipe.xreadgroup(pools.WORKER_GROUP, "dead", {stream: ">"}, count=1)
    pipe.execute()


def answered(client: redis.Redis, consumer: Consumer, count: int) -> list[wire.Reply]:
    """Step until ``count`` calls are answered; their replies, one per call."""
    def parts() -> list[wire.Reply]:
        return [part for raw in client.lrange(REPLY_TO, 0, -1)
                for part in wire.unbundle(wire.decode_reply(raw), decoded=True)]
    wait_until(lambda: consumer.step(block_ms=10) >= 0 and len(parts()) >= count, 10,
               f"{count} calls answered")
    return parts()


def stored(client: redis.Redis) -> dict[str, feedback_store.AnswerRecord]:
    """Every stored answer of the model by key, decoded past its row flags."""
    found = {}
    for key, value in client.hgetall(feedback_store.answers(MODEL)).items():
        count, rest = value.split(b":", 1)
        assert rest[:int(count)] == b"0" * int(count)  # no row labelled yet
        found[key.decode()] = feedback_store.AnswerRecord.decode(rest[int(count):])
    return found


def expected_classes(ort_run: Callable[..., list[Any]], consumer: Consumer,
                     x: np.ndarray) -> list[str]:
    spec = spec_for(consumer.model)
    outputs = dict(zip([o.name for o in consumer.model.outputs],
                       ort_run(MODEL, {"input": x}), strict=True))
    classes = predict(spec, outputs).classes
    assert classes is not None
    return [str(c) for c in classes.tolist()]


def test_the_worker_stores_the_calls_it_is_asked_to_and_the_reply_says_so(
        redis_client: redis.Redis, consumer: Consumer,
        ort_run: Callable[..., list[Any]]) -> None:
    calls = {"a": rows(2, 1), "b": rows(1, 2), "c": rows(3, 3)}
    enqueue(redis_client, consumer.model.pool, calls, ("call-a", "", "call-c"))
    enqueue(redis_client, consumer.model.pool, {"d": rows(1, 4)})  # no store field

    by_id = {reply.id: reply for reply in answered(redis_client, consumer, 4)}
    assert consumer.answer_store is not None
    assert consumer.answer_store.flush() == 2

    assert [by_id[c].stored for c in "abcd"] == [True, True, True, False]
    found = stored(redis_client)
    assert set(found) == {"call-a", "call-c"}
    for call, key in (("a", "call-a"), ("c", "call-c")):
        record = found[key]
        assert record.version == consumer.model.version
        assert list(record.classes) == expected_classes(ort_run, consumer, calls[call])
        assert record.rows == len(calls[call])
    counts = redis_client.hgetall(feedback_store.counts(MODEL))
    assert counts[b"stored"] == b"2" and counts[b"rows"] == b"5"


def test_a_worker_without_room_says_not_stored_so_its_gateway_stores_them(
        redis_client: redis.Redis, consumer: Consumer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stored_answers, "MAX_PENDING", 1)
    enqueue(redis_client, consumer.model.pool, {"a": rows(1, 1), "b": rows(1, 2)},
            ("call-a", "call-b"))

    replies_ = answered(redis_client, consumer, 2)

    assert [reply.stored for reply in replies_] == [False, False]
    assert consumer.answer_store is not None and consumer.answer_store.flush() == 0
    assert stored(redis_client) == {}


def test_a_bundle_split_after_its_worker_died_keeps_each_calls_key(
        redis_client: redis.Redis, consumer: Consumer) -> None:
    """Taken over from a dead consumer, the bundle is split into one entry per call, each
    still naming its own key (or none: a call not kept)."""
    enqueue(redis_client, consumer.model.pool,
            {"a": rows(1, 1), "b": rows(2, 2), "c": rows(1, 3)}, ("", "call-b", "call-c"),
            dead_reader=True)

    by_id = {reply.id: reply for reply in answered(redis_client, consumer, 3)}

    assert sorted(by_id) == ["a", "b", "c"]
    assert all(reply.status == wire.ReplyStatus.OK for reply in by_id.values())
    assert [by_id[c].stored for c in "abc"] == [False, True, True]
    assert consumer.answer_store is not None
    consumer.answer_store.flush()
    assert {key: record.rows for key, record in stored(redis_client).items()} == {
        "call-b": 2, "call-c": 1}


def test_what_a_draining_worker_took_is_written_before_it_stops(
        redis_client: redis.Redis, consumer: Consumer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stored_answers, "FLUSH_INTERVAL_S", 60.0)  # only closing writes
    store = consumer.answer_store
    assert store is not None
    store.start()
    enqueue(redis_client, consumer.model.pool, {"a": rows(1, 1)}, ("call-a",))
    answered(redis_client, consumer, 1)

    store.close()

    assert list(stored(redis_client)) == ["call-a"]
    assert store.stored == 1 and store.dropped == 0
