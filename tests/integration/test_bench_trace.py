"""``make trace`` in small: a traced deployment's gateway and worker write each call's stage
timestamps, which join with the client's into every stage of the call, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.trace import STAGES, run_trace
from bench.workloads import mlp

pytestmark = pytest.mark.integration


def test_every_stage_of_a_call_is_timed_and_they_add_up_to_the_call(tmp_path: Path) -> None:
    table, naive = run_trace(mlp(), calls=40, warmup=10, log_dir=tmp_path, naive=False)

    stages = dict(table)
    assert list(stages) == [name for name, _, _ in STAGES] + ["end to end (median)"]
    assert naive is None
    assert all(ms >= 0 for name, ms in table), table
    assert stages["ORT (session.run)"] > 0 and stages["Redis hop"] > 0
    # The stages partition the call: their medians add up to about its median.
    total = stages.pop("end to end (median)")
    assert 0.5 * total < sum(stages.values()) < 1.5 * total, table
