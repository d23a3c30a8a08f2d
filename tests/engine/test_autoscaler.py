"""The autoscaler on the docker backend, in Compose, under a load one worker cannot serve.

The demo models are too fast for one worker to fall behind before the gateway does, so the
test image adds a slow one: the project's image plus ``slow`` (a chain of 400 512-wide
matrix products, about 4 ms a call on one core, one call per run). Compose runs one `slow`
worker (the `worker` service of compose.yaml under another model) and the autoscaler of
compose.yaml with a short scale-down delay. Under 32 concurrent callers the autoscaler starts
labelled containers of its own; once they serve, the load drops to a trickle and it must
drain and remove exactly the containers it started, leaving every Compose container running.
Calls must keep succeeding throughout.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelgate.autoscaler.backends.docker import POOL_LABEL
from modelgate.cli.demo import write_model
from modelgate.core.store import pools, scaling
from tests.engine.conftest import StackFactory
from tests.engine.load import failures, load, throughput, wrong_outputs
from tests.engine.stack import (
    COMPOSE_FILE,
    DOCKER_TIMEOUT_S,
    container_logs,
    docker,
    inspect,
    live_workers,
    pool_counts,
)
from tests.models import matmul_chain

pytestmark = pytest.mark.engine

MODEL = "slow"
POOL = pools.pool_id(MODEL, "1")
WIDTH = 512
MAX_WORKERS = 3
SCALE_DOWN_DELAY_S = 5
BUSY_CONCURRENCY = 32
TRICKLE_PER_S = 5.0
SERVING_FOR_S = 3.0  # how long the added containers serve before the load drops
OVERRIDES = {"services": {
    f"worker-{MODEL}": {
        "extends": {"file": str(COMPOSE_FILE), "service": "worker"},
        "command": ["worker", "--models", "/models", "--model", MODEL, "--version", "1"],
        "labels": {POOL_LABEL: POOL},
    },
    "autoscaler": {"command": [
        "autoscaler", "--models", "/models", "--backend", "docker",
        "--docker-image", "${MODELGATE_IMAGE}", "--docker-network", "${MODELGATE_NETWORK}",
        "--min-workers", "1", "--max-workers", str(MAX_WORKERS),
        "--scale-down-delay", str(SCALE_DOWN_DELAY_S), "--metrics-port", "9100"]},
}}
STARTED = re.compile(rf"started worker container (\S+) for {POOL}\b")
DRAINING = re.compile(rf"draining worker container (\S+) of {POOL}\b")


@pytest.fixture(scope="module")
def slow_image(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[tuple[str, Path]]:
    """(tag, model file): the project's image with the slow model added to /models."""
    context = tmp_path_factory.mktemp("slow-image")
    write_model(matmul_chain(WIDTH, 400), context / "models", MODEL)
    (context / "models" / MODEL / "config.yaml").write_text("max_batch_size: 1\n")
    (context / "Dockerfile").write_text(
        "ARG IMAGE\nFROM ${IMAGE}\nCOPY models/ /models/\n")
    tag = f"modelgate-test-slow:{secrets.token_hex(3)}"
    built = subprocess.run(
        ["docker", "build", "--build-arg", f"IMAGE={images['modelgate']}", "-t", tag,
         str(context)], env={**os.environ, "DOCKER_BUILDKIT": "0"},
        capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S, check=False)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    try:
        yield tag, context / "models" / MODEL / "1" / "model.onnx"
    finally:
        docker("image", "rm", tag, check=False)


def running_since(containers: list[str]) -> dict[str, str]:
    """Container id -> when it started, for those running."""
    states = {c: inspect(c)["State"] for c in containers}
    return {c: s["StartedAt"] for c, s in states.items() if s["Running"]}


@pytest.mark.timeout(300)
def test_autoscaler_adds_containers_under_load_and_removes_only_its_own(
        stack_factory: StackFactory, slow_image: tuple[str, Path],
        engine_report: Callable[[dict[str, Any]], None]) -> None:
    image, model_file = slow_image
    stack = stack_factory(overrides=[OVERRIDES], image=image)
    services = ("gateway", "worker", "worker-iris", f"worker-{MODEL}", "autoscaler")
    stack.up(*services)
    compose_containers = [c for s in services for c in stack.containers(s)]
    before = running_since(compose_containers)
    assert len(before) == len(services), f"not all running: {before}"
    client = stack.redis()
    inputs = np.random.default_rng(5).standard_normal((200, WIDTH), dtype=np.float32)
    figures: dict[str, Any] = {"max_live": 0}

    def added_serving() -> bool:
        """The autoscaler's containers of the pool serve, and have for SERVING_FOR_S."""
        figures["max_live"] = max(figures["max_live"], live_workers(client, POOL))
        added = {c[:12] for c in stack.managed()}
        if added & {host for host, n in pool_counts(client, POOL).items() if n > 0}:
            figures.setdefault("serving_at", time.monotonic())
        return time.monotonic() > figures.get("serving_at", float("inf")) + SERVING_FOR_S

    started = time.monotonic()
    busy = load(stack.base_url, MODEL, inputs, concurrency=BUSY_CONCURRENCY, budget_s=90,
                until=added_serving)
    busy_s = time.monotonic() - started
    trickle = load(stack.base_url, MODEL, inputs, concurrency=2, rate_per_s=TRICKLE_PER_S,
                   budget_s=90, until=lambda: not stack.managed())
    log = container_logs(stack.containers("autoscaler")[0], tail=1000)
    after = running_since(compose_containers)
    events = (scaling.ScalingEvent.parse(fields) for _, fields in client.xrange(scaling.EVENTS))
    ups = [e for e in events if e is not None and e.pool == POOL and e.desired > e.current]
    client.close()

    answers = busy + trickle
    codes = Counter(a.status for a in answers)
    started_names = STARTED.findall(log)
    drained = DRAINING.findall(log)
    engine_report({
        "busy_calls": len(busy), "busy_calls_per_s": throughput(busy),
        "trickle_calls": len(trickle), "failed": len(answers) - codes[200],
        "started": len(started_names), "max_live_workers": figures["max_live"],
        "drained_and_removed": len(drained), "left": len(stack.managed()),
        "serving_after_s": round(figures["serving_at"] - started, 1)
        if "serving_at" in figures else None,
        "busy_s": round(busy_s, 1),
        "first_scale_up": ups[0].reason if ups else None})
    assert codes == {200: len(answers)}, f"{dict(codes)}: {failures(answers)}"
    assert "serving_at" in figures, f"no added container served:\n{log[-3000:]}"
    assert not wrong_outputs(answers, inputs, model_file)
    assert started_names, f"the autoscaler started nothing:\n{log[-3000:]}"
    assert sorted(drained) == sorted(started_names), (
        f"started {started_names}, drained {drained}:\n{log[-3000:]}")
    assert not stack.managed(), "the autoscaler left containers behind"
    assert after == before, "a Compose container was stopped or restarted"
