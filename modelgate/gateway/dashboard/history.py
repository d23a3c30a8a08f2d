"""A short in-memory history of each pool's gauges, one sample per second.

Counters (arrivals, completions, latency) live in Redis per second; gauges (backlog, live and
starting workers, the autoscaler's desired count) are only ever "now". The gateway's pool
monitor already reads them every refresh, so the dashboard keeps the last minutes of what it
saw instead of asking Redis again. The history starts when the gateway process starts; older
seconds are filled from the autoscaler's events (see ``gateway.dashboard.series``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    second: int  # epoch second the sample was taken in
    backlog: int
    live: int
    starting: int
    desired: int | None  # None while no autoscaler writes a desired count


class PoolHistory:
    """The latest sample per second and pool, for the last ``window_s`` seconds."""

    def __init__(self, window_s: int) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[Sample]] = {}

    def record(self, pool: str, sample: Sample) -> None:
        """Keep ``sample``; a later sample in the same second replaces the earlier one."""
        samples = self._samples.setdefault(pool, deque(maxlen=self.window_s + 1))
        if samples and samples[-1].second == sample.second:
            samples[-1] = sample
        elif not samples or samples[-1].second < sample.second:
            samples.append(sample)
        # An older second (the clock stepped back) is dropped: the series stays ordered.

    def between(self, pool: str, start: int, end: int) -> dict[int, Sample]:
        """Samples of ``pool`` from second ``start`` to ``end`` inclusive, by second."""
        return {s.second: s for s in self._samples.get(pool, ()) if start <= s.second <= end}
