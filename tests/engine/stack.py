"""A Compose project of compose.yaml on a real Docker Engine, and the engine's command line.

A stack is ``compose.yaml`` as users run it, under a project name, network and volume of its
own, with the gateway published on a free port of 127.0.0.1. ``open_stack`` takes it down with
every container, network and volume it made (the autoscaler's containers included) whatever
happens, and fails if anything is left. The host reaches the gateway through the engine's port
proxy and Redis at its address on the project's bridge network: no traffic leaves the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from modelgate.autoscaler.backends.docker import MANAGED_LABEL
from modelgate.core.store import heartbeats, pools
from modelgate.core.store import models as model_store
from tests.deploy.conftest import ROOT
from tests.procs import wait_until

COMPOSE_FILE = ROOT / "compose.yaml"
READY_TIMEOUT_S = 90.0
DOCKER_TIMEOUT_S = 120.0


def docker(*args: str, timeout_s: float = DOCKER_TIMEOUT_S, check: bool = True) -> str:
    """``docker ARGS``; its stdout, or a test failure with its stderr."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True,
                            timeout=timeout_s, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"`docker {' '.join(args)}` failed ({result.returncode}): "
                    f"{result.stderr.strip()}")
    return result.stdout


def container_logs(container: str, tail: int = 200) -> str:
    """What the container wrote, stdout and stderr (where modelgate logs) together."""
    result = subprocess.run(["docker", "container", "logs", "--tail", str(tail), container],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=DOCKER_TIMEOUT_S, check=False)
    return result.stdout


def inspect(container: str) -> dict[str, Any]:
    [data] = json.loads(docker("container", "inspect", container))
    return dict(data)


def inspect_image(image: str) -> dict[str, Any]:
    [data] = json.loads(docker("image", "inspect", image))
    return dict(data)


@dataclass
class Stack:
    """One Compose project of compose.yaml (plus ``overrides``) on the engine."""

    name: str
    binary: str
    images: Mapping[str, str]
    overrides: Sequence[Path] = ()

    @property
    def network(self) -> str:
        return self.name

    def env(self) -> dict[str, str]:
        # The caller's MODELGATE_*/COMPOSE_* settings must not leak into the project.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MODELGATE_", "COMPOSE_"))}
        return {**env, "MODELGATE_IMAGE": self.images["modelgate"],
                "MODELGATE_REDIS_IMAGE": self.images["redis"],
                "MODELGATE_NETWORK": self.network, "MODELGATE_GATEWAY_PORT": "127.0.0.1:",
                "MODELGATE_GRPC_PORT": "127.0.0.1:"}

    def compose(self, *args: str, timeout_s: float = DOCKER_TIMEOUT_S,
                check: bool = True) -> str:
        files = [arg for path in (COMPOSE_FILE, *self.overrides) for arg in ("-f", str(path))]
        argv = [self.binary, "--project-directory", str(ROOT), "-p", self.name, *files, *args]
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env(),
                                timeout=timeout_s, check=False)
        if check and result.returncode != 0:
            pytest.fail(f"`docker compose {' '.join(args)}` failed ({result.returncode}):\n"
                        f"{result.stderr[-3000:]}")
        return result.stdout

    def up(self, *services: str, scale: Mapping[str, int] | None = None) -> None:
        """``docker compose up -d`` of ``services``: never builds nor pulls (the images were
        built locally), and waits for the gateway to be ready."""
        scales = [arg for name, n in (scale or {}).items() for arg in ("--scale", f"{name}={n}")]
        self.compose("up", "-d", "--no-build", "--pull", "never", *scales, *services)
        self.wait_ready()

    @property
    def base_url(self) -> str:
        address = self.compose("port", "gateway", "8080").strip()
        assert address.startswith("127.0.0.1:"), address
        return f"http://{address}"

    def wait_ready(self) -> None:
        url = self.base_url

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, READY_TIMEOUT_S, f"{url}/v2/health/ready", details=self.logs,
                   interval_s=0.25)

    def wait_model_ready(self, name: str, autoscaler: bool = False) -> None:
        """Until the gateway serves ``name``: its view follows the workers' heartbeats by up to
        a control tick, so live workers in Redis are not enough. With an ``autoscaler`` in the
        stack, first until every gateway applied its state table: a gateway serves from its
        repository until the autoscaler's first table, which can hold the version LOADING for
        a tick or two after the gateway said ready (301 calls answered 503 "loading" in one
        CI run)."""
        if autoscaler:
            client = self.redis()

            def applied() -> bool:
                generation = client.get(model_store.GENERATION)
                seen = [client.get(key) for key in
                        client.scan_iter(match=model_store.gateway_applied("*"))]
                return (generation is not None and bool(seen)
                        and all(g == generation for g in seen))

            try:
                wait_until(applied, READY_TIMEOUT_S, "the autoscaler's state table, applied by "
                           "every gateway", details=self.logs, interval_s=0.25)
            finally:
                client.close()
        url = f"{self.base_url}/v2/models/{name}/ready"

        def ready() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, READY_TIMEOUT_S, url, details=self.logs, interval_s=0.25)

    def containers(self, service: str) -> list[str]:
        """Ids of the service's containers, running or not."""
        return self.compose("ps", "-a", "-q", service).split()

    def managed(self) -> list[str]:
        """Containers the autoscaler started on this project's network, running or not."""
        return docker("container", "ls", "-a", "-q", "--no-trunc", "--filter",
                      f"label={MANAGED_LABEL}=true", "--filter", f"network={self.network}").split()

    def address(self, container: str) -> str:
        return str(inspect(container)["NetworkSettings"]["Networks"][self.network]["IPAddress"])

    def redis(self) -> redis.Redis:
        [container] = self.containers("redis")
        return redis.Redis(host=self.address(container), port=6379, socket_timeout=10)

    def logs(self, *services: str, tail: int = 40) -> str:
        result = self.compose("logs", "--no-color", "--tail", str(tail), *services,
                              timeout_s=30, check=False)
        return result[-6000:]

    def remove(self) -> None:
        """Everything this project made: the autoscaler first (so it starts nothing more), its
        containers, then Compose's containers, volumes and network."""
        self.compose("stop", "-t", "5", "autoscaler", check=False)
        managed = self.managed()
        if managed:
            docker("container", "rm", "-f", *managed, check=False)
        self.compose("--profile", "monitoring", "down", "-v", "--remove-orphans", "-t", "10",
                     check=False)
        docker("network", "rm", self.network, check=False)

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.name}"
        return [
            *(f"container {c}" for c in docker("container", "ls", "-aq", "--filter", label)
              .split() + self.managed()),
            *(f"volume {v}" for v in docker("volume", "ls", "-q", "--filter", label).split()),
            *(f"network {n}" for n in docker("network", "ls", "-q", "--filter",
                                             f"name=^{self.network}$").split()),
        ]


@contextlib.contextmanager
def open_stack(binary: str, images: Mapping[str, str], workdir: Path,
               overrides: Sequence[Mapping[str, Any]] = ()) -> Iterator[Stack]:
    """A stack under a fresh name; ``overrides`` are Compose files (as data) applied on top,
    written to ``workdir``."""
    name = f"mgtest-{secrets.token_hex(3)}"
    paths = []
    for number, override in enumerate(overrides):
        path = workdir / f"{name}.override-{number}.yaml"
        path.write_text(yaml.safe_dump(dict(override), sort_keys=False))
        paths.append(path)
    stack = Stack(name, binary, images, paths)
    try:
        yield stack
    finally:
        stack.remove()
        left = stack.leftovers()
        assert not left, f"{name} left behind: {left}"


# --------------------------------------------------------------------------- workers in Redis


def pool_counts(client: redis.Redis, pool: str) -> dict[str, int]:
    """Calls each live worker of ``pool`` has processed, by its host name (a container's host
    name is its short id), from the workers' heartbeats in Redis."""
    counts: dict[str, int] = {}
    for worker_id in client.zrange(pools.worker_set(pool), 0, -1):
        beat = heartbeats.Heartbeat.parse(
            client.hgetall(heartbeats.heartbeat(worker_id.decode())))
        if beat is not None:
            counts[beat.host] = counts.get(beat.host, 0) + beat.processed
    return counts


def live_workers(client: redis.Redis, pool: str, fresh_s: float = 3.0) -> int:
    """Workers of ``pool`` whose last heartbeat is at most ``fresh_s`` old."""
    return int(client.zcount(pools.worker_set(pool), time.time() - fresh_s, "+inf"))


