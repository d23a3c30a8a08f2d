"""Large request tensors through a gateway's payload arena (``modelgate.core.arena``), with a
real gateway, real workers and a real Redis: the answers are the model's, the tensors' bytes
no longer pass through Redis (its own byte counters say so, against the same calls with the
arena off), the arena goes with its gateway, and a worker that cannot open it (another
``/dev/shm``: a container, another host) costs one call a 503, after which that pool's
payloads go through Redis."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import redis

from modelgate.core import arena
from modelgate.core.embedded_redis import free_port, start_redis
from modelgate.core.process import child_preexec, stop_process
from tests import metrics
from tests.models import wide_sum_model, write_repository
from tests.procs import REPO_ROOT, Processes, wait_until

pytestmark = pytest.mark.integration

WIDTH = 40_000  # one FP32 row is 160 KB: a large input (wire.LARGE_INPUT_BYTES)
CALLS = 24


def _call(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A V2 infer body with ``x`` as a binary tensor (as tritonclient sends one)."""
    header = orjson.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}]})
    return header + x.tobytes(), {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(header))}


def _infer(url: str, x: np.ndarray) -> httpx.Response:
    body, headers = _call(x)
    return httpx.post(f"{url}/v2/models/wide/infer", content=body, headers=headers, timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _arenas_of(pid: int) -> list[Path]:
    return sorted(arena.ARENA_DIR.glob(f"{arena.PREFIX}{pid}-*"))


@contextmanager
def _serving(tmp_path: Path, arena_mb: int, private_shm_worker: bool = False
             ) -> Iterator[tuple[str, redis.Redis, int]]:
    """A Redis of its own, one worker and one gateway with ``--payload-arena-mb arena_mb``;
    with ``private_shm_worker``, the worker sees a /dev/shm of its own (a mount namespace with
    a fresh tmpfs there), as a container's worker would."""
    repo = write_repository(tmp_path / "models", {"wide": wide_sum_model(WIDTH)})
    redis_process, redis_url = start_redis()
    processes = Processes(tmp_path / "logs")
    processes.log_dir.mkdir(parents=True, exist_ok=True)
    worker_args = ["worker", "--models", str(repo), "--model", "wide", "--redis-url", redis_url]
    isolated: subprocess.Popen[bytes] | None = None
    log = (processes.log_dir / "worker.log").open("wb")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        if private_shm_worker:
            isolated = subprocess.Popen(
                [shutil.which("unshare") or "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "sh",
                 sys.executable, "-m", "modelgate", *worker_args],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=child_preexec)
        else:
            processes.spawn("worker", worker_args)
        gateway = processes.spawn("gateway", [
            "gateway", "--models", str(repo), "--redis-url", redis_url, "--port", str(port),
            "--payload-arena-mb", str(arena_mb)])
        wait_until(lambda: _ready(url), 60, f"{url} ready", processes.check_alive,
                   processes.logs)
        client = redis.Redis.from_url(redis_url)
        try:
            yield url, client, gateway.pid
        finally:
            client.close()
    finally:
        processes.stop(labels_first=("gateway",))
        if isolated is not None:
            isolated.terminate()
            stop_process(isolated, timeout_s=15, signalled=True)
        log.close()
        stop_process(redis_process, timeout_s=5)
        if redis_process.stderr is not None:
            redis_process.stderr.close()


def _payload_paths(url: str) -> dict[str, float]:
    samples = metrics.scrape(url)
    return {path: metrics.value(samples, "modelgate_large_payloads_total", path=path)
            for path in ("arena", "full", "unreachable", "redis")}


def _bytes_into_redis(client: redis.Redis) -> int:
    return int(client.info("stats")["total_net_input_bytes"])


def _run_calls(url: str) -> None:
    rows = np.random.default_rng(3).random((CALLS, 1, WIDTH)).astype(np.float32)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda x: _infer(url, x), rows))
    for x, answer in zip(rows, answers, strict=True):
        assert answer.status_code == 200, answer.text
        y = answer.json()["outputs"][0]["data"][0]
        assert y == pytest.approx(float(x.sum()), rel=1e-4)


def test_large_tensors_reach_the_worker_through_shared_memory_not_redis(
        tmp_path: Path) -> None:
    payload_bytes = CALLS * WIDTH * 4
    received: dict[int, int] = {}
    for arena_mb in (8, 0):  # the same calls without the arena: what Redis took then
        with _serving(tmp_path / f"arena-{arena_mb}", arena_mb) as (url, client, pid):
            assert len(_arenas_of(pid)) == (1 if arena_mb else 0)
            before = _bytes_into_redis(client)
            _run_calls(url)
            received[arena_mb] = _bytes_into_redis(client) - before
            paths = _payload_paths(url)
            assert paths["arena" if arena_mb else "redis"] >= 1  # bundles: 1 to CALLS
            assert sum(paths.values()) == paths["arena" if arena_mb else "redis"]
        assert _arenas_of(pid) == []  # gone with its gateway
    print(f"bytes into Redis for {CALLS} calls of {WIDTH * 4} B: with the arena "
          f"{received[8]:,}, without {received[0]:,}")
    assert received[0] > payload_bytes  # through Redis: every tensor went in
    assert received[8] < payload_bytes / 20  # through the arena: only the entries


def test_a_worker_that_cannot_open_the_arena_costs_one_call_then_redis_carries_them(
        tmp_path: Path) -> None:
    x = np.random.default_rng(4).random((1, WIDTH)).astype(np.float32)
    with _serving(tmp_path, 8, private_shm_worker=True) as (url, _, _):
        first = _infer(url, x)
        assert first.status_code == 503, first.text
        error = first.json()["error"]
        assert "shared memory this worker cannot open" in error
        assert "--payload-arena-mb 0" in error
        for _ in range(3):
            again = _infer(url, x)
            assert again.status_code == 200, again.text
            assert again.json()["outputs"][0]["data"][0] == pytest.approx(float(x.sum()),
                                                                          rel=1e-4)
        assert _payload_paths(url) == {"arena": 1, "full": 0, "unreachable": 3, "redis": 0}
