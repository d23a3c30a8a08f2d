"""Batch jobs end to end: real Redis, real workers (two versions of the MLP, and a model that
fails on some rows), a real gateway with a jobs folder, a real coordinator process.

The stack is shared by the module; tests that kill processes start their own replacements.
Every output is checked row by row: ids exactly once, outputs equal to ONNX Runtime run
directly, errors exactly on the rows that should fail.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import redis

from modelgate.cli import demo
from modelgate.core.embedded_redis import free_port, start_redis
from modelgate.core.process import stop_process
from modelgate.core.store import jobs
from tests import models
from tests.conftest import READY_TIMEOUT_S
from tests.procs import Processes, wait_until

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 60.0
APP_KEY, OTHER_KEY, ADMIN_KEY = "jobs-app-key", "jobs-other-key", "jobs-admin-key"


class Stack:
    def __init__(self, processes: Processes, base: str, redis_url: str, repo: Path,
                 jobs_dir: Path) -> None:
        self.processes = processes
        self.base = base
        self.redis_url = redis_url
        self.repo = repo
        self.jobs_dir = jobs_dir
        self.http = httpx.Client(base_url=base, timeout=30.0,
                                 headers={"authorization": f"Bearer {APP_KEY}"})
        self.redis = redis.Redis.from_url(redis_url)
        self.spawned = 0

    def worker(self, model: str, version: str) -> Any:
        self.spawned += 1
        return self.processes.spawn(f"worker-{model}-{version}-{self.spawned}", [
            "worker", "--models", str(self.repo), "--model", model, "--version", version,
            "--redis-url", self.redis_url, "--claim-timeout-ms", "500"])

    def coordinator(self) -> Any:
        self.spawned += 1
        return self.processes.spawn(f"coordinator-{self.spawned}", [
            "coordinator", "--models", str(self.repo), "--redis-url", self.redis_url,
            "--jobs-dir", str(self.jobs_dir)])

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/v2/jobs", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v2/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, states: tuple[str, ...] = jobs.FINAL,
             timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def ended() -> bool:
            found.update(self.job(job_id))
            return found["state"] in states

        wait_until(ended, timeout_s, f"job {job_id} to reach {states}",
                   details=lambda: f"{found}\n{self.processes.logs()}", interval_s=0.1)
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A Redis of its own: the tests look at its job keys and kill its processes."""
    repo = models.write_repository(
        tmp_path_factory.mktemp("jobs-models"),
        {"mlp": [demo.mlp_model(seed=0), demo.mlp_model(seed=1)],
         "gather": models.gather_model()},
        configs={"mlp": "version_policy: {all: {}}\ndefault_version: 1\n"})
    jobs_dir = tmp_path_factory.mktemp("jobs-dir")
    redis_process, url = start_redis()
    processes = Processes(tmp_path_factory.mktemp("jobs-logs"))
    port = free_port()
    stack = Stack(processes, f"http://127.0.0.1:{port}", url, repo, jobs_dir)
    try:
        stack.worker("mlp", "1")
        stack.worker("mlp", "2")
        stack.worker("gather", "1")
        processes.spawn("gateway", [
            "gateway", "--models", str(repo), "--redis-url", url, "--host", "127.0.0.1",
            "--port", str(port), "--jobs-dir", str(jobs_dir)],
            env_extra={"MODELGATE_API_KEY": f"{APP_KEY},{OTHER_KEY}",
                       "MODELGATE_ADMIN_API_KEY": ADMIN_KEY})
        stack.coordinator()
        wait_until(lambda: _ready(stack.http), READY_TIMEOUT_S, "the stack to be ready",
                   processes.check_alive, processes.logs)
        yield stack
    finally:
        stack.http.close()
        stack.redis.close()
        processes.stop(labels_first=("gateway",))
        stop_process(redis_process, timeout_s=5)


def _ready(client: httpx.Client) -> bool:  # the probe answers without a key
    try:
        return client.get("/v2/health/ready").status_code == 200
    except httpx.TransportError:
        return False


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _check_outputs(records: list[dict[str, Any]], features: dict[Any, np.ndarray],
                   ort_run: Callable[..., list[Any]], model: str = "mlp") -> None:
    """Every record with outputs equals ORT run directly on its row's features."""
    ok = [r for r in records if "outputs" in r]
    expected = ort_run(model, {"input": np.stack([features[r["row"]] for r in ok])})[0]
    got = np.array([r["outputs"]["probabilities"] for r in ok], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)


def _write_csv(path: Path, x: np.ndarray, bad: set[int]) -> None:
    lines = ["id,input[0],input[1],input[2],input[3]"]
    for i, row in enumerate(x):
        values = [repr(float(v)) for v in row]
        if i in bad:
            values[i % 4] = "not-a-number" if i % 2 else ""
        lines.append(",".join([f"{1000 + i}", *values]))
    path.write_text("\n".join(lines) + "\n")


def test_malformed_rows_complete_with_failures_and_retry_fails_only_them(
        stack: Stack, ort_run: Callable[..., list[Any]]) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 4)).astype(np.float32)
    bad = set(range(7, 2000, 100))  # 1%
    _write_csv(stack.jobs_dir / "scores-in.csv", x, bad)
    job = stack.submit({"model": "mlp", "input": {"path": "scores-in.csv", "id_column": "id"},
                        "output": {"path": "scores.jsonl"}})
    assert job["state"] == "queued" and job["version"] == "1"
    assert job["rows"]["total"] == 2000
    done = stack.wait(job["id"])
    assert done["state"] == "completed_with_failures", done
    assert done["rows"] == {"total": 2000, "done": 2000 - len(bad), "failed": len(bad)}
    records = _lines(stack.jobs_dir / "scores.jsonl")
    assert [r["row"] for r in records] == [1000 + i for i in range(2000)]
    assert {r["row"] - 1000 for r in records if "error" in r} == bad
    assert all(r["model_version"] == "1" for r in records)
    assert any("not-a-number" in r["error"] for r in records if "error" in r)
    _check_outputs(records, {1000 + i: row for i, row in enumerate(x)}, ort_run)
    # The same output through the API.
    streamed = stack.http.get(f"/v2/jobs/{job['id']}/output")
    assert streamed.status_code == 200
    assert streamed.content == (stack.jobs_dir / "scores.jsonl").read_bytes()

    retried = stack.http.post(f"/v2/jobs/{job['id']}/retry")
    assert retried.status_code == 200, retried.text
    again = stack.wait(job["id"])
    assert again["state"] == "completed_with_failures" and again["attempt"] == 2
    assert again["rows"] == done["rows"]
    after = _lines(stack.jobs_dir / "scores.jsonl")
    assert after == records  # nothing else ran again, the failed rows failed again


def test_upload_with_a_poison_row_keeps_its_neighbours(stack: Stack) -> None:
    """The gather model fails at run time on an index >= 5: only that row gets the error."""
    idx = np.array([0, 1, 2, 9, 3, 4] * 50, dtype=np.int64)
    buffer = _npy(idx)
    response = stack.http.post("/v2/jobs", params={"model": "gather", "format": "npy"},
                               content=buffer, headers={"content-type": "application/x-npy"})
    assert response.status_code == 201, response.text
    job = response.json()
    done = stack.wait(job["id"])
    assert done["state"] == "completed_with_failures"
    assert done["rows"]["failed"] == 50
    output = stack.http.get(f"/v2/jobs/{job['id']}/output")
    records = [orjson.loads(line) for line in output.content.splitlines()]
    assert [r["row"] for r in records] == list(range(300))
    for record, value in zip(records, idx, strict=True):
        if value >= 5:
            assert "error" in record and "outputs" not in record
        else:
            assert record["outputs"]["rows"] == [2.0 * value, 2.0 * value + 1]


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_cancel_stops_a_running_job_within_two_seconds(stack: Stack) -> None:
    x = np.random.default_rng(2).standard_normal((300_000, 4)).astype(np.float32)
    np.save(stack.jobs_dir / "big.npy", x)
    job = stack.submit({"model": "mlp", "input": {"path": "big.npy"},
                        "output": {"path": "big-out.jsonl"}})
    stack.wait(job["id"], ("running",))
    wait_until(lambda: stack.job(job["id"])["rows"]["done"] > 0, 30, "rows to be done")
    started = time.monotonic()
    response = stack.http.post(f"/v2/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    stream = jobs.job_stream("mlp:1")

    def stopped() -> bool:  # its chunks withdrawn, the coordinator done with it
        return (stack.redis.zscore(jobs.ACTIVE, job["id"]) is None
                and not [e for e in stack.redis.xrange(stream)
                         if e[1].get(b"job") == job["id"].encode()])

    wait_until(stopped, 2.0, "the job's chunks to be withdrawn", interval_s=0.01)
    assert time.monotonic() - started <= 2.0
    ended = stack.job(job["id"])
    assert ended["state"] == "cancelled" and ended["rows"]["done"] < 300_000
    time.sleep(0.3)
    assert stack.job(job["id"])["rows"] == ended["rows"]  # nothing moves after the cancel
    assert not stack.redis.exists(jobs.results(job["id"]), jobs.chunk_rows(job["id"]))
    assert stack.http.post(f"/v2/jobs/{job['id']}/cancel").status_code == 409
    assert stack.http.get(f"/v2/jobs/{job['id']}/output").status_code == 409


def test_every_row_once_after_killing_a_worker_and_the_coordinator(stack: Stack) -> None:
    x = np.random.default_rng(3).standard_normal((120_000, 4)).astype(np.float32)
    np.savez(stack.jobs_dir / "kill.npz", input=x, key=np.arange(120_000) * 3)
    job = stack.submit({"model": "mlp", "version": "2",
                        "input": {"path": "kill.npz", "id_column": "key"},
                        "output": {"path": "kill-out.parquet"}})
    assert job["version"] == "2"
    wait_until(lambda: stack.job(job["id"])["rows"]["done"] > 10_000, 30, "rows to be done")
    victim = next(p for label, p, _ in stack.processes.started
                  if label.startswith("worker-mlp-2") and p.poll() is None)
    victim.send_signal(signal.SIGKILL)
    stack.worker("mlp", "2")
    wait_until(lambda: stack.job(job["id"])["rows"]["done"] > 40_000, 30,
               "rows after the worker's death")
    coordinator = next(p for label, p, _ in stack.processes.started
                       if label.startswith("coordinator") and p.poll() is None)
    coordinator.send_signal(signal.SIGKILL)
    stack.coordinator()
    done = stack.wait(job["id"])
    assert done["state"] == "succeeded", done
    assert done["rows"] == {"total": 120_000, "done": 120_000, "failed": 0}
    import pyarrow.parquet as pq

    table = pq.read_table(stack.jobs_dir / "kill-out.parquet").to_pylist()
    assert [int(r["row"]) for r in table] == [i * 3 for i in range(120_000)]
    assert {r["model_version"] for r in table} == {"2"}
    got = np.array([r["probabilities"] for r in table], dtype=np.float32)
    version_2 = ort.InferenceSession(demo.mlp_model(seed=1).SerializeToString(),
                                     providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(got, version_2.run(None, {"input": x})[0])


def test_paths_are_confined_to_the_jobs_folder(stack: Stack, tmp_path: Path) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("input[0],input[1],input[2],input[3]\n1,2,3,4\n")
    (stack.jobs_dir / "escape.csv").symlink_to(outside)
    for path in (str(outside), "../secret.csv", "escape.csv"):
        response = stack.http.post("/v2/jobs", json={
            "model": "mlp", "input": {"path": path}, "output": {"path": "x.jsonl"}})
        assert response.status_code == 403, (path, response.text)
        assert "outside the jobs folder" in response.json()["error"]
    response = stack.http.post("/v2/jobs", json={
        "model": "mlp", "input": {"path": "scores-in.csv"}, "output": {"path": "/etc/x.jsonl"}})
    assert response.status_code == 403


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"model": "nope", "input": {"path": "a.csv"}, "output": {"path": "b.jsonl"}}, 404,
     "unknown model"),
    ({"model": "mlp", "input": {"path": "a.xml"}, "output": {"path": "b.jsonl"}}, 400,
     "not one of"),
    ({"model": "mlp", "input": {"path": "missing.csv"}, "output": {"path": "b.jsonl"}}, 400,
     "is not a file"),
    ({"model": "mlp", "input": {"path": "cols.csv"}, "output": {"path": "b.jsonl"}}, 400,
     "no column for input"),
    ({"model": "mlp", "input": {"path": "cols.csv"}}, 400, "needs 'output'"),
    ({"input": {"path": "cols.csv"}}, 400, "'model' must name"),
    ([1, 2], 400, "must be a JSON object"),
])
def test_api_errors_say_what_is_wrong(stack: Stack, body: Any, status: int,
                                      words: str) -> None:
    (stack.jobs_dir / "cols.csv").write_text("a,b\n1,2\n")
    response = stack.http.post("/v2/jobs", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_unknown_job_and_list(stack: Stack) -> None:
    response = stack.http.get("/v2/jobs/0123456789abcdef")
    assert response.status_code == 404 and "no job" in response.json()["error"]
    listed = stack.http.get("/v2/jobs")
    assert listed.status_code == 200 and isinstance(listed.json()["jobs"], list)
    assert stack.http.get("/v2/jobs", params={"state": "bogus"}).status_code == 400



def test_status_shows_jobs_with_their_progress(stack: Stack) -> None:
    import io

    from modelgate.cli.status import render

    x = np.zeros((1000, 4), np.float32)
    np.save(stack.jobs_dir / "status.npy", x)
    job = stack.submit({"model": "mlp", "input": {"path": "status.npy"},
                        "output": {"path": "status.jsonl"}})
    stack.wait(job["id"])
    out = io.StringIO()
    assert render(stack.redis, out) == 0
    text = out.getvalue()
    assert "batch jobs:" in text and "job store: uploads" in text
    assert "holds the jobs lease" in text
    line = next(row for row in text.splitlines() if job["id"] in row)
    assert "mlp:1" in line and "succeeded" in line and "1000/1000" in line and "100%" in line


    def counted() -> bool:  # the workers' job lane counters, with their next heartbeat
        out = io.StringIO()
        render(stack.redis, out)
        return "job rows" in out.getvalue()

    wait_until(counted, 5, "the job lane's counters in the workers' lines")


def test_jobs_need_a_key_and_only_their_owner_or_an_admin_acts_on_them(stack: Stack) -> None:
    np.save(stack.jobs_dir / "owned.npy", np.zeros((200_000, 4), np.float32))
    body = {"model": "mlp", "input": {"path": "owned.npy"}, "output": {"path": "owned.jsonl"}}
    assert httpx.post(f"{stack.base}/v2/jobs", json=body).status_code == 401
    job = stack.submit(body)
    assert httpx.get(f"{stack.base}/v2/jobs/{job['id']}").status_code == 401
    other = {"authorization": f"Bearer {OTHER_KEY}"}
    assert httpx.get(f"{stack.base}/v2/jobs/{job['id']}", headers=other).status_code == 200
    refused = httpx.post(f"{stack.base}/v2/jobs/{job['id']}/cancel", headers=other)
    assert refused.status_code == 403 and "admin key" in refused.json()["error"]
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(f"{stack.base}/v2/jobs/{job['id']}/cancel",
                      headers=admin).status_code == 200
    assert stack.wait(job["id"])["state"] == "cancelled"


def test_an_uploaded_jsonl_input_with_a_parquet_output(stack: Stack,
                                                       ort_run: Callable[..., list[Any]]) -> None:
    import io

    import pyarrow.parquet as pq

    x = np.random.default_rng(7).standard_normal((50, 4)).astype(np.float32)
    lines = [orjson.dumps({"key": f"r{i}", "input": row.tolist()}) for i, row in enumerate(x)]
    lines.insert(10, b"{not json")
    response = stack.http.post(
        "/v2/jobs", params={"model": "mlp", "format": "jsonl", "id_column": "key",
                            "output_format": "parquet"},
        content=b"\n".join(lines) + b"\n", headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 201, response.text
    done = stack.wait(response.json()["id"])
    assert done["state"] == "completed_with_failures" and done["rows"]["failed"] == 1
    output = stack.http.get(f"/v2/jobs/{done['id']}/output")
    assert output.headers["content-type"].startswith("application/vnd.apache.parquet")
    table = pq.read_table(io.BytesIO(output.content)).to_pylist()
    assert len(table) == 51 and "not JSON" in table[10]["error"]
    ok = [r for r in table if r["error"] is None]
    assert [r["row"] for r in ok] == [f"r{i}" for i in range(50)]
    np.testing.assert_array_equal(np.array([r["probabilities"] for r in ok], np.float32),
                                  ort_run("mlp", {"input": x})[0])
