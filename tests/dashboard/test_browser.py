"""The dashboard in a real headless browser against a real ``modelgate up``.

``modelgate up`` runs Redis, the gateway, the autoscaler and workers, with an API key and a
budget that lets the autoscaler run two workers at most. Traffic runs all along; its first
input is shifted from the reference profile, so the drift detector alerts for real. A burst
while the worker is paused (SIGSTOP) builds a backlog, so the autoscaler scales up (capped by
the budget) and, once it drained, back down: real scaling decisions for the timeline.

The browser is Debian's ``chromium`` driven by Playwright (never ``playwright install``, which
downloads browsers); without either the tests skip and say which is missing. Two tests
intercept responses on purpose, and say why: one puts hostile strings where the API could
carry them, one shows the states of the drift panel that this server does not reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

from modelgate.core.embedded_redis import free_port
from modelgate.core.profile import build_profile, profile_path, run_model
from modelgate.core.repository import load_model
from tests.models import write_repository
from tests.procs import REPO_ROOT, Processes, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHROMIUM = os.environ.get("MODELGATE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
KEY = "mg-dashboard-browser-5e1f"
AUTH = {"authorization": f"Bearer {KEY}"}
SCREENSHOT = REPO_ROOT / "test-artifacts" / "dashboard.png"
VERSIONS_SCREENSHOT = REPO_ROOT / "test-artifacts" / "dashboard-versions.png"
RUN_ID = "5f0c2a9d8e7b4c1a9f3e2d1c0b9a8f7e"
LINEAGE = {"run_id": RUN_ID, "experiment_id": "3",
           "params": {"hidden": 8, "lr": 0.01, "epochs": 20, "seed": 1, "optimizer": "adam"},
           "metrics": {"accuracy": 0.947, "log_loss": 0.162},
           "registry": {"name": "mlp", "version": "4", "alias": "champion"},
           "tracking_uri": "http://mlflow.internal:5000"}
HOSTILE = '<img src=x onerror="document.title=\'pwned\'">&amp;"'
READY_TIMEOUT_S = 90.0
SHIFT = 2.0  # input[0] of the traffic, in reference standard deviations


def _chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if path is None:
        pytest.skip(f"no chromium at {CHROMIUM} or on PATH: install it with "
                    "`apt-get install -y chromium` (or set MODELGATE_TEST_CHROMIUM)")
    return path


# --------------------------------------------------------------------------- the system


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Traffic:
    """Steady calls in a thread: one row each, the first input shifted (so it drifts)."""

    def __init__(self, base_url: str, rate_per_s: float = 20.0) -> None:
        self.base_url = base_url
        self.interval_s = 1.0 / rate_per_s
        self.stop = threading.Event()
        self.answered = 0
        self.thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(1)
        with httpx.Client(base_url=self.base_url, headers=AUTH, timeout=10.0) as client:
            while not self.stop.is_set():
                row = rng.standard_normal(4)
                row[0] += SHIFT
                with contextlib.suppress(httpx.TransportError):
                    response = client.post("/v2/models/mlp/infer", json={"inputs": [{
                        "name": "input", "datatype": "FP32", "shape": [1, 4],
                        "data": row.tolist()}]})
                    self.answered += response.status_code == 200
                self.stop.wait(self.interval_s)


async def _burst(base_url: str, calls: int) -> None:
    rows = np.random.default_rng(2).standard_normal((calls, 4))
    rows[:, 0] += SHIFT
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=60.0,
                                 limits=httpx.Limits(max_connections=calls)) as client:
        await asyncio.gather(*(client.post("/v2/models/mlp/infer", json={"inputs": [{
            "name": "input", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]})
            for row in rows), return_exceptions=True)


@dataclass
class Stack:
    url: str
    processes: Processes
    up_pid: int
    children: set[int] = field(default_factory=set)

    def data(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/dashboard/data", headers=AUTH, timeout=10.0)
        assert response.status_code == 200, response.text
        return response.json()

    def mlp(self) -> dict[str, Any]:
        return next(m for m in self.data()["models"] if m["name"] == "mlp")

    def scale_with_a_paused_worker(self) -> None:
        """Pause the worker, queue a burst, let the autoscaler add one, then resume."""
        [worker] = [pid for pid in _children(self.up_pid)
                    if " worker " in _cmdline(pid) and "--model mlp" in _cmdline(pid)]
        thread = threading.Thread(target=lambda: asyncio.run(_burst(self.url, 300)))
        began = time.time()  # the first decision started the first worker: not this one
        os.kill(worker, signal.SIGSTOP)
        try:
            thread.start()
            wait_until(lambda: any(d["desired"] > d["current"] and d["time"] >= began
                                   for d in self.mlp()["decisions"]),
                       30, "the autoscaler to scale up on the backlog", interval_s=0.5)
        finally:
            os.kill(worker, signal.SIGCONT)
            thread.join(timeout=60)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory,
         onnx_models: dict[str, onnx.ModelProto]) -> Path:
    """The demo MLP with a reference profile of standard normal rows, as `make up` ships it,
    and the lineage of the run that trained it (metadata.json)."""
    root = write_repository(tmp_path_factory.mktemp("dashboard-browser"),
                            {"mlp": onnx_models["mlp"]})
    version = load_model(root / "mlp").default
    (version.path.parent / "metadata.json").write_text(json.dumps(LINEAGE))
    rows = {"input": np.random.default_rng(0).standard_normal((5000, 4)).astype(np.float32)}
    build_profile(version, rows, run_model(version, rows)).save(profile_path(version))
    return root


@pytest.fixture(scope="module")
def stack(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    processes = Processes(tmp_path_factory.mktemp("dashboard-browser-logs"))
    port = free_port()
    up = processes.spawn("up", [
        "up", "--models", str(repo), "--host", "127.0.0.1", "--port", str(port),
        "--min-workers", "1", "--max-workers", "3", "--max-cost-per-hour", "2.5",
        "--scale-down-delay", "4", "--api-key", KEY])
    running = Stack(f"http://127.0.0.1:{port}", processes, up.pid)
    traffic = Traffic(running.url)
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{running.url}/v2/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, READY_TIMEOUT_S, "`modelgate up` to be ready", processes.check_alive,
                   processes.logs)
        traffic.thread.start()
        running.scale_with_a_paused_worker()
        wait_until(lambda: any(d["desired"] < d["current"] for d in running.mlp()["decisions"]),
                   60, "the autoscaler to scale back down", processes.check_alive,
                   processes.logs, interval_s=0.5)

        def settled() -> bool:  # one worker again, and the burst's wait out of the p95
            now = running.mlp()["now"]
            return (now["live"] == now["desired"] == 1 and now["completed_per_s"] > 0
                    and now["p95_ms"] is not None and now["p95_ms"] < 100)

        wait_until(settled, 40, "one live worker under steady traffic", processes.check_alive,
                   processes.logs, interval_s=0.5)
        yield running
    finally:
        traffic.stop.set()
        traffic.thread.join(timeout=15)
        running.children.update(_children(up.pid))
        processes.stop()
        for pid in running.children:  # anything `up` failed to stop (it should not happen)
            if _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="Playwright for Python is missing: `pip install -e '.[dev]'` installs it")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Page:
    page: Any
    errors: list[str]


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
           if m.type in ("error", "warning") else None)
    tab.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    try:
        yield Page(tab, errors)
    finally:
        context.close()


# Predicates are functions, not expressions: Playwright evaluates an expression with eval(),
# which the page's Content-Security-Policy refuses (as it should).
def _open(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_function("() => document.body.dataset.snapshot !== undefined", timeout=20_000)


DRIFT_ROWS = "() => document.getElementById('drift-table').tBodies[0].rows.length > 0"
FIGURES = """() => {
  const value = (id) => document.getElementById(id).dataset.value;
  const text = (id) => document.getElementById(id).textContent;
  return {snapshot: document.body.dataset.snapshot, model: document.body.dataset.model,
          throughput: [value("fig-throughput"), text("fig-throughput")],
          p95: [value("fig-p95"), text("fig-p95")],
          backlog: [value("fig-backlog"), text("fig-backlog")],
          live: [value("fig-live"), text("fig-live")],
          desired: [value("fig-desired"), text("fig-desired")],
          cost: [value("fig-cost"), text("fig-cost")]};
}"""


def _number(value: str) -> float | None:
    return float(value) if value else None


def test_page_shows_what_data_reports(stack: Stack, page: Page) -> None:
    received: list[Any] = []
    tab = page.page
    tab.on("response", lambda r: received.append(r) if r.url.endswith("/dashboard/data")
           else None)
    _open(tab, f"{stack.url}/dashboard#key={KEY}")
    assert "key=" not in tab.url  # the fragment is dropped from the address bar at once
    assert tab.evaluate("sessionStorage.getItem('modelgate.dashboard.key')") == KEY
    tab.wait_for_function(DRIFT_ROWS, timeout=20_000)
    tab.wait_for_timeout(1500)  # a few polls: the page keeps up

    shown = tab.evaluate(FIGURES)
    bodies = {str(b["time"]): b for b in (r.json() for r in received if r.ok)}
    data = bodies[shown["snapshot"]]  # exactly the snapshot the page drew last
    mlp = next(m for m in data["models"] if m["name"] == shown["model"] == "mlp")
    now = mlp["now"]
    assert _number(shown["live"][0]) == now["live"] == 1
    assert shown["live"][1] == "1"
    assert _number(shown["desired"][0]) == now["desired"] == 1
    assert _number(shown["backlog"][0]) == now["backlog"]
    assert shown["backlog"][1] == str(now["backlog"])
    assert _number(shown["throughput"][0]) == now["completed_per_s"] > 0
    assert float(shown["throughput"][1]) == pytest.approx(now["completed_per_s"], abs=0.051)
    assert _number(shown["p95"][0]) == now["p95_ms"]
    assert _number(shown["cost"][0]) == data["autoscaler"]["cost_per_hour"] == 1.0
    assert shown["cost"][1] == "1.00"

    # And what the page shows agrees with a fresh snapshot from outside the browser.
    fresh = stack.mlp()["now"]
    assert fresh["live"] == now["live"]
    assert fresh["completed_per_s"] == pytest.approx(now["completed_per_s"],
                                                     abs=max(3.0, 0.3 * fresh["completed_per_s"]))

    # Scaling decisions: the table, and a flag on the timeline with the reason on hover.
    decisions = mlp["decisions"][::-1][:12]
    assert len(decisions) >= 2
    rows = tab.locator("#decisions-table tbody tr")
    assert rows.count() == len(decisions)
    assert rows.nth(0).locator("td.reason").text_content() == decisions[0]["reason"]
    flags = tab.locator("#chart-workers .marker title").all_text_contents()
    assert any(decisions[-1]["reason"] in title for title in flags), flags
    assert any("capped by budget" in title for title in flags), flags

    # Drift: the panel shows the endpoint's features, and input[0] (shifted) alerts.
    drift = httpx.get(f"{stack.url}/v2/models/mlp/drift", headers=AUTH, timeout=10).json()
    assert data["drift"] is True and drift["profile"] is True
    names = tab.locator("#drift-table tbody td.mono").all_text_contents()
    assert names == [f["name"] for f in drift["features"]]
    wait_until(lambda: "drift" in tab.locator("#drift-table tbody tr").nth(0)
               .locator(".badge").text_content(), 60, "input[0] to drift", interval_s=0.5)
    tab.select_option("#feature", "input[0]")
    assert tab.locator("#chart-drift rect[fill]").count() >= 2 * 10  # paired bars, 10 bins
    assert "input[0]" in tab.locator("#drift-feature-detail").text_content()

    # The whole page in the viewport (a full-page capture would resize it under the pointer).
    tab.set_viewport_size({"width": 1440,
                           "height": tab.evaluate("() => document.body.scrollHeight")})
    tab.wait_for_timeout(500)
    # Point just right of the scale-up flag: the readout names the decision and its reason.
    flag = tab.locator("#chart-rate .marker", has_text="capped by budget").locator("rect")
    box = flag.bounding_box()
    tab.mouse.move(box["x"] + box["width"] + 1, box["y"] + box["height"] / 2)
    tip = tab.locator("#chart-rate .tooltip")
    tab.wait_for_selector("#chart-rate .tooltip:not([hidden])")
    assert "capped by budget" in " ".join(
        tip.locator(".tooltip-reason").all_text_contents()), tip.text_content()
    tab.wait_for_timeout(1200)
    assert tip.is_visible()  # a redraw keeps the hovered second
    SCREENSHOT.parent.mkdir(exist_ok=True)
    tab.screenshot(path=str(SCREENSHOT))
    assert page.errors == []


def test_page_asks_for_the_key_and_keeps_it_in_the_tab(stack: Stack, page: Page) -> None:
    tab = page.page
    tab.goto(f"{stack.url}/dashboard")
    tab.wait_for_selector("#keyform:not([hidden])", timeout=20_000)
    assert tab.locator("#main").is_hidden()
    # The only complaint is the refused data call.
    assert all("401" in e for e in page.errors) and page.errors, page.errors
    page.errors.clear()

    tab.fill("#key", "not-the-key")
    tab.click("#keyform button[type=submit]")
    tab.wait_for_function(
        "() => document.getElementById('keyerror').textContent.includes('refused')",
        timeout=20_000)
    assert all("401" in e for e in page.errors) and page.errors, page.errors
    page.errors.clear()

    tab.fill("#key", KEY)
    tab.click("#keyform button[type=submit]")
    tab.wait_for_function("() => document.body.dataset.snapshot !== undefined", timeout=20_000)
    assert tab.locator("#keyform").is_hidden()
    assert tab.locator("#fig-live").text_content() == "1"
    tab.reload()
    tab.wait_for_function("() => document.body.dataset.snapshot !== undefined", timeout=20_000)
    assert tab.locator("#keyform").is_hidden()  # still in this tab's sessionStorage
    tab.click("#forget")
    tab.wait_for_selector("#keyform:not([hidden])", timeout=20_000)
    assert all("401" in e for e in page.errors), page.errors


def test_strings_from_the_api_are_shown_as_text(stack: Stack, page: Page) -> None:
    """Hostile strings in a decision's reason and a feature's name stay text.

    The responses are rewritten in the browser (Playwright routes) because this server never
    produces such strings on its own; everything else in them is real.
    """
    tab = page.page

    def data(route: Any) -> None:
        body = route.fetch().json()
        for model in body["models"]:
            for decision in model["decisions"]:
                decision["reason"] = HOSTILE
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    def drift(route: Any) -> None:
        body = route.fetch().json()
        body["features"][0]["name"] = HOSTILE
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    tab.route("**/dashboard/data", data)
    tab.route("**/v2/models/*/drift", drift)
    _open(tab, f"{stack.url}/dashboard#key={KEY}")
    tab.wait_for_function(DRIFT_ROWS, timeout=20_000)
    assert tab.locator("img").count() == 0
    assert tab.title() != "pwned"
    assert tab.locator("#decisions-table td.reason").first.text_content() == HOSTILE
    assert tab.locator("#drift-table td.mono").first.text_content() == HOSTILE
    assert HOSTILE in tab.locator("#feature").inner_text()
    assert page.errors == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"drift": False}, "drift: not available"),
    ({"profile": False, "message": "no reference profile; build one"}, "no reference profile"),
], ids=["no-drift-endpoint", "no-profile"])
def test_drift_panel_without_drift_data(stack: Stack, page: Page, change: dict[str, Any],
                                        expected: str) -> None:
    """States this server does not reach (it has the endpoint and a profile): rewritten."""
    tab = page.page

    def data(route: Any) -> None:
        body = route.fetch().json()
        body.update({k: v for k, v in change.items() if k == "drift"})
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    def drift(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(
            {"model": "mlp", "features": [], "alerts": [], "sampled_rows": 0, **change}))

    tab.route("**/dashboard/data", data)
    tab.route("**/v2/models/*/drift", drift)
    _open(tab, f"{stack.url}/dashboard#key={KEY}")
    status = "document.getElementById('drift-status').textContent"
    tab.wait_for_function(f"() => {status}.startsWith({json.dumps(expected)})", timeout=20_000)
    assert tab.locator("#drift-body").is_hidden()
    assert tab.locator("#fig-live").text_content() == "1"
    assert page.errors == []


VERSION_ROWS = "() => document.getElementById('versions-table').tBodies[0].rows.length > 0"


def test_versions_panel_shows_lineage_beside_live_figures(stack: Stack, page: Page) -> None:
    tab = page.page
    _open(tab, f"{stack.url}/dashboard#key={KEY}")
    tab.wait_for_function(VERSION_ROWS, timeout=20_000)
    view = httpx.get(f"{stack.url}/v2/models/mlp/versions", headers=AUTH, timeout=10).json()
    [row] = view["versions"]
    assert row["lineage"]["run_id"] == RUN_ID and row["default"]
    assert row["run_url"] == f"http://mlflow.internal:5000/#/experiments/3/runs/{RUN_ID}"
    assert row["live"]["calls"] > 0 and row["live"]["agreement"] is None
    assert row["drift"]["state"] == "alert"  # input[0] is shifted

    cells = tab.locator("#versions-table tbody tr").nth(0).locator("td")
    assert cells.nth(0).text_content() == "1default"
    assert cells.nth(1).text_content() == "READY"
    link = cells.nth(2).locator("a")
    assert link.text_content() == RUN_ID[:12]
    assert link.get_attribute("href") == row["run_url"]
    assert link.get_attribute("rel") == "noopener noreferrer"
    assert "reg v4" in cells.nth(2).text_content()
    # Four params by name (of five), and the training metrics.
    assert cells.nth(3).text_content() == "epochs=20, hidden=8, lr=0.01, optimizer=adam, +1"
    assert cells.nth(4).text_content() == "accuracy=0.947, log_loss=0.162"
    shown_calls = int(cells.nth(5).text_content().replace(",", ""))
    assert 0 < shown_calls <= httpx.get(f"{stack.url}/v2/models/mlp/versions", headers=AUTH,
                                        timeout=10).json()["versions"][0]["live"]["calls"]
    assert cells.nth(6).text_content() == "0.00%"
    assert cells.nth(7).text_content() not in ("", "\u2013")  # p50: a figure, not a dash
    assert cells.nth(9).text_content() == "n/a"  # agreement: it is the serving version
    assert cells.nth(10).text_content() == "drift"
    assert "shadowed" in tab.locator("#versions-status").text_content()

    panel = tab.locator("#versions")
    panel.scroll_into_view_if_needed()
    VERSIONS_SCREENSHOT.parent.mkdir(exist_ok=True)
    panel.screenshot(path=str(VERSIONS_SCREENSHOT))
    assert page.errors == []


def test_versions_panel_keeps_strings_as_text_and_links_only_http(stack: Stack,
                                                                   page: Page) -> None:
    """A hostile param and a ``javascript:`` run URL (rewritten in the browser: this server
    never makes them) stay text; a registry failure is shown as such."""
    tab = page.page

    def versions(route: Any) -> None:
        body = route.fetch().json()
        row = body["versions"][0]
        row["lineage"]["params"] = {HOSTILE: HOSTILE}
        row["run_url"] = "javascript:document.title='pwned'"
        body["registry"] = {"error": HOSTILE, "registry_version": "9"}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    tab.route("**/v2/models/*/versions", versions)
    _open(tab, f"{stack.url}/dashboard#key={KEY}")
    tab.wait_for_function(VERSION_ROWS, timeout=20_000)
    cells = tab.locator("#versions-table tbody tr").nth(0).locator("td")
    assert cells.nth(2).locator("a").count() == 0
    assert cells.nth(3).text_content() == f"{HOSTILE}={HOSTILE}"
    assert HOSTILE in tab.locator("#versions-status").text_content()
    assert tab.locator("img").count() == 0 and tab.title() != "pwned"
    assert page.errors == []


JOB_ROWS = "() => document.getElementById('jobs-table').tBodies[0].rows.length > 0"


def test_jobs_panel_shows_a_job_with_its_progress(stack: Stack, page: Page) -> None:
    rows = np.random.default_rng(6).standard_normal((500, 4))
    csv = "input[0],input[1],input[2],input[3]\n" + "".join(
        ",".join(f"{v:.5f}" for v in row) + "\n" for row in rows) + "1,2,x,4\n"
    submitted = httpx.post(f"{stack.url}/v2/jobs", params={"model": "mlp", "format": "csv"},
                           content=csv.encode(), timeout=30,
                           headers={**AUTH, "content-type": "text/csv"})
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    wait_until(lambda: httpx.get(f"{stack.url}/v2/jobs/{job['id']}", headers=AUTH,
                                 timeout=10).json()["state"] == "completed_with_failures",
               60, "the job to end")
    tab = page.page
    _open(tab, f"{stack.url}/dashboard#key={KEY}")
    tab.wait_for_function(JOB_ROWS, timeout=20_000)
    row = tab.locator(f"#jobs-table tbody tr[data-job='{job['id']}']")
    cells = row.locator("td")
    assert cells.nth(0).text_content() == job["id"][:8]
    assert cells.nth(1).text_content() == f"mlp:{job['version']}"
    assert cells.nth(2).text_content() == "completed_with_failures"
    assert cells.nth(3).text_content() == "100.0%"
    assert cells.nth(4).text_content() == "500"
    assert cells.nth(5).text_content() == "1"
    assert cells.nth(6).text_content() == "501"
    assert page.errors == []


QUALITY_SCREENSHOT = REPO_ROOT / "test-artifacts" / "dashboard-quality.png"


def test_quality_panel_shows_the_labels_fed_back(stack: Stack, page: Page) -> None:
    """Labels for calls of known ids: the panel shows the version's live quality exactly as
    GET /v2/models/mlp/quality reports it."""
    rows = np.random.default_rng(5).standard_normal((60, 4)).astype(np.float32)
    labels = []
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=10.0) as client:
        for i, row in enumerate(rows):
            answer = client.post("/v2/models/mlp/infer", json={"id": f"dash-{i}", "inputs": [{
                "name": "input", "datatype": "FP32", "shape": [1, 4],
                "data": row.tolist()}]}).json()
            predicted = int(np.argmax(answer["outputs"][0]["data"]))
            labels.append({"id": f"dash-{i}", "label": predicted if i % 4 else (predicted + 1) % 3})

        def fed() -> bool:
            return client.post("/v2/models/mlp/feedback", json=labels).json()["unknown"] == 0

        wait_until(fed, 10, "the calls' answers to be stored", interval_s=0.3)
        quality = client.get("/v2/models/mlp/quality").json()["versions"][0]
    assert quality["since_load"]["accuracy"] == 0.75 and quality["labelled"] == 60
    tab = page.page
    _open(tab, f"{stack.url}/dashboard#key={KEY}")
    tab.wait_for_selector("#quality-table:not([hidden])", timeout=20_000)
    row = tab.locator("#quality-table tbody tr[data-version='1']")
    assert row.locator("td").nth(1).text_content() == "60"
    assert row.locator("td").nth(2).get_attribute("data-value") == "0.75"
    assert row.locator("td").nth(2).text_content() == "75.0%"
    # Judged against the lineage's training accuracy, not yet alarmed (fewer than 100 rows).
    badge = row.locator(".badge")
    assert badge.text_content() == "ok"
    assert "accuracy 94.7% (lineage)" in badge.get_attribute("title")
    tab.set_viewport_size({"width": 1440,
                           "height": tab.evaluate("() => document.body.scrollHeight")})
    tab.wait_for_timeout(500)
    QUALITY_SCREENSHOT.parent.mkdir(exist_ok=True)
    tab.locator("section.lower").screenshot(path=str(QUALITY_SCREENSHOT))
    assert page.errors == []
