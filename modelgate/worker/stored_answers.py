"""Storing answers for feedback where they are computed: in the worker, beside the reply.

A gateway that keeps a call's answer for feedback (``gateway/feedback.py`` ``Feedback.keep``)
names the key to store it under (the call's id) in the request entry's ``store`` field. Its
worker answers, then encodes the run's answers to keep (``core/answer_records.py``: one
prediction over a bundle's rows, each call's record cut from it) after the replies went out,
and a thread of its own writes them with ``STORE`` (``core/store/feedback.py``) every
``FLUSH_INTERVAL_S`` or ``STORE_BATCH`` records, on a connection of its own: the read loop
never waits for Redis to store anything. The reply says ``stored``, and the gateway stores
nothing more.

Why here and not in the gateway: on a small model the one gateway process is what limits
calls per second, and storing cost it about a fifth of its time per call (recording, then
predicting and encoding each answer again from the reply it had decoded); a worker has the
outputs of a whole bundle in one array already, and there are several workers.

When the worker holds ``MAX_PENDING`` records not yet written (Redis slow or away), it takes
no more: those replies say not stored, and their gateway stores them as before, as it does
for a worker of an earlier release. Records taken but not yet written are lost if the worker
is killed (at most ``FLUSH_INTERVAL_S`` of them), as a gateway's would be; a worker that
drains writes them before it stops. When Redis refuses the write (at ``maxmemory`` under
``noeviction``), the store shrinks first (``SHRINK``, deletes only) and the batch is dropped
and counted in the store's ``dropped`` (the quality answer's ``stored.answers_dropped``): calls
are never refused because this store grew.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from modelgate.core import wire
from modelgate.core.answer_records import stored_values
from modelgate.core.prediction import PredictionSpec
from modelgate.core.repository import ModelVersion
from modelgate.core.store import feedback as store

log = logging.getLogger("modelgate.worker")

MAX_PENDING = 50_000  # records taken and not yet written
FLUSH_INTERVAL_S = 0.2
STORE_BATCH = 250  # records per STORE call (Redis is held ~2 ms by one)
SHRINK_RECORDS = 20_000
CLOSE_TIMEOUT_S = 5.0


class AnswerStore:
    """The records of answered calls a gateway asked this worker to store, and the thread
    that writes them."""

    def __init__(self, client: redis.Redis, model: ModelVersion, spec: PredictionSpec) -> None:
        self.client = client
        self.model = model
        self.spec = spec
        self._keys = [store.answers(model.name), store.times(model.name),
                      store.counts(model.name)]
        self._store = client.register_script(store.STORE)
        self._shrink = client.register_script(store.SHRINK)
        self._lock = threading.Lock()
        self._records: list[tuple[str, bytes]] = []
        self._taken = 0  # calls promised, counted before their records are encoded
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.stored = 0  # records written
        self.dropped = 0  # records Redis refused or could not take
        self._unreported = 0  # of those, not yet added to the store's ``dropped`` counter

    def room(self, calls: int) -> bool:
        """Whether ``calls`` more answers can be taken; when so they are counted taken (the
        replies then say stored, and :meth:`add` must follow)."""
        with self._lock:
            if self._taken + calls > MAX_PENDING:
                return False
            self._taken += calls
            return True

    def add(self, answered: Sequence[tuple[float, wire.Reply, Sequence[str]]]) -> None:
        """Encode (time, reply, keys) of answers :meth:`room` took, for the thread to write."""
        calls = sum(1 for _, _, keys in answered for key in keys if key)
        values = stored_values(self.spec, self.model.version, answered)
        with self._lock:
            before = len(self._records)
            self._records.extend(values)
            self._taken -= calls - len(values)  # calls whose answer held no prediction
            waiting = len(self._records)
        if before < STORE_BATCH <= waiting:  # once per batch: waking costs a notify each time
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stored-answers", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is left and stop the thread (bounded: a Redis that is away loses it)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("stored answers: %d records left unwritten at shutdown",
                            self._taken)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            self.flush()
        self.flush()

    def flush(self) -> int:
        """Write every record taken so far, STORE_BATCH at a time; returns how many were."""
        with self._lock:
            records, self._records = self._records, []
        written = 0
        for start in range(0, len(records), STORE_BATCH):
            batch = records[start:start + STORE_BATCH]
            written += self._write(batch)
            with self._lock:
                self._taken -= len(batch)
        self.stored += written
        return written

    def _write(self, batch: list[tuple[str, bytes]]) -> int:
        config = self.model.config
        args: list[Any] = [time.time(), config.feedback_horizon_s, config.feedback_max_rows]
        for key, value in batch:
            args.extend((key, value))
        try:
            self._store(keys=self._keys, args=args)
        except redis.OutOfMemoryError:
            self._make_room()
            self._report_dropped(len(batch))
            return 0
        except redis.RedisError as e:
            log.warning("stored answers: %d records of %s dropped (Redis: %s)", len(batch),
                        self.model.pool, e)
            self._report_dropped(len(batch))
            return 0
        if self._unreported:
            self._report_dropped(0)
        return len(batch)

    def _report_dropped(self, records: int) -> None:
        """Count dropped records in the store's counters (the quality answer shows them),
        now if Redis takes it, else with a later write that succeeds."""
        self.dropped += records
        self._unreported += records
        with contextlib.suppress(redis.RedisError):  # still refused, or away: later
            self.client.hincrby(self._keys[2], "dropped", self._unreported)
            self._unreported = 0

    def _make_room(self) -> None:
        """Redis is full: this store gives back memory first, so calls are not refused."""
        try:
            held = int(self.client.zcard(self._keys[1]))
            gone = self._shrink(keys=self._keys,
                                args=[min(SHRINK_RECORDS, max(1, (held + 1) // 2))])
            log.warning("Redis refused stored answers of %s (maxmemory): removed the oldest "
                        "%s of %s", self.model.name, gone, held)
        except redis.RedisError as e:
            log.warning("stored answers of %s could not shrink: %s", self.model.name, e)
