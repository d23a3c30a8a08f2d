"""Taking over the entries of workers that died, and parking poison pills.

An entry is acknowledged only after its answer is written, so an entry read by a worker that
then died stays pending in the group under that worker's consumer name. Once a reclaim round
(every second, at the start of a step), a live worker lists the group's consumers and takes
over (``XCLAIM``) the entries of those that are dead: no heartbeat hash (it expires
``heartbeats.WORKER_TTL_S`` after the last beat, and goes at once when a worker deregisters)
and no recent score in the pool's worker set. A live worker's entries are never taken, however
long its step runs: a heavy model's large batch is not run twice. (A worker whose process
lives on but whose heartbeat thread died counts as dead, and its entries go to others; it
still answers what it holds, and the second answer is dropped.) Dead consumers that hold
nothing are removed from the group (``pools.FORGET_CONSUMER``), so it does not grow with every
restart.

**What counts as a delivery.** An entry's deliveries are its first read plus each takeover from
a dead worker (``XCLAIM`` counts them in ``times_delivered``), plus, for a call split out of a
bundle, the bundle's deliveries before the split (its ``attempt`` field). A live worker's hold
never counts, however long; nor does this worker taking back an entry delivered to itself that
it never saw (a read whose reply the connection lost): that claim keeps the count
(``RETRYCOUNT``). An entry delivered more than ``max_deliveries`` times -- that many workers
died holding it -- is moved to the pool's dead-letter stream and its caller told, so one input
that crashes the runtime cannot take down every worker in turn. A taken-over bundle of several
requests is split into one entry per request, and taken-over entries run one at a time: if
one of them crashes the process again, it takes no neighbour with it.

The same rules cover a pool's job stream (its own group): a second Reclaimer runs on it for the
job lane (``modelgate.worker.jobs``), which splits a taken-over chunk into rows instead.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from modelgate.core.store import heartbeats, pools

log = logging.getLogger("modelgate.worker")

RECLAIM_COUNT = 64  # entries taken over per round, at most

Taken = tuple[bytes, dict[bytes, bytes], int]  # (entry id, fields, deliveries)


@dataclass(frozen=True, slots=True)
class Claimed:
    """Entries this worker now owns: ``retry`` to run again, ``dead`` to park."""

    retry: list[Taken]
    dead: list[Taken]


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class Reclaimer:
    def __init__(self, client: redis.Redis, pool: str, consumer_name: str,
                 claim_timeout_ms: int, max_deliveries: int, interval_s: float,
                 stream: str | None = None, group: str = pools.WORKER_GROUP) -> None:
        self.client = client
        self.pool = pool
        # The online request stream, or (``stream``, ``group``) the pool's job stream.
        self.stream = stream or pools.requests_stream(pool)
        self.group = group
        self.dead_stream = pools.dead_letters(pool)
        self.consumer_name = consumer_name
        # A dead worker's entry is taken over once idle this long (and its heartbeat gone):
        # two live workers never both take it, since a claim resets the idle time.
        self.claim_timeout_ms = claim_timeout_ms
        self.max_deliveries = max_deliveries
        self.interval_s = interval_s
        self._next_at = 0.0
        self.reclaimed = 0
        self.dead_lettered = 0

    def due(self, now: float) -> bool:
        return now >= self._next_at

    def claim(self, now: float | None = None) -> Claimed:
        """One round: take over dead workers' entries and any of this worker's own it never
        saw, forget dead consumers that hold nothing, trim old dead letters."""
        self._next_at = (time.monotonic() if now is None else now) + self.interval_s
        pipe = self.client.pipeline(transaction=False)
        pipe.xinfo_consumers(self.stream, self.group)
        pipe.eval(pools.DEAD_LETTER_TRIM, 1, self.dead_stream, pools.DEAD_LETTER_MAX_AGE_MS)
        try:
            consumers = pipe.execute()[0]
        except redis.ResponseError as e:
            if "no such key" in str(e):  # the stream is gone: the next read recreates it
                raise redis.ResponseError(f"NOGROUP {e}") from e
            raise
        others = [c for c in consumers if _text(c["name"]) != self.consumer_name]
        own = sum(int(c["pending"]) for c in consumers
                  if _text(c["name"]) == self.consumer_name)
        taken: list[Taken] = []
        if own:
            # At the start of a step every entry this worker saw is answered (or its answer is
            # held, and then no step starts): pending ones are reads it never saw.
            taken += self._take_back()
        dead = self._dead([_text(c["name"]) for c in others])
        for consumer in others:
            name = _text(consumer["name"])
            if name not in dead:
                continue
            if int(consumer["pending"]) and len(taken) < RECLAIM_COUNT:
                taken += self._take_over(name, RECLAIM_COUNT - len(taken))
            elif not int(consumer["pending"]):
                self._forget(name)
        retry = [t for t in taken if t[2] <= self.max_deliveries]
        parked = [t for t in taken if t[2] > self.max_deliveries]
        self.reclaimed += len(retry)
        if taken:
            log.warning("reclaimed %d abandoned entries on %s (%d past max deliveries)",
                        len(taken), self.stream, len(parked))
        return Claimed(retry, parked)

    def _dead(self, names: Sequence[str]) -> set[str]:
        """The consumers among ``names`` with no live heartbeat: neither their hash (which
        outlives a full Redis: its PEXPIRE needs no memory) nor a recent score in the worker
        set (which outlives an evicted hash)."""
        if not names:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(heartbeats.heartbeat(name))
            pipe.zscore(pools.worker_set(self.pool), name)
        results = pipe.execute()
        oldest_live = time.time() - heartbeats.WORKER_TTL_S
        return {name for name, exists, score in zip(names, results[::2], results[1::2],
                                                   strict=True)
                if not exists and (score is None or float(score) < oldest_live)}

    def _take_over(self, dead: str, count: int) -> list[Taken]:
        """A dead consumer's entries, idle past the claim timeout; each claim is a delivery."""
        pending = self.client.xpending_range(self.stream, self.group, "-", "+", count,
                                             consumername=dead)
        due = {p["message_id"]: int(p["times_delivered"]) for p in pending
               if int(p["time_since_delivered"]) >= self.claim_timeout_ms}
        if not due:
            return []
        claimed = self.client.xclaim(self.stream, self.group, self.consumer_name,
                                     self.claim_timeout_ms, list(due))
        return self._taken(claimed, {entry_id: n + 1 for entry_id, n in due.items()})

    def _take_back(self) -> list[Taken]:
        """This worker's own pending entries, their delivery counts unchanged."""
        pending = self.client.xpending_range(self.stream, self.group, "-", "+",
                                             RECLAIM_COUNT, consumername=self.consumer_name)
        by_count: defaultdict[int, list[bytes]] = defaultdict(list)
        for p in pending:
            by_count[int(p["times_delivered"])].append(p["message_id"])
        taken: list[Taken] = []
        for count, ids in by_count.items():
            claimed = self.client.xclaim(self.stream, self.group, self.consumer_name,
                                         0, ids, retrycount=count)
            taken += self._taken(claimed, dict.fromkeys(ids, count))
        return taken

    def _taken(self, claimed: list[Any], counts: dict[bytes, int]) -> list[Taken]:
        """Claimed entries with their deliveries (a split call's include its bundle's); ids
        claimed without fields were deleted (Redis 6.2 keeps them pending): acknowledged."""
        taken = [(entry_id, fields, counts[entry_id] + pools.attempt_of(fields) - 1)
                 for entry_id, fields in claimed if entry_id is not None and fields]
        gone = set(counts) - {entry_id for entry_id, _, _ in taken}
        if gone:
            pipe = self.client.pipeline(transaction=False)
            for entry_id in gone:
                pipe.xrange(self.stream, entry_id, entry_id)
            deleted = [entry_id for entry_id, found in zip(gone, pipe.execute(), strict=True)
                       if not found]
            if deleted:
                self.client.xack(self.stream, self.group, *deleted)
        return taken

    def _forget(self, name: str) -> None:
        self.client.eval(pools.FORGET_CONSUMER, 3, self.stream, heartbeats.heartbeat(name),
                         pools.worker_set(self.pool), self.group, name,
                         time.time() - heartbeats.WORKER_TTL_S)

    def park(self, entry_id: bytes, fields: dict[bytes, bytes],
             deliveries: int) -> pools.DeadLetter:
        """The letter that parks one entry (written with its caller's reply, before its
        acknowledgement: ``pools.ANSWER``)."""
        self.dead_lettered += 1
        return pools.DeadLetter(fields, entry_id, deliveries, int(time.time() * 1000))
