"""The worker's job lane against a real Redis and a real ORT session, in this process.

Online calls go first; a chunk runs only when none waits; a chunk whose worker died is taken
over, split into rows, and a row delivered too often is parked and becomes that row's error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from modelgate.core import wire
from modelgate.core.repository import Model
from modelgate.core.store import jobs, pools, replies
from modelgate.core.store.jobs import ChunkEntry, JobState, Piece
from modelgate.worker import jobs as lane_module
from modelgate.worker.consumer import Consumer
from modelgate.worker.jobs import JobLane
from modelgate.worker.reclaim import Reclaimer
from modelgate.worker.runner import Runner
from tests.procs import entry_fields

pytestmark = pytest.mark.integration

JOB = "0123456789abcdef0123456789abcdef"
REPLY_TO = replies.reply_list("test-gateway")


def _lane(client: redis.Redis, version: Any, runner: Runner, name: str,
          consumer: Consumer, max_deliveries: int = 3) -> JobLane:
    reclaimer = Reclaimer(client, version.pool, name, claim_timeout_ms=0,
                          max_deliveries=max_deliveries, interval_s=0.0,
                          stream=jobs.job_stream(version.pool), group=jobs.JOB_GROUP)
    lane = JobLane(client, version, runner, name, consumer.send, reclaimer)
    lane.ensure_group()
    return lane


def _chunk(client: redis.Redis, pool: str, seq: int, x: np.ndarray,
           errors: dict[int, str] | None = None) -> None:
    errors = errors or {}
    valid = [o for o in range(len(x)) if o not in errors]
    bundle = wire.Bundle(tuple(str(o) for o in valid), (1,) * len(valid),
                         wire.Request({"input": wire.tensor(x[valid])}))
    entry = ChunkEntry(JOB, seq, jobs.pack([100 + i for i in range(len(x))]),
                       jobs.pack([[o, m] for o, m in errors.items()]),
                       wire.encode_bundle(bundle))
    items = entry.fields()
    client.xadd(jobs.job_stream(pool), {str(k): v for k, v in zip(items[::2], items[1::2],
                                                                    strict=True)})


def _running(client: redis.Redis) -> None:
    client.hset(jobs.progress(JOB), mapping={"state": JobState.RUNNING})


def test_online_calls_go_before_job_chunks(redis_client: redis.Redis,
                                           unit_repository: dict[str, Model]) -> None:
    version = unit_repository["mlp"].default
    runner = Runner(version, intra_op_threads=1)
    consumer = Consumer(redis_client, version, runner, "w1", reply_ttl_s=60)
    consumer.ensure_group()
    consumer.jobs = _lane(redis_client, version, runner, "w1", consumer)
    _running(redis_client)
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    for seq in range(2):
        _chunk(redis_client, version.pool, seq, x)
    payload = wire.encode_bundle(wire.Bundle.single("call-1", wire.Request(
        {"input": wire.tensor(x[:1])})))
    redis_client.xadd(pools.requests_stream(version.pool), entry_fields(
        pools.RequestEntry(("call-1",), REPLY_TO, 60_000, 1, payload)))
    consumer.step(block_ms=10)
    # The online call is answered; no chunk was taken while it waited.
    assert redis_client.llen(REPLY_TO) == 1
    assert redis_client.hlen(jobs.results(JOB)) == 0
    consumer.step(block_ms=10)
    assert redis_client.hlen(jobs.results(JOB)) == 1  # one chunk per step, when none waits
    # Online calls came just now: the lane rests as long as the chunk ran before the next.
    for _ in range(50):
        consumer.step(block_ms=10)
        if redis_client.hlen(jobs.results(JOB)) == 2:
            break
    assert redis_client.hlen(jobs.results(JOB)) == 2
    assert consumer.jobs.rows == 16 and consumer.jobs.chunks == 2
    piece = Piece.decode(redis_client.hget(jobs.results(JOB), "0"))
    assert piece.ids == [100 + i for i in range(8)] and not piece.errors
    expected = runner.session.run(None, {"input": x})[0]
    np.testing.assert_array_equal(np.array(piece.outputs["probabilities"], np.float32),
                                  expected)
    # Job rows stay out of the online counters.
    assert consumer.processed == 1


def test_a_worker_waiting_for_calls_reads_no_empty_job_stream_and_still_takes_a_job(
        redis_client: redis.Redis, unit_repository: dict[str, Model],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that finds no call blocks on its online stream; with no job, it looks at the
    job stream at most every IDLE_LOOK_S, not on every step (each step took two more round
    trips to Redis: the online stream read without blocking, then the job stream). A job
    submitted meanwhile is still taken within that.

    IDLE_LOOK_S is raised while the calls are counted: Redis ends a blocked read on its
    timeout only at its next tick (every 100 ms), so each waiting step here lasts as long as
    the usual IDLE_LOOK_S."""
    monkeypatch.setattr(lane_module, "IDLE_LOOK_S", 30.0, raising=False)
    version = unit_repository["mlp"].default
    runner = Runner(version, intra_op_threads=1)
    consumer = Consumer(redis_client, version, runner, "w1", reply_ttl_s=60)
    consumer.ensure_group()
    consumer.max_queue_delay_ms = 0  # each read is then one XREADGROUP
    consumer.jobs = JobLane(redis_client, version, runner, "w1", consumer.send)
    consumer.jobs.ensure_group()
    consumer.step(block_ms=10)  # the lane's first look: the job stream is empty
    x = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    redis_client.config_resetstat()
    for i in range(20):
        assert consumer.step(block_ms=5) == 0  # waited for a call; none came
        payload = wire.encode_bundle(wire.Bundle.single(f"call-{i}", wire.Request(
            {"input": wire.tensor(x[:1])})))
        redis_client.xadd(pools.requests_stream(version.pool), entry_fields(
            pools.RequestEntry((f"call-{i}",), REPLY_TO, 60_000, 1, payload)))
        assert consumer.step(block_ms=1000) == 1
    reads = redis_client.info("commandstats")["cmdstat_xreadgroup"]["calls"]
    assert redis_client.llen(REPLY_TO) == 20
    # A read per step (80 before: the online stream without blocking and the job stream first
    # in each step that found no call).
    assert reads == 40, reads
    monkeypatch.setattr(lane_module, "IDLE_LOOK_S", 0.1)
    consumer.jobs._look_at = 0.0  # as if the 30 s had passed: it looks at the next step
    _running(redis_client)
    _chunk(redis_client, version.pool, 0, x)
    deadline = time.monotonic() + 2.0
    while redis_client.hlen(jobs.results(JOB)) == 0 and time.monotonic() < deadline:
        consumer.step(block_ms=1000)
    assert redis_client.hlen(jobs.results(JOB)) == 1


def test_a_dead_workers_chunk_is_split_and_a_poison_row_parked(
        redis_client: redis.Redis, unit_repository: dict[str, Model]) -> None:
    version = unit_repository["mlp"].default
    runner = Runner(version, intra_op_threads=1)
    consumer = Consumer(redis_client, version, runner, "w2", reply_ttl_s=60)
    consumer.ensure_group()
    lane = _lane(redis_client, version, runner, "w2", consumer, max_deliveries=2)
    _running(redis_client)
    x = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    _chunk(redis_client, version.pool, 0, x, errors={2: "input 'input': missing"})
    stream = jobs.job_stream(version.pool)
    # A worker that read the chunk and died (no heartbeat): it stays pending under its name.
    assert redis_client.xreadgroup(jobs.JOB_GROUP, "dead-1", {stream: ">"}, count=1)
    time.sleep(0.01)
    lane.step()  # taken over (delivery 2), split into one entry per row, then run
    for _ in range(8):
        lane.step()
    counts = redis_client.hget(jobs.chunk_rows(JOB), "0")
    assert int(counts) == 4
    fields = sorted(f.decode() for f in redis_client.hkeys(jobs.results(JOB)))
    assert fields == ["0.0", "0.1", "0.2", "0.3"]
    third = Piece.decode(redis_client.hget(jobs.results(JOB), "0.2"))
    assert third.first == 2 and third.errors == {0: "input 'input': missing"}
    first = Piece.decode(redis_client.hget(jobs.results(JOB), "0.0"))
    np.testing.assert_array_equal(np.array(first.outputs["probabilities"], np.float32),
                                  runner.session.run(None, {"input": x[:1]})[0])

    # A single row whose workers keep dying is parked past max_deliveries: its error.
    redis_client.delete(jobs.results(JOB), jobs.chunk_rows(JOB))
    _chunk(redis_client, version.pool, 1, x[:1])
    # Read by one worker that died, taken over by another that died too: 2 deliveries.
    read = redis_client.xreadgroup(jobs.JOB_GROUP, "dead-2", {stream: ">"}, count=1)
    entry_id = read[0][1][0][0]
    redis_client.xclaim(stream, jobs.JOB_GROUP, "dead-3", 0, [entry_id])
    lane.step()  # the third delivery is past max_deliveries=2: parked
    piece = Piece.decode(redis_client.hget(jobs.results(JOB), "1"))
    assert piece.ids == [100] and "delivered 3 times" in piece.errors[0]
    assert redis_client.xlen(pools.dead_letters(version.pool)) == 1
    assert redis_client.xlen(stream) == 0


def test_a_chunk_answered_after_its_job_ended_leaves_nothing(
        redis_client: redis.Redis, unit_repository: dict[str, Model]) -> None:
    version = unit_repository["mlp"].default
    runner = Runner(version, intra_op_threads=1)
    consumer = Consumer(redis_client, version, runner, "w3", reply_ttl_s=60)
    lane = _lane(redis_client, version, runner, "w3", consumer)
    redis_client.hset(jobs.progress(JOB), mapping={"state": JobState.CANCELLED})
    _chunk(redis_client, version.pool, 0, np.zeros((2, 4), np.float32))
    assert lane.step() == 2
    assert not redis_client.exists(jobs.results(JOB), jobs.chunk_rows(JOB))
    assert redis_client.xlen(jobs.job_stream(version.pool)) == 0


def test_a_coordinator_resuming_cuts_what_its_predecessor_wrote_after_the_checkpoint(
        redis_client: redis.Redis, unit_repository: dict[str, Model], tmp_path: Path) -> None:
    """The crash this guards against: output lines appended, then the coordinator killed
    before its checkpoint. Its successor must cut them and write them once."""
    from modelgate.autoscaler.coordinator import Coordinator
    from modelgate.core.batch.paths import staging_file
    from modelgate.core.store.jobs import JobSpec, Progress

    version = unit_repository["mlp"].default
    models_dir = version.path.parents[2]
    runner = Runner(version, intra_op_threads=1)
    consumer = Consumer(redis_client, version, runner, "w4", reply_ttl_s=60)
    lane = _lane(redis_client, version, runner, "w4", consumer)
    x = np.random.default_rng(5).standard_normal((2000, 4)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    spec = JobSpec(JOB, "mlp", version.version, version.sha256, "npy", "jsonl", "in.npy",
                   "out.jsonl", None, "test", time.time(), chunk_rows=100, window=4)
    redis_client.set(jobs.spec(JOB), spec.encode())
    redis_client.hset(jobs.progress(JOB), mapping=Progress(total=2000).fields())
    redis_client.zadd(jobs.ACTIVE, {JOB: time.time()})

    def run(coordinator: Coordinator, until: Any) -> None:
        for _ in range(10_000):
            coordinator.step()
            while lane.step():
                pass
            if until():
                return
        raise AssertionError("the job did not get there")

    def assembled() -> int:
        return int(redis_client.hget(jobs.progress(JOB), "assembled") or 0)

    first = Coordinator(redis_client, models_dir, tmp_path, "first")
    run(first, lambda: assembled() >= 500)
    staged = staging_file(tmp_path, JOB, 1).with_name(f"{JOB}.jsonl")
    with staged.open("ab") as out:  # appended, and then the coordinator died
        out.write(b'{"row": -1, "model_version": "1", "error": "written twice"}\n')
    first.release()  # gone: its files closed and its lease free, nothing checkpointed since
    second = Coordinator(redis_client, models_dir, tmp_path, "second")
    run(second, lambda: redis_client.hget(jobs.progress(JOB), "state") == b"succeeded")
    records = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [r["row"] for r in records] == list(range(2000))
    got = np.array([r["outputs"]["probabilities"] for r in records], np.float32)
    np.testing.assert_array_equal(got, runner.session.run(None, {"input": x})[0])
