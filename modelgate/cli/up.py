"""``modelgate up``: Redis (embedded unless given), the gateway and workers on one machine.

A supervisor in three stages. **start**: the listening sockets (so a taken port fails before
anything starts), Redis, the workers each model needs at least, then the gateways. **serve**:
the autoscaler's own control loop, which also scales the workers; after every tick the
supervisor restarts what died unasked -- the embedded Redis (on the same port, socket, password
and append-only file) and gateways (on the same listening socket, so calls arriving meanwhile
wait in its queue instead of being refused) -- with backoff while they keep dying young.
**stop**: the reverse of what serves traffic: gateways stop taking calls, workers drain (answer
what they hold), then Redis goes.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import redis

from modelgate.autoscaler import coordinator as job_coordinator
from modelgate.autoscaler.backends.local import LocalBackend
from modelgate.autoscaler.decider import Decider
from modelgate.autoscaler.main import build_decider
from modelgate.cli.gateways import GatewayScaling, GatewayState, decide, gateway_cpu_seconds
from modelgate.core.embedded_redis import EmbeddedRedis, RedisPlace, free_port, password_of
from modelgate.core.process import child_preexec, stop_process
from modelgate.core.repository import RepositoryError, scan_repository
from modelgate.core.settings import SECRET_VARIABLES, AutoscalerSettings, UpSettings
from modelgate.core.store.models import ModelState, VersionStatus

log = logging.getLogger("modelgate")

START_TIMEOUT_S = 120.0
HEALTHY_AFTER_S = 30.0  # a child that lived this long resets its restart backoff
MAX_BACKOFF_S = 10.0


def say(message: str) -> None:
    print(f"modelgate: {message}", flush=True)


class StartError(RuntimeError):
    """``up`` could not start; the message says what to do."""


def _wait(condition: Callable[[], bool], timeout_s: float, what: str,
          stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        if condition():
            return
        if time.monotonic() > deadline:
            raise StartError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        stop.wait(0.1)


def _gateway_live(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/live", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def listening_sockets(host: str, port: int, count: int,
                      shared: bool = False) -> list[socket.socket]:
    """``count`` sockets listening on one port (SO_REUSEPORT spreads connections across them),
    held by the supervisor for the life of ``up``; ``shared``: with SO_REUSEPORT even if one,
    so that gateways added later bind the port too. Binding here, first, means a port in use
    fails before anything starts, and a server already on the port can never answer our
    readiness checks in our place."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1 or shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise StartError(f"cannot listen on {host}:{port} ({e.strerror}); stop what uses it "
                         "or pass --port") from e
    return sockets


def check_free(host: str, port: int, what: str) -> None:
    """Fail before anything starts when ``port`` is taken. The gateways bind the gRPC port
    themselves (gRPC cannot serve an inherited socket), with SO_REUSEPORT when there are
    several: a port already held by another server that set it would be shared silently."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            raise StartError(f"cannot listen for {what} on {host}:{port} ({e.strerror}); stop "
                             f"what uses it or pass --grpc-port (0 turns gRPC off)") from e


def default_state_dir(models_dir: Path) -> Path:
    """A folder per model repository (by its absolute path) for the embedded Redis's files,
    so the next ``up`` on the same repository resumes its state and never another's."""
    root = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    resolved = models_dir.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return root / "modelgate" / f"{resolved.name}-{digest}"


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the servers' secrets, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    env.update(extra)
    return env


@dataclass
class _Child:
    """A gateway slot: its process, the socket it serves, and its restart backoff. A gateway
    added by ``--gateway-procs auto`` has no socket of the supervisor's: it binds the port
    itself (SO_REUSEPORT), so connections reach it only once it listens."""

    sock: socket.socket | None
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    exited_at: float | None = None  # when the supervisor saw it gone, until restarted
    backoff_s: float = 0.0
    restarts: int = 0


class Supervisor:
    def __init__(self, settings: UpSettings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop_event = stop
        self.states: dict[str, ModelState] = {}
        self.redis: EmbeddedRedis | None = None
        self.redis_url = ""
        self.redis_backoff_s = 0.0
        self.redis_next_start = 0.0
        self.gateways: list[_Child] = []
        self.backend: LocalBackend | None = None
        self.decider: Decider | None = None
        self.coordinator: job_coordinator.Coordinator | None = None
        self.metrics_dir: str | None = None
        self.socket_dir: str | None = None
        # --gateway-procs auto: up to one gateway per CPU, by their CPU (modelgate.cli.gateways)
        self.gateway_scaling = (GatewayScaling(max(len(os.sched_getaffinity(0)),
                                                   settings.gateway_procs),
                                               min_procs=settings.gateway_procs)
                                if settings.auto_gateway_procs else None)
        self.gateway_state = GatewayState()
        # pid -> CPU seconds at the last tick, of the gateways and their body parsers
        self.gateway_cpu_s: dict[int, float] = {}
        self.gateway_sampled_at = 0.0
        self.retiring: list[subprocess.Popen[bytes]] = []  # gateways removed, draining

    @property
    def max_gateways(self) -> int:
        scaling = self.gateway_scaling
        return scaling.max_procs if scaling is not None else self.settings.gateway_procs

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        settings = self.settings
        if not scan_repository(settings.models_dir):
            raise StartError(f"the model repository {settings.models_dir} has no models; add "
                             f"{settings.models_dir}/NAME/1/model.onnx")
        self.gateways = [_Child(sock) for sock in listening_sockets(
            settings.host, settings.port, settings.gateway_procs,
            shared=self.max_gateways > 1)]
        if settings.grpc_port:
            check_free(settings.host, settings.grpc_port, "gRPC")
        self._start_redis()
        client = redis.Redis.from_url(self.redis_url)
        self.backend = LocalBackend(settings.models_dir, self.redis_url)
        self.decider = build_decider(client, self.backend, AutoscalerSettings(
            models_dir=settings.models_dir, redis_url=self.redis_url, scaling=settings.scaling,
            control=settings.control), settings.models_dir)
        # Batch jobs' coordinator: a thread of this process, under its own lease.
        if settings.jobs_dir is not None:
            settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.coordinator, _ = job_coordinator.start_thread(
            redis.Redis.from_url(self.redis_url), settings.models_dir, settings.jobs_dir,
            self.stop_event)
        budget = settings.scaling.max_cost_per_hour
        say(f"model control {settings.control.mode}"
            + (f" (repository scanned every {settings.control.poll_s:g} s)"
               if settings.control.mode == "poll" else "")
            + f"; workers per version {settings.scaling.min_workers}.."
            f"{settings.scaling.max_workers}, scale-down delay "
            f"{settings.scaling.scale_down_delay_s:.0f} s"
            + (f", budget {budget}/h" if budget else ""))

        def settled() -> bool:
            assert self.decider is not None
            self.decider.tick()
            self.states = self.decider.control.states
            # Models with a registry source wait for the registry's first answer too.
            return not self.decider.control.registry_unanswered() and all(
                not any(v.status == VersionStatus.LOADING for v in s.versions.values())
                for s in self.states.values())

        _wait(settled, START_TIMEOUT_S, "workers to load their models", self.stop_event)
        if self.max_gateways > 1:
            # Several processes share the port; Prometheus metrics go through files that
            # every process's /metrics merges, so any one of them shows the whole.
            self.metrics_dir = tempfile.mkdtemp(prefix="modelgate-metrics-")
        for child in self.gateways:
            self._start_gateway(child)
        _wait(lambda: _gateway_live(self.url) or self._gateway_exited(), START_TIMEOUT_S,
              "the gateway", self.stop_event)
        # A gateway that failed its own start (an exit code) stops `up`; one killed by a
        # signal -- possibly after it answered, before this loop saw it live -- is restarted
        # like any gateway that dies later.
        if self._gateway_failed():
            raise StartError("a gateway exited at start; see its log above")
        if not self.stop_event.is_set():
            self._say_started()

    def _start_redis(self) -> None:
        if self.settings.redis_url:
            self.redis_url = self.settings.redis_url
            host = redis.connection.parse_url(self.redis_url).get("host", "a Unix socket")
            say(f"using Redis at {host}")
            return
        state_dir = self.settings.state_dir or default_state_dir(self.settings.models_dir)
        resumed = (state_dir / "appendonlydir").is_dir() or (state_dir / "appendonly.aof").is_file()
        # Children reach it by a Unix socket in a directory only this user can enter; the TCP
        # port stays open to local tools (redis-cli, `modelgate status`), with the password.
        self.socket_dir = tempfile.mkdtemp(prefix="modelgate-redis-")
        place = RedisPlace(state_dir, Path(self.socket_dir), free_port(), password_of(state_dir))
        self.redis = EmbeddedRedis(place)
        self.redis.start()
        self.redis_url = place.socket_url
        pid = self.redis.process.pid if self.redis.process else "?"
        say(f"started embedded Redis (pid {pid}) on 127.0.0.1:{place.port} and "
            f"unix://{place.socket_path}; "
            + (f"resumed its state in {state_dir}" if resumed else f"its state is in {state_dir}"))
        say(f"  its URL, password included, is in {place.url_file} (readable by you only): "
            f"modelgate status --redis-url \"$(cat {place.url_file})\"")

    def _start_gateway(self, child: _Child) -> None:
        settings = self.settings
        env = child_environment(MODELGATE_REDIS_URL=self.redis_url)
        # Secrets go to children by environment, never argv, so `ps` does not show them.
        if settings.api_keys:
            env["MODELGATE_API_KEY"] = ",".join(settings.api_keys)
        if settings.admin_api_keys:
            env["MODELGATE_ADMIN_API_KEY"] = ",".join(settings.admin_api_keys)
        if settings.protect_probes:
            env["MODELGATE_PROTECT_PROBES"] = "1"
        if settings.control.registry.tracking_uri:
            env["MODELGATE_MLFLOW_TRACKING_URI"] = settings.control.registry.tracking_uri
        if settings.mlflow_webhook_secret:
            env["MODELGATE_MLFLOW_WEBHOOK_SECRET"] = settings.mlflow_webhook_secret
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        command = [sys.executable, "-m", "modelgate", "gateway",
                   "--models", str(settings.models_dir), "--host", settings.host,
                   "--port", str(settings.port), "--grpc-port", str(settings.grpc_port),
                   "--default-timeout-ms", str(settings.default_timeout_ms),
                   # Its workers are this machine's processes (LocalBackend).
                   "--payload-arena-mb", str(settings.payload_arena_mb)]
        fds: tuple[int, ...] = ()
        if child.sock is not None:
            fds = (child.sock.fileno(),)
            command += ["--fd", str(fds[0])]
        if self.max_gateways > 1:
            # The gRPC port, shared; HTTP comes by --fd, or is bound beside the others.
            command.append("--reuse-port")
        if settings.jobs_dir is not None:
            command += ["--jobs-dir", str(settings.jobs_dir.resolve())]
        child.process = subprocess.Popen(command, preexec_fn=child_preexec, env=env,
                                         pass_fds=fds)
        child.started_at = time.monotonic()

    def _gateway_exited(self) -> bool:
        return any(c.process is not None and c.process.poll() is not None for c in self.gateways)

    def _gateway_failed(self) -> bool:
        """A gateway ended with an exit code of its own (not a signal)."""
        return any(c.process is not None and (c.process.poll() or 0) > 0
                   for c in self.gateways)

    def _say_started(self) -> None:
        procs = self.settings.gateway_procs
        say(f"gateway listening on {self.url}" + (f" ({procs} processes)" if procs > 1 else "")
            + (f" (more, up to {self.max_gateways}, while the gateways are busy)"
               if self.gateway_scaling is not None else "")
            + (f", gRPC on {self.settings.host}:{self.settings.grpc_port}"
               if self.settings.grpc_port else ""))
        assert self.backend is not None and self.decider is not None
        if not self.states:
            say("  no model is loaded" + (" yet: load one with POST /v2/repository/models/NAME"
                                           "/load" if self.settings.control.mode == "explicit"
                                           else ""))
        for name, state in sorted(self.states.items()):
            for version, found in sorted(state.versions.items(), key=lambda kv: int(kv[0])):
                loaded = self.decider.control.version(name, version)
                inputs = [f"{i.name}:{i.datatype}{list(i.shape)}"
                          for i in (loaded.inputs if loaded else ())]
                detail = (f"inputs {inputs}, max_batch_size {loaded.max_batch_size}"
                          if loaded else "")
                default = " (default)" if version == state.default else ""
                say(f"  model {name!r} v{version}{default}: {found.status.value}"
                    + (f" ({found.reason})" if found.reason else f", {detail}"))
        first = sorted(self.states)[0] if self.states else "NAME"
        say(f"try: curl {self.url}/v2/models/{first}   (Ctrl-C stops everything)")

    # ------------------------------------------------------------------ serve

    def serve(self) -> None:
        """The autoscaler's loop until stopped; what died is restarted after each tick."""
        assert self.decider is not None
        self.decider.run(self.stop_event, on_tick=self.watch)

    def watch(self) -> None:
        """Restart the embedded Redis and gateways that died unasked, with backoff; with
        ``--gateway-procs auto``, add or remove a gateway by their CPU."""
        now = time.monotonic()
        if self.gateway_scaling is not None:
            self._scale_gateways(now)
        if self.redis is not None and self.redis.exited() is not None \
                and now >= self.redis_next_start:
            log.warning("embedded Redis exited with %s; restarting it", self.redis.exited())
            try:
                self.redis.start()
                self.redis_backoff_s = 0.0
                say("embedded Redis restarted; it reloaded its append-only file")
            except RuntimeError as e:
                self.redis_backoff_s = min(max(self.redis_backoff_s * 2, 0.5), MAX_BACKOFF_S)
                self.redis_next_start = now + self.redis_backoff_s
                log.warning("embedded Redis did not restart (%s); next try in %.1fs", e,
                            self.redis_backoff_s)
        for child in self.gateways:
            process = child.process
            if process is None or process.poll() is None:
                continue
            if child.exited_at is None:
                child.exited_at = now
                lived_s = now - child.started_at
                child.backoff_s = (0.0 if lived_s >= HEALTHY_AFTER_S
                                   else min(max(child.backoff_s * 2, 0.5), MAX_BACKOFF_S))
                log.warning("gateway %d exited with %s after %.1fs; restarting it in %.1fs",
                            process.pid, process.returncode, lived_s, child.backoff_s)
            if now >= child.exited_at + child.backoff_s:
                child.exited_at = None
                child.restarts += 1
                self._start_gateway(child)

    def _scale_gateways(self, now: float) -> None:
        assert self.gateway_scaling is not None
        self.retiring = [p for p in self.retiring if p.poll() is None]
        running = [c.process for c in self.gateways
                   if c.process is not None and c.process.poll() is None]
        used: dict[int, float] = {}  # pid -> CPU seconds, the gateways' and their parsers'
        for gateway in running:
            used.update(gateway_cpu_seconds(gateway.pid))
        elapsed_s = now - self.gateway_sampled_at
        known = [pid for pid in used if pid in self.gateway_cpu_s]
        if self.gateway_sampled_at and elapsed_s > 0 \
                and sum(p.pid in self.gateway_cpu_s for p in running) == len(self.gateways):
            cpus = sum(used[pid] - self.gateway_cpu_s[pid] for pid in known) / elapsed_s
            decision = decide(len(self.gateways), cpus, self.gateway_state, now,
                              self.gateway_scaling)
            self.gateway_state = decision.state
            if decision.procs > len(self.gateways):
                child = _Child(None)
                self.gateways.append(child)
                self._start_gateway(child)
                say(f"added a gateway process ({len(self.gateways)} now): {decision.reason}")
            elif decision.procs < len(self.gateways) and self.gateways[-1].sock is None:
                child = self.gateways.pop()
                if child.process is not None:
                    child.process.terminate()  # it drains what it holds, then exits
                    self.retiring.append(child.process)
                say(f"removed a gateway process ({len(self.gateways)} now): {decision.reason}")
        self.gateway_cpu_s, self.gateway_sampled_at = used, now

    # ------------------------------------------------------------------ stop

    def children(self) -> list[subprocess.Popen[bytes]]:
        """Every child process running now (for a second signal, which kills them)."""
        found = [c.process for c in self.gateways if c.process is not None] + self.retiring
        if self.backend is not None:
            found += self.backend.processes()
        if self.redis is not None and self.redis.process is not None:
            found.append(self.redis.process)
        return [p for p in found if p.poll() is None]

    def stop(self) -> None:
        for child in self.gateways:
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        for child in self.gateways:
            if child.process is not None:
                stop_process(child.process, timeout_s=10, signalled=True)
            if child.sock is not None:
                child.sock.close()
        for process in self.retiring:
            stop_process(process, timeout_s=10, signalled=True)
        if self.decider is not None:
            self.decider.release()
        if self.coordinator is not None:
            self.coordinator.release()
        if self.backend is not None:
            self.backend.stop_all()
        if self.redis is not None:
            self.redis.stop()
        for directory in (self.metrics_dir, self.socket_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


def run(settings: UpSettings) -> int:
    stop = threading.Event()
    supervisor = Supervisor(settings, stop)

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            # Kill rather than abandon: leaving the cleanup half-done would orphan children.
            say("second signal: killing every child without waiting for workers to drain")
            for process in supervisor.children():
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            raise SystemExit(1)
        say(f"{signal.Signals(signum).name}: shutting down (workers drain first)")
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    try:
        supervisor.start()
        supervisor.serve()
        return 0
    except (StartError, RepositoryError, RuntimeError) as e:
        say(f"error: {e}")
        return 1
    finally:
        supervisor.stop()
        say("stopped")
