"""Writing a worker's answers and acknowledging their entries: both, or neither.

Each run's answers (its replies, the dead letters of poison pills) go out as one
``pools.ANSWER`` script, which acknowledges the run's entries only once every answer is written.
When Redis refuses the writes (at ``maxmemory`` under ``noeviction``; a read-only replica) or
the round trip fails, the answers are held here, in order, with their entries left pending:
:meth:`Answers.flush` sends them again, first thing in the next step, and until they are
written the worker reads nothing new (beyond the one read that learnt of the refusal).
Nothing is lost and nothing is acknowledged without its answer; a caller whose deadline
passes meanwhile has its 504 and its late reply is dropped.

Sending held answers again is safe: a reply that did arrive is dropped by its gateway as a
duplicate, and an entry already acknowledged is not subtracted from the queued count twice.

**Sent ahead.** A run's answer is written without waiting for Redis to confirm it: the worker
goes on to its next run while Redis writes the answer, and reads the confirmation before the
connection's next round trip (:meth:`Answers.settle`, called by every round trip). Waiting for
each confirmation took a quarter of a worker's time on a model of ~1 ms a row; the worker
was idle meanwhile. An answer Redis refused, or whose confirmation was lost with the
connection, is held and sent again as above: its entries stay pending until it is confirmed.
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
    """``round_trip(commands)``: sends and returns their replies (after :meth:`settle`);
    ``send_ahead(commands)``: sends without reading; ``read_ahead(n)``: the next ``n``
    replies on the connection, in order. Without the last two, each answer waits for Redis."""

    def __init__(self, pool: str, reply_ttl_ms: int,
                 round_trip: Callable[[list[Command]], list[Any]],
                 send_ahead: Callable[[list[Command]], None] | None = None,
                 read_ahead: Callable[[int], list[Any]] | None = None) -> None:
        self.pool = pool
        self.reply_ttl_ms = reply_ttl_ms
        self.round_trip = round_trip
        self.send_ahead = send_ahead
        self.read_ahead = read_ahead
        self._held: list[_Held] = []
        self._in_flight: list[_Held] = []  # sent ahead, confirmation not read yet
        self.error: redis.RedisError | None = None  # why answers are held

    @property
    def held(self) -> int:
        """Answers waiting to be written (one per run)."""
        return len(self._held)

    @property
    def in_flight(self) -> int:
        """Answers sent ahead whose confirmation is not read yet."""
        return len(self._in_flight)

    @property
    def held_ids(self) -> set[bytes]:
        """Entries whose answers are held or unconfirmed: pending, and answered already."""
        return {entry_id for held in (*self._in_flight, *self._held)
                for entry_id in held.entry_ids}

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
        if self.send_ahead is not None:
            try:
                self.send_ahead([held.command])
            except (redis.ConnectionError, redis.TimeoutError) as e:
                self.error = e
                self._held.append(held)
                return
            self._in_flight.append(held)
            return
        self._held.append(held)
        self.flush(raise_refusal=False)

    def settle(self) -> bool:
        """Read the confirmations of the answers sent ahead; those refused, or unconfirmed
        because the connection failed, are held (before any held later), never raised.
        False when the connection failed (what was sent behind them is lost too)."""
        if not self._in_flight:
            return True
        in_flight, self._in_flight = self._in_flight, []
        assert self.read_ahead is not None
        try:
            results = self.read_ahead(len(in_flight))
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self.error = e
            self._held[:0] = in_flight
            return False
        self._held[:0] = self._unwritten(in_flight, results)
        if not self._held:
            self.error = None
        return True

    def _unwritten(self, sent: list[_Held], results: list[Any]) -> list[_Held]:
        """Of ``sent``, those whose result says Redis did not write them (``error`` set)."""
        still: list[_Held] = []
        for held, result in zip(sent, results, strict=True):
            if isinstance(result, redis.ResponseError):  # the script did not run (BUSY, ...)
                self.error = refusal(str(result))
                still.append(held)
                continue
            answered = pools.Answered.parse(result)
            if not answered.written:
                self.error = refusal(answered.error)
                still.append(held)
            elif answered.dropped_replies:
                log.error("dropped %d replies: their reply list holds another type of "
                          "value; their callers get 504", answered.dropped_replies)
        return still

    def flush(self, raise_refusal: bool = True) -> None:
        """Send every held answer in one round trip; those still refused stay held, and with
        ``raise_refusal`` the refusal is raised (OutOfMemoryError, ConnectionError, ...)."""
        self.settle()
        if not self._held:
            return
        try:
            results = self.round_trip([held.command for held in self._held])
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self.error = e
        else:
            self._held = self._unwritten(self._held, results)
            if not self._held:
                self.error = None
        if self._held and raise_refusal and self.error is not None:
            raise self.error
