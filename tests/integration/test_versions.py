"""Model versions without restarts, end to end: ``modelgate up`` in explicit and poll mode,
Triton's repository API through tritonclient, swaps under load, failed loads, unloads.

Real processes throughout; versions differ in their weights, so every answer shows which
version computed it (its outputs are compared with ONNX Runtime run on that version's file).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from modelgate.cli import demo
from modelgate.core.embedded_redis import free_port
from tests.integration.test_up import descendants, still_running
from tests.procs import Processes, wait_until

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 90.0
ADMIN = "admin-key-0123456789"
APP = "app-key-0123456789"
X = np.random.default_rng(7).standard_normal((1, 4)).astype(np.float32)


def mlp(seed: int) -> bytes:
    return demo.mlp_model(seed=seed).SerializeToString()


def place(root: Path, version: int, content: bytes) -> None:
    """Write a version folder the way a careful operator does: to a temporary name, then
    rename, so a scan never sees half a file."""
    folder = root / "mlp" / str(version)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{version}"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "model.onnx").write_bytes(content)
    os.replace(staging, folder)


def expected(root: Path, version: str) -> np.ndarray:
    session = ort.InferenceSession(str(root / "mlp" / version / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"input": X})[0]


@dataclass
class Stack:
    url: str
    root: Path
    processes: Processes
    process: Any
    recorded: dict[int, tuple[int, str]] = field(default_factory=dict)

    def client(self, key: str = ADMIN) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0,
                            headers={"authorization": f"Bearer {key}"})

    def index(self) -> dict[str, dict[str, str]]:
        with self.client() as client:
            rows = client.post("/v2/repository/index").json()
        return {f"{r['name']}:{r['version']}": r for r in rows}


@contextlib.contextmanager
def up(root: Path, tmp_path: Path, *args: str) -> Iterator[Stack]:
    processes = Processes(tmp_path)
    port = free_port()
    process = processes.spawn("up", [
        "up", "--models", str(root), "--port", str(port), "--state-dir", str(tmp_path / "state"),
        "--api-key", APP, "--admin-api-key", ADMIN, "--scale-down-delay", "2", *args])
    stack = Stack(f"http://127.0.0.1:{port}", root, processes, process)
    try:
        def live() -> bool:
            try:
                return httpx.get(f"{stack.url}/v2/health/live", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(live, READY_TIMEOUT_S, "`modelgate up`", processes.check_alive,
                   processes.logs)
        stack.recorded.update(descendants(process.pid))
        yield stack
    finally:
        stack.recorded.update(descendants(process.pid))
        processes.stop()
        for pid in still_running(stack.recorded):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def infer(client: httpx.Client, path: str = "/v2/models/mlp/infer") -> httpx.Response:
    return client.post(path, json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": X.ravel().tolist()}]})


class Load:
    """A closed loop of calls from a few threads, each answer checked against the version that
    says it computed it."""

    def __init__(self, stack: Stack, threads: int = 6) -> None:
        self.stack = stack
        self.stop = threading.Event()
        self.failed: list[str] = []
        self.mismatched: list[str] = []
        self.by_version: dict[str, int] = {}
        self.expected: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _outputs(self, version: str) -> np.ndarray:
        with self.lock:
            if version not in self.expected:
                self.expected[version] = expected(self.stack.root, version)
            return self.expected[version]

    def _run(self) -> None:
        with self.stack.client(APP) as client:
            while not self.stop.is_set():
                try:
                    response = infer(client)
                except httpx.HTTPError as e:
                    self.failed.append(repr(e))
                    continue
                if response.status_code != 200:
                    self.failed.append(f"{response.status_code} {response.text}")
                    continue
                body = response.json()
                version = body["model_version"]
                assert response.headers["x-model-version"] == version
                got = np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(1, -1)
                with self.lock:
                    self.by_version[version] = self.by_version.get(version, 0) + 1
                if not np.allclose(got, self._outputs(version), rtol=1e-5, atol=1e-6):
                    self.mismatched.append(version)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def calls(self) -> int:
        with self.lock:
            return sum(self.by_version.values())


def until(condition: Callable[[], bool], timeout_s: float, what: str, stack: Stack) -> None:
    wait_until(condition, timeout_s, what, stack.processes.check_alive, stack.processes.logs,
               interval_s=0.1)


def test_explicit_mode_loads_swaps_and_unloads_through_tritonclient_without_losing_a_call(
        tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    place(root, 1, mlp(seed=1))
    with up(root, tmp_path, "--model-control-mode", "explicit", "--load-model", "mlp") as stack:
        until(lambda: stack.index().get("mlp:1", {}).get("state") == "READY", 60,
              "v1 READY", stack)
        triton_client = triton.InferenceServerClient(
            stack.url.removeprefix("http://"), network_timeout=120.0)
        admin = {"authorization": f"Bearer {ADMIN}"}
        index = triton_client.get_model_repository_index(headers=admin)
        assert {"name": "mlp", "version": "1", "state": "READY", "reason": ""} in index
        assert "model_repository" in triton_client.get_server_metadata(
            headers=admin)["extensions"]

        with Load(stack) as load:
            until(lambda: load.calls() > 20, 30, "calls on v1", stack)
            place(root, 2, mlp(seed=2))
            asked = time.monotonic()
            triton_client.load_model("mlp", headers=admin)  # answers once v2 is READY
            until(lambda: load.by_version.get("2", 0) > 0, 5, "a first answer from v2", stack)
            first_v2_s = time.monotonic() - asked
            # Application keys cannot change what is served.
            with pytest.raises(InferenceServerException, match=r"401|not valid"):
                triton_client.unload_model("mlp", headers={"authorization": f"Bearer {APP}"})
            calls_before = load.by_version.get("2", 0)
            until(lambda: load.by_version.get("2", 0) > calls_before + 20, 30, "v2 serving",
                  stack)
        assert load.failed == [] and load.mismatched == []
        assert load.by_version.get("1", 0) > 0 and load.by_version.get("2", 0) > 0
        assert first_v2_s <= 5.0 + 10.0  # the load call itself waits for v2's warm-up
        # v1 left: never called again once v2 was the default, drained and removed.
        until(lambda: "mlp:1" not in stack.index()
              or stack.index()["mlp:1"]["state"] == "UNAVAILABLE", 30, "v1 removed", stack)
        with stack.client(APP) as client:
            assert infer(client, "/v2/models/mlp/versions/1/infer").status_code == 404
            metadata = client.get("/v2/models/mlp").json()
            assert metadata["versions"] == ["2"]
            assert metadata["parameters"]["versions"]["2"]["state"] == "READY"

        triton_client.unload_model("mlp", headers=admin)
        with stack.client(APP) as client:
            response = infer(client)
            assert response.status_code == 404 and "unknown model" in response.json()["error"]
        assert stack.index()["mlp:2"]["state"] == "UNAVAILABLE"
        # The unload answers once no call can reach the version; its workers finish their
        # last read and exit after it, within seconds.
        until(lambda: not [c for _, c in descendants(stack.process.pid).values()
                           if " worker " in c], 15, "the workers gone", stack)


def test_a_truncated_version_fails_its_load_and_the_serving_one_keeps_answering(
        tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    place(root, 1, mlp(seed=1))
    with up(root, tmp_path, "--model-control-mode", "explicit", "--load-model", "mlp") as stack:
        until(lambda: stack.index().get("mlp:1", {}).get("state") == "READY", 60,
              "v1 READY", stack)
        whole = mlp(seed=3)
        with Load(stack, threads=3) as load:
            place(root, 3, whole[:len(whole) // 2])
            with stack.client() as client:
                response = client.post("/v2/repository/models/mlp/load")
            time.sleep(0.5)
        assert response.status_code == 400, response.text
        assert "version 3" in response.json()["error"]
        assert "not a readable ONNX model" in response.json()["error"]
        row = stack.index()["mlp:3"]
        assert row["state"] == "UNAVAILABLE" and "not a readable ONNX model" in row["reason"]
        assert load.failed == [] and load.mismatched == [] and set(load.by_version) == {"1"}


def test_a_version_uploaded_with_the_load_call_is_written_then_served(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    place(root, 1, mlp(seed=1))
    with up(root, tmp_path, "--model-control-mode", "explicit", "--load-model", "mlp") as stack:
        until(lambda: stack.index().get("mlp:1", {}).get("state") == "READY", 60,
              "v1 READY", stack)
        content = base64.b64encode(mlp(seed=4)).decode()
        with stack.client() as client:
            response = client.post("/v2/repository/models/mlp/load", json={
                "parameters": {"file:2/model.onnx": content}})
            assert response.status_code == 200, response.text
            assert (root / "mlp" / "2" / "model.onnx").read_bytes() == mlp(seed=4)
            answer = infer(client)
            assert answer.json()["model_version"] == "2"
            again = client.post("/v2/repository/models/mlp/load", json={
                "parameters": {"file:2/model.onnx": content}})
            assert again.status_code == 400 and "immutable" in again.json()["error"]
            escape = client.post("/v2/repository/models/mlp/load", json={
                "parameters": {"file:../2/model.onnx": content}})
            assert escape.status_code == 400


def test_poll_mode_serves_a_dropped_version_within_the_poll_interval_with_no_failed_call(
        tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    place(root, 1, mlp(seed=1))
    with up(root, tmp_path, "--model-control-mode", "poll",
            "--repository-poll-secs", "1") as stack:
        until(lambda: stack.index().get("mlp:1", {}).get("state") == "READY", 60,
              "v1 READY", stack)
        with stack.client(APP) as client:
            refused = client.post("/v2/repository/models/mlp/load")
            assert refused.status_code == 401  # application key: control calls need admin
        with stack.client() as client:
            refused = client.post("/v2/repository/models/mlp/load")
            assert refused.status_code == 400 and "explicit" in refused.json()["error"]
        with Load(stack, threads=3) as load:
            until(lambda: load.calls() > 10, 30, "calls on v1", stack)
            dropped = time.monotonic()
            place(root, 2, mlp(seed=2))
            until(lambda: load.by_version.get("2", 0) > 0, 30, "an answer from v2", stack)
            serving_after_s = time.monotonic() - dropped
            # Removing the folder unloads it; the policy falls back to v1.
            shutil.rmtree(root / "mlp" / "2")
            until(lambda: load.by_version.get("1", 0) > 0 and stack.index().get(
                "mlp:2") is None, 30, "v2 gone", stack)
        assert load.failed == [] and load.mismatched == []
        assert serving_after_s < 1 + 15  # the poll interval plus warm-up, with room to spare


def test_a_call_for_a_pool_nobody_serves_fails_at_once_not_at_its_deadline(
        tmp_path: Path, serve: Any) -> None:
    """A gateway and no decider: a model with min_workers 0 used to wait in a stream nobody
    read until its deadline (504); a version on disk but not loaded used to wait for a worker."""
    root = tmp_path / "models"
    root.mkdir()
    place(root, 1, mlp(seed=1))
    place(root, 2, mlp(seed=2))
    (root / "mlp" / "config.yaml").write_text("min_workers: 0\n")
    with serve(root, []) as url, httpx.Client(base_url=url, timeout=30.0) as client:
        for path in ("/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer"):
            started = time.monotonic()
            response = client.post(path, json={"parameters": {"timeout_ms": 20_000}, "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 4],
                 "data": X.ravel().tolist()}]})
            assert time.monotonic() - started < 2.0
            assert response.status_code in (404, 503), response.text
            assert response.json()["error"]
