"""MLflow's model registry as a source of versions, end to end, against a real ``mlflow server``
(sqlite backend, a local artifact root served by the server) and a real ``modelgate up``.

Two runs log scikit-learn classifiers converted with skl2onnx, with params and metrics, and
register them; the alias ``champion`` points at the first. modelgate serves it with its run,
params and metrics in the version metadata; moving the alias to the second swaps under load
with no failed call and the lineage follows; moving it back serves the same local version
again (no new folder); pointing it at a model that is not ONNX keeps what serves and says why.
A folder with only what ``mlflow.onnx.save_model`` writes serves its lineage with no MLflow
server at all. The runs are logged by ``tests/integration/mlflow_runs.py`` in a process of
its own.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelgate.core.embedded_redis import free_port
from tests.integration.test_up import descendants, still_running
from tests.procs import REPO_ROOT, Processes, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

READY_TIMEOUT_S = 90.0
SECRET = "webhook-secret-7c1d"
ROWS = np.random.default_rng(3).random((4, 4)).astype(np.float32)


def _mlflow_bin() -> str:
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("mlflow is not installed: pip install -e '.[dev]' installs it")
    return str(Path(sys.executable).parent / "mlflow")


@dataclass
class Registry:
    """A running tracking server and what the training script logged to it."""

    url: str
    runs: list[dict[str, Any]]
    saved: Path  # mlflow.onnx.save_model's folder
    mismatch: Path  # the same, with a signature that disagrees with the graph

    def set_alias(self, version: str) -> None:
        response = httpx.post(f"{self.url}/api/2.0/mlflow/registered-models/alias",
                              json={"name": "iris-clf", "alias": "champion",
                                    "version": version}, timeout=30)
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    mlflow = _mlflow_bin()
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("wb")
    # Webhooks to this machine over plain http (MLflow allows only public https by default),
    # and a webhook created during the tests seen at the next event (the server caches the
    # list of webhooks for 60 s by default).
    # No job execution: modelgate uses none of MLflow's server-side jobs, and their store is a
    # folder the server makes in /dev/shm and never removes.
    env = {**os.environ, "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_CACHE_TTL": "1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [mlflow, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        start_new_session=True)
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 120, "mlflow server",
                   details=lambda: (root / "server.log").read_text()[-2000:])
        out = root / "out"
        out.mkdir()
        trained = subprocess.run(
            [sys.executable, "-m", "tests.integration.mlflow_runs", url, str(out)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False)
        assert trained.returncode == 0, trained.stderr[-3000:]
        summary = json.loads(trained.stdout.strip().splitlines()[-1])
        yield Registry(url, summary["runs"], out / "saved", out / "mismatch")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@dataclass
class Stack:
    url: str
    processes: Processes

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()


@contextlib.contextmanager
def up(root: Path, tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[Stack]:
    processes = Processes(tmp_path)
    port = free_port()
    process = processes.spawn("up", [
        "up", "--models", str(root), "--port", str(port), "--state-dir", str(tmp_path / "state"),
        "--scale-down-delay", "2", *args], env_extra=env)
    stack = Stack(f"http://127.0.0.1:{port}", processes)
    recorded: dict[int, tuple[int, str]] = {}
    try:
        def live() -> bool:
            try:
                return httpx.get(f"{stack.url}/v2/health/live", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(live, READY_TIMEOUT_S, "`modelgate up`", processes.check_alive,
                   processes.logs)
        recorded.update(descendants(process.pid))
        yield stack
    finally:
        recorded.update(descendants(process.pid))
        processes.stop()
        for pid in still_running(recorded):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Load:
    """Calls from a few threads all along; every answer counted by the version that gave it."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.failed: list[str] = []
        self.by_version: dict[str, int] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(ROWS.shape),
                            "data": ROWS.ravel().tolist()}]}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/v2/models/iris/infer", json=body)
                except httpx.HTTPError as e:
                    self.failed.append(repr(e))
                    continue
                if response.status_code != 200:
                    self.failed.append(f"{response.status_code} {response.text}")
                    continue
                version = response.json()["model_version"]
                with self.lock:
                    self.by_version[version] = self.by_version.get(version, 0) + 1

    def count(self, version: str) -> int:
        with self.lock:
            return self.by_version.get(version, 0)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def until(condition: Any, timeout_s: float, what: str, stack: Stack) -> None:
    wait_until(condition, timeout_s, what, stack.processes.check_alive, stack.processes.logs,
               interval_s=0.2)


def _signed(body: bytes, secret: str) -> dict[str, str]:
    """Headers as MLflow's webhook delivery signs them."""
    delivery, stamp = str(uuid.uuid4()), str(int(time.time()))
    digest = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body,
                      hashlib.sha256).digest()
    return {"content-type": "application/json", "x-mlflow-delivery-id": delivery,
            "x-mlflow-timestamp": stamp,
            "x-mlflow-signature": "v1," + base64.b64encode(digest).decode()}


def test_an_alias_is_served_with_its_lineage_swapped_under_load_and_rolled_back(
        registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "iris").mkdir(parents=True)
    (root / "iris" / "config.yaml").write_text("source: models:/iris-clf@champion\n")
    first, second = registry.runs
    env = {"MLFLOW_TRACKING_URI": registry.url, "MODELGATE_MLFLOW_WEBHOOK_SECRET": SECRET}
    with up(root, tmp_path, env) as stack:
        until(lambda: stack.get("/v2/models/iris/versions")["default_version"] == "1", 60,
              "the alias's version served", stack)
        metadata = stack.get("/v2/models/iris/versions/1")["parameters"]
        lineage = metadata["lineage"]
        assert lineage["run_id"] == first["run_id"]
        assert lineage["params"]["C"] == str(first["C"])
        assert lineage["metrics"]["accuracy"] == pytest.approx(first["accuracy"])
        assert lineage["registry"] == {
            "name": "iris-clf", "version": "1", "alias": "champion",
            "source": "models:/iris-clf@champion",
            "artifact": lineage["registry"]["artifact"]}
        assert metadata["run_url"] == (f"{registry.url}/#/experiments/"
                                       f"{lineage['experiment_id']}/runs/{first['run_id']}")
        assert "MLmodel" in lineage["files"] and lineage["warnings"] == []

        with Load(stack.url) as load:
            until(lambda: load.count("1") > 20, 30, "calls on version 1", stack)
            moved = time.monotonic()
            registry.set_alias("2")
            until(lambda: load.count("2") > 0, 40, "an answer from version 2", stack)
            swap_s = time.monotonic() - moved
            calls = load.count("2")
            until(lambda: load.count("2") > calls + 20, 30, "version 2 serving", stack)
            served = stack.get("/v2/models/iris")["parameters"]
            assert served["version"] == "2"
            assert served["lineage"]["run_id"] == second["run_id"]
            assert served["lineage"]["params"]["C"] == str(second["C"])
            assert served["lineage"]["registry"]["version"] == "2"

            # Back to the first: the same local version, not a new one.
            registry.set_alias("1")
            before = load.count("1")
            until(lambda: load.count("1") > before + 20, 40, "version 1 serving again", stack)
        assert load.failed == []
        assert swap_s < 5 + 15  # one poll, the fetch, a warm-up
        assert sorted(p.name for p in (root / "iris").iterdir() if p.name.isdigit()) == \
            ["1", "2"]
        assert json.loads((root / "iris" / "registry.json").read_text())["version"] == "1"

        view = stack.get("/v2/models/iris/versions")
        assert view["default_version"] == "1" and view["registry"]["error"] == ""
        index = {r["version"]: r for r in httpx.post(f"{stack.url}/v2/repository/index",
                                                       timeout=10).json()}
        assert index["1"]["lineage"]["run_id"] == first["run_id"]
        assert index["2"]["lineage"]["metrics"]["accuracy"] == pytest.approx(
            second["accuracy"])
        assert index["2"]["reason"] in (  # draining, or gone and on disk only
            "no longer served", "not the version models:/iris-clf@champion points at")
        row = next(r for r in view["versions"] if r["version"] == "1")
        assert row["lineage"]["run_id"] == first["run_id"] and row["default"]
        until(lambda: (stack.get("/v2/models/iris/versions")["versions"][-1]["live"]
                       or {}).get("calls", 0) > 0, 15, "live figures since load", stack)
        live = stack.get("/v2/models/iris/versions")["versions"][-1]["live"]
        assert live["error_rate"] == 0 and live["p50_ms"] is not None
        assert live["agreement"] is None

        # A webhook only nudges the decider, and only signed by the secret.
        body = json.dumps({"entity": "model_version_alias", "action": "created",
                           "data": {"name": "iris-clf", "alias": "champion",
                                    "version": "1"}}).encode()
        nudged = httpx.post(f"{stack.url}/v2/repository/mlflow/webhook", content=body,
                            headers=_signed(body, SECRET), timeout=10)
        assert nudged.status_code == 200 and nudged.json()["status"] == "asked"
        forged = httpx.post(f"{stack.url}/v2/repository/mlflow/webhook", content=body,
                            headers=_signed(body, "not-the-secret"), timeout=10)
        assert forged.status_code == 401

        # Version 3 is a scikit-learn model, not ONNX: what serves stays, the reason shows.
        registry.set_alias("3")
        until(lambda: "not ONNX" in (stack.get("/v2/models/iris/versions")["registry"]
                                      ["error"] or ""), 30, "the registry failure", stack)
        assert stack.get("/v2/models/iris")["parameters"]["version"] == "1"
        response = httpx.post(f"{stack.url}/v2/models/iris/infer", timeout=10, json={
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4],
                        "data": ROWS[0].tolist()}]})
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        status = subprocess.run(
            [sys.executable, "-m", "modelgate", "status", "--redis-url",
             (tmp_path / "state" / "redis-url").read_text().strip(), "--model", "iris"],
            capture_output=True, text=True, timeout=30, check=True, cwd=REPO_ROOT).stdout
        assert f"run: {first['run_id']}" in status and "C=0.05" in status
        assert "not ONNX" in status and "live since" in status


def test_a_saved_mlflow_model_serves_its_lineage_without_a_tracking_server(
        registry: Registry, tmp_path: Path) -> None:
    """What ``mlflow.onnx.save_model`` writes (MLmodel, model.onnx, environment files) is a
    version folder as it is; no MLflow server is named, and none is asked."""
    root = tmp_path / "models"
    shutil.copytree(registry.saved, root / "iris" / "1")
    shutil.copytree(registry.mismatch, root / "iris" / "2")
    (root / "iris" / "config.yaml").write_text("version_policy: {all: {}}\n")
    with up(root, tmp_path, {}) as stack:
        until(lambda: stack.get("/v2/models/iris/versions")["default_version"] == "2", 60,
              "both versions served", stack)
        lineage = stack.get("/v2/models/iris/versions/1")["parameters"]["lineage"]
        assert lineage["model_uuid"] and lineage["mlflow_version"]
        assert "onnx" in lineage["flavors"] and lineage["signature"]["inputs"]
        assert lineage["warnings"] == [] and lineage["registry"] == {}
        # The mismatching signature is said, and the graph is what serves.
        rows = httpx.post(f"{stack.url}/v2/repository/index", timeout=10).json()
        reason = next(r["reason"] for r in rows if r["version"] == "2")
        assert "float64" in reason and "serving by the ONNX graph" in reason
        response = httpx.post(f"{stack.url}/v2/models/iris/versions/2/infer", timeout=10,
                              json={"inputs": [{"name": "X", "datatype": "FP32",
                                                "shape": [1, 4], "data": ROWS[0].tolist()}]})
        assert response.status_code == 200
        assert "float64" in (tmp_path / "up.log").read_text()


ADMIN = "admin-key-mlflow-0123"


def test_explicit_mode_loads_a_source_and_an_mlflow_webhook_swaps_before_the_next_poll(
        registry: Registry, tmp_path: Path) -> None:
    """Explicit mode follows only what was loaded; ``load`` asks the registry at once and
    answers when the alias's version is READY. The registry is asked every 300 s here, so the
    swap that follows moving the alias can only come from MLflow's own webhook delivery."""
    registry.set_alias("1")
    root = tmp_path / "models"
    (root / "iris").mkdir(parents=True)
    (root / "iris" / "config.yaml").write_text("source: models:/iris-clf@champion\n")
    env = {"MLFLOW_TRACKING_URI": registry.url, "MODELGATE_MLFLOW_WEBHOOK_SECRET": SECRET}
    admin = {"authorization": f"Bearer {ADMIN}"}
    with up(root, tmp_path, env, "--model-control-mode", "explicit",
            "--registry-poll-secs", "300", "--admin-api-key", ADMIN) as stack:
        assert httpx.get(f"{stack.url}/v2/models/iris", headers=admin,
                         timeout=10).status_code == 404
        assert not (root / "iris" / "1").exists()  # nothing asked before the load
        loaded = httpx.post(f"{stack.url}/v2/repository/models/iris/load", headers=admin,
                            timeout=120)
        assert loaded.status_code == 200, loaded.text
        metadata = httpx.get(f"{stack.url}/v2/models/iris", headers=admin, timeout=10).json()
        assert metadata["parameters"]["version"] == "1"
        assert metadata["parameters"]["lineage"]["run_id"] == registry.runs[0]["run_id"]

        hook = subprocess.run(
            [sys.executable, "-c", "import sys, warnings; warnings.simplefilter('ignore'); "
             "from mlflow import MlflowClient; "
             "MlflowClient(sys.argv[1]).create_webhook(name=sys.argv[2], url=sys.argv[3], "
             "events=['model_version_alias.created'], secret=sys.argv[4])",
             registry.url, f"modelgate-{uuid.uuid4().hex[:6]}",
             f"{stack.url}/v2/repository/mlflow/webhook", SECRET],
            capture_output=True, text=True, timeout=60, check=False)
        assert hook.returncode == 0, hook.stderr[-2000:]
        time.sleep(1.5)  # the server's webhook list is cached for 1 s (above): let it lapse
        moved = time.monotonic()
        registry.set_alias("2")
        until(lambda: httpx.get(f"{stack.url}/v2/models/iris", headers=admin, timeout=10)
              .json()["parameters"]["version"] == "2", 60, "the webhook's swap", stack)
        assert time.monotonic() - moved < 60  # far before the next poll (300 s)
        log = (tmp_path / "up.log").read_text()
        assert "registry version 2" in log


PROMOTION = """source: models:/iris-clf@champion
promotion:
  steps:
    - {shadow: 100, min_s: 2, min_calls: 40}
    - {weight: 100, min_s: 1, min_calls: 20}
  rules: {min_agreement: null, min_samples: 40, max_p99_ratio: null, no_drift_alert: false}
"""


def test_with_a_promotion_rule_an_alias_enters_through_the_gate_and_moving_it_back_rolls_back(
        registry: Registry, tmp_path: Path) -> None:
    """The registry's version is the gate's candidate: shadowed (agreement measured), then
    promoted by the gate, not by the alias alone; moving the alias back is a rollback by
    whoever moved it, at once."""
    registry.set_alias("1")
    root = tmp_path / "models"
    (root / "iris").mkdir(parents=True)
    (root / "iris" / "config.yaml").write_text(PROMOTION)
    with up(root, tmp_path, {"MLFLOW_TRACKING_URI": registry.url}) as stack:
        until(lambda: stack.get("/v2/models/iris/versions")["default_version"] == "1", 60,
              "the alias's version served", stack)
        with Load(stack.url, threads=3) as load:
            until(lambda: load.count("1") > 20, 30, "calls on version 1", stack)
            registry.set_alias("2")

            def candidate() -> bool:
                rows = {r["version"]: r for r in stack.get("/v2/models/iris/versions")[
                    "versions"]}
                return rows.get("2", {}).get("state") == "READY"

            until(candidate, 40, "version 2 READY as a candidate", stack)
            view = stack.get("/v2/models/iris/versions")
            assert view["default_version"] == "1"  # the alias alone does not promote

            def measured() -> bool:
                rows = {r["version"]: r for r in stack.get("/v2/models/iris/versions")[
                    "versions"]}
                agreement = (rows["2"]["live"] or {}).get("agreement") or {}
                return agreement.get("n", 0) > 0

            until(measured, 40, "agreement of the candidate with version 1", stack)
            until(lambda: stack.get("/v2/models/iris/versions")["default_version"] == "2",
                  90, "the gate to promote version 2", stack)
            registry.set_alias("1")
            until(lambda: stack.get("/v2/models/iris/versions")["default_version"] == "1",
                  30, "the rollback by alias", stack)
            before = load.count("1")
            until(lambda: load.count("1") > before + 20, 30, "version 1 serving again", stack)
        assert load.failed == []
        events = (tmp_path / "up.log").read_text()
        assert "registry version 2" in events and "registry version 1" in events
