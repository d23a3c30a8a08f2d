"""Writing a worker's answers and acknowledging their entries: both, or neither.

Each run's answers (its replies, the dead letters of poison pills) go out as one
``pools.ANSWER`` script, which acknowledges the run's entries only once every answer is written.
When Redis refuses the writes (at ``maxmemory`` under ``noeviction``; a read-only replica) or
the round trip fails, the answers are held here, in order, with their entries left pending:
:meth:`Answers.flush` sends them again, first thing in the next step, and until they are
written the worker reads nothing new. Nothing is lost and nothing is acknowledged without its
answer; a caller whose deadline passes meanwhile has its 504 and its late reply is dropped.

Sending held answers again is safe: a reply that did arrive is dropped by its gateway as a
duplicate, and an entry already acknowledged is not subtracted from the queued count twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from modelgate.core.redis_checks import refusal
from modelgate.core.store import pools

log = logging.getLogger("modelgate.worker")

Command = tuple[bytes | str | int, ...]


@dataclass(frozen=True, slots=True)
class _Held:
    command: Command
    entry_ids: tuple[bytes, ...]


class Answers:
    def __init__(self, pool: str, reply_ttl_ms: int,
                 round_trip: Callable[[list[Command]], list[Any]]) -> None:
        self.pool = pool
        self.reply_ttl_ms = reply_ttl_ms
        self.round_trip = round_trip
        self._held: list[_Held] = []
        self.error: redis.RedisError | None = None  # why answers are held

    @property
    def held(self) -> int:
        """Answers waiting to be written (one per run)."""
        return len(self._held)

    @property
    def held_ids(self) -> set[bytes]:
        """Entries whose answers are held: pending, and answered already."""
        return {entry_id for held in self._held for entry_id in held.entry_ids}

    def send(self, entries: Sequence[tuple[bytes, int]],
             replies_by_list: Mapping[str, Sequence[bytes]],
             letters: Sequence[pools.DeadLetter] = ()) -> None:
        """Write the answers and acknowledge ``entries`` (entry id, requests in it), or hold
        them when Redis refuses or is unreachable; never raises for either."""
        held = _Held(pools.answer_command(self.pool, entries, replies_by_list,
                                          self.reply_ttl_ms, letters),
                     tuple(entry_id for entry_id, _ in entries))
        if self._held:  # refused a moment ago: keep the order, do not hammer Redis
            self._held.append(held)
            return
        self._held.append(held)
        self.flush(raise_refusal=False)

    def flush(self, raise_refusal: bool = True) -> None:
        """Send every held answer in one round trip; those still refused stay held, and with
        ``raise_refusal`` the refusal is raised (OutOfMemoryError, ConnectionError, ...)."""
        if not self._held:
            return
        try:
            results = self.round_trip([held.command for held in self._held])
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self.error = e
        else:
            still: list[_Held] = []
            for held, result in zip(self._held, results, strict=True):
                answered = pools.Answered.parse(result)
                if not answered.written:
                    self.error = refusal(answered.error)
                    still.append(held)
                elif answered.dropped_replies:
                    log.error("dropped %d replies: their reply list holds another type of "
                              "value; their callers get 504", answered.dropped_replies)
            self._held = still
            if not still:
                self.error = None
        if self._held and raise_refusal and self.error is not None:
            raise self.error
