"""Safe rollouts on evidence, end to end under ``modelgate up``: canary weights, sticky
sessions, weight 0, shadow traffic that callers never see, and the promotion gate promoting a
good candidate and rolling back bad ones by itself.

Versions are distinguishable by their answers (different weights), and every answer carries the
version that computed it, so the tests count what reached callers from which version.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import redis

from modelgate.cli import demo
from modelgate.cli.status import render
from tests.integration.test_up import descendants
from tests.integration.test_versions import APP, Stack, up
from tests.models import guarded_mlp, perturbed_mlp, swapped_mlp
from tests.procs import wait_until

pytestmark = pytest.mark.integration

ROWS = np.random.default_rng(11).standard_normal((64, 4)).astype(np.float32)


def place(root: Path, version: int, model: onnx.ModelProto) -> None:
    folder = root / "mlp" / str(version)
    staging = root / f".staging-{version}"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "model.onnx").write_bytes(model.SerializeToString())
    (root / "mlp").mkdir(exist_ok=True)
    os.replace(staging, folder)


def body(row: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                        "data": row.ravel().tolist()}]}


def call(client: httpx.Client, row: np.ndarray, session: str | None = None,
         path: str = "/v2/models/mlp/infer") -> tuple[int, str]:
    headers = {"x-session-id": session} if session else {}
    response = client.post(path, json=body(row), headers=headers)
    return response.status_code, response.headers.get("x-model-version", "")


def put(stack: Stack, policy: dict[str, Any]) -> dict[str, Any]:
    with stack.client() as client:
        response = client.put("/v2/models/mlp/traffic", json=policy)
    assert response.status_code == 200, response.text
    return response.json()


def ready_versions(stack: Stack) -> list[str]:
    with stack.client() as client:
        return client.get("/v2/models/mlp").json()["versions"]


def test_canary_split_sticky_sessions_and_weight_zero(tmp_path: Path) -> None:
    root = tmp_path / "models"
    place(root, 1, demo.mlp_model(seed=1))
    place(root, 2, demo.mlp_model(seed=2))
    (root / "mlp" / "config.yaml").write_text("version_policy: {all: {}}\n")
    with up(root, tmp_path, "--repository-poll-secs", "1") as stack:
        wait_until(lambda: ready_versions(stack) == ["1", "2"], 60, "both versions READY",
                   stack.processes.check_alive, stack.processes.logs)
        with stack.client(APP) as client:
            refused = client.put("/v2/models/mlp/traffic", json={"weights": {"1": 1}})
            assert refused.status_code == 401  # changing traffic needs the admin key
        put(stack, {"weights": {"1": 90, "2": 10}})

        # A 90/10 split over 10,000 calls.
        calls = 10_000
        with ThreadPoolExecutor(8) as pool, stack.client(APP) as client:
            seen = Counter(pool.map(lambda i: call(client, ROWS[i % len(ROWS)]), range(calls)))
        assert sum(n for (code, _), n in seen.items() if code != 200) == 0
        share = sum(n for (_, v), n in seen.items() if v == "2") / calls
        assert abs(share - 0.10) <= 0.01, share

        # Sticky sessions: 600 of them, across two weight changes that grow v2 and a gateway
        # restart (the hash is not per process).
        put(stack, {"weights": {"1": 90, "2": 10}, "sticky_header": "x-session-id"})
        sessions = [f"user-{i}" for i in range(600)]

        def versions() -> dict[str, str]:
            with stack.client(APP) as client:
                return {s: call(client, ROWS[0], s)[1] for s in sessions}

        first = versions()
        assert set(first.values()) == {"1", "2"}
        assert first == versions()  # a session keeps its version
        put(stack, {"weights": {"1": 80, "2": 20}, "sticky_header": "x-session-id"})
        second = versions()
        assert all(second[s] == "2" for s in sessions if first[s] == "2")  # 100% stayed on v2
        put(stack, {"weights": {"1": 70, "2": 30}, "sticky_header": "x-session-id"})
        third = versions()
        assert all(third[s] == "2" for s in sessions if second[s] == "2")
        (gateway,) = [pid for pid, (_, command) in descendants(stack.process.pid).items()
                      if " gateway " in command]
        os.kill(gateway, signal.SIGKILL)
        wait_until(lambda: _live(stack), 60, "the gateway back")
        assert versions() == third  # 100% across the restart

        # Weight 0 holds within a second, with nothing failing meanwhile.
        stop = threading.Event()
        answers: list[tuple[float, int, str]] = []

        def load() -> None:
            with stack.client(APP) as client:
                while not stop.is_set():
                    code, version = call(client, ROWS[1])
                    answers.append((time.monotonic(), code, version))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        zeroed = time.monotonic()
        put(stack, {"weights": {"1": 100, "2": 0}})
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        assert all(code == 200 for _, code, _ in answers)
        late = [a for a in answers if a[0] > zeroed + 1.0 and a[2] == "2"]
        assert late == [], f"{len(late)} calls reached v2 more than 1 s after its weight 0"
        assert any(a[2] == "2" for a in answers if a[0] < zeroed)  # it did take calls before


def _live(stack: Stack) -> bool:
    try:
        return httpx.get(f"{stack.url}/v2/health/live", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_a_failing_shadow_is_never_seen_by_callers(tmp_path: Path) -> None:
    root = tmp_path / "models"
    place(root, 1, demo.mlp_model(seed=1))
    place(root, 2, guarded_mlp(seed=1, threshold=-1e9))  # fails every call
    (root / "mlp" / "config.yaml").write_text(
        "version_policy: {all: {}}\ndefault_version: 1\n")
    with up(root, tmp_path, "--repository-poll-secs", "1") as stack:
        wait_until(lambda: ready_versions(stack) == ["1", "2"], 60, "both versions READY",
                   stack.processes.check_alive, stack.processes.logs)
        put(stack, {"shadow": {"version": "2", "percent": 100}})
        with ThreadPoolExecutor(4) as pool, stack.client(APP) as client:
            seen = Counter(pool.map(lambda i: call(client, ROWS[i % len(ROWS)]), range(600)))
        assert seen == Counter({(200, "1"): 600})
        with stack.client() as client:
            def shadow_failures() -> float:
                text = client.get("/metrics").text
                return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("modelgate_requests_total")
                           and 'route="shadow"' in line and 'code="500"' in line)
            wait_until(lambda: shadow_failures() > 0, 10, "shadow failures counted")
            view = client.get("/v2/models/mlp/traffic").json()
        assert view["policy"]["shadow"] == {"version": "2", "percent": 100.0}
        status = io.StringIO()
        render(redis.Redis.from_url((tmp_path / "state" / "redis-url").read_text().strip()),
               status)
        assert "shadow v2 100%" in status.getvalue() and "agreement v1 vs v2" in \
            status.getvalue()


PROMOTION = """\
promotion:
  steps:
    - {shadow: 100, min_s: 2, min_calls: 150}
    - {weight: 10, min_s: 2, min_calls: 20}
    - {weight: 50, min_s: 2, min_calls: 50}
    - {weight: 100, min_s: 1, min_calls: 1}
  rules:
    min_agreement: 0.98
    min_samples: 150
    max_error_rate_increase: 0.001
    max_p99_ratio: null
"""


class Traffic:
    """Calls from a few threads until stopped, each answer kept with its version; rows come
    from ``rows`` (swappable mid-run)."""

    def __init__(self, stack: Stack, threads: int = 4) -> None:
        self.stack = stack
        self.rows = ROWS
        self.answers: list[tuple[float, int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        i = 0
        with self.stack.client(APP) as client:
            while not self.stop.is_set():
                i += 1
                code, version = call(client, self.rows[i % len(self.rows)])
                self.answers.append((time.monotonic(), code, version))
                time.sleep(0.005)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def gate(stack: Stack) -> dict[str, Any]:
    with stack.client() as client:
        return client.get("/v2/models/mlp/traffic").json().get("gate") or {}


@pytest.mark.timeout(300)
def test_the_gate_promotes_a_good_candidate_and_rolls_back_bad_ones(tmp_path: Path) -> None:
    root = tmp_path / "models"
    place(root, 1, demo.mlp_model(seed=1))
    (root / "mlp" / "config.yaml").write_text(PROMOTION)
    with up(root, tmp_path, "--repository-poll-secs", "1") as stack, Traffic(stack) as traffic:
        wait_until(lambda: ready_versions(stack) == ["1"], 60, "v1 READY")

        # A good candidate goes through every step and becomes the default.
        place(root, 2, perturbed_mlp(seed=1, scale=0.002))
        wait_until(lambda: gate(stack).get("candidate") == "2"
                   and gate(stack).get("status") == "promoted", 120, "v2 promoted",
                   stack.processes.check_alive, lambda: str(gate(stack)))
        wait_until(lambda: ready_versions(stack) == ["2"], 30, "v1 gone")

        # A bad one (two classes swapped) is rolled back while it only shadows: none of its
        # answers reach a caller.
        place(root, 3, swapped_mlp(seed=1))
        wait_until(lambda: gate(stack).get("candidate") == "3"
                   and gate(stack).get("status") == "rolled_back", 120, "v3 rolled back",
                   stack.processes.check_alive, lambda: str(gate(stack)))
        assert "agreement" in gate(stack)["reason"] and "step 1" in gate(stack)["reason"]
        assert not [a for a in traffic.answers if a[2] == "3"]

        # One that errors on some inputs passes its shadow step (those inputs do not come
        # yet), then errs during its canary step: rolled back, the errors callers saw bounded
        # by its share of one evaluation window.
        place(root, 4, guarded_mlp(seed=1, threshold=3.0))
        wait_until(lambda: gate(stack).get("candidate") == "4"
                   and gate(stack).get("step", 0) >= 2, 120, "v4 at its canary step",
                   stack.processes.check_alive, lambda: str(gate(stack)))
        canary = gate(stack)
        bad_from = time.monotonic()
        shifted = ROWS + np.array([5, 0, 0, 0], np.float32)  # over the guard's threshold
        traffic.rows = np.where(np.arange(len(ROWS))[:, None] % 2 == 0, shifted,
                                ROWS).astype(np.float32)
        wait_until(lambda: gate(stack).get("status") == "rolled_back", 60, "v4 rolled back",
                   stack.processes.check_alive, lambda: str(gate(stack)))
        rolled_at = time.monotonic()
        reason = gate(stack)["reason"]
        time.sleep(1.5)
    assert "error rate" in reason, reason
    failed = [a for a in traffic.answers if a[1] != 200]
    assert all(a[0] >= bad_from for a in failed), "no call failed before the bad inputs came"
    window = [a for a in traffic.answers if bad_from <= a[0] <= rolled_at + 1.0]
    share = 0.10 if canary["step"] == 2 else 0.50
    # The bound: half the calls carry a bad input, and the candidate answers its share of
    # them, from the first bad input until the rollback is applied everywhere (evaluations
    # until enough of its calls erred, then a gateway refresh).
    print(f"rollouts: erroring candidate at step {canary['step']} ({share:.0%}): "
          f"{len(failed)} failed of {len(window)} calls in the window ({reason})")
    assert len(failed) <= share * 0.5 * len(window) * 1.5 + 5, (len(failed), len(window))
    assert not [a for a in traffic.answers if a[0] > rolled_at + 1.0 and a[2] == "4"]
