"""`docker kill` of a worker container mid-load: nothing is lost and the pool recovers.

Two Compose-started `mlp` workers and the autoscaler held at a floor of two. One worker is
SIGKILLed while it holds entries: a live worker reclaims them after the claim timeout, so
every call gets its answer. Docker does not restart a killed container (a kill counts as a
manual stop, whatever the restart policy), so the pool recovers through the autoscaler, which
starts a container to bring it back to its floor. Every answer is compared with ONNX Runtime
run here on the image's model.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelgate.autoscaler.backends.docker import POOL_LABEL
from modelgate.core.store import pools
from tests.engine.conftest import StackFactory
from tests.engine.load import (
    after_answers,
    failures,
    load,
    mlp_rows,
    pause_holding,
    wrong_outputs,
)
from tests.engine.stack import docker, inspect, live_workers, pool_counts
from tests.procs import wait_until

pytestmark = pytest.mark.engine

POOL = pools.pool_id("mlp", "1")
FLOOR = 2
CALLS_PER_S = 300  # offered, open loop: the load lasts until the replacement took work
KILL_AFTER = 1_000  # answers
SERVING_AFTER_S = 2.0  # how long the replacement must have served before the load ends
# The autoscaler of compose.yaml, held at a floor of two workers. Compose interpolates the
# variables with the stack's own values, as it does in compose.yaml.
AUTOSCALER = {"services": {"autoscaler": {"command": [
    "autoscaler", "--models", "/models", "--backend", "docker",
    "--docker-image", "${MODELGATE_IMAGE}", "--docker-network", "${MODELGATE_NETWORK}",
    "--min-workers", str(FLOOR), "--max-workers", "3", "--metrics-port", "9100"]}}}


@pytest.mark.timeout(240)
def test_a_worker_killed_mid_load_loses_nothing_and_the_pool_recovers(
        stack_factory: StackFactory, image_models: Path,
        engine_report: Callable[[dict[str, Any]], None]) -> None:
    stack = stack_factory(overrides=[AUTOSCALER])
    stack.up("gateway", "worker", "worker-iris", "autoscaler", scale={"worker": FLOOR})
    client = stack.redis()
    wait_until(lambda: live_workers(client, POOL) == FLOOR, 60, f"{FLOOR} live mlp workers",
               details=stack.logs)
    stack.wait_model_ready("mlp", autoscaler=True)
    victim = stack.containers("worker")[0]
    figures: dict[str, Any] = {}

    def kill() -> dict[str, Any]:
        held = pause_holding(client, POOL, victim)
        docker("container", "kill", victim)
        return {"held_at_kill": held, "killed_at": time.monotonic()}

    def recovered() -> bool:
        """A container the autoscaler started for mlp has served for a while."""
        if "killed_at" not in figures:
            return False
        started = {c[:12] for c in stack.managed()
                   if inspect(c)["Config"]["Labels"].get(POOL_LABEL) == POOL}
        if started & {host for host, n in pool_counts(client, POOL).items() if n > 0}:
            figures.setdefault("serving_at", time.monotonic())
        return time.monotonic() > figures.get("serving_at", float("inf")) + SERVING_AFTER_S

    inputs = mlp_rows(3, 2_000)
    answers = load(stack.base_url, "mlp", inputs, concurrency=16, rate_per_s=CALLS_PER_S,
                   budget_s=90, on_answer=after_answers(KILL_AFTER, kill, figures),
                   until=recovered)
    codes = Counter(a.status for a in answers)
    state = inspect(victim)["State"]
    live = live_workers(client, POOL)
    client.close()
    report = {"calls": len(answers), "ok": codes[200], "lost": codes[0],
              "failed": len(answers) - codes[200], "held_at_kill": figures.get("held_at_kill"),
              "exit_code": state["ExitCode"], "live_workers_after": live}
    if "serving_at" in figures:
        report["replacement_serving_after_s"] = round(
            figures["serving_at"] - figures["killed_at"], 1)
    engine_report(report)
    assert "killed_at" in figures, f"the worker was never killed: {len(answers)} answers"
    assert (state["Status"], state["ExitCode"]) == ("exited", 137)
    assert codes == {200: len(answers)}, f"{dict(codes)}: {failures(answers)}"
    assert not wrong_outputs(answers, inputs, image_models / "mlp" / "1" / "model.onnx")
    assert "serving_at" in figures, f"no replacement took work:\n{stack.logs('autoscaler')}"
    assert live == FLOOR
