"""The docker backend against a stand-in Docker client.

No Docker engine runs here, so every test drives ``DockerBackend`` with ``FakeDocker``: a
small in-memory engine with the ``containers.run`` / ``containers.list(filters=...)`` /
``container.stop`` / ``container.remove`` calls of the docker SDK that the backend uses,
recording each call. It models what the backend relies on: label filters (all must match),
status filters (any may match), ``Created`` as RFC 3339 with trailing zeros dropped, and a
stop that blocks until the container exits and, like the Engine's API, takes its timeout in
whole seconds only (``?t=30.0`` is a 500 there).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from modelgate.autoscaler.backends.base import PoolRef
from modelgate.autoscaler.backends.docker import MANAGED_LABEL, POOL_LABEL, DockerBackend

MLP, IRIS = PoolRef("mlp", "1"), PoolRef("iris", "1")

IMAGE = "modelgate:latest"
REDIS_URL = "redis://:secret@redis:6379/0"


class FakeContainer:
    def __init__(self, engine: FakeDocker, name: str, labels: dict[str, str], created: str,
                 **run_kwargs: Any) -> None:
        self.engine = engine
        self.id = f"{next(engine.ids):064x}"
        self.name = name
        self.labels = labels
        self.status = "running"
        self.exit_code = 0
        self.created = created
        self.run_kwargs = run_kwargs

    @property
    def attrs(self) -> dict[str, Any]:
        return {"Created": self.created, "State": {"ExitCode": self.exit_code}}

    def stop(self, timeout: int) -> None:
        if not isinstance(timeout, int):
            raise RuntimeError(f'500 Server Error: strconv.Atoi: parsing "{timeout}"')
        self.engine.calls.append(("stop", self.name, timeout))
        self.engine.stop_gate.wait(5)  # a draining worker takes a while to exit
        self.status = "exited"

    def remove(self) -> None:
        self.engine.calls.append(("remove", self.name))
        del self.engine.containers[self.id]


class FakeContainers:
    def __init__(self, engine: FakeDocker) -> None:
        self.engine = engine

    def run(self, image: str, **kwargs: Any) -> FakeContainer:
        self.engine.calls.append(("run", kwargs["name"]))
        return self.engine.add(kwargs.pop("name"), kwargs.pop("labels"), image=image, **kwargs)

    def list(self, filters: dict[str, Any] | None = None, **options: Any) -> list[Any]:
        """Like the SDK: ``all=True`` includes stopped containers; a status filter wins."""
        filters = filters or {}
        wanted = [tuple(label.split("=", 1)) for label in filters.get("label", [])]
        statuses = filters.get("status") or (None if options.get("all") else ["running"])
        return [c for c in self.engine.containers.values()
                if all(c.labels.get(k) == v for k, v in wanted)
                and (statuses is None or c.status in statuses)]


class FakeDocker:
    """Stand-in for ``docker.DockerClient``: an in-memory engine (no Docker engine here)."""

    def __init__(self, created: list[str] | None = None) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.ids = itertools.count(1)
        seconds = itertools.count(0)
        self.clock = iter(created) if created else (
            f"2026-01-01T00:00:{next(seconds):02d}.5Z" for _ in itertools.count())
        self.stop_gate = threading.Event()
        self.stop_gate.set()
        self.containers_api = FakeContainers(self)

    def add(self, name: str, labels: dict[str, str], **run_kwargs: Any) -> FakeContainer:
        container = FakeContainer(self, name, labels, next(self.clock), **run_kwargs)
        self.containers[container.id] = container
        return container

    def pool(self, model: str, status: str = "running") -> list[FakeContainer]:
        return [c for c in self.containers.values()
                if c.labels.get(POOL_LABEL) == model and c.status == status]


class Client:
    """What the backend sees: ``client.containers`` is the containers API."""

    def __init__(self, engine: FakeDocker) -> None:
        self.containers = engine.containers_api


def make_backend(engine: FakeDocker, **kwargs: Any) -> DockerBackend:
    return DockerBackend("/models", REDIS_URL, image=IMAGE, network="modelgate",
                         drain_timeout_s=12.5, client=Client(engine), **kwargs)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def engine() -> FakeDocker:
    return FakeDocker()


def test_scale_up_starts_labelled_worker_containers(engine: FakeDocker) -> None:
    """Stand-in engine (no Docker engine here). Checks what a started worker container gets:
    image, the `worker` command, the pool and managed labels, the Redis URL in its
    environment (never in its command), the network, and no gateway health check."""
    backend = make_backend(engine, environment={"MODELGATE_LOG_LEVEL": "DEBUG"})
    backend.scale(MLP, 2)
    started = engine.pool("mlp:1")
    assert len(started) == 2 and backend.running(MLP) == 2 and backend.running(IRIS) == 0
    for container in started:
        run = container.run_kwargs
        assert run["image"] == IMAGE
        assert run["command"] == ["worker", "--models", "/models", "--model", "mlp",
                                  "--version", "1"]
        assert container.labels == {POOL_LABEL: "mlp:1", MANAGED_LABEL: "true"}
        assert run["environment"] == {"MODELGATE_REDIS_URL": REDIS_URL,
                                      "MODELGATE_LOG_LEVEL": "DEBUG"}
        assert REDIS_URL not in " ".join(run["command"])
        assert run["network"] == "modelgate"
        assert run["detach"] is True
        assert run["healthcheck"] == {"test": ["NONE"]}
        assert container.name.startswith("modelgate-worker-mlp-")


def test_scale_is_idempotent(engine: FakeDocker) -> None:
    """Stand-in engine (no Docker engine here). Checks that asking for the count that runs
    starts and stops nothing."""
    backend = make_backend(engine)
    backend.scale(MLP, 2)
    calls = len(engine.calls)
    backend.scale(MLP, 2)
    assert len(engine.calls) == calls and backend.running(MLP) == 2


def test_scale_down_drains_the_newest_containers_first(engine: FakeDocker) -> None:
    """Stand-in engine (no Docker engine here). Checks newest-first removal, the drain
    timeout passed to `container.stop` (SIGTERM, then SIGKILL; 12.5 s rounded up to the whole
    seconds the Engine takes), and removal afterwards."""
    backend = make_backend(engine)
    backend.scale(MLP, 3)
    oldest, middle, newest = sorted(engine.pool("mlp:1"), key=lambda c: c.created)
    backend.scale(MLP, 1)
    wait_for(lambda: backend.draining() == 0)
    stops = [c for c in engine.calls if c[0] == "stop"]
    assert sorted(stops) == sorted([("stop", newest.name, 13), ("stop", middle.name, 13)])
    assert ("remove", newest.name) in engine.calls and ("remove", middle.name) in engine.calls
    assert list(engine.containers.values()) == [oldest]


def test_newest_first_reads_nanosecond_timestamps_not_text(engine: FakeDocker) -> None:
    """Stand-in engine (no Docker engine here). The Engine drops trailing zeros from
    `Created`, so "…01.1Z" is older than "…01.12Z" though it sorts after it as text; checks
    that the container created last is the one stopped."""
    engine = FakeDocker(created=["2026-01-01T00:00:01.1Z", "2026-01-01T00:00:01.12Z"])
    backend = make_backend(engine)
    backend.scale(MLP, 2)
    first, second = engine.containers.values()
    backend.scale(MLP, 1)
    wait_for(lambda: backend.draining() == 0)
    assert [c for c in engine.calls if c[0] == "stop"] == [("stop", second.name, 13)]
    assert list(engine.containers.values()) == [first]


def test_scale_down_returns_at_once_and_draining_containers_stop_counting(
        engine: FakeDocker) -> None:
    """Stand-in engine (no Docker engine here) whose `stop` blocks like a worker draining.
    Checks that `scale` does not wait for it (the stop runs on the backend's thread pool),
    that a draining container no longer counts as running nor is stopped twice, and that it
    is removed once it exits."""
    backend = make_backend(engine)
    backend.scale(MLP, 2)
    engine.stop_gate.clear()
    started = time.monotonic()
    backend.scale(MLP, 1)
    assert time.monotonic() - started < 1.0
    wait_for(lambda: any(c[0] == "stop" for c in engine.calls))
    assert backend.running(MLP) == 1 and backend.draining() == 1
    backend.scale(MLP, 1)  # the loop asks again next tick: nothing more to do
    backend.supervise()
    assert len(engine.containers) == 2 and sum(c[0] == "stop" for c in engine.calls) == 1
    engine.stop_gate.set()
    wait_for(lambda: backend.draining() == 0)
    assert len(engine.containers) == 1 and backend.running(MLP) == 1


def test_compose_started_workers_count_but_are_never_stopped(engine: FakeDocker) -> None:
    """Stand-in engine (no Docker engine here). A `docker compose up --scale worker=N`
    container carries the pool label but not the managed one: checks that it counts towards
    the pool and is never stopped, so it is a floor the backend scales above."""
    compose = engine.add("modelgate-worker-1", {POOL_LABEL: "mlp:1"})
    backend = make_backend(engine)
    backend.scale(MLP, 1)
    assert backend.running(MLP) == 1 and not any(c[0] == "run" for c in engine.calls)
    backend.scale(MLP, 3)
    assert backend.running(MLP) == 3
    backend.scale(MLP, 0)
    wait_for(lambda: backend.draining() == 0)
    assert list(engine.containers.values()) == [compose] and backend.running(MLP) == 1


def test_supervise_removes_exited_managed_containers_and_replaces_them(
        engine: FakeDocker) -> None:
    """Stand-in engine (no Docker engine here). A managed worker that exits unasked (and one
    whose start failed, left `created`) is removed and replaced; an exited container the
    backend did not start is left alone."""
    foreign = engine.add("someone-elses", {POOL_LABEL: "mlp:1"})
    foreign.status = "exited"
    backend = make_backend(engine)
    backend.scale(MLP, 2)
    crashed, failed = engine.pool("mlp:1")
    crashed.status, crashed.exit_code = "exited", 137
    failed.status = "created"
    backend.supervise()
    assert crashed.id not in engine.containers and failed.id not in engine.containers
    assert foreign.id in engine.containers
    assert backend.running(MLP) == 2 and backend.restarts == 2


def test_remove_drains_the_pool_and_nothing_restarts_it(engine: FakeDocker) -> None:
    """Stand-in engine (no Docker engine here). A pool no longer served: its managed
    containers drain, `supervise` does not start new ones, and other pools are untouched."""
    backend = make_backend(engine)
    backend.scale(MLP, 2)
    backend.scale(IRIS, 1)
    backend.remove(MLP)
    wait_for(lambda: backend.draining() == 0)
    backend.supervise()
    assert backend.running(MLP) == 0 and engine.pool("mlp:1") == []
    assert backend.running(IRIS) == 1
    backend.close()


def test_stop_all_drains_every_managed_container_and_waits(engine: FakeDocker) -> None:
    """Stand-in engine (no Docker engine here). Checks that `stop_all` stops and removes every
    managed container of every pool, returns only when they are gone, and leaves
    Compose's containers running."""
    compose = engine.add("modelgate-worker-iris-1", {POOL_LABEL: "iris:1"})
    backend = make_backend(engine)
    backend.scale(MLP, 2)
    backend.scale(IRIS, 2)
    backend.stop_all()
    assert backend.draining() == 0
    assert list(engine.containers.values()) == [compose]
    assert sum(c[0] == "stop" for c in engine.calls) == 3
    backend.supervise()  # nothing is wanted any more: nothing restarts
    assert list(engine.containers.values()) == [compose]
    backend.close()
