"""``make bench-jobs``: batch prediction jobs on the demo MLP, measured.

One stack for every scene: a Redis, ``--workers`` workers of the MLP, a gateway with a jobs
folder and a coordinator, each its own process (so a scene can SIGKILL one). Scenes:

- **online**: the online path's rows/s on those workers (closed loop, ``--chunk-rows`` rows per
  call, ``--online-concurrency`` callers), the figure job throughput is compared with.
- **throughput**: a ``--rows`` job alone on the same workers (NPY in, JSONL out): its rows/s,
  compared with the online scene's.
- **kill**: a ``--rows`` job (NPY in, JSONL out); a worker is SIGKILLed at a third and the
  coordinator at two thirds (a new one of each started). Every row id exactly once in the
  output, every output equal to ONNX Runtime run directly on the file, the chunks redone per
  kill (the killed worker's pending chunks; the coordinator's kill redoes none: results are
  kept), and the job's rows/s (over the whole run, and over the run minus the coordinator's
  takeover, which waits for the lease to lapse).
- **p99**: an open-loop online load of single-row calls at ``--online-rate`` calls/s (sized to
  stay under half the machine) alone, then with a job running: p99 of each, and the ratio.
- **cancel**: a running job cancelled: seconds from the call until its chunks are withdrawn
  and the coordinator has let it go (its state is ``cancelled`` from the call on).
- **malformed**: a CSV with 1% malformed rows ends ``completed_with_failures`` with exactly
  those rows as error records; ``retry`` fails only them again.

Prints every figure and the CPU model; ``--json`` writes them too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import redis

from bench.results import _cpu_model
from modelgate.cli import demo
from modelgate.core.embedded_redis import free_port, start_redis
from modelgate.core.process import child_preexec, stop_process
from modelgate.core.store import jobs as job_store

FINAL = ("succeeded", "completed_with_failures", "failed", "cancelled")


class Stack:
    """Redis, workers, a gateway with a jobs folder and a coordinator, as child processes."""

    def __init__(self, work: Path, workers: int) -> None:
        self.work = work
        self.repo = work / "models"
        self.jobs_dir = work / "jobs"
        self.jobs_dir.mkdir(parents=True)
        demo.write_model(demo.mlp_model(), self.repo, "mlp")
        self.redis_process, self.redis_url = start_redis()
        self.redis = redis.Redis.from_url(self.redis_url)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.workers = [self.spawn("worker", "--models", str(self.repo), "--model", "mlp",
                                   "--redis-url", self.redis_url, "--claim-timeout-ms", "1000")
                        for _ in range(workers)]
        self.spawn("gateway", "--models", str(self.repo), "--redis-url", self.redis_url,
                   "--port", str(self.port), "--grpc-port", "0", "--jobs-dir",
                   str(self.jobs_dir))
        self.coordinator = self.spawn_coordinator()
        self.http = httpx.Client(base_url=self.url, timeout=60.0)
        deadline = time.monotonic() + 120
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not get ready; logs in {work}")
            time.sleep(0.2)

    def spawn(self, label: str, *args: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
        with (self.work / f"{label}-{len(self.children)}.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "modelgate", label, *args],
                                       env=env, stdout=log, stderr=subprocess.STDOUT,
                                       preexec_fn=child_preexec)
        self.children.append((label, process))
        return process

    def spawn_coordinator(self) -> subprocess.Popen[bytes]:
        return self.spawn("coordinator", "--models", str(self.repo), "--redis-url",
                          self.redis_url, "--jobs-dir", str(self.jobs_dir))

    def _ready(self) -> bool:
        try:
            return self.http.get("/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/v2/jobs", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"submit: {response.status_code} {response.text}")
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"/v2/jobs/{job_id}").json()

    def wait(self, job_id: str, states: tuple[str, ...] = FINAL, timeout_s: float = 900.0,
             until_done: int | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.job(job_id)
            if found["state"] in states or (until_done is not None
                                            and found["rows"]["done"] >= until_done):
                return found
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} stuck: {found}")
            time.sleep(0.05)

    def close(self) -> None:
        self.http.close()
        for _, process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
        for _, process in self.children:
            stop_process(process, timeout_s=15, signalled=True)
        stop_process(self.redis_process, timeout_s=5)


@contextmanager
def stack(work: Path, workers: int) -> Iterator[Stack]:
    running = Stack(work, workers)
    try:
        yield running
    finally:
        running.close()


def _infer_body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}


@dataclass
class OnlineFigures:
    rows_per_call: int
    concurrency: int
    duration_s: float
    calls: int
    rows_per_s: float
    failed: int


async def _closed_loop(url: str, body: dict[str, Any], concurrency: int,
                       duration_s: float) -> tuple[int, int]:
    calls = failed = 0
    until = time.monotonic() + duration_s

    async def caller(client: httpx.AsyncClient) -> None:
        nonlocal calls, failed
        while time.monotonic() < until:
            response = await client.post("/v2/models/mlp/infer", json=body)
            calls += 1
            failed += response.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        await asyncio.gather(*(caller(client) for _ in range(concurrency)))
    return calls, failed


def online(running: Stack, rows_per_call: int, concurrency: int,
           duration_s: float) -> OnlineFigures:
    x = np.random.default_rng(0).standard_normal((rows_per_call, 4)).astype(np.float32)
    body = _infer_body(x)
    started = time.monotonic()
    calls, failed = asyncio.run(_closed_loop(running.url, body, concurrency, duration_s))
    elapsed = time.monotonic() - started
    return OnlineFigures(rows_per_call, concurrency, round(elapsed, 2), calls,
                         round((calls - failed) * rows_per_call / elapsed, 1), failed)


@dataclass
class ThroughputFigures:
    rows: int
    seconds: float
    rows_per_s: float
    state: str


def throughput(running: Stack, rows: int) -> ThroughputFigures:
    x = np.random.default_rng(6).standard_normal((rows, 4)).astype(np.float32)
    np.save(running.jobs_dir / "throughput.npy", x)
    started = time.monotonic()
    job = running.submit({"model": "mlp", "input": {"path": "throughput.npy"},
                          "output": {"path": "throughput.jsonl"}})
    done = running.wait(job["id"])
    seconds = time.monotonic() - started
    (running.jobs_dir / "throughput.jsonl").unlink(missing_ok=True)
    return ThroughputFigures(rows, round(seconds, 2), round(rows / seconds, 1), done["state"])


@dataclass
class KillFigures:
    rows: int
    seconds: float
    rows_per_s: float
    rows_per_s_without_takeover: float
    takeover_s: float
    ids_exactly_once: bool
    outputs_equal_ort: bool
    chunks: int
    chunks_issued: int
    chunks_redone_after_worker_kill: int
    chunks_redone_after_coordinator_kill: int
    state: str
    failed_rows: int


def _read_output(path: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Every record's row id, and the outputs of those with outputs, line by line (a million
    records as dicts would take gigabytes)."""
    ids = np.full(rows + 1, -1, dtype=np.int64)
    outputs = np.zeros((rows, 3), dtype=np.float32)
    count = with_outputs = 0
    with path.open("rb") as lines:
        for line in lines:
            record = orjson.loads(line)
            if count <= rows:
                ids[count] = record["row"]
            count += 1
            if "outputs" in record and with_outputs < rows:
                outputs[with_outputs] = record["outputs"]["probabilities"]
                with_outputs += 1
    path.unlink()
    return ids[:count] if count <= rows else ids, outputs[:with_outputs]


def _pending_of(running: Stack, pid: int) -> int:
    """Chunks pending in the job group under the consumer of the worker ``pid``."""
    stream = job_store.job_stream("mlp:1")
    try:
        summary = running.redis.xpending(stream, job_store.JOB_GROUP)
    except redis.ResponseError:
        return 0
    return sum(int(c["pending"]) for c in summary.get("consumers") or ()
               if f"-{pid}-" in (c["name"].decode() if isinstance(c["name"], bytes)
                                 else c["name"]))


def kill(running: Stack, rows: int) -> KillFigures:
    x = np.random.default_rng(1).standard_normal((rows, 4)).astype(np.float32)
    np.save(running.jobs_dir / "kill.npy", x)
    started = time.monotonic()
    job = running.submit({"model": "mlp", "input": {"path": "kill.npy"},
                          "output": {"path": "kill.jsonl"}})
    running.wait(job["id"], until_done=rows // 3)
    victim = next(w for w in running.workers if w.poll() is None)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    redone_worker = _pending_of(running, victim.pid)
    running.workers.append(running.spawn("worker", "--models", str(running.repo), "--model",
                                         "mlp", "--redis-url", running.redis_url,
                                         "--claim-timeout-ms", "1000"))
    running.wait(job["id"], until_done=2 * rows // 3)
    before = running.job(job["id"])["rows"]["done"]
    running.coordinator.send_signal(signal.SIGKILL)
    running.coordinator.wait()
    killed_at = time.monotonic()
    running.coordinator = running.spawn_coordinator()
    running.wait(job["id"], until_done=before + 1)
    takeover_s = time.monotonic() - killed_at
    done = running.wait(job["id"])
    seconds = time.monotonic() - started
    issued = int(running.redis.hget(job_store.progress(job["id"]), "next_seq") or 0)
    chunk_rows = job_store.DEFAULT_CHUNK_ROWS
    ids, got = _read_output(running.jobs_dir / "kill.jsonl", rows)
    session = ort.InferenceSession(str(running.repo / "mlp" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x})[0]
    return KillFigures(
        rows, round(seconds, 2), round(rows / seconds, 1),
        round(rows / max(seconds - takeover_s, 1e-3), 1), round(takeover_s, 2),
        bool(np.array_equal(ids, np.arange(rows))), got.shape == expected.shape and bool(
            np.array_equal(got, expected)), -(-rows // chunk_rows), issued, redone_worker,
        issued - -(-rows // chunk_rows), done["state"], done["rows"]["failed"])


@dataclass
class P99Figures:
    rate_per_s: float
    duration_s: float
    baseline_p99_ms: float | None
    with_job_p99_ms: float | None
    ratio: float | None
    baseline_calls: int
    with_job_calls: int
    failed: int
    job_rows_during: int
    cpu_share_alone: float | None = None  # of the machine's CPUs, the stack and the load


async def _open_loop(url: str, rate: float, duration_s: float) -> tuple[list[float], int]:
    x = np.random.default_rng(2).standard_normal((1, 4)).astype(np.float32)
    body = _infer_body(x)
    latencies: list[float] = []
    failed = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal failed
        sent = time.monotonic()
        response = await client.post("/v2/models/mlp/infer", json=body)
        if response.status_code == 200:
            latencies.append(time.monotonic() - sent)
        else:
            failed += 1

    async with httpx.AsyncClient(base_url=url, timeout=30.0,
                                 limits=httpx.Limits(max_connections=64)) as client:
        tasks = []
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < duration_s:
            tasks.append(asyncio.create_task(one(client)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    return latencies, failed


def _p99(latencies: list[float]) -> float | None:
    return round(float(np.percentile(latencies, 99)) * 1000, 2) if latencies else None


def _process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_s(running: Stack) -> float:
    """CPU-seconds used by the stack's processes and this one (the load generator): the
    machine may be shared, so not the machine's total."""
    own = os.times()
    return (own.user + own.system + _process_cpu_s(running.redis_process.pid)
            + sum(_process_cpu_s(p.pid) for _, p in running.children if p.poll() is None))


def p99(running: Stack, rate: float, duration_s: float, rows: int,
        rounds: int = 3) -> P99Figures:
    """Alternating windows, ``rounds`` times: the load alone, then with a job running (then
    cancelled), so both see the same drift of whatever else runs on the machine."""
    x = np.random.default_rng(3).standard_normal((rows, 4)).astype(np.float32)
    np.save(running.jobs_dir / "p99.npy", x)
    alone: list[float] = []
    with_job: list[float] = []
    failed = job_rows = 0
    cpu_s = wall_s = 0.0
    for _ in range(rounds):
        cpu_before, wall_before = _cpu_s(running), time.monotonic()
        found, refused = asyncio.run(_open_loop(running.url, rate, duration_s))
        cpu_s += _cpu_s(running) - cpu_before
        wall_s += time.monotonic() - wall_before
        alone += found
        failed += refused
        job = running.submit({"model": "mlp", "input": {"path": "p99.npy"},
                              "output": {"path": "p99.jsonl"}})
        running.wait(job["id"], ("running",))
        done_before = running.job(job["id"])["rows"]["done"]
        found, refused = asyncio.run(_open_loop(running.url, rate, duration_s))
        during = running.job(job["id"])
        if during["state"] != "running":
            print("p99: the job ended before the load did; raise --p99-rows", flush=True)
        with_job += found
        failed += refused
        job_rows += during["rows"]["done"] - done_before
        running.http.post(f"/v2/jobs/{job['id']}/cancel")
        running.wait(job["id"])
    base, loaded = _p99(alone), _p99(with_job)
    return P99Figures(rate, duration_s * rounds, base, loaded,
                      round(loaded / base, 2) if base and loaded else None, len(alone),
                      len(with_job), failed, job_rows,
                      round(cpu_s / (wall_s * (os.cpu_count() or 1)), 3))


@dataclass
class CancelFigures:
    seconds_to_stopped: float  # from the call until the job's chunks were withdrawn
    rows_done: int
    rows_total: int
    state: str


def cancel(running: Stack, rows: int) -> CancelFigures:
    x = np.random.default_rng(4).standard_normal((rows, 4)).astype(np.float32)
    np.save(running.jobs_dir / "cancel.npy", x)
    job = running.submit({"model": "mlp", "input": {"path": "cancel.npy"},
                          "output": {"path": "cancel.jsonl"}})
    running.wait(job["id"], until_done=rows // 10)
    started = time.monotonic()
    running.http.post(f"/v2/jobs/{job['id']}/cancel")
    stream = job_store.job_stream("mlp:1")
    # Stopped: the coordinator has withdrawn the job's chunks and let it go.
    while (running.redis.zscore(job_store.ACTIVE, job["id"]) is not None
           or any(fields.get(b"job") == job["id"].encode()
                  for _, fields in running.redis.xrange(stream))):
        if time.monotonic() - started > 60:
            raise RuntimeError(f"job {job['id']} did not stop")
        time.sleep(0.005)
    stopped_s = time.monotonic() - started
    done = running.job(job["id"])
    return CancelFigures(round(stopped_s, 3), done["rows"]["done"], rows, done["state"])


@dataclass
class MalformedFigures:
    rows: int
    malformed: int
    state: str
    error_rows_equal_malformed: bool
    retry_state: str
    retry_error_rows_equal_malformed: bool
    failures: list[str] = field(default_factory=list)


def malformed(running: Stack, rows: int) -> MalformedFigures:
    x = np.random.default_rng(5).standard_normal((rows, 4)).astype(np.float32)
    bad = set(range(50, rows, 100))
    lines = ["id,input[0],input[1],input[2],input[3]"]
    for i, row in enumerate(x):
        values = [repr(float(v)) for v in row]
        if i in bad:
            values[i % 4] = "n/a"
        lines.append(",".join([str(i), *values]))
    (running.jobs_dir / "malformed.csv").write_text("\n".join(lines) + "\n")
    job = running.submit({"model": "mlp", "input": {"path": "malformed.csv", "id_column": "id"},
                          "output": {"path": "malformed.jsonl"}})
    done = running.wait(job["id"])

    def errors() -> set[int]:
        return {r["row"] for r in (orjson.loads(line) for line in
                                   (running.jobs_dir / "malformed.jsonl").read_bytes()
                                   .splitlines()) if "error" in r}

    first = errors()
    response = running.http.post(f"/v2/jobs/{job['id']}/retry")
    failures = [] if response.status_code == 200 else [response.text]
    again = running.wait(job["id"])
    return MalformedFigures(rows, len(bad), done["state"], first == bad, again["state"],
                            errors() == bad, failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default="online,throughput,kill,p99,cancel,malformed")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=job_store.DEFAULT_CHUNK_ROWS,
                        help="rows per online call in the online scene (a chunk's size)")
    parser.add_argument("--online-concurrency", type=int, default=8)
    parser.add_argument("--online-s", type=float, default=15.0)
    parser.add_argument("--online-rate", type=float, default=60.0,
                        help="calls/s of the p99 scene's online load")
    parser.add_argument("--p99-s", type=float, default=10.0, help="per window (3 rounds)")
    parser.add_argument("--p99-rows", type=int, default=2_000_000)
    parser.add_argument("--cancel-rows", type=int, default=1_000_000)
    parser.add_argument("--malformed-rows", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]
    figures: dict[str, Any] = {"cpu_model": _cpu_model(), "nproc": os.cpu_count(),
                               "workers": args.workers}
    print(f"bench-jobs on {figures['nproc']} CPUs ({figures['cpu_model']}), "
          f"{args.workers} workers", flush=True)
    work = Path(tempfile.mkdtemp(prefix="modelgate-bench-jobs-"))
    try:
        with stack(work, args.workers) as running:
            for scene in scenes:
                if scene == "online":
                    result: Any = online(running, args.chunk_rows, args.online_concurrency,
                                         args.online_s)
                elif scene == "throughput":
                    result = throughput(running, args.rows)
                elif scene == "kill":
                    result = kill(running, args.rows)
                elif scene == "p99":
                    result = p99(running, args.online_rate, args.p99_s, args.p99_rows)
                elif scene == "cancel":
                    result = cancel(running, args.cancel_rows)
                elif scene == "malformed":
                    result = malformed(running, args.malformed_rows)
                else:
                    parser.error(f"unknown scene {scene!r}")
                figures[scene] = asdict(result)
                print(f"{scene}: {json.dumps(asdict(result), indent=2)}", flush=True)
        online_rate = figures.get("online", {}).get("rows_per_s")
        if online_rate:
            for scene, key in (("throughput", "rows_per_s"),
                               ("kill", "rows_per_s_without_takeover")):
                if scene in figures:
                    ratio = figures[scene][key] / online_rate
                    figures[f"{scene}_vs_online"] = round(ratio, 2)
                    print(f"job rows/s ({scene}: {key}) / online rows/s: {ratio:.2f}",
                          flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
