"""Drift end to end: a model served with a reference profile, shifted traffic through the
gateway, the alert in the gauge and the endpoint, and the alert clearing once traffic returns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelgate.cli import demo
from modelgate.core.profile import build_profile, profile_path, run_model
from modelgate.core.repository import load_model
from tests.procs import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, serve: Any) -> Iterator[str]:
    root = tmp_path_factory.mktemp("drift-models")
    demo.write_model(demo.mlp_model(), root, "mlp")
    demo.write_model(demo.mlp_model(seed=1), root, "plain")  # served without a profile
    version = load_model(root / "mlp").default
    reference = {"input": np.random.default_rng(0).standard_normal((5000, 4)).astype("f4")}
    build_profile(version, reference, run_model(version, reference)).save(profile_path(version))
    with serve(Path(root), [("mlp", 1), ("plain", 1)]) as url:
        yield url


def send(client: httpx.Client, shift: float, calls: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(calls):
        rows = rng.standard_normal((20, 4))
        rows[:, 2] += shift
        response = client.post("/v2/models/mlp/infer", json={"inputs": [
            {"name": "input", "shape": [20, 4], "datatype": "FP32",
             "data": rows.ravel().tolist()}]})
        assert response.status_code == 200, response.text


def alerts(client: httpx.Client) -> dict[str, bool]:
    return {f["name"]: f["alert"] for f in client.get("/v2/models/mlp/drift").json()["features"]}


def gauge(client: httpx.Client, feature: str) -> float:
    line = next(line for line in client.get("/metrics").text.splitlines()
                if line.startswith("modelgate_drift_alert{")
                and f'feature="{feature}"' in line and 'model="mlp"' in line)
    return float(line.rsplit(" ", 1)[1])


def test_clean_traffic_raises_nothing_and_shifted_traffic_alerts_then_clears(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        send(client, 0.0, 40, seed=1)  # 800 clean rows: more than a 500-row window
        wait_until(lambda: client.get("/v2/models/mlp/drift").json()["sampled_rows"] >= 800,
                   15, "the clean rows to be sampled")
        assert not any(alerts(client).values())

        send(client, 1.0, 30, seed=2)  # +1 sigma on input[2]
        wait_until(lambda: alerts(client).get("input[2]", False), 15, "a drift alert")
        report = client.get("/v2/models/mlp/drift").json()
        assert report["profile"] is True
        feature = next(f for f in report["features"] if f["name"] == "input[2]")
        assert feature["thresholds"]["cusum"] > 0 and feature["window_target"] >= 500
        assert feature["reference"]["edges"] and len(feature["reference"]["fractions"]) == 10
        assert any(a["feature"] == "input[2]" for a in report["alerts"])
        assert not alerts(client)["input[0]"]  # untouched features stay quiet
        assert gauge(client, "input[2]") == 1.0

        send(client, 0.0, 80, seed=3)  # the distribution returns
        wait_until(lambda: not alerts(client)["input[2]"], 20, "the alert to clear")
        assert gauge(client, "input[2]") == 0.0
        events = client.get("/v2/models/mlp/drift").json()["alerts"]
        assert any(a["statistic"] == "cleared" and a["feature"] == "input[2]" for a in events)


def test_a_model_without_a_profile_says_so(base: str) -> None:
    report = httpx.get(f"{base}/v2/models/plain/drift").json()
    assert report["profile"] is False and "no reference profile" in report["message"]
    assert httpx.get(f"{base}/v2/models/nope/drift").status_code == 404


def test_profile_command_writes_the_profile(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.procs import REPO_ROOT

    demo.write_model(demo.mlp_model(), tmp_path, "mlp")
    data = tmp_path / "rows.csv"
    data.write_text("a,b,c,d\n" + "\n".join(
        ",".join(f"{v:.4f}" for v in row)
        for row in np.random.default_rng(0).standard_normal((300, 4))))
    done = subprocess.run([sys.executable, "-m", "modelgate", "profile", "--models",
                           str(tmp_path), "--model", "mlp", "--data", str(data)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "7 feature(s)" in done.stdout
    assert (tmp_path / "mlp" / "1" / "profile.json").is_file()
