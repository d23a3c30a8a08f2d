"""``modelgate up``: the whole system as one command, stopped cleanly by SIGTERM or SIGINT.

Child processes are found through /proc (psutil is not a dependency): every descendant of the
``up`` process is recorded with its start time, so a recycled pid is never mistaken for it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

from modelgate.core import arena
from modelgate.core.embedded_redis import free_port
from tests import metrics
from tests.models import wide_sum_model, write_repository
from tests.procs import Processes, answers_200, wait_until

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 90.0
EXIT_TIMEOUT_S = 30.0


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of a live process, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every live descendant of ``root``: pid -> (start time, command line)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found: dict[int, tuple[int, str]] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z":
            found[pid] = (stat[2], _cmdline(pid))
            todo.extend(children.get(pid, []))
    return found


def still_running(recorded: dict[int, tuple[int, str]]) -> dict[int, str]:
    """The recorded processes that still exist (same pid and start time, not a zombie)."""
    alive = {}
    for pid, (started, command) in recorded.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == started and stat[0] != "Z":
            alive[pid] = command
    return alive


@pytest.fixture(scope="module")
def up_repository(tmp_path_factory: pytest.TempPathFactory,
                  onnx_models: dict[str, onnx.ModelProto]) -> Path:
    return write_repository(tmp_path_factory.mktemp("up-models"), {"mlp": onnx_models["mlp"]})


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    url: str
    processes: Processes
    children: dict[int, tuple[int, str]] = field(default_factory=dict)


@pytest.fixture
def up(up_repository: Path, tmp_path: Path) -> Iterator[Up]:
    """A running ``modelgate up``; whatever it leaves behind is killed by recorded pid."""
    processes = Processes(tmp_path)
    port = free_port()
    process = processes.spawn("up", ["up", "--models", str(up_repository), "--host", "127.0.0.1",
                                     "--port", str(port), "--min-workers", "1"])
    running = Up(process, f"http://127.0.0.1:{port}", processes)
    try:
        yield running
    finally:
        running.children.update(descendants(process.pid))
        processes.stop()
        for pid in still_running(running.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_serves_then_stops_everything_on_signal(
        up: Up, signum: int, ort_run: Callable[..., list[Any]]) -> None:
    process, base_url, processes = up.process, up.url, up.processes

    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        wait_until(lambda: answers_200(client, "/v2/health/ready"), READY_TIMEOUT_S,
                   "`modelgate up` to be ready", processes.check_alive, processes.logs)

        x = np.array([[0.1, 0.2, 0.3, 0.4], [4, 3, 2, 1]], np.float32)
        response = client.post("/v2/models/mlp/infer", json={"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [2, 4], "data": x.tolist()}]})
        assert response.status_code == 200, response.text
        [out] = response.json()["outputs"]
        np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(out["shape"]),
                                   ort_run("mlp", {"input": x})[0], rtol=1e-5, atol=1e-6)

    children = descendants(process.pid)
    up.children.update(children)
    commands = list(children.values())
    assert any("redis-server" in c for _, c in commands), commands
    # Gateway and workers reach the embedded Redis by a Unix socket in a private directory
    # (`up` says where; redis-server rewrites its own command line, so ps cannot).
    said = "\n".join(path.read_text(errors="replace") for _, _, path in processes.started)
    found = re.search(r"started embedded Redis .* and unix://(\S+);", said)
    assert found is not None, processes.logs()
    socket_path = Path(found.group(1))
    assert socket_path.is_socket()
    assert socket_path.parent.stat().st_mode & 0o077 == 0
    assert any(" worker " in c and "--model mlp" in c for _, c in commands), commands
    assert any(" gateway " in c for _, c in commands), commands

    started = time.monotonic()
    process.send_signal(signum)
    try:
        code = process.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`modelgate up` still running {EXIT_TIMEOUT_S:.0f}s after "
                    f"{signal.Signals(signum).name}:\n{processes.logs()}")
    assert code == 0, processes.logs()
    assert time.monotonic() - started < EXIT_TIMEOUT_S

    # `up` stopped and reaped its children before it exited: none is left running.
    assert still_running(children) == {}
    assert not socket_path.parent.exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base_url}/v2/health/live", timeout=2.0)


def test_up_stops_cleanly_when_signalled_while_starting(up: Up) -> None:
    """SIGTERM before anything is ready: no half-started child may outlive `up`."""
    process, processes = up.process, up.processes
    wait_until(lambda: any("redis-server" in c for _, c in descendants(process.pid).values()),
               READY_TIMEOUT_S, "`up` to start its embedded Redis", processes.check_alive,
               processes.logs, interval_s=0.01)
    children = descendants(process.pid)
    up.children.update(children)

    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`up` still running {EXIT_TIMEOUT_S:.0f}s after SIGTERM at start:\n"
                    f"{processes.logs()}")

    assert code == 0, processes.logs()
    assert still_running(children) == {}
    assert "stopped" in processes.logs()


def test_up_exits_non_zero_and_leaves_nothing_when_the_port_is_taken(
        up_repository: Path, tmp_path: Path) -> None:
    """The port is taken: `up` says so, stops whatever it started and exits non-zero."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        processes = Processes(tmp_path)
        process = processes.spawn("up", ["up", "--models", str(up_repository),
                                         "--port", str(port), "--min-workers", "1"])
        children: dict[int, tuple[int, str]] = {}

        def exited() -> bool:
            children.update(descendants(process.pid))
            return process.poll() is not None

        try:
            wait_until(exited, READY_TIMEOUT_S, "`up` to give up on the taken port",
                       details=processes.logs)
            assert process.returncode != 0, processes.logs()
            assert "error" in processes.logs()
            assert still_running(children) == {}
        finally:
            processes.stop()
            for pid in still_running(children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_several_gateway_processes_share_the_port_and_merge_their_metrics(
        up_repository: Path, tmp_path: Path) -> None:
    """`up --gateway-procs 2`: two gateway processes on one port; either one's /metrics counts
    every call, whichever process answered it."""
    processes = Processes(tmp_path)
    port = free_port()
    process = processes.spawn("up", ["up", "--models", str(up_repository), "--port", str(port),
                                     "--min-workers", "1", "--gateway-procs", "2"])
    children: dict[int, tuple[int, str]] = {}
    base_url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{base_url}/v2/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, READY_TIMEOUT_S, "`up --gateway-procs 2` to be ready",
                   processes.check_alive, processes.logs)
        children.update(descendants(process.pid))
        gateways = [pid for pid, (_, c) in children.items() if " gateway " in c]
        assert len(gateways) == 2, children
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                            "data": [0.1, 0.2, 0.3, 0.4]}]}
        calls = 60
        for _ in range(calls):  # a new connection each: the kernel spreads them
            assert httpx.post(f"{base_url}/v2/models/mlp/infer", json=body).status_code == 200
        counts = set()
        for _ in range(6):  # scrapes land on either process; each must show the total
            samples = metrics.scrape(base_url)
            counts.add(metrics.value(samples, "modelgate_requests_total", code="200",
                                     model="mlp"))
        assert counts == {float(calls)}
        # Both processes served some of the calls: each wrote its own counter file.
        environ = Path(f"/proc/{gateways[0]}/environ").read_bytes().split(b"\0")
        metrics_dir = next(v.split(b"=", 1)[1].decode() for v in environ
                           if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
        written = {f.name for f in Path(metrics_dir).iterdir()}
        assert all(f"counter_{pid}.db" in written for pid in gateways), written
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=EXIT_TIMEOUT_S) == 0, processes.logs()
        assert still_running(children) == {}
    finally:
        children.update(descendants(process.pid))
        processes.stop()
        for pid in still_running(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_gateway_that_cannot_bind_exits_at_once(up_repository: Path, tmp_path: Path,
                                                  redis_url: str) -> None:
    """Its port is taken while Redis answers: it must exit non-zero, not hang in shutdown
    (a blocked reply read once swallowed the cancellation and kept the process alive)."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        processes = Processes(tmp_path)
        gateway = processes.spawn("gateway", [
            "gateway", "--models", str(up_repository), "--redis-url", redis_url,
            "--host", "127.0.0.1", "--port", str(port)])
        try:
            code = gateway.wait(timeout=20)
        except subprocess.TimeoutExpired:
            processes.stop()
            pytest.fail(f"the gateway still runs 20 s after failing to bind:\n{processes.logs()}")
        assert code != 0
        assert "address already in use" in processes.logs()


def test_gateway_procs_auto_starts_one_gateway_and_says_how_many_may_come(
        up_repository: Path, tmp_path: Path) -> None:
    """`up --gateway-procs auto` serves with one gateway process, bound so that the ones it
    adds while the gateways are busy share the port (modelgate.cli.gateways decides; its tests
    step the decision tick by tick, and the test below saturates a gateway live)."""
    processes = Processes(tmp_path)
    port = free_port()
    process = processes.spawn("up", ["up", "--models", str(up_repository), "--port", str(port),
                                     "--min-workers", "1", "--gateway-procs", "auto"])
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "gateway listening" in processes.logs(), READY_TIMEOUT_S,
                   "`up --gateway-procs auto` to listen", processes.check_alive,
                   processes.logs)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                            "data": [0.1, 0.2, 0.3, 0.4]}]}
        assert httpx.post(f"{base_url}/v2/models/mlp/infer", json=body).status_code == 200
        gateways = [pid for pid, (_, c) in descendants(process.pid).items() if " gateway " in c]
        assert len(gateways) == 1
        cpus = len(os.sched_getaffinity(0))
        assert f"(more, up to {max(cpus, 1)}, while the gateways are busy)" in processes.logs()
        # The port is bound with SO_REUSEPORT: a gateway it adds binds it beside the first
        # (bound, not listening: no call can land on it).
        extra = socket.socket()
        try:
            extra.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if cpus > 1:
                extra.bind(("127.0.0.1", port))
        finally:
            extra.close()
    finally:
        processes.stop()


WIDE_COLUMNS = 16_384  # ~140 KB of JSON a call: the gateway parses, the worker only sums
SATURATE_FOR_S = 40.0  # at most; the load stops as soon as the second gateway serves


def _load(port: int, body: bytes, stop: threading.Event, answers: list[int]) -> None:
    """Calls on one kept-alive connection until ``stop``; each answer's status is kept."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            connection.request("POST", "/v2/models/wide/infer", body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            answers.append(response.status)
    finally:
        connection.close()


def test_gateway_procs_auto_adds_a_gateway_when_parsing_saturates_one_and_no_worker(
        tmp_path: Path) -> None:
    """Issue 20, item 4, live: large JSON tensors keep one gateway process busier than 85% of
    a core while the worker, which only sums them, idles. `up --gateway-procs auto` adds a
    second gateway process (the CPUs allowing), which binds the port beside the first and takes
    new connections; the autoscaler, allowed a second worker, adds none: the queue it watches
    stays short while calls wait in the gateway. Each gateway sends the 64 KB tensors to the
    worker through its own shared memory (`--payload-arena-mb`, on under `up`), and takes it
    away when it stops."""
    repo = write_repository(tmp_path / "models", {"wide": wide_sum_model(WIDE_COLUMNS)})
    processes = Processes(tmp_path)
    port = free_port()
    process = processes.spawn("up", ["up", "--models", str(repo), "--port", str(port),
                                     "--grpc-port", "0", "--min-workers", "1",
                                     "--max-workers", "2", "--gateway-procs", "auto"])
    row = np.linspace(0.0, 1.0, WIDE_COLUMNS, dtype=np.float32)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDE_COLUMNS],
                                   "data": row.tolist()}]}).encode()
    stop = threading.Event()
    answers: list[int] = []
    loaders = [threading.Thread(target=_load, args=(port, body, stop, answers), daemon=True)
               for _ in range(3)]
    cpus = len(os.sched_getaffinity(0))

    def roles() -> tuple[list[int], list[int]]:
        children = descendants(process.pid)
        return ([pid for pid, (_, c) in children.items() if " gateway " in c],
                [pid for pid, (_, c) in children.items() if " worker " in c])

    try:
        wait_until(lambda: "gateway listening" in processes.logs(), READY_TIMEOUT_S,
                   "`up --gateway-procs auto` to listen", processes.check_alive,
                   processes.logs)
        wait_until(lambda: len(roles()[1]) == 1, READY_TIMEOUT_S, "the first worker",
                   processes.check_alive, processes.logs)
        first = httpx.post(f"http://127.0.0.1:{port}/v2/models/wide/infer", content=body,
                           headers={"Content-Type": "application/json"}, timeout=30)
        assert first.status_code == 200, first.text
        assert first.json()["outputs"][0]["data"][0] == pytest.approx(float(row.sum()), rel=1e-4)
        samples = metrics.scrape(f"http://127.0.0.1:{port}")
        assert metrics.value(samples, "modelgate_large_payloads_total", path="arena") == 1
        assert all(_arenas_of(pid) for pid in roles()[0])
        for loader in loaders:
            loader.start()
        deadline = time.monotonic() + SATURATE_FOR_S
        most_workers = 1
        while time.monotonic() < deadline and "added a gateway process" not in processes.logs():
            processes.check_alive()
            most_workers = max(most_workers, len(roles()[1]))
            time.sleep(0.5)
        logs = processes.logs()
        if cpus > 1:
            assert "added a gateway process (2 now): gateways busy" in logs, logs[-3000:]
            wait_until(lambda: len(roles()[0]) == 2, READY_TIMEOUT_S,
                       "the second gateway process", processes.check_alive, processes.logs)
            # New connections, which the kernel now spreads across both, are answered.
            served = {httpx.post(f"http://127.0.0.1:{port}/v2/models/wide/infer",
                                 content=body, headers={"Content-Type": "application/json",
                                                        "Connection": "close"},
                                 timeout=30).status_code for _ in range(10)}
            assert served == {200}
            assert all(_arenas_of(pid) for pid in roles()[0])  # the second one's too
        else:
            assert "added a gateway process" not in logs  # one CPU: one gateway at most
        assert most_workers == 1, "a worker was added while the gateway was the bottleneck"
    finally:
        stop.set()
        for loader in loaders:
            loader.join(timeout=30)
        gateways = roles()[0]
        processes.stop()
    assert answers and set(answers) == {200}, sorted(set(answers))
    assert not any(_arenas_of(pid) for pid in gateways)  # gone with their gateways


def _arenas_of(pid: int) -> list[Path]:
    return list(arena.ARENA_DIR.glob(f"{arena.PREFIX}{pid}-*"))
