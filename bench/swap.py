"""``make bench-swap``: rolling out versions under load, measured.

Three scenes, each on a ``modelgate up`` of its own, on the demo MLP with a different seed per
version (so every answer shows which version computed it, checked against ONNX Runtime run on
that version's file):

- **swap**: steady closed-loop load; v2 is placed and loaded (explicit mode; both versions
  served, v2 the default), then v1 is unloaded (the policy changed to the latest version only,
  and loaded again). Reports failed calls, answers whose outputs disagree with their
  ``model_version``, the steady p99 and the p99 over the 5 s after each change, and how long
  after the load call the first v2 answer came.
- **poll**: a ``2/`` folder dropped into the repository of a poll-mode ``up`` under load: how
  long until v2 answers, and the failed calls meanwhile.
- **cycles**: load and unload the model N times: the gateway's RSS growth, and the worker
  processes and Redis keys left behind.

The load runs at a concurrency the machine serves with headroom (each caller pauses between
calls, ``--pause-ms``): swap figures at saturation would measure the queue, not the swap. Prints
every figure with the CPU model; ``--json`` writes them too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import redis

from bench.results import _cpu_model
from modelgate.cli import demo
from modelgate.core.embedded_redis import free_port

ADMIN = "bench-admin-key"
X = np.random.default_rng(7).standard_normal((1, 4)).astype(np.float32)
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": X.ravel().tolist()}]}
AFTER_CHANGE_S = 5.0
KEYS_GONE_S = 10.0  # the decider ticks every second


def place(root: Path, version: int, seed: int) -> None:
    """A version folder written aside and renamed in: no scan sees half a file."""
    (root / "mlp").mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{version}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(demo.mlp_model(seed=seed).SerializeToString())
    os.replace(staging, root / "mlp" / str(version))


@dataclass
class Up:
    url: str
    process: subprocess.Popen[bytes]
    state_dir: Path
    log: Path

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url((self.state_dir / "redis-url").read_text().strip())

    def pids(self, word: str) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            if parent == self.process.pid and word in command:
                found.append(int(entry.name))
        return found

    def rss_kb(self, pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


@contextlib.contextmanager
def up(root: Path, work: Path, *args: str) -> Iterator[Up]:
    port = free_port()
    state_dir = work / "state"
    log = work / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelgate", "up", "--models", str(root), "--port", str(port),
             "--state-dir", str(state_dir), "--admin-api-key", ADMIN,
             # HTTP only: the default gRPC port may be another server's on this machine.
             "--grpc-port", "0", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Up(f"http://127.0.0.1:{port}", process, state_dir, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{running.url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`modelgate up` did not get ready:\n{log.read_text()}")
            time.sleep(0.2)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Call:
    sent: float  # monotonic
    latency_s: float
    status: int
    version: str = ""
    matches: bool = True


class Load:
    """Closed-loop callers, each pausing between calls; every answer checked."""

    def __init__(self, url: str, root: Path, concurrency: int, pause_s: float) -> None:
        self.url = url
        self.root = root
        self.concurrency = concurrency
        self.pause_s = pause_s
        self.calls: list[Call] = []
        self.expected: dict[str, np.ndarray] = {}
        self.stop = asyncio.Event()

    def _expected(self, version: str) -> np.ndarray:
        if version not in self.expected:
            session = ort.InferenceSession(str(self.root / "mlp" / version / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
            self.expected[version] = session.run(None, {"input": X})[0]
        return self.expected[version]

    async def _caller(self, client: httpx.AsyncClient) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                response = await client.post("/v2/models/mlp/infer", json=BODY)
            except httpx.HTTPError:
                self.calls.append(Call(sent, time.monotonic() - sent, 0))
                continue
            call = Call(sent, time.monotonic() - sent, response.status_code)
            if response.status_code == 200:
                body = response.json()
                call.version = body["model_version"]
                got = np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(1, -1)
                call.matches = bool(np.allclose(got, self._expected(call.version),
                                                rtol=1e-5, atol=1e-6))
            self.calls.append(call)
            await asyncio.sleep(self.pause_s)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=30.0, limits=limits,
                                     headers={"authorization": f"Bearer {ADMIN}"}) as client:
            await asyncio.gather(*(self._caller(client) for _ in range(self.concurrency)))

    def p99_ms(self, start: float, end: float) -> float | None:
        latencies = [c.latency_s for c in self.calls if start <= c.sent < end and c.status]
        return float(np.percentile(latencies, 99) * 1000) if latencies else None


async def _admin(url: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=180.0,
                                 headers={"authorization": f"Bearer {ADMIN}"}) as client:
        return await client.post(path)


@dataclass
class SwapFigures:
    concurrency: int
    pause_ms: float
    duration_s: float
    calls: int
    calls_per_s: float
    failed: int
    mismatched: int
    by_version: dict[str, int]
    steady_p99_ms: float | None
    p99_after_load_ms: float | None
    p99_after_unload_ms: float | None
    load_call_s: float
    first_v2_answer_after_load_call_s: float | None
    unload_call_s: float
    failures: list[str] = field(default_factory=list)


async def _swap(url: str, root: Path, concurrency: int, pause_s: float,
                duration_s: float) -> SwapFigures:
    load = Load(url, root, concurrency, pause_s)
    runner = asyncio.create_task(load.run())
    started = time.monotonic()
    third = duration_s / 3
    await asyncio.sleep(third)
    place(root, 2, seed=2)
    load_at = time.monotonic()
    loaded = await _admin(url, "/v2/repository/models/mlp/load")
    load_call_s = time.monotonic() - load_at
    await asyncio.sleep(max(0.0, started + 2 * third - time.monotonic()))
    (root / "mlp" / "config.yaml").write_text("version_policy: {latest: {num_versions: 1}}\n")
    unload_at = time.monotonic()
    unloaded = await _admin(url, "/v2/repository/models/mlp/load")
    unload_call_s = time.monotonic() - unload_at
    await asyncio.sleep(max(0.0, started + duration_s - time.monotonic()))
    load.stop.set()
    await runner
    calls = load.calls
    failures = [f"{c.status}" for c in calls if c.status != 200][:10]
    if loaded.status_code != 200 or unloaded.status_code != 200:
        failures.append(f"load {loaded.status_code} {loaded.text[:200]}; "
                        f"second load {unloaded.status_code} {unloaded.text[:200]}")
    first_v2 = min((c.sent + c.latency_s for c in calls if c.version == "2"), default=None)
    by_version: dict[str, int] = {}
    for call in calls:
        if call.version:
            by_version[call.version] = by_version.get(call.version, 0) + 1
    elapsed = time.monotonic() - started
    return SwapFigures(
        concurrency=concurrency, pause_ms=pause_s * 1000, duration_s=round(elapsed, 1),
        calls=len(calls), calls_per_s=round(len(calls) / elapsed, 1),
        failed=sum(c.status != 200 for c in calls),
        mismatched=sum(not c.matches for c in calls), by_version=by_version,
        steady_p99_ms=load.p99_ms(started + 2.0, load_at),
        p99_after_load_ms=load.p99_ms(load_at, load_at + AFTER_CHANGE_S),
        p99_after_unload_ms=load.p99_ms(unload_at, unload_at + AFTER_CHANGE_S),
        load_call_s=round(load_call_s, 2),
        first_v2_answer_after_load_call_s=(round(first_v2 - load_at, 2)
                                           if first_v2 is not None else None),
        unload_call_s=round(unload_call_s, 2), failures=failures)


def swap(work: Path, concurrency: int, pause_s: float, duration_s: float) -> SwapFigures:
    root = work / "models"
    place(root, 1, seed=1)
    (root / "mlp" / "config.yaml").write_text("version_policy: {latest: {num_versions: 2}}\n")
    with up(root, work, "--model-control-mode", "explicit", "--load-model", "mlp",
            "--min-workers", "1") as running:
        return asyncio.run(_swap(running.url, root, concurrency, pause_s, duration_s))


@dataclass
class PollFigures:
    poll_s: float
    serving_after_drop_s: float | None
    calls: int
    failed: int
    mismatched: int


async def _poll(url: str, root: Path, concurrency: int, pause_s: float,
                timeout_s: float) -> PollFigures:
    load = Load(url, root, concurrency, pause_s)
    runner = asyncio.create_task(load.run())
    await asyncio.sleep(2.0)
    dropped = time.monotonic()
    place(root, 2, seed=2)
    serving: float | None = None
    while time.monotonic() - dropped < timeout_s:
        first = [c.sent for c in load.calls if c.version == "2"]
        if first:
            serving = min(first) - dropped
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)
    load.stop.set()
    await runner
    return PollFigures(0.0, round(serving, 2) if serving is not None else None,
                       len(load.calls), sum(c.status != 200 for c in load.calls),
                       sum(not c.matches for c in load.calls))


def poll(work: Path, poll_s: float, concurrency: int, pause_s: float) -> PollFigures:
    root = work / "models"
    place(root, 1, seed=1)
    with up(root, work, "--model-control-mode", "poll", "--repository-poll-secs",
            str(poll_s)) as running:
        figures = asyncio.run(_poll(running.url, root, concurrency, pause_s, 60.0))
    figures.poll_s = poll_s
    return figures


@dataclass
class CycleFigures:
    cycles: int
    seconds: float
    gateway_rss_kb_before: int
    gateway_rss_kb_after: int
    rss_growth_pct: float
    workers_left: int
    pool_keys_left: list[str]
    failed_calls: list[str]


def cycles(work: Path, count: int) -> CycleFigures:
    root = work / "models"
    place(root, 1, seed=1)
    with up(root, work, "--model-control-mode", "explicit", "--load-model", "mlp") as running:
        client = httpx.Client(base_url=running.url, timeout=180.0,
                              headers={"authorization": f"Bearer {ADMIN}"})
        (gateway,) = running.pids(" gateway ")
        failed: list[str] = []
        # One cycle first, so what the first load and unload allocate once is not "growth".
        for path in ("unload", "load"):
            client.post(f"/v2/repository/models/mlp/{path}")
        before = running.rss_kb(gateway)
        started = time.monotonic()
        for i in range(count):
            for path in ("unload", "load"):
                response = client.post(f"/v2/repository/models/mlp/{path}")
                if response.status_code != 200:
                    failed.append(f"cycle {i} {path}: {response.status_code} {response.text}")
            answer = client.post("/v2/models/mlp/infer", json=BODY)
            if answer.status_code != 200:
                failed.append(f"cycle {i} infer: {answer.status_code} {answer.text}")
        seconds = time.monotonic() - started
        client.post("/v2/repository/models/mlp/unload")
        after = running.rss_kb(gateway)
        deadline = time.monotonic() + 30
        while running.pids(" worker ") and time.monotonic() < deadline:
            time.sleep(0.2)
        workers_left = len(running.pids(" worker "))
        # A worker that was still starting when its pool went can make its stream again; the
        # decider removes such a stream at its next ticks (autoscaler/control.py
        # REMOVED_SWEEP_S): keys left are those still there after a few of them.
        deadline = time.monotonic() + KEYS_GONE_S
        while True:
            keys = sorted(k.decode() for k in running.redis().scan_iter(match="mg:pool:*"))
            if not keys or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        client.close()
    return CycleFigures(count, round(seconds, 1), before, after,
                        round(100.0 * (after - before) / before, 2), workers_left, keys, failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default="swap,poll,cycles")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pause-ms", type=float, default=40.0,
                        help="each caller's pause between calls (headroom, not saturation)")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--poll-s", type=float, default=2.0)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]
    figures: dict[str, Any] = {"cpu_model": _cpu_model(), "nproc": os.cpu_count()}
    print(f"bench-swap on {figures['nproc']} CPUs ({figures['cpu_model']})", flush=True)
    for scene in scenes:
        work = Path(tempfile.mkdtemp(prefix=f"modelgate-bench-{scene}-"))
        try:
            if scene == "swap":
                result: Any = swap(work, args.concurrency, args.pause_ms / 1000,
                                   args.duration_s)
            elif scene == "poll":
                result = poll(work, args.poll_s, args.concurrency, args.pause_ms / 1000)
            elif scene == "cycles":
                result = cycles(work, args.cycles)
            else:
                parser.error(f"unknown scene {scene!r}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        figures[scene] = asdict(result)
        print(f"{scene}: {json.dumps(asdict(result), indent=2)}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
