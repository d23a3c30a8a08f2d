"""Fixtures for chaos tests: a Redis we can kill and restart, and processes we can signal.

The shared ``serve`` factory starts a fixed set of processes against the session's Redis; the
chaos tests need more control: flags on workers and the gateway (claim timeout, max deliveries),
signals to one process at a time, and a Redis of their own that can be killed and started again
on the same port. They still reuse ``tests.procs`` to spawn, log and stop processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
import redis

from modelgate.cli import demo
from modelgate.core.embedded_redis import free_port, start_redis
from modelgate.core.process import stop_process
from modelgate.core.store import pools
from tests.procs import REPO_ROOT, Processes, wait_until

READY_TIMEOUT_S = 60.0
ARTIFACT = REPO_ROOT / "test-artifacts" / "chaos.json"


# --------------------------------------------------------------------------- Redis


class ChaosRedis:
    """A redis-server on a fixed port that a test may kill and start again on that port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: Any = None

    def start(self) -> None:
        self.process, self.url = start_redis(self.port)

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown; nothing is saved (persistence is off)."""
        self.process.kill()
        self._reap()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, timeout_s=5)
        self._reap()

    def _reap(self) -> None:
        self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    def client(self) -> redis.Redis:
        # Longer than any BLPOP a test makes, so a missing reply fails the test, not the client.
        return redis.Redis.from_url(self.url, socket_timeout=30)


@pytest.fixture
def chaos_redis() -> Iterator[ChaosRedis]:
    server = ChaosRedis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- processes


class Cluster:
    """Workers and one gateway on a model repository, each a real ``modelgate`` process."""

    def __init__(self, repo: Path, redis_url: str, log_dir: Path) -> None:
        self.repo = repo
        self.redis_url = redis_url
        self.processes = Processes(log_dir)
        self.log_dir = log_dir
        self.base_url = ""
        self.gateway_process: Any = None
        self._workers = 0

    def worker(self, model: str, *flags: str) -> Any:
        label = f"worker-{self._workers}"
        self._workers += 1
        return self.processes.spawn(label, [
            "worker", "--models", str(self.repo), "--model", model,
            "--redis-url", self.redis_url, *flags])

    def gateway(self, *flags: str) -> str:
        port = free_port()
        self.gateway_process = self.processes.spawn("gateway", [
            "gateway", "--models", str(self.repo), "--redis-url", self.redis_url,
            "--host", "127.0.0.1", "--port", str(port), *flags])
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    def log(self, label: str) -> str:
        return (self.log_dir / f"{label}.log").read_text(errors="replace")

    def wait_workers(self, pool: str, count: int) -> None:
        """Until ``count`` workers of ``pool`` have sent a heartbeat."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            wait_until(lambda: client.zcard(pools.worker_set(pool)) >= count, READY_TIMEOUT_S,
                       f"{count} workers on {pool}", self.processes.check_alive,
                       self.processes.logs)
        finally:
            client.close()

    def wait_ready(self) -> None:
        """Until the gateway says every model has a live worker (``/v2/health/ready``)."""
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            def ready() -> bool:
                try:
                    return client.get("/v2/health/ready").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, READY_TIMEOUT_S, f"{self.base_url}/v2/health/ready",
                       self.processes.check_alive, self.processes.logs)

    def stop(self) -> None:
        self.processes.stop(labels_first=("gateway",))


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[[Path, str], Cluster]]:
    """``cluster_factory(repo, redis_url)``; every process is stopped after the test."""
    clusters: list[Cluster] = []

    def make(repo: Path, redis_url: str) -> Cluster:
        log_dir = tmp_path / f"logs-{len(clusters)}"
        log_dir.mkdir()
        cluster = Cluster(repo, redis_url, log_dir)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()


def write_repo(root: Path, name: str, model: onnx.ModelProto, config: str = "") -> Path:
    demo.write_model(model, root, name)
    if config:
        (root / name / "config.yaml").write_text(config)
    return root


# --------------------------------------------------------------------------- load


@dataclass(slots=True)
class Answer:
    index: int
    status: int  # HTTP status; 0 = no answer (transport error or client-side timeout)
    started_s: float  # time.monotonic() when sent
    latency_s: float
    body: bytes = b""
    retry_after: str | None = None
    error: str = ""


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON; reopened after any failure.

    Deliberately minimal: with hundreds of concurrent requests a full client (httpx) spends
    more CPU per request than the gateway does and would become what the test measures.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            .encode() + body)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        content = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, content

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def drive(
    base_url: str,
    path: str,
    make_body: Callable[[int], bytes],
    *,
    concurrency: int,
    count: int | None = None,
    stop: asyncio.Event | None = None,
    rate_per_s: float | None = None,
    budget_s: float = 60.0,
    client_timeout_s: float = 30.0,
    on_answer: Callable[[Answer, int], Awaitable[None] | None] | None = None,
) -> list[Answer]:
    """POST ``make_body(i)`` to ``path`` from ``concurrency`` connections until ``count``
    requests were sent, ``stop`` is set or ``budget_s`` has passed (so a hung server fails the
    test in bounded time); every request sent gets an :class:`Answer`, timeouts and dropped
    connections included. With ``rate_per_s``, request ``i`` is not sent before
    ``i / rate_per_s`` seconds (an open-loop arrival rate, capped by ``concurrency``).
    ``on_answer(answer, answered_so_far)`` runs after each answer (it may be a coroutine)."""
    answers: list[Answer] = []
    begin = time.monotonic()
    indices = iter(range(count)) if count is not None else _forever()
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80

    async def loop() -> None:
        connection = _HttpConnection(host, port)
        try:
            for i in indices:
                if (stop is not None and stop.is_set()) or time.monotonic() - begin > budget_s:
                    return
                if rate_per_s:
                    await asyncio.sleep(max(0.0, begin + i / rate_per_s - time.monotonic()))
                started = time.monotonic()
                try:
                    status, headers, content = await asyncio.wait_for(
                        connection.post(path, make_body(i)), client_timeout_s)
                    answer = Answer(i, status, started, time.monotonic() - started, content,
                                    headers.get("retry-after"))
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        TimeoutError, ValueError) as e:
                    await connection.close()
                    answer = Answer(i, 0, started, time.monotonic() - started,
                                    error=f"{type(e).__name__}: {e}")
                answers.append(answer)
                if on_answer is not None:
                    pending = on_answer(answer, len(answers))
                    if pending is not None:
                        await pending
        finally:
            await connection.close()

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    answers.sort(key=lambda a: a.index)
    return answers


def _forever() -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]


def rss_mb(pid: int) -> float:
    """Resident set size of a process (VmRSS in /proc/PID/status), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------- report


@pytest.fixture
def chaos_report(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], None]:
    """``chaos_report(figures)``: one line on stdout and an entry in test-artifacts/chaos.json."""

    def record(figures: dict[str, Any]) -> None:
        name = request.node.name
        print(f"\n[chaos] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
        ARTIFACT.parent.mkdir(exist_ok=True)
        report: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            report = json.loads(ARTIFACT.read_text())
        report[name] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        ARTIFACT.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    return record
