"""``modelgate up``: Redis (embedded unless given), the gateway and workers on one machine.

Start order is Redis, workers, gateway; stop order is the reverse of what serves traffic:
the gateway stops taking requests, workers drain (answer what they hold), then Redis goes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import redis

from modelgate.autoscaler.backends.local import LocalBackend
from modelgate.autoscaler.budget import BudgetError
from modelgate.autoscaler.loop import Autoscaler
from modelgate.autoscaler.plans import plans_for
from modelgate.core.embedded_redis import free_port, start_redis
from modelgate.core.process import child_preexec, stop_process
from modelgate.core.repository import load_repository
from modelgate.core.settings import UpSettings
from modelgate.core.store import pools

log = logging.getLogger("modelgate")

START_TIMEOUT_S = 120.0
TICK_S = 1.0


def _say(message: str) -> None:
    print(f"modelgate: {message}", flush=True)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str,
          stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        if condition():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        stop.wait(0.1)


def _gateway_live(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/live", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _exited(processes: list[subprocess.Popen[bytes]]) -> int | None:
    """The exit code of the first process that has exited, else None."""
    return next((p.returncode for p in processes if p.poll() is not None), None)


def _children(redis_process: subprocess.Popen[bytes] | None,
              gateways: list[subprocess.Popen[bytes]],
              backend: LocalBackend | None) -> list[subprocess.Popen[bytes]]:
    found = [*gateways, *([redis_process] if redis_process is not None else [])]
    if backend is not None:
        found += [p for pool in backend.pools.values() for p in pool.processes]
        found += [p for p, _ in backend.draining]
    return found


def _check_port_free(host: str, port: int) -> None:
    """Fail before starting anything: otherwise a server already on the port would answer our
    readiness checks and we would report success while our gateway failed to bind."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise RuntimeError(f"cannot listen on {host}:{port} ({e.strerror}); stop what uses "
                               "it or pass --port") from e


def run(settings: UpSettings) -> int:
    models = load_repository(settings.models_dir)
    stop = threading.Event()

    redis_process: subprocess.Popen[bytes] | None = None
    gateways: list[subprocess.Popen[bytes]] = []
    backend: LocalBackend | None = None
    metrics_dir: str | None = None
    socket_dir: str | None = None

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            # Kill rather than abandon: leaving the cleanup half-done would orphan children.
            _say("second signal: killing every child without waiting for workers to drain")
            for process in _children(redis_process, gateways, backend):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            raise SystemExit(1)
        _say(f"{signal.Signals(signum).name}: shutting down (workers drain first)")
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)

    try:
        _check_port_free(settings.host, settings.port)
        if settings.redis_url:
            redis_url = settings.redis_url
            _say(f"using Redis at {redis.connection.parse_url(redis_url).get('host', '?')}")
        else:
            # Children reach it by a Unix socket in a directory only this user can enter; the
            # TCP port stays open to local tools (redis-cli, `modelgate status`).
            socket_dir = tempfile.mkdtemp(prefix="modelgate-redis-")
            port = free_port()
            redis_process, redis_url = start_redis(port,
                                                   unix_socket=Path(socket_dir) / "redis.sock")
            _say(f"started embedded Redis (pid {redis_process.pid}) at {redis_url} and "
                 f"redis://127.0.0.1:{port}/0")
        backend = LocalBackend(settings.models_dir, redis_url)
        client = redis.Redis.from_url(redis_url)
        plans = plans_for(models, settings.min_workers, settings.max_workers,
                          settings.scale_down_delay_s)
        autoscaler = Autoscaler(client, backend, plans, settings.max_cost_per_hour)
        for plan in plans:
            backend.scale(plan.model, plan.policy.min_workers)

        def workers_ready() -> bool:
            now = time.time()
            return all(
                client.zcount(pools.worker_set(plan.pool), now - 5, "+inf")
                >= plan.policy.min_workers for plan in plans)

        _say("starting workers: " + ", ".join(
            f"{p.model} {p.policy.min_workers}..{p.policy.max_workers}" for p in plans)
            + f" (scale-down delay {settings.scale_down_delay_s:.0f} s"
            + (f", budget {settings.max_cost_per_hour}/h" if settings.max_cost_per_hour else "")
            + ")")
        _wait(workers_ready, START_TIMEOUT_S, "workers to load their models", stop)
        # Secrets (a Redis password, API keys) go to children by environment, never argv,
        # so `ps` does not show them.
        gateway_env = {**os.environ, "MODELGATE_REDIS_URL": redis_url}
        gateway_env.pop("MODELGATE_API_KEY", None)
        if settings.api_keys:
            gateway_env["MODELGATE_API_KEY"] = ",".join(settings.api_keys)
        if settings.protect_probes:
            gateway_env["MODELGATE_PROTECT_PROBES"] = "1"
        command = [sys.executable, "-m", "modelgate", "gateway",
                   "--models", str(settings.models_dir), "--host", settings.host,
                   "--port", str(settings.port),
                   "--default-timeout-ms", str(settings.default_timeout_ms)]
        if settings.gateway_procs > 1:
            # Several processes share the port; Prometheus metrics go through files that
            # every process's /metrics merges, so any one of them shows the whole.
            metrics_dir = tempfile.mkdtemp(prefix="modelgate-metrics-")
            gateway_env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            command.append("--reuse-port")
        gateways.extend(subprocess.Popen(command, preexec_fn=child_preexec, env=gateway_env)
                        for _ in range(settings.gateway_procs))
        url = f"http://{settings.host}:{settings.port}"
        _wait(lambda: _gateway_live(url) or _exited(gateways) is not None, START_TIMEOUT_S,
              "the gateway", stop)
        if _exited(gateways) is not None:
            raise RuntimeError(f"a gateway exited with {_exited(gateways)}; see its log above")
        if not stop.is_set():
            _say(f"gateway listening on {url}" + (f" ({settings.gateway_procs} processes)"
                                                  if settings.gateway_procs > 1 else ""))
            for name, model in sorted(models.items()):
                v = model.default
                _say(f"  model {name!r} v{v.version}: {backend.running(name)} worker(s), "
                     f"inputs {[f'{i.name}:{i.datatype}{list(i.shape)}' for i in v.inputs]}, "
                     f"max_batch_size {v.max_batch_size}")
            _say(f"try: curl {url}/v2/models/{sorted(models)[0]}   (Ctrl-C stops everything)")
        while not stop.is_set():
            started = time.monotonic()
            try:
                autoscaler.tick()
            except redis.RedisError as e:
                log.warning("autoscaler cannot observe (%s); holding", e)
                backend.supervise()
            if _exited(gateways) is not None:
                raise RuntimeError(f"a gateway exited with {_exited(gateways)}")
            stop.wait(max(0.0, TICK_S - (time.monotonic() - started)))
        return 0
    except (RuntimeError, BudgetError) as e:
        _say(f"error: {e}")
        return 1
    finally:
        for gateway in gateways:
            if gateway.poll() is None:
                gateway.terminate()
        for gateway in gateways:
            stop_process(gateway, timeout_s=10, signalled=True)
        if backend is not None:
            backend.stop_all()
        if redis_process is not None:
            stop_process(redis_process, timeout_s=5)
        for directory in (metrics_dir, socket_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        _say("stopped")
