"""Batch jobs under ``modelgate up``: the coordinator in the supervisor's process, a hot swap of
the default version during a job (the job keeps the version it was submitted with), unloading
a model with running jobs, and the ``modelgate batch`` CLI from submit to output."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from modelgate.cli import demo
from modelgate.core.embedded_redis import free_port
from tests import models
from tests.integration.test_up import descendants, still_running
from tests.procs import REPO_ROOT, Processes, wait_until

pytestmark = pytest.mark.integration

FINAL = ("succeeded", "completed_with_failures", "failed", "cancelled")


class Up:
    def __init__(self, url: str, jobs_dir: Path, processes: Processes) -> None:
        self.url = url
        self.jobs_dir = jobs_dir
        self.processes = processes
        self.http = httpx.Client(base_url=url, timeout=30.0)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"/v2/jobs/{job_id}").json()

    def wait(self, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def ended() -> bool:
            found.update(self.job(job_id))
            return found["state"] in FINAL

        wait_until(ended, timeout_s, f"job {job_id} to end",
                   details=lambda: f"{found}\n{self.processes.logs()}", interval_s=0.1)
        return found


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    repo = models.write_repository(
        tmp_path_factory.mktemp("up-jobs-models"),
        {"mlp": [demo.mlp_model(seed=0), demo.mlp_model(seed=1)]},
        configs={"mlp": "version_policy: {all: {}}\ndefault_version: 1\n"})
    jobs_dir = tmp_path_factory.mktemp("up-jobs-dir")
    processes = Processes(tmp_path_factory.mktemp("up-jobs-logs"))
    port = free_port()
    process = processes.spawn("up", [
        "up", "--models", str(repo), "--host", "127.0.0.1", "--port", str(port),
        "--grpc-port", "0", "--min-workers", "1", "--jobs-dir", str(jobs_dir),
        "--model-control-mode", "explicit", "--load-model", "mlp"])
    running = Up(f"http://127.0.0.1:{port}", jobs_dir, processes)
    children: dict[int, tuple[int, str]] = {}
    try:
        wait_until(lambda: _ready(running.http), 90, "modelgate up to be ready",
                   processes.check_alive, processes.logs)
        yield running
    finally:
        running.http.close()
        children.update(descendants(process.pid))
        processes.stop()
        for pid in still_running(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/v2/health/ready").status_code == 200
    except httpx.TransportError:
        return False


def test_a_job_keeps_its_version_across_a_hot_swap(
        up: Up, ort_run: Callable[..., list[Any]]) -> None:
    x = np.random.default_rng(4).standard_normal((60_000, 4)).astype(np.float32)
    np.save(up.jobs_dir / "pin.npy", x)
    response = up.http.post("/v2/jobs", json={"model": "mlp", "input": {"path": "pin.npy"},
                                              "output": {"path": "pin-out.jsonl"}})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["version"] == "1"  # the default at submission
    swapped = up.http.put("/v2/models/mlp/traffic", json={"default": "2"})
    assert swapped.status_code == 200, swapped.text
    assert up.job(job["id"])["state"] in ("queued", "running")
    wait_until(lambda: up.http.get("/v2/models/mlp/traffic").json()["default"] == "2", 10,
               "the decider to make version 2 the default")
    later = up.http.post("/v2/jobs", json={"model": "mlp", "input": {"path": "pin.npy"},
                                           "output": {"path": "pin-later.jsonl"}}).json()
    assert later["version"] == "2"  # new jobs take the new default
    done = up.wait(job["id"])
    assert done["state"] == "succeeded", done
    records = [orjson.loads(line) for line in (up.jobs_dir / "pin-out.jsonl").read_bytes()
               .splitlines()]
    assert {r["model_version"] for r in records} == {"1"}  # 0 rows from version 2
    assert [r["row"] for r in records] == list(range(60_000))
    got = np.array([r["outputs"]["probabilities"] for r in records], dtype=np.float32)
    np.testing.assert_array_equal(got, ort_run("mlp", {"input": x})[0])
    assert up.wait(later["id"])["state"] == "succeeded"


def test_the_batch_cli_from_submit_to_output(up: Up, tmp_path: Path) -> None:
    x = np.random.default_rng(5).standard_normal((5000, 4)).astype(np.float32)
    source = tmp_path / "rows.csv"
    source.write_text("input[0],input[1],input[2],input[3]\n"
                      + "".join(",".join(repr(float(v)) for v in row) + "\n" for row in x))
    out = tmp_path / "scores.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    finished = subprocess.run(
        [sys.executable, "-m", "modelgate", "batch", "submit", str(source), "--model", "mlp",
         "--version", "1", "--out", str(out), "--url", up.url],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert lines[0].startswith("job ") and "submitted" in lines[0]
    assert any("5000/5000 rows (0 failed)" in line and "succeeded" in line for line in lines)
    assert lines[-1] == f"output written to {out}"
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["row"] for r in records] == list(range(5000))
    job_id = lines[0].split()[1]
    status = subprocess.run(
        [sys.executable, "-m", "modelgate", "batch", "status", job_id, "--url", up.url],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "succeeded" in status.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "modelgate", "batch", "list", "--url", up.url],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert job_id in listed.stdout


def test_unloading_a_model_with_running_jobs_is_refused_naming_them(up: Up) -> None:
    x = np.zeros((200_000, 4), np.float32)
    np.save(up.jobs_dir / "long.npy", x)
    job = up.http.post("/v2/jobs", json={"model": "mlp", "version": "1",
                                         "input": {"path": "long.npy"},
                                         "output": {"path": "long-out.jsonl"}}).json()
    response = up.http.post("/v2/repository/models/mlp/unload", json={})
    assert response.status_code == 409, response.text
    assert job["id"] in response.json()["error"] and "force" in response.json()["error"]
    cancelled = up.http.post(f"/v2/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert up.wait(job["id"])["state"] == "cancelled"


def test_a_job_wakes_a_pool_scaled_to_zero(tmp_path: Path) -> None:
    repo = models.write_repository(tmp_path / "models", {"mlp": demo.mlp_model()})
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    processes = Processes(tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    port = free_port()
    process = processes.spawn("up", [
        "up", "--models", str(repo), "--host", "127.0.0.1", "--port", str(port),
        "--grpc-port", "0", "--min-workers", "0", "--scale-down-delay", "1",
        "--jobs-dir", str(jobs_dir)])
    running = Up(f"http://127.0.0.1:{port}", jobs_dir, processes)
    children: dict[int, tuple[int, str]] = {}
    try:
        wait_until(lambda: _live(running.http), 60, "modelgate up to be live",
                   processes.check_alive, processes.logs)
        # Idle, the pool goes down to zero workers.
        wait_until(lambda: running.http.get("/v2/models/mlp/ready").status_code == 503, 30,
                   "the idle pool to scale to zero", processes.check_alive, processes.logs)
        np.save(jobs_dir / "wake.npy", np.zeros((2000, 4), np.float32))
        job = running.http.post("/v2/jobs", json={"model": "mlp", "input": {"path": "wake.npy"},
                                                  "output": {"path": "wake.jsonl"}}).json()
        done = running.wait(job["id"], timeout_s=60)
        assert done["state"] == "succeeded", done
        assert done["rows"]["done"] == 2000
    finally:
        running.http.close()
        children.update(descendants(process.pid))
        processes.stop()
        for pid in still_running(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _live(client: httpx.Client) -> bool:
    try:
        return client.get("/v2/health/live").status_code == 200
    except httpx.TransportError:
        return False
