"""The job lane: chunks of batch jobs, run by the same workers as online calls, after them.

The consumer calls :meth:`JobLane.step` only when the lane is due (:meth:`JobLane.due`: it is
not resting, and it has a chunk in hand or is due to read its stream, at most every
``IDLE_LOOK_S`` while it finds none) and a non-blocking read of the online stream found
nothing; the lane takes one chunk (at most one ORT run), so an online call waits at most one
run for a job. Chunks carry no deadline, and nothing of theirs goes into the online
figures (latency, queue, the pool's per-second counters, drift sampling): the lane counts its
own rows, chunks and busy time, which the heartbeat reports.

A chunk's result is written with ``jobs.JOB_ANSWER``: under its (job, chunk) field only if none
is there, with the acknowledgement in the same step. The chunk's rows are ids of one bundle
(one row each), so the runner's fallback (a failed run is run again request by request) runs
the rows one by one when one of them makes ORT fail: that row gets the error, its neighbours
their outputs. A chunk taken over from a dead worker is split into one entry per row
(``jobs.JOB_SPLIT``); a row delivered more than ``max_deliveries`` times -- a row that kills
the runtime -- is parked in the pool's dead letters and becomes that row's error record.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from modelgate.core import wire
from modelgate.core.repository import ModelVersion
from modelgate.core.store import jobs, pools
from modelgate.worker.reclaim import Reclaimer
from modelgate.worker.runner import Runner

log = logging.getLogger("modelgate.worker")

JOB_ID = re.compile(r"^[0-9a-f]{8,64}$")
# After a chunk, the consumer blocks on the online stream only this long when it finds
# nothing, so the next chunk is taken soon; idle (no chunk lately), its usual block.
BUSY_BLOCK_MS = 20
BUSY_FOR_S = 1.0
# While online calls come (one answered within ONLINE_RECENT_S), the lane rests after each
# chunk for as long as the chunk ran, times this: the worker spends at most 1/21 of its time
# on jobs, and the CPU it leaves goes to the online path (the gateway, Redis and the
# coordinator share the machine's cores with the workers: on 2 cores a quarter of each worker
# for jobs took an online p99 from 11 ms to 229 ms, a twenty-first kept it). Without online
# calls, chunks run back to back.
ONLINE_RECENT_S = 1.0
REST_PER_RUN = 20.0
# Its job stream found empty, the lane looks again this much later (a job submitted meanwhile
# starts up to this late): looking on every step cost each online call two more round trips to
# Redis (the online stream read without blocking, then the job stream), as much of Redis's
# work as the call itself at concurrency 1.
IDLE_LOOK_S = 0.1

RoundTrip = Callable[[list[tuple[Any, ...]]], list[Any]]


class JobLane:
    def __init__(self, client: redis.Redis, version: ModelVersion, runner: Runner,
                 consumer_name: str, round_trip: RoundTrip,
                 reclaimer: Reclaimer | None = None) -> None:
        self.client = client
        self.version = version
        self.runner = runner
        self.consumer_name = consumer_name
        self.stream = jobs.job_stream(version.pool)
        self.dead_stream = pools.dead_letters(version.pool)
        self._round_trip = round_trip
        self.reclaimer = reclaimer
        self.rows = 0
        self.chunks = 0
        self.failed_rows = 0
        self.busy_s = 0.0
        self._last_chunk_at = 0.0
        self._online_at = 0.0
        self._rest_until = 0.0
        self._look_at = 0.0  # when to read the job stream next (after finding it empty)
        self._taken: list[tuple[bytes, dict[bytes, bytes], int]] = []

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, jobs.JOB_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def saw_online(self) -> None:
        """The consumer answered online calls: chunks yield half the worker to them."""
        self._online_at = time.monotonic()

    def due(self) -> bool:
        """Whether :meth:`step` may take a chunk now: the lane does not rest, and it holds a
        chunk taken over, is due to take some over, or is due to read its stream."""
        now = time.monotonic()
        if self._rest_until > now:
            return False
        return (bool(self._taken) or now >= self._look_at
                or (self.reclaimer is not None and self.reclaimer.due(now)))

    def block_ms(self, idle_block_ms: int) -> int:
        """How long the consumer may block on the online stream: while the lane rests, until
        it may take a chunk again; short while chunks flow; else until the lane reads its
        stream again, at most the usual block."""
        now = time.monotonic()
        if self._rest_until > now:
            return max(1, min(idle_block_ms, int((self._rest_until - now) * 1000)))
        if now - self._last_chunk_at < BUSY_FOR_S:
            return min(BUSY_BLOCK_MS, idle_block_ms)
        if self._look_at > now:
            return max(1, min(idle_block_ms, int((self._look_at - now) * 1000)))
        return idle_block_ms

    def step(self) -> int:
        """Take and answer at most one chunk (a taken-over one first); rows answered. None
        while the lane rests (online calls came lately and the last chunk ran just now)."""
        if self._rest_until > time.monotonic():
            return 0
        if self.reclaimer is not None and self.reclaimer.due(time.monotonic()):
            self._reclaim()
        if self._taken:
            entry_id, fields, deliveries = self._taken.pop(0)
            return self._handle(entry_id, fields, deliveries)
        try:
            response = self._round_trip([(
                "XREADGROUP", "GROUP", jobs.JOB_GROUP, self.consumer_name, "COUNT", 1,
                "STREAMS", self.stream, ">")])[0]
        except redis.ResponseError as e:
            if "NOGROUP" in str(e):
                self.ensure_group()
                return 0
            raise
        streams = (response.values() if isinstance(response, dict)
                   else [s[1] for s in response or ()])
        for entries in streams:
            for entry_id, flat in entries:
                return self._handle(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)), 1)
        self._look_at = time.monotonic() + IDLE_LOOK_S
        return 0

    def _reclaim(self) -> None:
        assert self.reclaimer is not None
        claimed = self.reclaimer.claim()
        for entry_id, fields, deliveries in claimed.dead:
            self._park(entry_id, fields, deliveries)
        held = {entry_id for entry_id, _, _ in self._taken}  # claimed before, not run yet
        for entry_id, fields, deliveries in claimed.retry:
            if entry_id in held:
                continue
            if deliveries > 1 and b"offset" not in fields and self._split(entry_id, fields,
                                                                          deliveries):
                continue
            self._taken.append((entry_id, fields, deliveries))

    def _split(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> bool:
        """One entry per row of a chunk whose worker died, so a row that kills the runtime
        takes no neighbour with it; False when the chunk cannot be split (one row)."""
        try:
            entry = jobs.ChunkEntry.parse(fields)
            ids = jobs.unpack(entry.ids)
            errors = dict(jobs.unpack(entry.errors))
            bundle = wire.decode_bundle(self._bundle_ids(entry, ids, errors), entry.payload) \
                if entry.payload else None
        except (jobs.EntryError, wire.WireError, ValueError, TypeError):
            return False
        if len(ids) <= 1:
            return False
        singles = {int(b.ids[0]): b for b in bundle.singles()} if bundle is not None else {}
        entries = []
        for offset, row_id in enumerate(ids):
            single = singles.get(offset)
            entries.append(jobs.ChunkEntry(
                entry.job, entry.seq, jobs.pack([row_id]),
                jobs.pack([[0, errors[offset]]] if offset in errors else []),
                wire.encode_bundle(wire.Bundle(("0",), (1,), single.request))
                if single is not None else b"", offset, deliveries).fields())
        width = len(entries[0])  # every row's entry has the same fields
        done = self._round_trip([("EVAL", jobs.JOB_SPLIT, 1, self.stream, jobs.JOB_GROUP,
                                  entry_id, width, *(item for e in entries for item in e))])[0]
        log.warning("split chunk %s of job %s into %d rows after its worker died",
                    entry.seq, entry.job, len(ids))
        return bool(done)

    @staticmethod
    def _bundle_ids(entry: jobs.ChunkEntry, ids: list[Any],
                    errors: dict[int, str]) -> tuple[str, ...]:
        return tuple(str(offset) for offset in range(len(ids)) if offset not in errors)

    def _handle(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> int:
        """Run one chunk entry and answer it; whatever it holds, the worker goes on."""
        try:
            entry = jobs.ChunkEntry.parse(fields)
            if not JOB_ID.match(entry.job):
                raise jobs.EntryError(f"job id {entry.job[:40]!r} is not a job id")
            ids = jobs.unpack(entry.ids)
            errors = {int(k): str(v) for k, v in jobs.unpack(entry.errors)}
            if not isinstance(ids, list):
                raise jobs.EntryError("chunk 'ids' is not a list")
        except (jobs.EntryError, ValueError, TypeError) as e:
            # Nobody can be told: drop it (its job's coordinator sees the chunk never answer
            # only if this was a real chunk, which a valid writer never makes).
            log.warning("dropped malformed chunk entry %s on %s: %s", entry_id, self.stream, e)
            self._round_trip([("XACK", self.stream, jobs.JOB_GROUP, entry_id),
                              ("XDEL", self.stream, entry_id)])
            return 0
        started = time.perf_counter()
        piece = self._run(entry, ids, errors)
        self._answer(entry_id, entry, piece)
        spent_s = time.perf_counter() - started
        self.busy_s += spent_s
        self._last_chunk_at = time.monotonic()
        if self._last_chunk_at - self._online_at < ONLINE_RECENT_S:
            self._rest_until = self._last_chunk_at + spent_s * REST_PER_RUN
        self.chunks += 1
        self.rows += len(ids)
        self.failed_rows += len(piece.errors)
        return len(ids)

    def _run(self, entry: jobs.ChunkEntry, ids: list[Any], errors: dict[int, str]) -> jobs.Piece:
        first = entry.offset or 0
        piece = jobs.Piece(entry.seq, ids, dict(errors), {}, first)
        valid = [offset for offset in range(len(ids)) if offset not in errors]
        if not valid:
            return piece
        try:
            bundle = wire.decode_bundle(tuple(str(o) for o in valid), entry.payload)
        except (wire.WireError, ValueError, TypeError, OverflowError) as e:
            for offset in valid:
                piece.errors[offset] = f"the chunk could not be decoded: {e}"
            return piece
        answered = self.runner.run_batch([bundle])[0]
        if len(answered) == 1 and answered[0][1].status == wire.ReplyStatus.OK:
            # The whole chunk in one run: its outputs are the valid rows', in order.
            outcome = answered[0][1]
            piece.outputs.update({name: _rows(tensor, len(valid))
                                  for name, tensor in outcome.outputs.items()})
            return piece
        columns: dict[str, list[Any]] = {}
        results: dict[int, dict[str, Any]] = {}
        for part, outcome in answered:
            offsets = [int(i) for i in part.ids]
            if outcome.status != wire.ReplyStatus.OK:
                for offset in offsets:
                    piece.errors[offset] = outcome.error or outcome.status
                continue
            for name, tensor in outcome.outputs.items():
                values = _rows(tensor, len(offsets))
                for offset, value in zip(offsets, values, strict=True):
                    results.setdefault(offset, {})[name] = value
        for offset in sorted(results):
            for name, value in results[offset].items():
                columns.setdefault(name, []).append(value)
        piece.outputs.update(columns)
        return piece

    def _answer(self, entry_id: bytes, entry: jobs.ChunkEntry, piece: jobs.Piece,
                letter: pools.DeadLetter | None = None) -> None:
        field = jobs.piece_field(entry.seq, entry.offset)
        items = letter.items() if letter is not None else []
        self._round_trip([("EVAL", jobs.JOB_ANSWER, 5, self.stream, jobs.results(entry.job),
                           jobs.chunk_rows(entry.job), self.dead_stream,
                           jobs.progress(entry.job), jobs.JOB_GROUP,
                           entry_id, field, entry.seq, len(piece.ids), piece.encode(),
                           pools.DEAD_LETTER_MAXLEN, *items)])

    def _park(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> None:
        """A row (or an unsplittable chunk) delivered too often: every row of it an error."""
        assert self.reclaimer is not None
        letter = self.reclaimer.park(entry_id, fields, deliveries)
        try:
            entry = jobs.ChunkEntry.parse(fields)
            ids = jobs.unpack(entry.ids)
        except (jobs.EntryError, ValueError, TypeError):
            self._round_trip([("XACK", self.stream, jobs.JOB_GROUP, entry_id),
                              ("XDEL", self.stream, entry_id)])
            return
        message = (f"the row was delivered {deliveries} times without an answer (a worker "
                   f"died on each attempt); it is parked in {self.dead_stream}")
        piece = jobs.Piece(entry.seq, ids, dict.fromkeys(range(len(ids)), message), {},
                           entry.offset or 0)
        self._answer(entry_id, entry, piece, letter)
        self.failed_rows += len(ids)


def _rows(tensor: wire.Tensor, count: int) -> list[Any]:
    """One plain value per row of an output (what JSON and Parquet write)."""
    data = tensor.data
    if isinstance(data, np.ndarray):
        if data.dtype == object:
            data = np.vectorize(lambda v: v.decode("utf-8", "replace")
                                if isinstance(v, bytes) else v, otypes=[object])(data)
        if data.ndim == 0:
            return [data.item()] * count
        return data.tolist()
    if isinstance(data, list) and len(data) == count:
        return data
    return [data] * count
