"""``modelgate up`` as a supervisor and as the keeper of secrets (hardening).

Real processes throughout: ``up`` starts its embedded Redis, workers and gateway; the tests
kill them with SIGKILL and read what ``ps`` would show from /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import onnx
import pytest
import redis

from modelgate.core.embedded_redis import free_port
from tests.integration.test_up import _stat, descendants, still_running
from tests.models import write_repository
from tests.procs import Processes, wait_until

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 90.0
KEY = "sekrit-key-0123456789"
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [0.1, 0.2, 0.3, 0.4]}]}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory,
               onnx_models: dict[str, onnx.ModelProto]) -> Path:
    return write_repository(tmp_path_factory.mktemp("supervised"), {"mlp": onnx_models["mlp"]})


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    url: str
    processes: Processes
    state_dir: Path

    def children(self, word: str) -> dict[int, str]:
        return {pid: command for pid, (_, command) in descendants(self.process.pid).items()
                if word in command}


def _start(repository: Path, tmp_path: Path, *args: str,
           env: dict[str, str] | None = None) -> Running:
    processes = Processes(tmp_path)
    port = free_port()
    state_dir = tmp_path / "state-dir"
    process = processes.spawn("up", ["up", "--models", str(repository), "--port", str(port),
                                     "--state-dir", str(state_dir), *args], env)
    return Running(process, f"http://127.0.0.1:{port}", processes, state_dir)


@pytest.fixture
def up(repository: Path, tmp_path: Path) -> Iterator[Running]:
    running = _start(repository, tmp_path, "--api-key", KEY)
    recorded = descendants(running.process.pid)
    try:
        wait_until(lambda: _ready(running.url), READY_TIMEOUT_S, "`up` to be ready",
                   running.processes.check_alive, running.processes.logs)
        recorded.update(descendants(running.process.pid))
        yield running
    finally:
        recorded.update(descendants(running.process.pid))
        running.processes.stop()
        for pid in still_running(recorded):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2,
                         headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    except httpx.TransportError:
        return False


def _call(url: str, timeout_s: float = 10.0) -> tuple[int, float]:
    started = time.monotonic()
    response = httpx.post(f"{url}/v2/models/mlp/infer", json=BODY, timeout=timeout_s,
                          headers={"authorization": f"Bearer {KEY}"})
    return response.status_code, time.monotonic() - started


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_secrets_stay_out_of_ps_and_out_of_workers(up: Running) -> None:
    assert KEY not in _cmdline(up.process.pid)  # re-executed without the flag
    (gateway,) = up.children(" gateway ")
    assert KEY not in _cmdline(gateway)
    assert _environ(gateway)["MODELGATE_API_KEY"] == KEY
    workers = up.children(" worker ")
    assert workers
    for pid in workers:
        assert "MODELGATE_API_KEY" not in _environ(pid), "workers never need the API key"
        assert "password" not in _cmdline(pid) and KEY not in _cmdline(pid)
    # The embedded Redis's password is in no command line either (redis-server reads it from
    # a config file only this user can read).
    for pid, command in up.children("redis-server").items():
        password = (up.state_dir / "redis-password").read_text().strip()
        assert password not in command and password not in _cmdline(pid)


def test_the_embedded_redis_needs_its_password_on_tcp(up: Running) -> None:
    tcp_url = (up.state_dir / "redis-url").read_text().strip()
    assert (up.state_dir / "redis-url").stat().st_mode & 0o077 == 0
    port = int(tcp_url.rsplit(":", 1)[1].split("/", 1)[0])
    anonymous = redis.Redis(host="127.0.0.1", port=port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.keys("*")
    anonymous.close()
    # With the URL up wrote, a local operator gets in; request streams carry no sequential ids.
    operator = redis.Redis.from_url(tcp_url)
    assert _call(up.url)[0] == 200
    assert operator.ping()
    operator.close()


def test_a_killed_redis_comes_back_and_calls_meanwhile_get_503_never_hang(up: Running) -> None:
    (old_pid,) = up.children("redis-server")
    assert _call(up.url)[0] == 200
    os.kill(old_pid, signal.SIGKILL)
    seen: list[tuple[int, float]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.append(_call(up.url))
        if seen[-1][0] == 200 and any(code == 503 for code, _ in seen):
            break
        if seen[-1][0] == 200 and len(up.children("redis-server")) == 1 and \
                set(up.children("redis-server")) != {old_pid}:
            break
    codes = {code for code, _ in seen}
    assert codes <= {200, 503}, seen
    assert max(elapsed for _, elapsed in seen) < 5.0, "a call waited on a dead Redis"
    wait_until(lambda: _call(up.url)[0] == 200, 30, "calls to succeed again",
               details=up.processes.logs)
    (new_pid,) = up.children("redis-server")
    assert new_pid != old_pid
    assert "embedded Redis restarted" in up.processes.logs()
    statuses = [_call(up.url)[0] for _ in range(20)]
    assert statuses == [200] * 20


def test_a_killed_gateway_is_restarted_and_calls_wait_for_it(up: Running) -> None:
    (old_pid,) = up.children(" gateway ")
    os.kill(old_pid, signal.SIGKILL)
    # Once it is dead (a connection it accepted in its last instant would be reset with it,
    # which is the caller's to retry, not what this checks), calls are sent at once: the
    # listening socket outlives the gateway (the supervisor holds it), so they wait in its
    # queue for the new gateway instead of being refused.
    wait_until(lambda: _stat(old_pid) is None or _stat(old_pid)[0] == "Z",  # type: ignore[index]
               5, "the killed gateway dead")
    results = [_call(up.url, timeout_s=30) for _ in range(5)]
    assert [code for code, _ in results] == [200] * 5, up.processes.logs()
    (new_pid,) = up.children(" gateway ")
    assert new_pid != old_pid
    assert up.process.poll() is None, "up must not stop when one gateway dies"


@pytest.mark.parametrize(("args", "env"), [
    (["--api-key", ""], {}),
    ([], {"MODELGATE_API_KEY": ""}),
    ([], {"MODELGATE_API_KEY": " , "}),
    ([], {"MODELGATE_API_KEY": "good,"}),
], ids=["empty flag", "empty variable", "blank items", "trailing empty item"])
def test_an_empty_key_refuses_to_start(repository: Path, tmp_path: Path, args: list[str],
                                       env: dict[str, str]) -> None:
    """A missing Kubernetes Secret (an empty variable) must not leave the gateway open."""
    running = _start(repository, tmp_path, *args, env=env)
    try:
        code = running.process.wait(timeout=30)
    finally:
        running.processes.stop()
    assert code == 2
    assert "empty key" in running.processes.logs()


def test_flag_and_variable_together_take_the_flag(repository: Path, tmp_path: Path) -> None:
    """Used to crash with AttributeError (append to the variable's string)."""
    result = subprocess.run(
        [*processes_command(), "gateway", "--models", str(repository), "--redis-url",
         "redis://127.0.0.1:1/0", "--api-key", "from-flag", "--port", "1", "--host", "256.0.0.1"],
        env={**os.environ, "MODELGATE_API_KEY": "from-env"}, capture_output=True, text=True,
        timeout=60)
    assert "AttributeError" not in result.stderr
    from modelgate.cli.main import api_keys, build_parser
    args = build_parser({"MODELGATE_API_KEY": "from-env"}).parse_args(
        ["gateway", "--models", "m", "--redis-url", "r", "--api-key", "a", "--api-key", "b"])
    assert api_keys(args.api_key) == ("a", "b")


def processes_command() -> list[str]:
    import sys
    return [sys.executable, "-m", "modelgate"]
