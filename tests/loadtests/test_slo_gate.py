"""The load tests end to end: locust, headless, in its own process, against a real
``modelgate up`` (embedded Redis, gateway, a worker) on a free port.

Locust is never imported here: its import monkey-patches the interpreter with gevent.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import httpx
import onnx
import pytest

from modelgate.core.embedded_redis import free_port
from modelgate.core.process import child_preexec
from tests.models import write_repository
from tests.procs import REPO_ROOT, Processes, answers_200, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_spec("locust") is None,
                       reason="locust is not installed: pip install -e '.[dev]'"),
]

LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
READY_TIMEOUT_S = 60.0
STEADY_S = 8.0  # the steady shape lasts 120 s at time scale 1
LOCUST_GRACE_S = 30.0  # start-up and shutdown of locust beyond the test's own duration


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory,
             onnx_models: dict[str, onnx.ModelProto]) -> Iterator[str]:
    """A ready ``modelgate up`` serving the demo ``mlp`` only."""
    repo = write_repository(tmp_path_factory.mktemp("loadtest-models"),
                            {"mlp": onnx_models["mlp"]})
    processes = Processes(tmp_path_factory.mktemp("loadtest-logs"))
    port = free_port()
    processes.spawn("up", ["up", "--models", str(repo), "--host", "127.0.0.1",
                           "--port", str(port), "--min-workers", "1"])
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=2.0) as client:
            wait_until(lambda: answers_200(client, "/v2/health/ready"), READY_TIMEOUT_S,
                       f"{url}/v2/health/ready", processes.check_alive, processes.logs)
        yield url
    finally:
        processes.stop()


def run_locust(base_url: str, args: list[str], env: dict[str, str],
               duration_s: float) -> subprocess.CompletedProcess[str]:
    """``locust -f loadtests/locustfile.py --headless`` with only ``env`` as configuration:
    the repository has just ``mlp``, so the V1 user and the mix call it too."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MODELGATE_", "LOCUST_"))}
    clean.update({"MODELGATE_LOADTEST_V1_MODEL": "mlp", "MODELGATE_LOADTEST_MIX": "mlp",
                  **env})
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
         "--host", base_url, *args],
        cwd=REPO_ROOT, env=clean, capture_output=True, text=True, check=False,
        timeout=duration_s + LOCUST_GRACE_S, preexec_fn=child_preexec,
    )


def aggregated(stats_csv: Path) -> dict[str, dict[str, str]]:
    with stats_csv.open(newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_a_healthy_run_passes_the_gate_and_writes_reports(base_url: str, tmp_path: Path) -> None:
    """A steady shape at a gentle rate, thresholds from the environment: exit 0, reports."""
    result = run_locust(base_url, [
        "-u", "8", "--rate-per-user", "10",
        "--csv", str(tmp_path / "run"), "--html", str(tmp_path / "run.html"),
    ], {
        "MODELGATE_LOADTEST_SHAPE": "steady",
        "MODELGATE_LOADTEST_TIME_SCALE": str(STEADY_S / 120),
        "MODELGATE_SLO_P95_MS": "2000",
        "MODELGATE_SLO_P99_MS": "5000",
        "MODELGATE_SLO_ERROR_RATE": "0.01",
    }, STEADY_S)
    output = result.stdout + result.stderr

    assert result.returncode == 0, output
    assert "SLO gate PASSED" in output, output
    assert "Shape test starting" in output, output  # the steady shape, not -u/-r/-t, ran it
    stats = aggregated(tmp_path / "run_stats.csv")
    total = stats["Aggregated"]
    assert int(total["Request Count"]) > 50, stats
    assert int(total["Failure Count"]) == 0, stats
    # Every user class made its calls, each checked (a failed check would count as a failure).
    for name in ["/v2/models/mlp/infer (1 row)", "/v2/models/mlp/infer (8 rows)",
                 "/v1/models/mlp:predict (1 row)"]:
        assert int(stats[name]["Request Count"]) > 0, stats
    assert (tmp_path / "run.html").stat().st_size > 0


def test_an_impossible_threshold_fails_the_gate_and_names_it(base_url: str,
                                                             tmp_path: Path) -> None:
    run_time_s = 3.0
    result = run_locust(base_url, [
        "-u", "4", "-r", "4", "--run-time", f"{run_time_s:g}s", "--rate-per-user", "10",
        "--slo-p99-ms", "0.001", "--slo-error-rate", "0.01",
        "--csv", str(tmp_path / "run"),
    ], {}, run_time_s)
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "SLO gate FAILED" in output, output
    # The violated threshold, what was observed against what was allowed, and how to set it.
    [line] = [x for x in output.splitlines() if x.strip().startswith("FAIL")]
    assert "p99 latency" in line and "> 0.001 ms allowed" in line, line
    assert "--slo-p99-ms" in line, line
    assert "ok    error rate 0%" in output, output
    assert (tmp_path / "run_stats.csv").exists()
