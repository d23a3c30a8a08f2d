"""Shared fixtures: a real Redis, tiny ONNX models built with ``onnx.helper``, and real servers.

Nothing here is mocked. ``redis_url`` is a throwaway ``redis-server`` on a free port (never the
machine's Redis on 6379). Servers started by ``serve`` each get a Redis database of their own,
so module-scoped servers and the function-scoped ``redis_client`` (database 0) never see each
other's keys.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import onnx
import onnxruntime as ort
import pytest
import redis

from modelgate.cli import demo
from modelgate.core.embedded_redis import free_port, start_redis
from modelgate.core.process import stop_process
from modelgate.core.repository import Model, load_repository
from tests import models
from tests.procs import Processes, answers_200, wait_until

# Under CI=true a skipped test fails the run (tests/skip_gate.py).
pytest_plugins = ["tests.skip_gate"]

READY_TIMEOUT_S = 60.0
REDIS_DATABASES = 64  # one per server started by `serve`; 0 is left to `redis_client`


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a free port for the whole session (database 0)."""
    process, url = start_redis(extra_args=("--databases", str(REDIS_DATABASES)))
    try:
        yield url
    finally:
        stop_process(process, timeout_s=5)
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture
def private_redis_url() -> Iterator[str]:
    """A redis-server of this test alone, on a free port: for tests that change the server's
    configuration (maxmemory, the eviction policy), which must not reach other tests."""
    process, url = start_redis()
    try:
        yield url
    finally:
        stop_process(process, timeout_s=5)


def redis_url_for_db(url: str, db: int) -> str:
    return f"{url.rsplit('/', 1)[0]}/{db}"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on database 0, empty at the start and end of the test.

    FLUSHDB rather than FLUSHALL: servers shared across a module live in other databases.
    """
    client = redis.Redis.from_url(redis_url_for_db(redis_url, 0))
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def onnx_models() -> dict[str, onnx.ModelProto]:
    """Every test model by name (the names are also the repository names used in tests)."""
    return {
        "mlp": demo.mlp_model(),
        "add2": models.add2_model(),
        "scalar": models.scalar_model(),
        "state": models.state_model(),
        "symbolic": models.symbolic_model(),
        "int64": models.int64_model(),
        "bytes": models.bytes_model(),
        "gather": models.gather_model(),
        "iris": demo.iris_classifier(),
    }


@pytest.fixture(scope="session")
def ort_run(onnx_models: dict[str, onnx.ModelProto]) -> Callable[..., list[Any]]:
    """``ort_run(name, feeds, outputs=None)``: onnxruntime called directly, the reference."""
    sessions: dict[str, ort.InferenceSession] = {}

    def run(name: str, feeds: dict[str, Any], outputs: Sequence[str] | None = None) -> list[Any]:
        if name not in sessions:
            sessions[name] = ort.InferenceSession(
                onnx_models[name].SerializeToString(), providers=["CPUExecutionProvider"])
        return sessions[name].run(list(outputs) if outputs else None, feeds)

    return run


@pytest.fixture(scope="session")
def unit_repository(tmp_path_factory: pytest.TempPathFactory,
                    onnx_models: dict[str, onnx.ModelProto]) -> dict[str, Model]:
    """Every test model in one repository, loaded (no configs)."""
    root = models.write_repository(tmp_path_factory.mktemp("unit-models"), dict(onnx_models))
    return load_repository(root)


# --------------------------------------------------------------------------- processes


ServeFactory = Callable[..., contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="session")
def serve(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> ServeFactory:
    """``with serve(repo, [(model, n_workers), ...]) as base_url:`` real workers and a gateway.

    ``grpc_port``: the gateway serves gRPC there too (else no gRPC); ``gateway_env``: more of
    the gateway's environment (API keys).

    All processes start at once (workers load models in parallel with the gateway booting).
    Readiness is polled with a deadline: ``/v2/health/ready`` when every model in the
    repository has workers, else each served model's ``/v2/models/{name}/ready`` (the server
    is not ready as a whole then, by design). On exit the gateway stops first, then the workers
    drain; anything that does not stop is killed.
    """
    databases = itertools.count(1)

    @contextlib.contextmanager
    def start(repo: Path, plan: Sequence[tuple[str, int]], grpc_port: int = 0,
              gateway_env: dict[str, str] | None = None) -> Iterator[str]:
        db = next(databases)
        assert db < REDIS_DATABASES, "more servers than Redis databases; raise REDIS_DATABASES"
        url = redis_url_for_db(redis_url, db)
        processes = Processes(tmp_path_factory.mktemp(f"serve-{db}-logs"))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        try:
            for model, count in plan:
                for i in range(count):
                    processes.spawn(f"worker-{model}-{i}", [
                        "worker", "--models", str(repo), "--model", model, "--redis-url", url])
            processes.spawn("gateway", [
                "gateway", "--models", str(repo), "--redis-url", url,
                "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port)],
                env_extra=gateway_env)
            served = {model for model, count in plan if count > 0}
            if served == set(load_repository(repo)):
                paths = ["/v2/health/ready"]
            else:
                paths = ["/v2/health/live", *(f"/v2/models/{m}/ready" for m in sorted(served))]
            with httpx.Client(base_url=base, timeout=2.0) as client:
                wait_until(lambda: all(answers_200(client, p) for p in paths),
                           READY_TIMEOUT_S, f"{base} to answer 200 on {paths}",
                           processes.check_alive, processes.logs)
            yield base
        finally:
            processes.stop(labels_first=("gateway",))

    return start
