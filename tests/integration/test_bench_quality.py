"""A small run of ``make bench-quality`` (bench/quality.py), so its code path is tested in CI:
the full figures (20,000 calls, a 5 s horizon outlived three times) come from the make
target."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import quality

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_feedback_loop_end_to_end(tmp_path: Path) -> None:
    figures = quality.run(tmp_path, calls=1200, concurrency=8, delay_s=(0.8, 1.5),
                          horizon_s=2, switch_rows=1500, overhead_s=3.0)
    print(quality.report(figures))
    clean = figures.clean
    assert clean.failed == 0 and clean.labels["matched"] == 1200, clean.labels
    assert clean.exact, (clean.live_accuracy, clean.offline_accuracy)
    assert not figures.switch.false_alarm_before_switch
    assert figures.switch.rows_to_alarm is not None
    assert figures.switch.rows_to_alarm <= figures.switch.bound_rows
    event = figures.switch.alert_event
    assert event is not None and (event["version"], event["change"]) == ("1", "raised")
    assert figures.memory.within, figures.memory
    assert figures.overhead.stored["calls_per_s"] > 0 and figures.overhead.unstored["p99_ms"] > 0
