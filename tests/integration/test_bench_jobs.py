"""A small run of ``make bench-jobs`` (bench/jobs.py), so its code path is tested in CI: the
full figures (a 1,000,000-row job, the online comparison, p99 under load) come from the make
target."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import jobs

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_a_small_bench_run_keeps_every_row_once_and_cancels_fast(tmp_path: Path) -> None:
    with jobs.stack(tmp_path, workers=2) as running:
        killed = jobs.kill(running, rows=60_000)
        cancelled = jobs.cancel(running, rows=300_000)
        malformed = jobs.malformed(running, rows=3_000)
    assert killed.state == "succeeded" and killed.failed_rows == 0
    assert killed.ids_exactly_once and killed.outputs_equal_ort
    assert killed.chunks_issued == killed.chunks  # no chunk issued twice
    assert killed.chunks_redone_after_worker_kill <= 1
    assert cancelled.seconds_to_stopped <= 2.0 and cancelled.state == "cancelled"
    assert cancelled.rows_done < cancelled.rows_total
    assert malformed.state == "completed_with_failures" and malformed.error_rows_equal_malformed
    assert malformed.retry_state == "completed_with_failures"
    assert malformed.retry_error_rows_equal_malformed
