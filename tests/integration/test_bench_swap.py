"""A small run of ``make bench-swap`` (bench/swap.py), so its code path is tested in CI: the
full figures (60 s at concurrency 32, 200 cycles) come from the make target."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import swap

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_a_swap_under_load_loses_no_call_and_every_answer_is_its_versions(
        tmp_path: Path) -> None:
    figures = swap.swap(tmp_path, concurrency=8, pause_s=0.02, duration_s=15.0)
    assert figures.failed == 0, figures.failures
    assert figures.mismatched == 0
    assert figures.by_version.get("1", 0) > 0 and figures.by_version.get("2", 0) > 0
    assert figures.first_v2_answer_after_load_call_s is not None
    assert figures.first_v2_answer_after_load_call_s <= 15.0


@pytest.mark.timeout(240)
def test_load_and_unload_cycles_leave_no_worker_and_no_pool_key(tmp_path: Path) -> None:
    figures = swap.cycles(tmp_path, count=3)
    assert figures.failed_calls == []
    assert figures.workers_left == 0
    assert figures.pool_keys_left == []


@pytest.mark.timeout(240)
def test_a_version_dropped_in_poll_mode_serves_with_no_failed_call(tmp_path: Path) -> None:
    figures = swap.poll(tmp_path, poll_s=1.0, concurrency=4, pause_s=0.02)
    assert figures.failed == 0 and figures.mismatched == 0
    assert figures.serving_after_drop_s is not None and figures.serving_after_drop_s < 20
