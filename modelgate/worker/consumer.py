"""The worker's read loop: consumer-group reads, dynamic batching, atomic answers.

An entry holds a bundle of requests (modelgate.core.wire). Rows, not entries, count toward the
run size cap (the pool's tuned ``max_batch_size``, ``modelgate.core.batching``): entries are read
up to that many at once (each carries at least one row), grouped by compatible shapes, and cut
into ORT runs of at most that many rows; an entry is never cut, and one larger than that runs
on its own. A run's replies (one per bundle and
gateway) and the acknowledgement of its entries (``XACK``, ``XDEL``, the pool's queued-requests
count) are one script, after the run, that acknowledges only what it answered
(``modelgate.worker.answers``): answers Redis refuses are held and sent again, and the worker
reads nothing new until they are written. Then the answers a gateway asked this worker to keep
for feedback (the entry's ``store`` field) are encoded and handed to its storing thread
(``modelgate.worker.stored_answers``): the replies, already out, say ``stored``.

Batch jobs' chunks come second (``modelgate.worker.jobs``): a step that finds no online call
waiting (a read that does not block) lets the job lane take one chunk, and blocks on the online
stream only after that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from modelgate.core import arena, wire
from modelgate.core.batching import BatchPlan
from modelgate.core.clock import RedisClock
from modelgate.core.repository import ModelVersion
from modelgate.core.resp import packed_all
from modelgate.core.stats import StatsAccumulator, failure_field
from modelgate.core.store import pools, replies
from modelgate.core.trace import Tracer, now_ns
from modelgate.worker.answers import Answers, Command
from modelgate.worker.drift_sampler import DriftSampler
from modelgate.worker.jobs import JobLane
from modelgate.worker.reclaim import Reclaimer
from modelgate.worker.runner import Outcome, Runner
from modelgate.worker.stored_answers import AnswerStore

log = logging.getLogger("modelgate.worker")


@dataclass(slots=True)
class Entry:
    """One stream entry, decoded as far as it could be."""

    entry_id: bytes
    ids: tuple[str, ...]  # empty when the entry names none: nobody can be answered
    reply_to: str
    deadline_ms: int  # Redis's clock: when it added the entry plus the entry's budget
    enqueued_ms: int  # from the stream id: Redis's clock when the gateway added it
    bundle: wire.Bundle | None
    error: str = ""
    deliveries: int = 1  # including those before a split (the entry's ``attempt``)
    budget_ms: int = 0
    status: wire.ReplyStatus = wire.ReplyStatus.WIRE  # the answer when ``bundle`` is None
    store: tuple[str, ...] = ()  # what each id's answer is stored under ("": not stored)


# An entry, the bundle (or part of it) answered, and its outcome; no bundle: undecodable entry.
Settled = tuple[Entry, wire.Bundle | None, Outcome]


# The gateways' payload arenas this worker has read from (modelgate.core.arena).
ARENAS = arena.ArenaReader()


def parse_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    """Decode without trusting anything: a bad entry becomes an Entry with ``error`` set
    (and ``status`` saying why: ``UNREACHABLE`` when its tensors are in a gateway's shared
    memory that this worker cannot read)."""
    enqueued_ms = pools.entry_time_ms(entry_id)
    try:
        fields_of = pools.RequestEntry.parse(fields)
    except pools.EntryError as e:
        return Entry(entry_id, (), "", 0, enqueued_ms, None, str(e))
    ids, reply_to, deliveries = fields_of.ids, fields_of.reply_to, fields_of.attempt
    deadline_ms = enqueued_ms + fields_of.budget_ms
    if not replies.is_reply_list(reply_to):
        # Never write to a key an entry names unless it is a reply list.
        return Entry(entry_id, (), "", 0, enqueued_ms, None,
                     f"reply_to {reply_to!r} is not a reply list")
    try:
        if fields_of.arena:
            bundle = ARENAS.decode(fields_of.arena,
                                   lambda payload: wire.decode_bundle(ids, payload))
        else:
            bundle = wire.decode_bundle(ids, fields_of.payload)
    except arena.ArenaUnreachable as e:
        return Entry(entry_id, ids, reply_to, deadline_ms, enqueued_ms, None, str(e),
                     deliveries, fields_of.budget_ms, wire.ReplyStatus.UNREACHABLE)
    except (wire.WireError, ValueError, TypeError, OverflowError, RecursionError) as e:
        # WireError is the contract; the others are a second guard: whatever an entry holds,
        # the worker answers it and goes on.
        return Entry(entry_id, ids, reply_to, deadline_ms, enqueued_ms, None, str(e),
                     deliveries, fields_of.budget_ms)
    return Entry(entry_id, ids, reply_to, deadline_ms, enqueued_ms, bundle, "", deliveries,
                 fields_of.budget_ms, store=fields_of.store)


def self_contained(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """An entry's fields with its payload in them rather than in its gateway's arena: a dead
    letter is kept for inspection long after the gateway gave the region back. As they are
    when the arena no longer holds it."""
    ref = fields.get(b"arena")
    if not ref:
        return fields
    try:
        payload = ARENAS.decode(ref, bytes)
    except arena.PayloadUnavailable:
        return fields
    kept = {name: value for name, value in fields.items() if name != b"arena"}
    kept[b"payload"] = payload
    return kept


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
    if max_batch_size <= 0 or len(entries) == 1:
        for entry in entries:
            yield [entry]
        return
    groups: dict[tuple[Any, ...], list[Entry]] = {}
    for entry in entries:
        assert entry.bundle is not None
        groups.setdefault(wire.batch_key(entry.bundle.request), []).append(entry)
    for group in groups.values():
        sizes = [e.bundle.request.rows for e in group if e.bundle is not None]
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
        clock: RedisClock | None = None,
        plan: BatchPlan | None = None,
        tracer: Tracer | None = None,
        answer_store: AnswerStore | None = None,
    ) -> None:
        self.client = client
        # Answers a gateway asked this worker to store for feedback (``stored_answers.py``);
        # without one, the replies say not stored and the gateway stores them.
        self.answer_store = answer_store
        # Stage timestamps of every entry, only with --trace-dir (modelgate.core.trace).
        self.tracer = tracer
        # Deadlines and queue waits are in Redis's clock (the stream ids'), not this host's.
        self.clock = clock or RedisClock()
        self.reclaimer = reclaimer
        self.sampler = sampler
        self.model = model
        self.runner = runner
        self.consumer_name = consumer_name
        self.stream = pools.requests_stream(model.pool)
        self.answers = Answers(model.pool, reply_ttl_s * 1000, self._round_trip,
                               self._send_ahead, self._read_ahead)
        # The stream is read and answered on one connection held for the worker's life:
        # taking it from the pool on every call costs a health-check syscall and a pid check.
        self._connection: redis.connection.AbstractConnection | None = None
        # The pool's tuned run sizes (config.yaml's when it sets them), else the version's.
        self.max_batch_size = plan.max_batch_size if plan is not None else model.max_batch_size
        self.preferred_batch_sizes = (plan.preferred_batch_sizes if plan is not None
                                      else model.config.preferred_batch_sizes)
        self.read_count = max(1, self.max_batch_size)
        self.max_queue_delay_ms = model.config.max_queue_delay_ms
        self.processed = 0
        self.busy_s = 0.0
        self.stats = StatsAccumulator(model.pool)
        # Batch jobs' chunks, taken only when no online call waits (``worker/jobs.py``).
        self.jobs: JobLane | None = None

    def ensure_group(self) -> None:
        """Create the stream and its group from id 0, so nothing enqueued earlier is missed."""
        try:
            self.client.xgroup_create(self.stream, pools.WORKER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _read(self, count: int, block_ms: int | None) -> list[Entry]:
        command: list[str | int] = ["XREADGROUP", "GROUP", pools.WORKER_GROUP, self.consumer_name,
                                    "COUNT", count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        response = self._round_trip([(*command, "STREAMS", self.stream, ">")])[0]
        if not response:
            return []
        # RESP3 answers {stream: entries}, RESP2 [[stream, entries]].
        streams = response.values() if isinstance(response, dict) else [s[1] for s in response]
        return [parse_entry(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                for entries in streams for entry_id, flat in entries]

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

        Answers held from an earlier step go first: while Redis still refuses them, this raises
        the refusal (``redis.OutOfMemoryError``, a connection error) and reads nothing. Answers
        go ahead unconfirmed (``worker/answers.py``): a refusal is learnt at the next round
        trip (the next step's read, sent behind them), and the step that learns it runs to its
        end and then raises it. Entries of dead workers are taken over next
        (``modelgate.worker.reclaim``). A bundle taken over is split back into one entry per
        request (so a poison pill takes no neighbour down with it on its next delivery); a
        single request runs alone, and those delivered too often are parked in the
        dead-letter stream instead.
        """
        if self.answers.held:
            self.answers.flush()
        handled = self._step(block_ms)
        if self.answers.held and self.answers.error is not None:
            raise self.answers.error
        return handled

    def _step(self, block_ms: int) -> int:
        reclaimed: list[Entry] = []
        if self.reclaimer is not None and self.reclaimer.due(time.monotonic()):
            claimed = self.reclaimer.claim()
            if claimed.dead:
                self._park(claimed.dead)
            to_split: list[Entry] = []
            for entry_id, fields, deliveries in claimed.retry:
                entry = parse_entry(entry_id, fields)
                entry.deliveries = deliveries
                # Taken over from a dead worker (not merely taken back): one call per entry.
                split = deliveries > 1 and entry.bundle is not None and len(entry.ids) > 1
                (to_split if split else reclaimed).append(entry)
            if to_split:
                self._split(to_split)
        # With reclaimed entries in hand, do not wait for more: None, since BLOCK 0 would make
        # Redis wait forever and the reclaimed entries would go unanswered until traffic came.
        if reclaimed or self.jobs is None:
            entries = reclaimed + self._gather(None if reclaimed else block_ms)
        else:
            entries = []
            if self.jobs.due():
                # Online calls first: a job chunk only when none waits, then a short block.
                entries = self._gather(None)
                if not entries and self.jobs.step():
                    return 1
            if not entries:
                entries = self._gather(self.jobs.block_ms(block_ms))
        if not entries:
            return 0
        if self.jobs is not None:
            self.jobs.saw_online()
        read_ns = now_ns() if self.tracer is not None else 0
        now_ms = int(self.clock.now_ms())
        runnable: list[Entry] = []
        retried: list[Entry] = []
        settled: list[Settled] = []
        for entry in entries:
            if entry.bundle is None:
                log.warning("rejected entry %s on %s: %s", entry.entry_id, self.stream, entry.error)
                settled.append((entry, None, Outcome(entry.status, {}, entry.error)))
            elif entry.deadline_ms <= now_ms:
                # The gateway has already answered 504; computing it would waste the worker.
                settled.append((entry, entry.bundle, Outcome(
                    wire.ReplyStatus.DEADLINE, {}, "deadline passed before a worker took it")))
            elif entry.deliveries > 1:
                retried.append(entry)
            else:
                runnable.append(entry)
        if settled:
            self._answer(settled, now_ms)
            failed: dict[str, float] = {}
            for entry, _, outcome in settled:
                field = failure_field(outcome.status)
                failed[field] = failed.get(field, 0) + len(entry.ids)
            self.stats.add(completed=sum(failed.values()), **failed)
        runs = [*plan_runs(retried, 0),
                *plan_runs(runnable, self.max_batch_size, self.preferred_batch_sizes)]
        for run in runs:
            run_ns = now_ns() if self.tracer is not None else 0
            run_started = time.perf_counter()
            answered = self.runner.run_batch([e.bundle for e in run if e.bundle is not None])
            self.busy_s += time.perf_counter() - run_started
            pairs: list[Settled] = [(entry, bundle, outcome)
                     for entry, parts in zip(run, answered, strict=True)
                     for bundle, outcome in parts]
            ran_ns = now_ns() if self.tracer is not None else 0
            self._answer(pairs, now_ms)
            if self.tracer is not None:
                self._trace(pairs, read_ns, run_ns, ran_ns)
            self._count(pairs, now_ms)
            if self.sampler is not None:
                self._sample(pairs)
        self.processed += sum(len(entry.ids) for entry in entries)
        return len(entries)

    def send(self, commands: list[Command]) -> list[Any]:
        """Commands in one write on the consumer's connection (the job lane shares it)."""
        return self._round_trip(commands)
    def _trace(self, pairs: list[Settled], read_ns: int, run_ns: int, ran_ns: int) -> None:
        """One line per entry of a run: when it was read, run and answered."""
        assert self.tracer is not None
        answered_ns = now_ns()
        for entry, _, outcome in pairs:
            self.tracer.write({"ids": list(entry.ids), "read": read_ns, "run": run_ns,
                               "ort_ms": outcome.compute_ms, "ran": ran_ns,
                               "answered": answered_ns, "rows": outcome.batch_size})

    def _round_trip(self, commands: list[Command]) -> list[Any]:
        """``commands``' replies. With answers sent ahead, the commands go out behind them at
        once and the answers' confirmations are read first: one wait for both. When the
        connection fails on the way, the commands are sent again as any round trip retries."""
        connection = self._held_connection()
        if self.answers.in_flight:
            try:
                self._send_ahead(commands)
                if self.answers.settle():
                    replies = self._read_ahead(len(commands))
                    for reply in replies:
                        if isinstance(reply, redis.ResponseError):
                            raise reply
                    return replies
            except (redis.ConnectionError, redis.TimeoutError):
                self.answers.settle()  # holds what is unconfirmed: the connection is gone
        return round_trip(connection, commands)

    def _held_connection(self) -> redis.connection.AbstractConnection:
        if self._connection is None:
            self._connection = self.client.connection_pool.get_connection()
        return self._connection

    def _send_ahead(self, commands: list[Command]) -> None:
        connection = self._held_connection()
        try:
            connection.send_packed_command([packed_all(commands)],
                                           check_health=False)
        except BaseException:
            connection.disconnect()  # part of it may have gone out: start afresh
            raise

    def _read_ahead(self, count: int) -> list[Any]:
        connection = self._held_connection()
        try:
            return _read_replies(connection, count)
        except BaseException:
            connection.disconnect()  # replies may be left unread on it
            raise

    def _sample(self, pairs: list[Settled]) -> None:
        """Drift sampling, after the replies are out: it never delays an answer."""
        assert self.sampler is not None
        for _, bundle, outcome in pairs:
            if outcome.status == wire.ReplyStatus.OK and bundle is not None:
                self.sampler.observe({n: t.data for n, t in bundle.request.inputs.items()},
                                     outcome.outputs)

    def _count(self, pairs: list[Settled],
               picked_ms: int) -> None:
        """Fold one answered run into the pool's per-second counters."""
        leaders = [outcome for _, _, outcome in pairs if outcome.leader]
        queue_ms: list[float] = []
        failures: dict[str, int] = {}
        for entry, bundle, outcome in pairs:
            requests = len(bundle.ids) if bundle is not None else len(entry.ids)
            queue_ms.extend([max(0.0, float(picked_ms - entry.enqueued_ms))] * requests)
            if outcome.status != wire.ReplyStatus.OK:
                field = failure_field(outcome.status)
                failures[field] = failures.get(field, 0) + requests
        self.stats.add_run(
            requests=len(queue_ms),
            rows=sum(o.batch_size for o in leaders),
            compute_ms=sum(o.compute_ms for o in leaders),
            queue_ms=queue_ms,
            failures=failures,
        )

    def _split(self, entries: list[Entry]) -> None:
        """Re-enqueue each claimed bundle as one entry per request, atomically with its ack.

        The new entries carry the deliveries so far as ``attempt``, so the dead-letter limit
        still counts the bundle's deliveries; they go to the end of the stream. A bundle that
        its first worker acknowledged meanwhile (slow, not dead) is left alone.
        """
        commands: list[Command] = []
        for entry in entries:
            assert entry.bundle is not None
            keys = dict(zip(entry.ids, entry.store, strict=True)) if entry.store else {}
            singles = [pools.RequestEntry(single.ids, entry.reply_to, entry.budget_ms,
                                          entry.deliveries, wire.encode_bundle(single), b"",
                                          (keys.get(single.ids[0], ""),)).fields()
                       for single in entry.bundle.singles()]
            commands.append(("EVAL", pools.SPLIT, 1, self.stream, pools.WORKER_GROUP,
                             entry.entry_id, entry.budget_ms, len(singles[0]),
                             *(item for fields in singles for item in fields)))
        done = self._round_trip(commands)
        log.warning("split %d claimed bundles on %s into single requests", sum(done),
                    self.stream)

    def _park(self, dead: list[tuple[bytes, dict[bytes, bytes], int]]) -> None:
        """Move poison pills to the dead-letter stream and tell their callers, in one trip."""
        assert self.reclaimer is not None
        letters = []
        settled: list[Settled] = []
        for entry_id, fields, deliveries in dead:
            letters.append(self.reclaimer.park(entry_id, self_contained(fields), deliveries))
            entry = parse_entry(entry_id, fields)
            settled.append((entry, None, Outcome(
                wire.ReplyStatus.DEAD_LETTER, {},
                f"the request was delivered {deliveries} times without an answer (a worker died "
                f"on each attempt); it is parked in {self.reclaimer.dead_stream} for inspection "
                "and will not be retried")))
        self._answer(settled, int(self.clock.now_ms()), letters)

    def _answer(self, settled: list[Settled], picked_ms: int,
                letters: list[pools.DeadLetter] | None = None) -> None:
        """Dead letters and replies, then the acknowledgement of every entry, in one script."""
        by_gateway: dict[str, list[bytes]] = {}
        entries: dict[bytes, Entry] = {}
        kept: list[tuple[float, wire.Reply, tuple[str, ...]]] = []
        at = time.time()
        for entry, bundle, outcome in settled:
            entries[entry.entry_id] = entry
            if not entry.ids:
                continue
            keys = self._store_keys(entry, bundle, outcome)
            reply = wire.Reply(
                ids=bundle.ids if bundle is not None else entry.ids,
                rows=bundle.rows if bundle is not None else (),
                status=outcome.status,
                outputs=outcome.outputs,
                error=outcome.error,
                queue_ms=max(0.0, float(picked_ms - entry.enqueued_ms)),
                compute_ms=outcome.compute_ms,
                batch_size=outcome.batch_size,
                batch_leader=outcome.leader,
                stored=bool(keys),
            )
            by_gateway.setdefault(entry.reply_to, []).append(wire.encode_reply(reply))
            if keys:
                kept.append((at, reply, keys))
        self.answers.send([(entry.entry_id, len(entry.ids)) for entry in entries.values()],
                          by_gateway, letters or ())
        if kept:  # after the replies went out: they never wait for it
            assert self.answer_store is not None
            self.answer_store.add(kept)

    def _store_keys(self, entry: Entry, bundle: wire.Bundle | None,
                    outcome: Outcome) -> tuple[str, ...]:
        """What each call of an answered bundle is stored under, when this worker stores
        them (there is room); () when it does not and the reply says so."""
        if (not entry.store or bundle is None or self.answer_store is None
                or outcome.status != wire.ReplyStatus.OK):
            return ()
        if bundle.ids == entry.ids:
            keys = entry.store
        else:  # part of the entry (a run that failed was retried one call at a time)
            of = dict(zip(entry.ids, entry.store, strict=True))
            keys = tuple(of.get(id_, "") for id_ in bundle.ids)
        calls = sum(1 for key in keys if key)
        if not calls or not self.answer_store.room(calls):
            return ()
        return keys


def round_trip(connection: redis.connection.AbstractConnection,
               commands: list[Command]) -> list[Any]:
    """Send ``commands`` in one write on ``connection`` and return their replies.

    What a redis-py pipeline does, minus its per-command bookkeeping (a third of the
    worker's time for a single request) and its packer (``core/resp.py``); connection
    handling and the retry policy (a dropped connection is retried once it reconnects) stay
    redis-py's. A command Redis refuses raises its ResponseError after every reply has been
    read, as a pipeline would.
    """
    try:
        replies = connection.retry.call_with_retry(
            lambda: _send_and_read(connection, commands), lambda _error: connection.disconnect())
    except BaseException:
        # Unread replies may be left on it: start afresh (it reconnects on the next send).
        connection.disconnect()
        raise
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies


def _send_and_read(connection: redis.connection.AbstractConnection,
                   commands: list[Command]) -> list[Any]:
    connection.send_packed_command([packed_all(commands)], check_health=False)
    return _read_replies(connection, len(commands))


def _read_replies(connection: redis.connection.AbstractConnection, count: int) -> list[Any]:
    """The next ``count`` replies on ``connection``; a refused command's error is its reply."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as e:
            replies.append(e)
    return replies
