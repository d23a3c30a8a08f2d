"""The compute floor of ``make bench`` in small: one-thread ORT sessions in processes of their
own, run at once, their rows summed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import floor
from bench.workloads import mlp

pytestmark = pytest.mark.integration


def sweep(workload: str, threads: int, rows_s: dict[int, float]) -> floor.Sweep:
    return floor.Sweep(workload, threads, tuple(
        floor.BatchPoint(batch, runs=int(rows / batch), duration_s=1.0, p50_ms=1.0, p99_ms=1.0)
        for batch, rows in rows_s.items()))


def test_parallel_floor_sums_the_rows_of_one_thread_processes_run_at_once(
        tmp_path: Path) -> None:
    workload = mlp()
    model = workload.write(tmp_path)

    result = floor.parallel("mlp", model, workload.feeds(4), processes=2, duration_s=0.2,
                            settle_s=2.0)

    assert (result.processes, result.threads, result.label) == (2, 1, "2 processes x 1 thread")
    (best,) = result.points
    assert best.batch == 4 and best.runs >= 2 * floor.MIN_RUNS
    assert best.rows_s == pytest.approx(4 * best.runs / best.duration_s)
    assert floor.floor_of([sweep("mlp", 2, {1: 10.0}), result], "mlp") is result
    assert floor.one_thread_of([result], "mlp") is None  # not the one-session curve
