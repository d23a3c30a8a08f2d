"""Redis's clock as one process sees it.

Deadlines and queue waits are measured against the stream ids Redis gives entries (its clock
when it added them), never against another host's clock: a worker whose own clock runs ahead
would otherwise skip every call as expired. Each process keeps the offset between its clock
and Redis's, measured with ``TIME`` over a round trip (half of which is the error bound).
"""

from __future__ import annotations

import time
from collections.abc import Sequence


class RedisClock:
    def __init__(self) -> None:
        self.offset_s = 0.0  # Redis's clock minus ours
        self.error_s: float | None = None  # half the round trip of the last measurement

    def observe(self, sent_s: float, received_s: float, redis_time: Sequence[int | bytes]) -> None:
        """Fold in one ``TIME`` answer (seconds, microseconds) read between ``sent_s`` and
        ``received_s`` (our clock). A measurement over a slower round trip than the best seen
        recently is less exact; it is kept anyway, since clocks do step."""
        seconds, micros = (int(part) for part in redis_time[:2])
        redis_s = seconds + micros / 1e6
        self.offset_s = redis_s - (sent_s + received_s) / 2
        self.error_s = (received_s - sent_s) / 2

    def now_ms(self) -> float:
        """Redis's time now, in epoch milliseconds."""
        return (time.time() + self.offset_s) * 1000.0
