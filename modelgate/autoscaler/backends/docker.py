"""Docker backend: each worker is a container of the modelgate image on one Docker Engine.

Containers are found by label, so the backend keeps no state that matters across restarts:

- ``modelgate.pool=<model>:<version>`` marks a worker of that pool. Every running container
  with it counts, including ones Compose started (``docker compose up --scale worker=N``).
- ``modelgate.managed=true`` marks the containers this backend started. Only those are ever
  stopped or removed: a Compose-started worker is a floor the backend scales above.

Scale-down drains: ``container.stop(timeout=...)`` sends SIGTERM (the worker answers what it
holds, then exits) and SIGKILL once ``drain_timeout_s`` passes, rounded up to whole seconds:
the Engine reads the timeout as an integer and refuses ``30.0``. Those calls block for
as long as the drain takes, so they run on a small thread pool; ``scale`` returns at once and a
draining container stops counting as running the moment its stop is requested.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

from modelgate.autoscaler.backends.base import PoolRef

log = logging.getLogger("modelgate.autoscaler")

POOL_LABEL = "modelgate.pool"  # the pool a worker container serves: "<model>:<version>"
MANAGED_LABEL = "modelgate.managed"  # "true" on containers this backend started (and may stop)
DRAIN_THREADS = 8  # containers stopped at once; more wait their turn on the pool


def _created_key(container: Any) -> tuple[int, int, str]:
    """Sort key by creation time, oldest first.

    The Engine gives ``Created`` as RFC 3339 with up to nine fractional digits, trailing zeros
    dropped, so the strings do not sort as text; parse whole seconds and nanoseconds apart.
    The id breaks ties so the order is stable.
    """
    created = container.attrs.get("Created", "")
    if isinstance(created, int | float):  # the list endpoint's epoch seconds
        return int(created), 0, container.id
    whole, _, fraction = str(created).removesuffix("Z").partition(".")
    try:
        seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    except ValueError:
        return 0, 0, container.id
    return seconds, int((fraction + "000000000")[:9]), container.id


class DockerBackend:
    """Runs worker replicas as labelled containers through the Docker Engine API.

    ``models_dir`` is the repository's path inside the container (the image carries the demo
    repository in ``/models``). ``network`` should be the one Redis is reachable on (Compose's
    project network); ``None`` leaves the Engine's default bridge. ``run_options`` go to
    ``containers.run`` as they are (``mem_limit``, ``nano_cpus``, ``volumes``...). ``client``
    is a ``docker.DockerClient``; by default one from the environment (``DOCKER_HOST`` or the
    local socket).
    """

    name = "docker"

    def __init__(self, models_dir: str | PurePath, redis_url: str, *, image: str,
                 network: str | None = None, drain_timeout_s: float = 30.0,
                 environment: Mapping[str, str] | None = None,
                 run_options: Mapping[str, Any] | None = None, client: Any = None) -> None:
        if client is None:
            import docker  # optional dependency: pip install 'modelgate[docker]'

            client = docker.from_env()
        self.client = client
        self.models_dir = str(models_dir)
        self.redis_url = redis_url
        self.image = image
        self.network = network
        self.drain_timeout_s = drain_timeout_s
        self.environment = dict(environment or {})
        self.run_options = dict(run_options or {})
        self.desired: dict[PoolRef, int] = {}
        self.restarts = 0  # containers started to replace ones that exited unasked
        self._lock = threading.Lock()
        self._draining: dict[str, Future[None]] = {}  # container id -> its stop
        self._stopper = ThreadPoolExecutor(DRAIN_THREADS, thread_name_prefix="docker-drain")

    # ------------------------------------------------------------------ queries

    def _list(self, labels: Iterable[str], statuses: Iterable[str]) -> list[Any]:
        # ignore_removed: a drain thread may remove a container between the SDK's list and
        # its inspect of each entry.
        return list(self.client.containers.list(
            all=True, filters={"label": list(labels), "status": list(statuses)},
            ignore_removed=True))

    def _live(self, ref: PoolRef) -> list[Any]:
        """Running containers of the pool that are not draining, oldest first."""
        with self._lock:
            draining = set(self._draining)
        containers = self._list([f"{POOL_LABEL}={ref.pool}"], ["running"])
        return sorted((c for c in containers if c.id not in draining), key=_created_key)

    def running(self, ref: PoolRef) -> int:
        return len(self._live(ref))

    def draining(self) -> int:
        """Containers whose stop was requested and has not finished yet."""
        with self._lock:
            return len(self._draining)

    # ------------------------------------------------------------------ actions

    def _start(self, ref: PoolRef) -> None:
        name = f"modelgate-worker-{ref.model}-v{ref.version}-{secrets.token_hex(4)}"
        # The Redis URL may hold a password: environment, not command, so `ps` and
        # `docker inspect`'s Args do not show it.
        environment = {**self.environment, "MODELGATE_REDIS_URL": self.redis_url}
        container = self.client.containers.run(
            self.image,
            command=["worker", "--models", self.models_dir, "--model", ref.model,
                     "--version", ref.version],
            name=name,
            detach=True,
            labels={POOL_LABEL: ref.pool, MANAGED_LABEL: "true"},
            environment=environment,
            network=self.network,
            # The image's HEALTHCHECK probes the gateway's port; a worker serves no HTTP.
            healthcheck={"test": ["NONE"]},
            **self.run_options,
        )
        log.info("started worker container %s for %s", getattr(container, "name", name),
                 ref.pool)

    def _drain(self, container: Any) -> None:
        with self._lock:  # held until the entry exists, so the task cannot pop it first
            if container.id in self._draining:
                return
            future = self._stopper.submit(self._stop_and_remove, container)
            self._draining[container.id] = future
        future.add_done_callback(functools.partial(self._report, container.id))

    def _stop_and_remove(self, container: Any) -> None:
        # Runs on the drain pool. The entry goes before the future completes, so whoever
        # waits on the future (stop_all) sees the container gone from `_draining`.
        try:
            # SIGTERM, SIGKILL after the timeout (whole seconds: the Engine parses an integer)
            container.stop(timeout=math.ceil(self.drain_timeout_s))
            container.remove()
        finally:
            with self._lock:
                self._draining.pop(container.id, None)

    @staticmethod
    def _report(container_id: str, future: Future[None]) -> None:
        error = future.exception()
        if error is not None:
            log.warning("stopping worker container %s failed: %s", container_id[:12], error)

    def scale(self, ref: PoolRef, desired: int) -> None:
        """Start or drain containers until ``desired`` run for the pool; newest go first.

        Returns once the missing containers are started; surplus ones drain in the
        background. Only containers this backend started are drained, so the pool never goes
        below the number Compose runs.
        """
        self.desired[ref] = desired
        live = self._live(ref)
        for _ in range(desired - len(live)):
            self._start(ref)
        surplus = len(live) - desired
        if surplus <= 0:
            return
        managed = [c for c in live if c.labels.get(MANAGED_LABEL) == "true"]
        victims = list(reversed(managed))[:surplus]
        if len(victims) < surplus:
            # Debug, not info: the loop asks again every tick while the floor is above it.
            log.debug("%s: %d worker(s) wanted, but %d were not started by this backend "
                      "(Compose's?) and stay", ref.pool, desired, len(live) - len(managed))
        for container in victims:
            log.info("draining worker container %s of %s", container.name, ref.pool)
            self._drain(container)

    def remove(self, ref: PoolRef) -> None:
        """Drain the pool's managed containers and forget the pool (nothing restarts them).
        Containers Compose started are left alone, as ``scale`` leaves them."""
        self.scale(ref, 0)
        self.desired.pop(ref, None)

    def supervise(self) -> None:
        """Remove managed containers that exited unasked and start their replacements.

        Also removes managed ones left ``created``: ``containers.run`` starts what it
        creates, so those are starts that failed.
        """
        with self._lock:
            draining = set(self._draining)
        for container in self._list([f"{MANAGED_LABEL}=true"], ["exited", "dead", "created"]):
            if container.id in draining:
                continue
            state = container.attrs.get("State", {})
            log.warning("worker container %s of %s exited with %s; removing it", container.name,
                        container.labels.get(POOL_LABEL, "?"), state.get("ExitCode", "?"))
            container.remove()
        for ref, desired in self.desired.items():
            missing = desired - len(self._live(ref))
            if missing > 0:
                self.restarts += missing
                self.scale(ref, desired)

    def stop_all(self) -> None:
        """Drain every managed container at once and wait for them all to be gone.

        Containers Compose started are left alone.
        """
        self.desired.clear()
        for container in self._list([f"{MANAGED_LABEL}=true"], ["running", "created",
                                                                 "restarting", "paused"]):
            self._drain(container)
        with self._lock:
            pending = list(self._draining.values())
        wait(pending)

    def close(self) -> None:
        """Wait for drains in flight, then release the thread pool."""
        self._stopper.shutdown(wait=True)
