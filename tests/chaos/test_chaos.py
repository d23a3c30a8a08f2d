"""Chaos tests: the delivery promise (docs/architecture.md) under crashes, outages and bursts.

Every request gets exactly one answer by its deadline and a crash loses nothing. Each test runs
real processes (redis-server, ``modelgate worker``, ``modelgate gateway``) on 127.0.0.1, drives
them over HTTP with a bounded number of requests, breaks something on purpose, and checks every
answer; outputs are compared with onnxruntime run directly on the same input. Each test prints
one ``[chaos]`` line with its figures (run pytest with ``-s``) and records them in
``test-artifacts/chaos.json``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
import redis

from modelgate.cli import demo
from modelgate.core import wire
from modelgate.core.process import child_preexec, stop_process
from modelgate.core.settings import GatewaySettings
from modelgate.core.store import pools, replies
from modelgate.gateway.app import redis_clients
from modelgate.gateway.dispatch import Dispatcher
from tests.chaos.conftest import (
    Answer,
    ChaosRedis,
    Cluster,
    drive,
    percentile,
    rss_mb,
    write_repo,
)
from tests.models import matmul_chain
from tests.procs import REPO_ROOT, wait_until

pytestmark = pytest.mark.integration

POOL = pools.pool_id("mlp", "1")
STREAM = pools.requests_stream(POOL)
CLAIM_TIMEOUT_MS = "1000"


# --------------------------------------------------------------------------- helpers


def mlp_heavy() -> onnx.ModelProto:
    """Four dense layers of width 256 and ten outputs: each distinct input has its own answer,
    so a reply delivered to the wrong request shows as a wrong output."""
    return demo.mlp_model(inputs=64, hidden=256, outputs=10, layers=4)


def reference(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": inputs})[0])


def infer_body(row: np.ndarray, timeout_ms: int) -> bytes:
    return orjson.dumps({
        "inputs": [{"name": "input", "shape": [1, int(row.shape[0])], "datatype": "FP32",
                    "data": row.tolist()}],
        "parameters": {"timeout_ms": timeout_ms},
    })


def output_of(answer: Answer) -> np.ndarray:
    (output,) = orjson.loads(answer.body)["outputs"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def wrong_outputs(answers: list[Answer], inputs: np.ndarray, model: onnx.ModelProto) -> list[int]:
    """Indices of 200 answers whose output is not onnxruntime's on that request's input."""
    ok = [a for a in answers if a.status == 200]
    if not ok:
        return []
    expected = reference(model, inputs[[a.index for a in ok]])
    return [a.index for a, want in zip(ok, expected, strict=True)
            if not np.allclose(output_of(a)[0], want, rtol=1e-4, atol=1e-5)]


def failures(answers: list[Answer], limit: int = 5) -> str:
    bad = [a for a in answers if a.status != 200]
    return "; ".join(f"#{a.index}: {a.status} {a.error or a.body[:200]!r}" for a in bad[:limit])


def _consumers_of(client: redis.Redis, pid: int) -> list[str]:
    summary = client.xpending(STREAM, pools.WORKER_GROUP)
    names = [c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
             for c in summary.get("consumers") or []]
    return [name for name in names if f"-{pid}-" in name]


def pending_of(client: redis.Redis, pid: int) -> int:
    """Entries of the pool's stream delivered to the worker with this pid and not acked."""
    summary = client.xpending(STREAM, pools.WORKER_GROUP)
    return sum(int(c["pending"]) for c in summary.get("consumers") or []
               if f"-{pid}-" in (c["name"].decode() if isinstance(c["name"], bytes)
                                 else c["name"]))


def requests_held(client: redis.Redis, pid: int) -> int:
    """Requests in those entries: an entry is a bundle of the requests a gateway sent together."""
    held = 0
    for name in _consumers_of(client, pid):
        for pending in client.xpending_range(STREAM, pools.WORKER_GROUP, "-", "+", 1000,
                                             consumername=name):
            for _, fields in client.xrange(STREAM, pending["message_id"], pending["message_id"]):
                held += len(fields[b"ids"].split(b","))
    return held


def freeze_holding(client: redis.Redis, pid: int, want: int = 4, prefer_s: float = 0.3,
                   give_up_s: float = 5.0) -> int:
    """SIGSTOP the worker at a moment it holds entries it has not acknowledged.

    Returns how many entries it holds, leaving it stopped. A worker spends most of its time
    under load between XREADGROUP and XACK, but not all of it; freezing first makes sure the
    signal that follows lands while entries are in flight, rather than hoping it does. For
    ``prefer_s`` it waits for entries holding at least ``want`` requests, then takes any.
    """
    started = time.monotonic()
    while time.monotonic() - started < give_up_s:
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: _state(pid) in {"T", "t"}, 5, f"worker {pid} to stop",
                   interval_s=0.0005)
        held = pending_of(client, pid)
        if held and requests_held(client, pid) >= (
                want if time.monotonic() - started < prefer_s else 1):
            return held
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)
    raise AssertionError(f"worker {pid} held no entries for {give_up_s} s: is there load?")


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def reclaimed_in(log: str) -> int:
    return sum(int(n) for n in re.findall(r"reclaimed (\d+) abandoned entries", log))


def wait_stream_empty(client: redis.Redis, timeout_s: float = 10.0) -> None:
    """Until nothing is pending in the group and every entry was deleted after its answer."""
    def empty() -> bool:
        return (client.xlen(STREAM) == 0
                and int(client.xpending(STREAM, pools.WORKER_GROUP)["pending"]) == 0)

    wait_until(empty, timeout_s, f"{STREAM} to be empty",
               details=lambda: f"xlen={client.xlen(STREAM)} "
                               f"pending={client.xpending(STREAM, pools.WORKER_GROUP)}")


def latency_figures(answers: list[Answer], elapsed_s: float) -> dict[str, Any]:
    latencies = [a.latency_s for a in answers]
    return {"seconds": round(elapsed_s, 2),
            "req_per_s": round(len(answers) / max(elapsed_s, 1e-9)),
            "p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "max_ms": round(max(latencies, default=0) * 1000, 1)}


def start_mlp_cluster(tmp_path: Path, chaos_redis: ChaosRedis,
                      cluster_factory: Callable[[Path, str], Cluster],
                      model: onnx.ModelProto, workers: int, config: str = "",
                      worker_flags: tuple[str, ...] = ("--claim-timeout-ms", CLAIM_TIMEOUT_MS),
                      gateway_flags: tuple[str, ...] = ()) -> tuple[Cluster, list[Any]]:
    repo = write_repo(tmp_path / "models", "mlp", model, config)
    cluster = cluster_factory(repo, chaos_redis.url)
    processes = [cluster.worker("mlp", *worker_flags) for _ in range(workers)]
    cluster.gateway(*gateway_flags)
    cluster.wait_workers(POOL, workers)
    cluster.wait_ready()
    return cluster, processes


# --------------------------------------------------------------------------- 1, 2: workers die


LOAD_REQUESTS = 2_000
LOAD_CONCURRENCY = 32
SIGNAL_AFTER = 500
LOAD_TIMEOUT_MS = 20_000


def run_with_signal(cluster: Cluster, signal_victim: Callable[[], dict[str, Any]],
                    inputs: np.ndarray) -> tuple[list[Answer], dict[str, Any], float]:
    """Drive the load; after SIGNAL_AFTER answers, call ``signal_victim`` off the event loop."""
    figures: dict[str, Any] = {}

    async def on_answer(answer: Answer, answered: int) -> None:
        if answered == SIGNAL_AFTER:
            figures.update(await asyncio.to_thread(signal_victim))

    started = time.monotonic()
    answers = asyncio.run(drive(
        cluster.base_url, "/v2/models/mlp/infer",
        lambda i: infer_body(inputs[i], LOAD_TIMEOUT_MS),
        concurrency=LOAD_CONCURRENCY, count=len(inputs), budget_s=60,
        client_timeout_s=LOAD_TIMEOUT_MS / 1000 + 5, on_answer=on_answer))
    return answers, figures, time.monotonic() - started


@pytest.mark.timeout(120)
def test_sigkill_worker_mid_load_loses_nothing(
        tmp_path: Path, chaos_redis: ChaosRedis, cluster_factory: Callable[[Path, str], Cluster],
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """A worker SIGKILLed while it holds entries: a live worker reclaims them after the claim
    timeout and every one of 2,000 distinct requests gets its own, correct 200."""
    model = mlp_heavy()
    cluster, (victim, survivor) = start_mlp_cluster(tmp_path, chaos_redis, cluster_factory,
                                                    model, workers=2)
    inputs = np.random.default_rng(1).standard_normal((LOAD_REQUESTS, 64), dtype=np.float32)
    client = chaos_redis.client()

    def kill() -> dict[str, Any]:
        freeze_holding(client, victim.pid)
        victim.kill()
        victim.wait()
        return {"held_at_kill": pending_of(client, victim.pid), "killed_at": time.monotonic()}

    answers, figures, elapsed_s = run_with_signal(cluster, kill, inputs)
    assert figures, f"the worker was never signalled: {len(answers)} answers\n{failures(answers)}"
    codes = Counter(a.status for a in answers)
    wrong = wrong_outputs(answers, inputs, model)
    after_kill = [a.latency_s for a in answers if a.started_s >= figures["killed_at"]]
    report = {
        "sent": len(answers), "answered": len(answers) - codes[0], "ok": codes[200],
        "lost": codes[0],
        "errors": sum(n for code, n in codes.items() if code not in (0, 200)),
        "wrong_outputs": len(wrong), "held_at_kill": figures["held_at_kill"],
        "reclaimed": reclaimed_in(cluster.log("worker-1")),
        "max_ms_after_kill": round(max(after_kill, default=0) * 1000, 1),
        **latency_figures(answers, elapsed_s),
    }
    chaos_report(report)
    assert victim.returncode == -signal.SIGKILL
    assert figures["held_at_kill"] > 0, "the worker held nothing when killed; nothing was proved"
    assert len(answers) == len(inputs), "the load did not finish within its time budget"
    assert codes == {200: len(inputs)}, f"{dict(codes)}: {failures(answers)}"
    assert not wrong, f"outputs differ from onnxruntime for requests {wrong[:10]}"
    assert report["reclaimed"] >= figures["held_at_kill"], cluster.log("worker-1")[-2000:]
    wait_stream_empty(client)
    assert survivor.poll() is None, cluster.log("worker-1")[-2000:]
    client.close()


@pytest.mark.timeout(120)
def test_sigterm_worker_mid_load_drains(
        tmp_path: Path, chaos_redis: ChaosRedis, cluster_factory: Callable[[Path, str], Cluster],
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """A worker SIGTERMed while it holds entries answers them itself, deregisters and exits 0;
    nothing is left for reclaim and every request gets its correct 200."""
    model = mlp_heavy()
    cluster, (victim, survivor) = start_mlp_cluster(tmp_path, chaos_redis, cluster_factory,
                                                    model, workers=2)
    inputs = np.random.default_rng(2).standard_normal((LOAD_REQUESTS, 64), dtype=np.float32)
    client = chaos_redis.client()

    def terminate() -> dict[str, Any]:
        held = freeze_holding(client, victim.pid)
        signalled = time.monotonic()
        victim.terminate()
        os.kill(victim.pid, signal.SIGCONT)
        exit_code = victim.wait(timeout=15)
        return {"held_at_term": held, "exit_code": exit_code,
                "drain_ms": round((time.monotonic() - signalled) * 1000, 1),
                "held_after_exit": pending_of(client, victim.pid)}

    answers, figures, elapsed_s = run_with_signal(cluster, terminate, inputs)
    assert figures, f"the worker was never signalled: {len(answers)} answers\n{failures(answers)}"
    codes = Counter(a.status for a in answers)
    wrong = wrong_outputs(answers, inputs, model)
    registered = [m.decode() for m in client.zrange(pools.worker_set(POOL), 0, -1)]
    report = {
        "sent": len(answers), "answered": len(answers) - codes[0], "ok": codes[200],
        "lost": codes[0],
        "errors": sum(n for code, n in codes.items() if code not in (0, 200)),
        "wrong_outputs": len(wrong), **figures,
        "reclaimed": reclaimed_in(cluster.log("worker-1")),
        **latency_figures(answers, elapsed_s),
    }
    chaos_report(report)
    assert figures["exit_code"] == 0, cluster.log("worker-0")[-2000:]
    assert figures["held_at_term"] > 0, "the worker held nothing when signalled"
    assert figures["held_after_exit"] == 0, "the draining worker left entries unacknowledged"
    assert not [w for w in registered if f"-{victim.pid}-" in w], f"still registered: {registered}"
    assert len(answers) == len(inputs), "the load did not finish within its time budget"
    assert codes == {200: len(inputs)}, f"{dict(codes)}: {failures(answers)}"
    assert not wrong, f"outputs differ from onnxruntime for requests {wrong[:10]}"
    assert report["reclaimed"] == 0, "entries were reclaimed: the worker did not drain them"
    wait_stream_empty(client)
    assert survivor.poll() is None, cluster.log("worker-1")[-2000:]
    client.close()


# --------------------------------------------------------------------------- 3: Redis dies


OUTAGE_S = 3.0
OUTAGE_TIMEOUT_MS = 5_000
OUTAGE_CONCURRENCY = 16
OUTAGE_RATE_PER_S = 3_000  # offered arrivals; refusals are cheap, so this is what gets sent
OUTAGE_MAX_REQUESTS = 20_000
KILL_AFTER = 300
RECOVERY_TIMEOUT_S = 15.0
RECOVERY_BATCH = 300


@pytest.mark.timeout(120)
def test_redis_outage_answers_503_and_recovers(
        tmp_path: Path, chaos_redis: ChaosRedis, cluster_factory: Callable[[Path, str], Cluster],
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """Redis killed under load: the gateway answers 503 within about a second, every request
    during the outage is answered (503) well before its deadline, readiness turns 503; Redis
    back on the same port: gateway and workers reconnect by themselves and serve again."""
    model = demo.mlp_model(inputs=16, hidden=64, outputs=4, layers=2)
    cluster, workers = start_mlp_cluster(tmp_path, chaos_redis, cluster_factory, model,
                                         workers=2)
    inputs = np.random.default_rng(3).standard_normal(
        (OUTAGE_MAX_REQUESTS + RECOVERY_BATCH, 16), dtype=np.float32)
    path = "/v2/models/mlp/infer"
    moments: dict[str, float] = {}
    report: dict[str, Any] = {}

    def on_answer(answer: Answer, answered: int) -> None:
        now = time.monotonic()
        if answered == KILL_AFTER:
            chaos_redis.kill()
            moments["kill"] = time.monotonic()
        elif "kill" in moments and answer.status == 503:
            moments.setdefault("first_503", now)

    async def outage() -> tuple[list[Answer], int]:
        stop = asyncio.Event()
        load = asyncio.create_task(drive(
            cluster.base_url, path, lambda i: infer_body(inputs[i], OUTAGE_TIMEOUT_MS),
            concurrency=OUTAGE_CONCURRENCY, count=OUTAGE_MAX_REQUESTS, stop=stop,
            rate_per_s=OUTAGE_RATE_PER_S,
            client_timeout_s=OUTAGE_TIMEOUT_MS / 1000 + 5, on_answer=on_answer))
        while "kill" not in moments and not load.done():
            await asyncio.sleep(0.01)
        # The outage lasts OUTAGE_S under load: long enough for every retry and backoff path.
        await asyncio.sleep(OUTAGE_S)
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=5) as probe:
            ready_status = (await probe.get("/v2/health/ready")).status_code
        stop.set()
        return await load, ready_status

    try:
        answers, ready_during_outage = asyncio.run(outage())
        killed = moments["kill"]
        before = [a for a in answers if a.started_s + a.latency_s < killed]
        spanning = [a for a in answers if a.started_s < killed <= a.started_s + a.latency_s]
        during = [a for a in answers if a.started_s >= killed]
        during_codes = Counter(a.status for a in during)
        spanning_codes = Counter(a.status for a in spanning)
        outage_latencies = [a.latency_s for a in [*spanning, *during]]
        wrong = wrong_outputs(before, inputs, model) + wrong_outputs(spanning, inputs, model)
        report.update({
            "before_ok": sum(a.status == 200 for a in before),
            "in_flight_at_kill": len(spanning), "in_flight_codes": dict(spanning_codes),
            "during_outage": len(during), "during_codes": dict(during_codes),
            "time_to_503_ms": round((moments["first_503"] - killed) * 1000, 1)
            if "first_503" in moments else None,
            "outage_max_latency_ms": round(max(outage_latencies, default=0) * 1000, 1),
            "ready_during_outage": ready_during_outage,
        })
        assert "first_503" in moments, f"no 503 after Redis died: {dict(during_codes)}"
        assert moments["first_503"] - killed <= 1.0, report
        assert during and set(during_codes) <= {503, 504}, failures(during)
        assert set(spanning_codes) <= {200, 503, 504}, failures(spanning)
        assert max(outage_latencies) < OUTAGE_TIMEOUT_MS / 1000, "a request hung to its deadline"
        assert ready_during_outage == 503
        assert not wrong, f"outputs differ from onnxruntime for requests {wrong[:10]}"

        # Redis back on the same port, empty (no persistence). Nothing else is restarted.
        chaos_redis.start()
        restarted = time.monotonic()
        recovery_codes: Counter[int] = Counter()
        ready_at = recovered_at = 0.0
        with httpx.Client(base_url=cluster.base_url, timeout=5) as http:
            while (time.monotonic() - restarted < RECOVERY_TIMEOUT_S
                   and not (ready_at and recovered_at)):
                if not ready_at and http.get("/v2/health/ready").status_code == 200:
                    ready_at = time.monotonic()
                if not recovered_at:
                    response = http.post(path, content=infer_body(inputs[0], 2_000),
                                         headers={"content-type": "application/json"})
                    recovery_codes[response.status_code] += 1
                    if response.status_code == 200:
                        recovered_at = time.monotonic()
                time.sleep(0.02)
        report.update({
            "time_to_ready_ms": round((ready_at - restarted) * 1000, 1) if ready_at else None,
            "time_to_recover_ms": round((recovered_at - restarted) * 1000, 1)
            if recovered_at else None,
            "recovery_probe_codes": dict(recovery_codes),
        })
        assert recovered_at and ready_at, (
            f"no recovery within {RECOVERY_TIMEOUT_S:.0f} s: {dict(recovery_codes)}\n"
            f"{cluster.processes.logs()}")

        batch_inputs = inputs[-RECOVERY_BATCH:]
        after = asyncio.run(drive(
            cluster.base_url, path, lambda i: infer_body(batch_inputs[i], OUTAGE_TIMEOUT_MS),
            concurrency=OUTAGE_CONCURRENCY, count=RECOVERY_BATCH, budget_s=20,
            client_timeout_s=OUTAGE_TIMEOUT_MS / 1000 + 5))
        after_codes = Counter(a.status for a in after)
        client = chaos_redis.client()
        live_after = client.zcard(pools.worker_set(POOL))
        client.close()
        report.update({"after_batch": len(after), "after_codes": dict(after_codes),
                       "live_workers_after": live_after})
        assert after_codes == {200: RECOVERY_BATCH}, f"{dict(after_codes)}: {failures(after)}"
        wrong = wrong_outputs(after, batch_inputs, model)
        assert not wrong, f"outputs differ from onnxruntime for requests {wrong[:10]}"
        assert all(p.poll() is None for p in [*workers, cluster.gateway_process])
        assert live_after == 2, "not every worker is back"
    finally:
        chaos_report(report)


# --------------------------------------------------------------------------- 4: burst


BURST_MAX_QUEUE = 64
BURST_FACTOR = 4  # arrivals at this many times the measured capacity
BURST_SECONDS = 5.0
BURST_REQUESTS = (1_000, 3_000)  # bounds on the burst's request count
BURST_CONCURRENCY = 256
BURST_TIMEOUT_MS = 10_000
CAPACITY_REQUESTS = 300


@pytest.mark.timeout(120)
def test_burst_past_capacity_is_shed_with_429(
        tmp_path: Path, chaos_redis: ChaosRedis, cluster_factory: Callable[[Path, str], Cluster],
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """Arrivals at four times one worker's capacity: the backlog stays at ``max_queue``, the
    excess gets 429 with Retry-After at once, every accepted request gets its 200 before its
    deadline, nothing else (no 5xx), and the gateway's memory stays flat."""
    model = matmul_chain(width=512, depth=400)  # about 4 ms a request on one core
    cluster, _ = start_mlp_cluster(
        tmp_path, chaos_redis, cluster_factory, model, workers=1,
        config=f"max_queue: {BURST_MAX_QUEUE}\nmax_batch_size: 1\n")
    inputs = np.random.default_rng(4).standard_normal(
        (CAPACITY_REQUESTS + BURST_REQUESTS[1], 512), dtype=np.float32)
    path = "/v2/models/mlp/infer"

    # Capacity: a closed loop at concurrency 32 keeps the worker busy without passing max_queue.
    started = time.monotonic()
    measured = asyncio.run(drive(cluster.base_url, path,
                                 lambda i: infer_body(inputs[i], BURST_TIMEOUT_MS),
                                 concurrency=32, count=CAPACITY_REQUESTS))
    capacity = CAPACITY_REQUESTS / (time.monotonic() - started)
    assert Counter(a.status for a in measured) == {200: CAPACITY_REQUESTS}, failures(measured)

    rate = BURST_FACTOR * capacity
    count = int(min(max(rate * BURST_SECONDS, BURST_REQUESTS[0]), BURST_REQUESTS[1]))
    pid = cluster.gateway_process.pid
    rss_before = rss_mb(pid)
    rss_peak = rss_before

    async def burst() -> list[Answer]:
        nonlocal rss_peak
        load = asyncio.create_task(drive(
            cluster.base_url, path,
            lambda i: infer_body(inputs[CAPACITY_REQUESTS + i], BURST_TIMEOUT_MS),
            concurrency=BURST_CONCURRENCY, count=count, rate_per_s=rate,
            client_timeout_s=BURST_TIMEOUT_MS / 1000 + 10))
        while not load.done():
            rss_peak = max(rss_peak, rss_mb(pid))
            await asyncio.sleep(0.1)
        return await load

    started = time.monotonic()
    answers = asyncio.run(burst())
    burst_s = time.monotonic() - started
    for a in answers:
        a.index += CAPACITY_REQUESTS
    codes = Counter(a.status for a in answers)
    accepted = [a for a in answers if a.status != 429]
    rejected = [a for a in answers if a.status == 429]
    retry_after = Counter(a.retry_after for a in rejected)
    wrong = wrong_outputs(accepted, inputs, model)
    starts = [a.started_s for a in answers]
    offered = (len(answers) - 1) / max(max(starts) - min(starts), 1e-9)  # arrivals, not answers
    report = {
        "capacity_req_per_s": round(capacity), "offered_req_per_s": round(offered),
        "offered_x_capacity": round(offered / capacity, 1),
        "accepted_req_per_s": round(len(accepted) / burst_s),
        "sent": len(answers), "accepted": len(accepted), "rejected": len(rejected),
        "codes": dict(codes), "retry_after": dict(retry_after),
        "accepted_p99_ms": round(percentile([a.latency_s for a in accepted], 99) * 1000, 1),
        "accepted_max_ms": round(max((a.latency_s for a in accepted), default=0) * 1000, 1),
        "rejected_p99_ms": round(percentile([a.latency_s for a in rejected], 99) * 1000, 1),
        "rss_before_mb": round(rss_before, 1), "rss_peak_mb": round(rss_peak, 1),
        "rss_after_mb": round(rss_mb(pid), 1), "wrong_outputs": len(wrong),
    }
    chaos_report(report)
    assert set(codes) <= {200, 429}, f"{dict(codes)}: {failures(answers)}"
    assert rejected and accepted, report
    assert all(a.retry_after is not None and a.retry_after.isdigit() and int(a.retry_after) >= 1
               for a in rejected), retry_after
    assert max(a.latency_s for a in accepted) < BURST_TIMEOUT_MS / 1000, report
    # "At once": a refusal costs no queueing; the bound leaves room for a busy 2-core machine.
    assert percentile([a.latency_s for a in rejected], 99) < 2.0, report
    assert not wrong, f"outputs differ from onnxruntime for requests {wrong[:10]}"
    assert rss_peak - rss_before < 200, report


# --------------------------------------------------------------------------- 5: poison pill


def abandon_entry(client: redis.Redis, correlation: str) -> tuple[bytes, bytes]:
    """Add a valid request entry (counted as queued, as a gateway does) and deliver it to a
    consumer that will never acknowledge it, as if its worker died holding it. Returns the entry
    id and its payload.

    Adding and reading happen in one transaction, so the live worker (blocked in XREADGROUP)
    cannot take the entry first.
    """
    payload = wire.encode_bundle(wire.Bundle.single(correlation, wire.Request(
        {"input": wire.tensor(np.ones((1, 4), np.float32))})))
    entry = pools.RequestEntry((correlation,), replies.reply_list("chaos"), 60_000, 1, payload)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(STREAM, dict(zip(entry.fields()[::2], entry.fields()[1::2], strict=True)))
    pipe.incrby(pools.queued(POOL), 1)
    pipe.xreadgroup(pools.WORKER_GROUP, "dead-consumer", {STREAM: ">"}, count=1)
    entry_id, _, read = pipe.execute()
    assert read and read[0][1][0][0] == entry_id
    return entry_id, payload


def await_reply(client: redis.Redis, cluster: Cluster, timeout_s: int = 15) -> wire.Reply:
    popped = client.blpop([replies.reply_list("chaos")], timeout=timeout_s)
    assert popped is not None, f"no reply within {timeout_s} s\n{cluster.processes.logs()}"
    return wire.decode_reply(popped[1])


@pytest.mark.timeout(60)
def test_entry_delivered_too_often_is_dead_lettered(
        tmp_path: Path, chaos_redis: ChaosRedis, cluster_factory: Callable[[Path, str], Cluster],
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """An entry read by a consumer that never answers (a dead worker's) and already delivered
    ``--max-deliveries`` times is parked in the dead-letter stream, its caller gets a
    ``dead_letter`` reply, and the group's pending list is empty afterwards."""
    repo = write_repo(tmp_path / "models", "mlp", demo.mlp_model())
    cluster = cluster_factory(repo, chaos_redis.url)
    cluster.worker("mlp", "--max-deliveries", "1", "--claim-timeout-ms", "500")
    cluster.wait_workers(POOL, 1)
    client = chaos_redis.client()
    entry_id, payload = abandon_entry(client, "poison-1")
    added = time.monotonic()
    reply = await_reply(client, cluster)
    parked_s = time.monotonic() - added
    dead = client.xrange(pools.dead_letters(POOL))
    report = {"reply_status": reply.status, "parked_after_ms": round(parked_s * 1000, 1),
              "dead_letter_entries": len(dead),
              "pending_after": int(client.xpending(STREAM, pools.WORKER_GROUP)["pending"]),
              "stream_len_after": client.xlen(STREAM)}
    chaos_report(report)
    client.close()
    assert reply.id == "poison-1"
    assert reply.status == wire.ReplyStatus.DEAD_LETTER, reply
    assert "dead" in reply.error, reply.error
    assert len(dead) == 1
    _, parked = dead[0]
    assert parked[b"original_id"] == entry_id and parked[b"ids"] == b"poison-1"
    assert int(parked[b"deliveries"]) > 1
    assert parked[b"payload"] == payload
    assert report["pending_after"] == 0 and report["stream_len_after"] == 0


@pytest.mark.timeout(60)
def test_abandoned_entry_is_answered_without_further_traffic(
        tmp_path: Path, chaos_redis: ChaosRedis, cluster_factory: Callable[[Path, str], Cluster],
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """A dead worker's entry within ``--max-deliveries`` is reclaimed and answered by a live
    worker even when nothing else arrives on the stream (reclaim must not wait for traffic)."""
    model = demo.mlp_model()
    repo = write_repo(tmp_path / "models", "mlp", model)
    cluster = cluster_factory(repo, chaos_redis.url)
    worker = cluster.worker("mlp", "--claim-timeout-ms", "500")
    cluster.wait_workers(POOL, 1)
    client = chaos_redis.client()
    abandon_entry(client, "orphan-1")
    added = time.monotonic()
    reply = await_reply(client, cluster)
    answered_s = time.monotonic() - added
    wait_stream_empty(client, timeout_s=5)
    report = {"reply_status": reply.status, "answered_after_ms": round(answered_s * 1000, 1),
              "dead_letter_entries": client.xlen(pools.dead_letters(POOL)),
              "worker_alive": worker.poll() is None}
    chaos_report(report)
    client.close()
    assert reply.id == "orphan-1"
    assert reply.status == wire.ReplyStatus.OK, reply
    expected = reference(model, np.ones((1, 4), np.float32))
    assert np.allclose(reply.outputs["probabilities"].data, expected, rtol=1e-5)
    assert report["dead_letter_entries"] == 0 and report["worker_alive"]


# --------------------------------------------------------------------------- 6: stale connections


STALE_CONNECTIONS = 8
RESTART_BATCH = 20


@pytest.mark.timeout(60)
def test_gateway_enqueues_on_stale_connections_after_redis_restart(
        tmp_path: Path, chaos_redis: ChaosRedis,
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """Every connection the gateway pooled before Redis restarted is dead afterwards; the first
    write on one must still reach the new Redis instead of failing its batch with a 503 while
    Redis is up. Drives the gateway's own clients and dispatcher directly: no load from outside
    can choose which pooled connection a batch gets."""
    settings = GatewaySettings(models_dir=tmp_path, redis_url=chaos_redis.url)

    async def scenario() -> tuple[int, list[BaseException | wire.Reply]]:
        client, reader = redis_clients(settings)
        dispatcher = Dispatcher(client, reader, "chaos")
        dispatcher.start()
        try:
            # Concurrent commands grow the pool: these connections sit idle through the restart.
            await asyncio.gather(*(client.ping() for _ in range(STALE_CONNECTIONS)))
            chaos_redis.kill()
            chaos_redis.start()
            deadline_ms = int(time.time() * 1000) + 10_000
            request = wire.Request({"input": wire.tensor(np.ones((1, 4), np.float32))})
            # max_rows 0: no bundling, so each request is an entry of its own to count.
            futures = [dispatcher.submit(POOL, request, deadline_ms, 0)
                       for _ in range(RESTART_BATCH)]
            # No worker answers: the batch is written when the entries are in the stream.
            until = time.monotonic() + 5
            while (await client.xlen(STREAM) < RESTART_BATCH and time.monotonic() < until
                   and not any(f.done() for f in futures)):
                await asyncio.sleep(0.01)
            written = int(await client.xlen(STREAM))
        finally:
            await dispatcher.stop()
            await client.aclose()
            await reader.aclose()
        return written, await asyncio.gather(*futures, return_exceptions=True)

    written, outcomes = asyncio.run(scenario())
    failed = [o for o in outcomes if "shutting down" not in str(o)]
    chaos_report({"submitted": RESTART_BATCH, "written": written,
                  "failed_before_stop": len(failed)})
    assert written == RESTART_BATCH, f"{written} entries reached Redis: {failed[:1]}"
    assert not failed, failed[:1]


# --------------------------------------------------------------------------- 7: slow batches


# Batches of twice the claim timeout. (Before workers took over only dead workers' entries,
# an idle worker took over any entry idle for max(claim timeout, 4 x its own last step, which
# was its 500 ms blocking read): 2 s here, so every batch over 2 s ran again elsewhere.)
SLOW_CLAIM_TIMEOUT_MS = 2_000
SLOW_BATCH_S = 4.0  # one call, a full batch, on one core
SLOW_WIDTH = 1_024
SLOW_MAX_BATCH = 64
SLOW_ROWS_PER_CALL = SLOW_MAX_BATCH
SLOW_CALLS = 6
SLOW_CONCURRENCY = 2  # three workers: one waits idle while two run, as when a pool has room
SLOW_TIMEOUT_MS = 90_000


def _one_core_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def slow_chain() -> tuple[onnx.ModelProto, float]:
    """A chain whose full batch takes about SLOW_BATCH_S on one core of this machine (the
    depth is measured, not guessed), and that estimate."""
    probe_depth = 20
    session = _one_core_session(matmul_chain(SLOW_WIDTH, probe_depth))
    x = np.ones((SLOW_MAX_BATCH, SLOW_WIDTH), np.float32)
    session.run(None, {"input": x})
    started = time.perf_counter()
    session.run(None, {"input": x})
    per_layer_s = (time.perf_counter() - started) / probe_depth
    depth = max(1, round(SLOW_BATCH_S / per_layer_s))
    return matmul_chain(SLOW_WIDTH, depth), depth * per_layer_s


def requests_run(client: redis.Redis, pool: str) -> int:
    """Requests the pool's workers answered, from their per-second counters."""
    keys = list(client.scan_iter(match=pools.stats(pool, 0).replace(":0", ":*")))
    return sum(int(client.hget(key, "completed") or 0) for key in keys)


@pytest.mark.timeout(180)
def test_batches_longer_than_the_claim_timeout_run_once(
        tmp_path: Path, chaos_redis: ChaosRedis, cluster_factory: Callable[[Path, str], Cluster],
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """Three live workers and batches that take twice the claim timeout (more, with three
    workers on two cores): no worker takes over another's entries, every call runs exactly
    once, none is dead-lettered, and every caller gets its 200."""
    model, batch_s = slow_chain()
    cluster, workers = start_mlp_cluster(
        tmp_path, chaos_redis, cluster_factory, model, workers=3,
        config=f"max_batch_size: {SLOW_MAX_BATCH}\n",
        worker_flags=("--claim-timeout-ms", str(SLOW_CLAIM_TIMEOUT_MS)))
    rng = np.random.default_rng(7)
    inputs = rng.standard_normal((SLOW_CALLS, SLOW_ROWS_PER_CALL, SLOW_WIDTH),
                                 dtype=np.float32)

    def body(i: int) -> bytes:
        return orjson.dumps({
            "inputs": [{"name": "input", "shape": [SLOW_ROWS_PER_CALL, SLOW_WIDTH],
                        "datatype": "FP32", "data": inputs[i].reshape(-1).tolist()}],
            "parameters": {"timeout_ms": SLOW_TIMEOUT_MS}})

    started = time.monotonic()
    answers = asyncio.run(drive(cluster.base_url, "/v2/models/mlp/infer", body,
                                concurrency=SLOW_CONCURRENCY, count=SLOW_CALLS, budget_s=120,
                                client_timeout_s=SLOW_TIMEOUT_MS / 1000))
    elapsed_s = time.monotonic() - started
    client = chaos_redis.client()
    wait_stream_empty(client)
    # Workers flush their counters with every heartbeat (1 s): wait until every call counts.
    wait_until(lambda: requests_run(client, POOL) >= SLOW_CALLS, 10, "the run counters")
    time.sleep(2.0)  # two more heartbeats: a call run twice would show by now
    runs = requests_run(client, POOL)
    codes = Counter(a.status for a in answers)
    # Rows are independent in this model: four rows of each answer are checked, not all.
    session = _one_core_session(model)
    wrong = [a.index for a in answers if a.status == 200 and not np.allclose(
        output_of(a)[:4], session.run(None, {"input": inputs[a.index][:4]})[0],
        rtol=1e-4, atol=1e-5)]
    reclaimed = sum(reclaimed_in(cluster.log(f"worker-{i}")) for i in range(3))
    report = {
        "one_core_batch_s": round(batch_s, 2), "claim_timeout_ms": SLOW_CLAIM_TIMEOUT_MS,
        "batch_x_claim_timeout": round(batch_s * 1000 / SLOW_CLAIM_TIMEOUT_MS, 1),
        "sent": len(answers), "ok": codes[200], "codes": dict(codes),
        "runs": runs, "runs_per_call": round(runs / max(len(answers), 1), 2),
        "reclaimed": reclaimed, "dead_letters": client.xlen(pools.dead_letters(POOL)),
        "max_s": round(max((a.latency_s for a in answers), default=0), 2),
        "seconds": round(elapsed_s, 1), "wrong_outputs": len(wrong),
    }
    chaos_report(report)
    client.close()
    assert codes == {200: SLOW_CALLS}, f"{dict(codes)}: {failures(answers)}"
    assert runs == SLOW_CALLS, report
    assert reclaimed == 0 and report["dead_letters"] == 0, report
    assert not wrong, wrong
    assert all(w.poll() is None for w in workers)


# --------------------------------------------------------------------------- 8: Redis full


FULL_CALLS = 3_000
FULL_CONCURRENCY = 16
FULL_RATE_PER_S = 400
FULL_AFTER = 600  # answers before Redis fills up
FULL_FOR_S = 2.0
FULL_TIMEOUT_MS = 15_000
FULL_INJECTED = 40  # entries the test adds itself, read while Redis is full


@pytest.mark.timeout(120)
def test_redis_at_maxmemory_mid_load_loses_no_answer(
        tmp_path: Path, chaos_redis: ChaosRedis, cluster_factory: Callable[[Path, str], Cluster],
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """Redis hits maxmemory (noeviction) under load for two seconds, with entries in the
    workers' hands: callers get 503 or their answer, no entry is acknowledged without its
    answer written, the workers stay up and serve afterwards.

    The workers are paused for the moment Redis fills, with entries waiting: the test's own
    entries (answered to a reply list the test reads) are then run while Redis refuses every
    answer, and each must still be answered exactly once when Redis has room again."""
    model = demo.mlp_model(inputs=16, hidden=64, outputs=4, layers=2)
    cluster, workers = start_mlp_cluster(tmp_path, chaos_redis, cluster_factory, model,
                                         workers=2)
    inputs = np.random.default_rng(8).standard_normal((FULL_CALLS, 16), dtype=np.float32)
    client = chaos_redis.client()
    moments: dict[str, float] = {}
    injected: list[str] = []

    def fill() -> None:
        for worker in workers:
            os.kill(worker.pid, signal.SIGSTOP)
        pipe = client.pipeline(transaction=False)
        for i in range(FULL_INJECTED):
            correlation = f"full-{i}"
            payload = wire.encode_bundle(wire.Bundle.single(correlation, wire.Request(
                {"input": wire.tensor(inputs[i:i + 1])})))
            entry = pools.RequestEntry((correlation,), replies.reply_list("chaos"),
                                       FULL_TIMEOUT_MS, 1, payload)
            pipe.xadd(STREAM, dict(zip(entry.fields()[::2], entry.fields()[1::2], strict=True)))
            pipe.incrby(pools.queued(POOL), 1)
            injected.append(correlation)
        pipe.execute()
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        moments["full"] = time.monotonic()
        for worker in workers:
            os.kill(worker.pid, signal.SIGCONT)
        time.sleep(FULL_FOR_S)
        client.config_set("maxmemory", 0)
        moments["room"] = time.monotonic()

    async def on_answer(answer: Answer, answered: int) -> None:
        if answered == FULL_AFTER:
            await asyncio.to_thread(fill)

    answers = asyncio.run(drive(
        cluster.base_url, "/v2/models/mlp/infer",
        lambda i: infer_body(inputs[i], FULL_TIMEOUT_MS), concurrency=FULL_CONCURRENCY,
        count=FULL_CALLS, rate_per_s=FULL_RATE_PER_S, budget_s=60,
        client_timeout_s=FULL_TIMEOUT_MS / 1000 + 5, on_answer=on_answer))
    assert "room" in moments, f"Redis never filled: {len(answers)} answers"
    wait_stream_empty(client, timeout_s=15)
    got: Counter[str] = Counter()
    while (raw := client.lpop(replies.reply_list("chaos"))) is not None:
        for part in wire.unbundle(wire.decode_reply(raw)):
            got[part.id] += 1
    codes = Counter(a.status for a in answers)
    during = [a for a in answers if moments["full"] <= a.started_s < moments["room"]]
    after = asyncio.run(drive(cluster.base_url, "/v2/models/mlp/infer",
                              lambda i: infer_body(inputs[i], FULL_TIMEOUT_MS),
                              concurrency=8, count=100, budget_s=20))
    logs = "".join(cluster.log(f"worker-{i}") for i in range(2))
    report = {
        "sent": len(answers), "ok": codes[200], "503": codes[503],
        "other_codes": {c: n for c, n in codes.items() if c not in (200, 503)},
        "sent_while_full": len(during),
        "503_while_full": sum(a.status == 503 for a in during),
        "injected": FULL_INJECTED, "injected_answered": sum(1 for c in injected if got[c]),
        "acked_without_answer": sum(1 for c in injected if not got[c]),
        "answered_twice": sum(1 for c in injected if got[c] > 1),
        "workers_alive": sum(w.poll() is None for w in workers),
        "after_ok": sum(a.status == 200 for a in after),
        "wrong_outputs": len(wrong_outputs(answers, inputs, model)),
        "worker_said_out_of_memory": "out of memory" in logs,
    }
    chaos_report(report)
    client.close()
    assert report["acked_without_answer"] == 0, report
    assert report["workers_alive"] == 2, logs[-3000:]
    assert set(codes) <= {200, 503}, f"{dict(codes)}: {failures(answers)}"
    assert report["503_while_full"] > 0, report
    assert all(b"out of memory" in a.body for a in answers if a.status == 503), \
        failures(answers)
    assert report["after_ok"] == 100, failures(after)
    assert report["wrong_outputs"] == 0
    assert report["worker_said_out_of_memory"]


# --------------------------------------------------------------------------- 9: bad data


BAD_DATA_REQUESTS = 2_000


def gateway_metric(base_url: str, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when absent)."""
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in httpx.get(f"{base_url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + (wanted if labels else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def reply_list_in_use(redis_url: str) -> str:
    """The gateway's reply list, read off the next request entry it adds (entries are deleted
    once answered, so a reader blocked on the stream's end is the sure way to see one)."""
    watcher = redis.Redis.from_url(redis_url, socket_timeout=30)
    try:
        entries = watcher.xread({STREAM: "$"}, count=1, block=10_000)
    finally:
        watcher.close()
    assert entries, "no request entry within 10 s: is there load?"
    return str(entries[0][1][0][1][b"reply_to"].decode())


@pytest.mark.timeout(120)
def test_malformed_reply_and_pool_key_mid_load_are_counted_and_calls_go_on(
        tmp_path: Path, chaos_redis: ChaosRedis, cluster_factory: Callable[[Path, str], Cluster],
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """Mid-load, replies that are not valid wire format land on the gateway's reply list and a
    pool key gets a value no worker count can be and a key of another type: every call still
    gets its own correct 200, and the bad data is logged and counted, not fatal (issue 12)."""
    model = mlp_heavy()
    cluster, _ = start_mlp_cluster(tmp_path, chaos_redis, cluster_factory, model, workers=2)
    inputs = np.random.default_rng(7).standard_normal((BAD_DATA_REQUESTS, 64), dtype=np.float32)
    client = chaos_redis.client()

    def inject() -> dict[str, Any]:
        reply_to = reply_list_in_use(chaos_redis.url)
        client.rpush(reply_to, msgpack.packb({  # issue 12's reproduction
            "v": wire.WIRE_VERSION, "ids": ["999998", "999999"], "rows": [1, 1],
            "status": "ok", "outputs": {"x": ["JSON", [2], 5]}}))
        client.rpush(reply_to, b"\x00 not msgpack", msgpack.packb([1, 2, 3]))
        client.set(pools.desired(POOL), "1" + "0" * 400, ex=60)
        client.delete(pools.starting_set(POOL))
        client.set(pools.starting_set(POOL), "not a sorted set")
        return {"injected_at": time.monotonic()}

    answers, figures, elapsed_s = run_with_signal(cluster, inject, inputs)
    codes = Counter(a.status for a in answers)
    wrong = wrong_outputs(answers, inputs, model)
    log = cluster.log("gateway")
    report = {
        "sent": len(answers), "ok": codes[200],
        "errors": sum(n for code, n in codes.items() if code != 200),
        "wrong_outputs": len(wrong),
        "dropped_replies": gateway_metric(cluster.base_url, "modelgate_dropped_replies_total",
                                          reason="malformed"),
        "malformed_pool_reads": gateway_metric(
            cluster.base_url, "modelgate_malformed_records_total", record="pool"),
        "background_errors": sum(gateway_metric(cluster.base_url,
                                                "modelgate_background_errors_total", task=t)
                                 for t in ("dispatch-reader", "dispatch-writer", "pool-monitor")),
        "ready_after": httpx.get(f"{cluster.base_url}/v2/health/ready").status_code,
        **latency_figures(answers, elapsed_s),
    }
    chaos_report(report)
    assert figures, "nothing was injected"
    assert codes == {200: len(inputs)}, f"{dict(codes)}: {failures(answers)}"
    assert not wrong, f"outputs differ from onnxruntime for requests {wrong[:10]}"
    assert report["dropped_replies"] == 3, report
    # Monitor rounds go on after the load: the bad pool key is read, and counted, again.
    wait_until(lambda: gateway_metric(cluster.base_url, "modelgate_malformed_records_total",
                                      record="pool") >= 2, 10, "the bad pool key to be counted")
    assert report["background_errors"] == 0 and report["ready_after"] == 200, report
    log = cluster.log("gateway")  # again: a quick load can end before the monitor's first round
    assert "dropped a malformed reply" in log and "skipped bad data in pool" in log, log[-2000:]
    client.close()


# --------------------------------------------------------------------------- 10: idle and slow


IDLE_SOCKETS = 500
SLOWLORIS_SOCKETS = 50
# A modest load for two shared cores: 200 calls/s from 16 connections, 4.5 s a round; rounds
# alternate alone and beside the sockets, and each side's p99 is the median of its rounds, so
# hiccups of the shared machine do not decide the comparison either way. Five rounds, not
# three: the p99 alone was seen at 3.4, 6.7 and 5.9 ms in three rounds of one run, and a median
# of three such took a sound run past the bound once in several.
HOLD_RATE_PER_S = 200
HOLD_REQUESTS = 900
HOLD_CONCURRENCY = 16
HOLD_ROUNDS = 5
P99_FACTOR = 1.5
# Below a few milliseconds a p99 is scheduling noise on two shared cores: a run-to-run
# difference under this is not the sockets' doing, and 1.5x of it is not a meaningful bound.
P99_NOISE_MS = 3.0


@pytest.mark.timeout(180)
def test_idle_and_slowloris_sockets_leave_the_p99_of_a_load_alone(
        tmp_path: Path, chaos_redis: ChaosRedis, cluster_factory: Callable[[Path, str], Cluster],
        chaos_report: Callable[[dict[str, Any]], None]) -> None:
    """The same bounded load alone and beside 500 idle and 50 slowloris sockets (held by a
    process of their own, so the client measuring is not slowed by them): its p99 beside them
    is within 1.5x of its p99 alone, and no call fails."""
    model = mlp_heavy()
    cluster, _ = start_mlp_cluster(tmp_path, chaos_redis, cluster_factory, model, workers=1)
    inputs = np.random.default_rng(8).standard_normal((HOLD_REQUESTS, 64), dtype=np.float32)
    port = httpx.URL(cluster.base_url).port
    assert port is not None

    def load() -> list[Answer]:
        return asyncio.run(drive(
            cluster.base_url, "/v2/models/mlp/infer", lambda i: infer_body(inputs[i], 10_000),
            concurrency=HOLD_CONCURRENCY, count=HOLD_REQUESTS, rate_per_s=HOLD_RATE_PER_S,
            budget_s=30))

    def p99_ms(answers: list[Answer]) -> float:
        return percentile([a.latency_s for a in answers], 99) * 1000

    held = []
    rounds: dict[str, list[list[Answer]]] = {"alone": [], "beside": []}
    load()  # warm up: connections, the worker's session, the gateway's caches
    for _ in range(HOLD_ROUNDS):
        rounds["alone"].append(load())
        sockets = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.sockets", str(port), str(IDLE_SOCKETS),
             str(SLOWLORIS_SOCKETS)], cwd=REPO_ROOT, preexec_fn=child_preexec)
        try:
            wait_until(lambda: gateway_metric(cluster.base_url, "modelgate_connections")
                       >= IDLE_SOCKETS + SLOWLORIS_SOCKETS, 20, "the sockets to be held")
            held.append(int(gateway_metric(cluster.base_url, "modelgate_connections")))
            rounds["beside"].append(load())
        finally:
            stop_process(sockets, timeout_s=5)
    p99 = {side: sorted(p99_ms(answers) for answers in runs)[HOLD_ROUNDS // 2]
           for side, runs in rounds.items()}
    report = {
        "rate_per_s": HOLD_RATE_PER_S, "requests_per_round": HOLD_REQUESTS,
        "rounds": HOLD_ROUNDS, "idle_sockets": IDLE_SOCKETS,
        "slowloris_sockets": SLOWLORIS_SOCKETS, "connections_held": held,
        "p99_ms_alone_rounds": [round(p99_ms(a), 1) for a in rounds["alone"]],
        "p99_ms_beside_rounds": [round(p99_ms(a), 1) for a in rounds["beside"]],
        "p99_ms_alone": round(p99["alone"], 1), "p99_ms_beside": round(p99["beside"], 1),
        "p99_ratio": round(p99["beside"] / max(p99["alone"], 1e-9), 2),
        "closed_header_timeout": gateway_metric(
            cluster.base_url, "modelgate_connections_closed_total", reason="header_timeout"),
    }
    chaos_report(report)
    for runs in rounds.values():
        for answers in runs:
            codes = Counter(a.status for a in answers)
            assert codes == {200: HOLD_REQUESTS}, f"{dict(codes)}: {failures(answers)}"
    assert p99["beside"] <= max(P99_FACTOR * p99["alone"], p99["alone"] + P99_NOISE_MS), report
