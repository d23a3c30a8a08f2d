"""The worker's read loop: consumer-group reads, dynamic batching, pipelined replies.

Rows, not requests, count toward ``max_batch_size``: entries are read up to that many at once
(each carries at least one row), grouped by compatible shapes, and cut into ORT runs of at most
``max_batch_size`` rows. A request larger than that runs on its own. Replies, ``XACK`` and
``XDEL`` for a run go out in one pipelined round trip, and only after the run: an entry is never
acknowledged before its answer is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from modelgate import keys, wire
from modelgate.repository import ModelVersion
from modelgate.stats import StatsAccumulator
from worker.drift_sampler import DriftSampler
from worker.reclaim import Reclaimer
from worker.runner import Outcome, Runner, batch_key, request_rows

log = logging.getLogger("modelgate.worker")


@dataclass(slots=True)
class Entry:
    """One stream entry, decoded as far as it could be."""

    entry_id: bytes
    id: str
    reply_to: str
    deadline_ms: int
    enqueued_ms: int  # from the stream id: Redis' clock when the gateway added it
    request: wire.Request | None
    error: str = ""
    deliveries: int = 1


def parse_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    """Decode without trusting anything: a bad entry becomes an Entry with ``error`` set."""
    enqueued_ms = int(entry_id.split(b"-", 1)[0])
    try:
        correlation = fields[b"id"].decode()
        reply_to = fields[b"reply_to"].decode()
        deadline_ms = int(fields[b"deadline_ms"])
    except (KeyError, ValueError, UnicodeDecodeError):
        return Entry(entry_id, "", "", 0, enqueued_ms, None, "entry lacks id/reply_to/deadline")
    if not reply_to.startswith(keys.REPLY_PREFIX):
        # Never write to a key an entry names unless it is a reply list.
        return Entry(entry_id, "", "", 0, enqueued_ms, None,
                     f"reply_to {reply_to!r} is not a reply list")
    try:
        request = wire.decode_request(fields.get(b"payload", b""))
    except (wire.WireError, ValueError, TypeError, OverflowError, RecursionError) as e:
        # WireError is the contract; the others are a second guard: whatever an entry holds,
        # the worker answers it and goes on.
        return Entry(entry_id, correlation, reply_to, deadline_ms, enqueued_ms, None, str(e))
    return Entry(entry_id, correlation, reply_to, deadline_ms, enqueued_ms, request)


def _run_size(waiting_rows: int, max_batch_size: int, preferred: tuple[int, ...]) -> int:
    """Rows for the next run: the largest preferred size that the waiting rows fill, else as
    many as fit."""
    cap = min(waiting_rows, max_batch_size)
    fitting = [size for size in preferred if size <= cap]
    return max(fitting) if fitting else cap


def plan_runs(entries: list[Entry], max_batch_size: int,
              preferred: tuple[int, ...] = ()) -> Iterator[list[Entry]]:
    """Cut valid entries into ORT runs: compatible shapes, at most ``max_batch_size`` rows,
    at a preferred size where the waiting rows allow one."""
    if max_batch_size <= 0:
        for entry in entries:
            yield [entry]
        return
    groups: dict[tuple[Any, ...], list[Entry]] = {}
    for entry in entries:
        assert entry.request is not None
        groups.setdefault(batch_key(entry.request), []).append(entry)
    for group in groups.values():
        sizes = [request_rows(e.request) for e in group if e.request is not None]
        waiting = sum(sizes)
        target = _run_size(waiting, max_batch_size, preferred)
        run: list[Entry] = []
        rows = 0
        for entry, entry_rows in zip(group, sizes, strict=True):
            if run and rows + entry_rows > target:
                yield run
                waiting -= rows
                target = _run_size(waiting, max_batch_size, preferred)
                run, rows = [], 0
            run.append(entry)
            rows += entry_rows
        if run:
            yield run


class Consumer:
    def __init__(
        self,
        client: redis.Redis,
        model: ModelVersion,
        runner: Runner,
        consumer_name: str,
        reply_ttl_s: int,
        reclaimer: Reclaimer | None = None,
        sampler: DriftSampler | None = None,
    ) -> None:
        self.client = client
        self.reclaimer = reclaimer
        self.sampler = sampler
        self.model = model
        self.runner = runner
        self.consumer_name = consumer_name
        self.reply_ttl_ms = reply_ttl_s * 1000
        self.stream = keys.requests_stream(model.pool)
        self.read_count = max(1, model.max_batch_size)
        self.max_queue_delay_ms = model.config.max_queue_delay_ms
        self.processed = 0
        self.busy_s = 0.0
        self.stats = StatsAccumulator(model.pool)

    def ensure_group(self) -> None:
        """Create the stream and its group from id 0, so nothing enqueued earlier is missed."""
        try:
            self.client.xgroup_create(self.stream, keys.WORKER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _read(self, count: int, block_ms: int | None) -> list[Entry]:
        response = self.client.xreadgroup(
            keys.WORKER_GROUP, self.consumer_name, {self.stream: ">"}, count=count, block=block_ms
        )
        if not response:
            return []
        return [parse_entry(entry_id, fields) for entry_id, fields in response[0][1]]

    def _gather(self, block_ms: int | None) -> list[Entry]:
        """Entries for one step; ``block_ms=None`` returns at once when the stream is empty."""
        entries = self._read(self.read_count, block_ms)
        if not entries or self.max_queue_delay_ms <= 0:
            return entries
        # Triton's semantics: hold a partial batch up to max_queue_delay_ms for more rows.
        until = time.monotonic() + self.max_queue_delay_ms / 1000.0
        while len(entries) < self.read_count:
            remaining_ms = int((until - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            more = self._read(self.read_count - len(entries), remaining_ms)
            if not more:
                break
            entries.extend(more)
        return entries

    def step(self, block_ms: int) -> int:
        """Read what is there (waiting up to ``block_ms``), answer all of it; entries handled.

        Abandoned entries of dead consumers are claimed first; they run one at a time and
        those delivered too often are parked in the dead-letter stream instead.
        """
        started = time.perf_counter()
        reclaimed: list[Entry] = []
        if self.reclaimer is not None and self.reclaimer.due(time.monotonic()):
            claimed = self.reclaimer.claim()
            if claimed.dead:
                self._park(claimed.dead)
            for entry_id, fields, deliveries in claimed.retry:
                entry = parse_entry(entry_id, fields)
                entry.deliveries = deliveries
                reclaimed.append(entry)
        # With reclaimed entries in hand, do not wait for more: None, since BLOCK 0 would make
        # Redis wait forever and the reclaimed entries would go unanswered until traffic came.
        entries = reclaimed + self._gather(None if reclaimed else block_ms)
        if not entries:
            return 0
        now_ms = int(time.time() * 1000)
        runnable: list[Entry] = []
        retried: list[Entry] = []
        settled: list[tuple[Entry, Outcome]] = []
        for entry in entries:
            if entry.request is None:
                log.warning("rejected entry %s on %s: %s", entry.entry_id, self.stream, entry.error)
                settled.append((entry, Outcome(wire.ReplyStatus.WIRE, {}, entry.error)))
            elif entry.deadline_ms <= now_ms:
                # The gateway has already answered 504; computing it would waste the worker.
                settled.append((entry, Outcome(wire.ReplyStatus.DEADLINE, {},
                                               "deadline passed before a worker took it")))
            elif entry.deliveries > 1:
                retried.append(entry)
            else:
                runnable.append(entry)
        if settled:
            self._answer(settled, now_ms)
            self.stats.add(completed=len(settled), errors=len(settled))
        runs = [*plan_runs(retried, 0),
                *plan_runs(runnable, self.model.max_batch_size,
                           self.model.config.preferred_batch_sizes)]
        for run in runs:
            run_started = time.perf_counter()
            outcomes = self.runner.run_batch([e.request for e in run if e.request is not None])
            self.busy_s += time.perf_counter() - run_started
            self._answer(list(zip(run, outcomes, strict=True)), now_ms)
            self._count(run, outcomes, now_ms)
            if self.sampler is not None:
                self._sample(run, outcomes)
        self.processed += len(entries)
        if self.reclaimer is not None:
            self.reclaimer.timeout.observe((time.perf_counter() - started) * 1000.0)
        return len(entries)

    def _sample(self, run: list[Entry], outcomes: list[Outcome]) -> None:
        """Drift sampling, after the replies are out: it never delays an answer."""
        assert self.sampler is not None
        for entry, outcome in zip(run, outcomes, strict=True):
            if outcome.status == wire.ReplyStatus.OK and entry.request is not None:
                self.sampler.observe({n: t.data for n, t in entry.request.inputs.items()},
                                     outcome.outputs)

    def _count(self, run: list[Entry], outcomes: list[Outcome], picked_ms: int) -> None:
        """Fold one answered run into the pool's per-second counters."""
        leaders = [o for o in outcomes if o.leader]
        self.stats.add_run(
            requests=len(run),
            rows=sum(o.batch_size for o in leaders),
            compute_ms=sum(o.compute_ms for o in leaders),
            queue_ms=[max(0.0, float(picked_ms - e.enqueued_ms)) for e in run],
            errors=sum(1 for o in outcomes if o.status != wire.ReplyStatus.OK),
        )

    def _park(self, dead: list[tuple[bytes, dict[bytes, bytes], int]]) -> None:
        """Move poison pills to the dead-letter stream and tell their callers, in one trip."""
        assert self.reclaimer is not None
        pipe = self.client.pipeline(transaction=False)
        settled = []
        for entry_id, fields, deliveries in dead:
            self.reclaimer.park(pipe, entry_id, fields, deliveries)
            entry = parse_entry(entry_id, fields)
            settled.append((entry, Outcome(
                wire.ReplyStatus.DEAD_LETTER, {},
                f"the request was delivered {deliveries} times without an answer (a worker died "
                f"on each attempt); it is parked in {self.reclaimer.dead_stream} for inspection "
                "and will not be retried")))
        self._answer(settled, int(time.time() * 1000), pipe)

    def _answer(self, settled: list[tuple[Entry, Outcome]], picked_ms: int,
                pipe: redis.client.Pipeline | None = None) -> None:
        pipe = pipe if pipe is not None else self.client.pipeline(transaction=False)
        by_gateway: dict[str, list[bytes]] = {}
        for entry, outcome in settled:
            if not entry.reply_to:
                continue
            reply = wire.Reply(
                id=entry.id,
                status=outcome.status,
                outputs=outcome.outputs,
                error=outcome.error,
                queue_ms=max(0.0, float(picked_ms - entry.enqueued_ms)),
                compute_ms=outcome.compute_ms,
                batch_size=outcome.batch_size,
                batch_leader=outcome.leader,
            )
            by_gateway.setdefault(entry.reply_to, []).append(wire.encode_reply(reply))
        for reply_to, replies in by_gateway.items():
            pipe.rpush(reply_to, *replies)
            pipe.pexpire(reply_to, self.reply_ttl_ms)
        entry_ids = [entry.entry_id for entry, _ in settled]
        pipe.xack(self.stream, keys.WORKER_GROUP, *entry_ids)
        pipe.xdel(self.stream, *entry_ids)
        pipe.execute()
