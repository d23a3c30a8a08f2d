"""The worker's read loop against a real Redis: one step answers everything it read.

No worker process here: the Consumer runs in the test against real Redis and a real ORT
session, so the test can put hostile entries on the stream and look at every reply.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import redis

from modelgate.core import wire
from modelgate.core.repository import Model
from modelgate.core.store import pools, replies
from modelgate.worker.consumer import Consumer
from modelgate.worker.runner import Runner
from tests.procs import entry_fields

pytestmark = pytest.mark.integration

REPLY_TO = replies.reply_list("test-gateway")


class _Trap:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _fields(correlation: str, payload: bytes, *, reply_to: str = REPLY_TO,
            budget_ms: int = 60_000) -> dict[str, Any]:
    return entry_fields(pools.RequestEntry((correlation,), reply_to, budget_ms, 1, payload))


def _mlp_payload(x: np.ndarray) -> bytes:
    return wire.encode_bundle(wire.Bundle.single("1", wire.Request({"input": wire.tensor(x)})))


@pytest.fixture
def consumer(redis_client: redis.Redis, unit_repository: dict[str, Model]) -> Consumer:
    version = unit_repository["mlp"].default
    runner = Runner(version, intra_op_threads=1)
    consumer = Consumer(redis_client, version, runner, "consumer-1", reply_ttl_s=60)
    consumer.ensure_group()
    consumer.ensure_group()  # idempotent: BUSYGROUP is not an error
    return consumer


def _replies(client: redis.Redis) -> dict[str, wire.Reply]:
    replies = [wire.decode_reply(raw) for raw in client.lrange(REPLY_TO, 0, -1)]
    by_id = {r.id: r for r in replies}
    assert len(by_id) == len(replies), "an entry was answered twice"
    return by_id


def test_one_step_batches_valid_entries_and_answers_bad_ones(
        consumer: Consumer, redis_client: redis.Redis, tmp_path: Path,
        ort_run: Callable[..., list[Any]]) -> None:
    stream = pools.requests_stream("mlp:1")
    rng = np.random.default_rng(0)
    rows = {"a": 1, "b": 2, "c": 1}
    inputs = {k: rng.standard_normal((n, 4)).astype(np.float32) for k, n in rows.items()}
    marker = tmp_path / "executed"
    for correlation, x in inputs.items():
        redis_client.xadd(stream, _fields(correlation, _mlp_payload(x)))
    redis_client.xadd(stream, _fields("garbage", b"\x81\x90\x00"))  # unhashable map key
    redis_client.xadd(stream, _fields("pickle", pickle.dumps({"v": 1, "t": _Trap(marker)})))
    redis_client.xadd(stream, _fields("wrong-version", msgpack.packb({"v": 99, "inputs": {}})))
    redis_client.xadd(stream, _fields("late", _mlp_payload(inputs["a"]), budget_ms=-1))
    redis_client.xadd(stream, _fields("hijack", _mlp_payload(inputs["a"]), reply_to="victim"))
    redis_client.xadd(stream, {"junk": "no id, no reply_to"})

    handled = consumer.step(block_ms=100)

    assert handled == 9
    replies = _replies(redis_client)
    assert set(replies) == {"a", "b", "c", "garbage", "pickle", "wrong-version", "late"}
    for correlation, x in inputs.items():
        reply = replies[correlation]
        assert reply.status == "ok", reply.error
        np.testing.assert_allclose(reply.outputs["probabilities"].data,
                                   ort_run("mlp", {"input": x})[0], rtol=1e-5, atol=1e-6)
        assert reply.batch_size == 4  # the three valid requests ran as one 4-row batch
    assert sum(replies[c].batch_leader for c in inputs) == 1
    for correlation in ("garbage", "pickle", "wrong-version"):
        assert replies[correlation].status == wire.ReplyStatus.WIRE
        assert replies[correlation].error
    assert replies["late"].status == wire.ReplyStatus.DEADLINE
    assert not marker.exists(), "a pickle on the queue was executed"
    assert not redis_client.exists("victim"), "the worker wrote to a key that is no reply list"
    # Everything read was acknowledged and deleted: nothing pending, nothing left.
    assert redis_client.xlen(stream) == 0
    assert redis_client.xpending(stream, pools.WORKER_GROUP)["pending"] == 0
    assert 0 < redis_client.pttl(REPLY_TO) <= 60_000


def test_step_on_an_empty_stream_returns_zero(consumer: Consumer,
                                              redis_client: redis.Redis) -> None:
    assert consumer.step(block_ms=10) == 0
    assert redis_client.llen(REPLY_TO) == 0


def test_max_batch_size_rows_per_run(consumer: Consumer, redis_client: redis.Redis) -> None:
    """70 single-row entries with max_batch_size 64: read 64, then 6, in two ORT runs."""
    stream = pools.requests_stream("mlp:1")
    x = np.ones((1, 4), np.float32)
    for i in range(70):
        redis_client.xadd(stream, _fields(str(i), _mlp_payload(x)))

    assert consumer.step(block_ms=10) == 64
    assert consumer.step(block_ms=10) == 6

    replies = _replies(redis_client)
    assert len(replies) == 70
    leaders = sorted(r.batch_size for r in replies.values() if r.batch_leader)
    assert leaders == [6, 64]
