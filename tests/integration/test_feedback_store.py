"""The feedback store's scripts on a real Redis: SCORE keeps the very CUSUM of
``core/quality.py``, STORE holds its bounds, and one stored row costs what docs/architecture.md
says."""

from __future__ import annotations

import io
import time

import numpy as np
import redis

from modelgate.cli.status import render
from modelgate.core.quality import AlarmConfig, AlarmState, cusum_step
from modelgate.core.store import feedback as store
from modelgate.core.store import pools

CONFIG = AlarmConfig(min_labels=50, baseline_rows=300)
# The bound docs/architecture.md states for one stored single-row answer of a 3-class model
# (hash and sorted-set entries together, with a 32-character id).
BYTES_PER_ROW = 300


def score(client: redis.Redis, correctness: str, reference: float) -> None:
    client.eval(store.SCORE, 4, store.quality("m", "1"), store.window("m", "1"),
                store.alarm("m", "1"), store.alerts("m"), 100, 600, reference, CONFIG.drop,
                CONFIG.h, CONFIG.min_labels, CONFIG.baseline_rows, correctness, "1", 0)


def test_score_keeps_the_cusum_of_core_quality(redis_client: redis.Redis) -> None:
    rng = np.random.default_rng(3)
    # Clean, then wrong on a third of the rows, then clean again: it raises and clears.
    correct = np.concatenate([rng.random(2000) < 0.9, rng.random(600) < 0.55,
                              np.ones(3000, bool)])
    for reference in (0.9, -1.0):
        redis_client.flushdb()
        expected = AlarmState()
        alerts = []
        for start in range(0, len(correct), 97):  # labels arrive in batches of any size
            chunk = correct[start:start + 97]
            score(redis_client, "".join("1" if c else "0" for c in chunk), reference)
            for ok in chunk.tolist():
                expected = cusum_step(expected, bool(ok),
                                      reference if reference >= 0 else None, CONFIG)
            found = AlarmState.parse(redis_client.hgetall(store.alarm("m", "1")))
            assert found.s == np.float64(expected.s) or abs(found.s - expected.s) < 1e-9
            assert (found.n, found.alert, found.fired_n, found.reference) == (
                expected.n, expected.alert, expected.fired_n, expected.reference)
            alerts.append(found.alert)
        assert any(alerts) and not alerts[-1]
        # Each change is one event: raised, then cleared.
        events = [store.QualityAlert.parse(f) for _, f in
                  redis_client.xrange(store.alerts("m"))]
        assert [(e.version, e.change) for e in events if e is not None] == [
            ("1", "raised"), ("1", "cleared")]
        raised = events[0]
        assert raised is not None and raised.statistic > CONFIG.h
        assert raised.rows_judged == expected.fired_n


def test_store_holds_rows_and_horizon_and_costs_what_is_stated(
        redis_client: redis.Redis) -> None:
    keys = (store.answers("m"), store.times("m"), store.counts("m"))
    probabilities = np.array([[0.1, 0.7, 0.2]], np.float32)
    record = store.AnswerRecord("1", time.time(), ("1",), probabilities[:, 1],
                                probabilities).encode()
    now = time.time()
    for start in range(0, 12_000, 500):
        args: list[object] = [now, 3600, 10_000]
        for i in range(start, start + 500):
            args.extend((f"{i:032x}", record))
        redis_client.eval(store.STORE, 3, *keys, *args)
    assert redis_client.hlen(keys[0]) == 10_000 == redis_client.zcard(keys[1])
    assert int(redis_client.hget(keys[2], "rows")) == 10_000
    assert int(redis_client.hget(keys[2], "trimmed_rows")) == 2000
    held = sum(redis_client.memory_usage(k, samples=0) for k in keys[:2])
    assert held / 10_000 <= BYTES_PER_ROW, held / 10_000
    # The horizon: answers older than it go with the next writes, at most TRIM_CHUNK a write
    # (a write adds far fewer), so the store never pauses Redis long.
    for late in range(5):
        redis_client.eval(store.STORE, 3, *keys, now + 3601, 3600, 10_000, f"late{late}",
                          record)
        assert redis_client.hlen(keys[0]) == max(10_000 - (late + 1) * store.TRIM_CHUNK, 0) \
            + late + 1
    assert int(redis_client.hget(keys[2], "rows")) == 5
    redis_client.eval(store.STORE, 3, *keys, now + 3601, 3600, 10_000, "late", record)
    # Labelling marks the row; the same row again is already labelled.
    first = redis_client.eval(store.LABEL, 3, *keys, now + 3601, 3600, "late", 0, "late", 0,
                              "late", 1, "gone", 0)
    assert first[0::2] == [b"m", b"a", b"r", b"u"]
    assert store.AnswerRecord.decode(first[1]).classes == ("1",)


def test_status_shows_stored_answers_and_quality(redis_client: redis.Redis) -> None:
    keys = (store.answers("m"), store.times("m"), store.counts("m"))
    record = store.AnswerRecord("1", time.time(), ("1",)).encode()
    redis_client.eval(store.STORE, 3, *keys, time.time(), 3600, 500, "a", record, "b", record)
    redis_client.eval(store.LABEL, 3, *keys, time.time(), 3600, "a", 0, "zz", 0)
    redis_client.eval(store.SCORE, 4, store.quality("m", "1"), store.window("m", "1"),
                      store.alarm("m", "1"), store.alerts("m"), 100, 600, -1, 0.05, 18.42, 100,
                      2000, "1", "1", 3, "n", "1", "correct", "1", "true:1", "1")
    redis_client.xadd(pools.requests_stream(pools.pool_id("m", "1")), {"f": "v"})
    out = io.StringIO()
    render(redis_client, out)
    text = out.getvalue()
    assert "m: 2 answer rows stored of 500" in text
    assert "labels 1 matched, 1 unknown or expired" in text
    assert "v1: 1 labelled rows since load: accuracy 1.0" in text
    assert "dropped" not in text
    redis_client.hincrby(keys[2], "dropped", 250)  # what a worker refused at maxmemory counts
    out = io.StringIO()
    render(redis_client, out)
    assert "invalid; 250 answers dropped (Redis full)" in out.getvalue()


def test_store_counts_rows_of_replaced_and_repeated_ids_and_trims_multi_row_answers(
        redis_client: redis.Redis) -> None:
    """STORE takes a batch in a few commands: an id stored before, or twice in one batch, is
    replaced (the last value stays) and its rows counted once; trimming by rows removes whole
    answers, oldest first, until the rows fit."""
    keys = (store.answers("m"), store.times("m"), store.counts("m"))

    def answer(rows: int) -> bytes:
        probabilities = np.full((rows, 2), 0.5, np.float32)
        return store.AnswerRecord("1", time.time(), ("0",) * rows, probabilities[:, 0],
                                  probabilities).encode()

    now = time.time()
    redis_client.eval(store.STORE, 3, *keys, now, 3600, 100, "a", answer(3), "b", answer(2))
    replies = redis_client.eval(store.STORE, 3, *keys, now + 1, 3600, 100,
                                "a", answer(1), "c", answer(4), "c", answer(5), "d", answer(1))
    assert replies[0] == 2  # a (stored before) and c (twice in this batch)
    assert int(redis_client.hget(keys[2], "rows")) == 1 + 2 + 5 + 1
    assert redis_client.hget(keys[0], "c").startswith(b"5:00000")
    assert int(redis_client.hget(keys[2], "replaced")) == 2
    # Past the bound: the oldest answers go whole (b, then a at the older time) until it fits.
    replies = redis_client.eval(store.STORE, 3, *keys, now + 2, 3600, 8, "e", answer(2))
    assert replies[2] == 2 and replies[3] == 8  # trimmed by rows, rows held
    assert sorted(redis_client.hkeys(keys[0])) == [b"c", b"d", b"e"]
    assert redis_client.zcard(keys[1]) == 3
