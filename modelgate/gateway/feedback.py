"""Answers kept for feedback, labels joined to them, and live quality per version.

**Storing answers, off the response path.** :meth:`Feedback.keep` decides before the call is
queued whether its answer is stored (with probability ``feedback_sample_share``; an id no label
could name is not, and is counted) and the call's entry asks its worker to store it under the
call's id: the worker does, beside its reply (``worker/stored_answers.py``), and the reply says
``stored``. :meth:`Feedback.record` queues only what a worker did not store (one of an earlier
release, or one whose own queue was full) in a bounded in-memory queue (``MAX_PENDING`` calls;
past it a call is not stored and is counted); the background task ``feedback`` takes the queue
every ``FLUSH_INTERVAL_S``, turns each reply into its prediction (``core/answer_records.py``)
and writes each model's batch with one ``STORE`` script (``core/store/feedback.py``), which
trims the store to the model's ``feedback_max_rows`` and ``feedback_horizon_s`` in the same
step. When Redis refuses a write (at ``maxmemory`` under ``noeviction``), the store shrinks
first (``SHRINK``: deletes only, which Redis still takes), the batch is dropped and counted:
the calls themselves are never refused because this store grew.

**Labels** (:meth:`Feedback.label`) are checked one by one, joined and marked atomically by
``LABEL``, scored (``core/quality.py``) and added by ``SCORE`` to each version's totals, window
and alarm, so every gateway's labels merge in Redis with no control loop. The answer counts
every item: matched, unknown, expired, already_labelled, invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, RedisError

from modelgate.core import ids, wire
from modelgate.core.answer_records import stored_values
from modelgate.core.quality import (
    AlarmConfig,
    AlarmState,
    LabelError,
    Outcome,
    Totals,
    class_name,
    figures,
    median_delay_s,
    reference_accuracy,
    score,
)
from modelgate.core.repository import ModelVersion
from modelgate.core.store import feedback as store
from modelgate.gateway.metrics import Metrics

log = logging.getLogger("modelgate.gateway")

MAX_PENDING = 50_000  # calls waiting to be stored, per gateway process
FLUSH_INTERVAL_S = 0.2
GAUGES_INTERVAL_S = 5.0
STORE_BATCH = 250  # records per STORE call, encoded at once
LABEL_CHUNK = 1000  # labels per LABEL call (~a few ms of Redis each)
SHRINK_RECORDS = 20_000  # records one SHRINK removes at most
MAX_LABELS = 10_000  # items per feedback call
MAX_LABEL_BYTES = 256
RECENT_ALERTS = 20  # alarm changes the quality answer lists
QUALITY_TTL_S = 30 * 86_400  # a version's totals outlive it by this long unused
REQUEST_ID_HEADER = "X-Request-Id"
ALARM_DEFAULTS = AlarmConfig()


def call_id(given: str | None, header: str | None) -> str:
    """The id of a call: the caller's (the body's ``id``, else its ``X-Request-Id`` header),
    else a new one (128 random bits as 32 hex digits, like a uuid4's hex, at a third of its
    cost), returned to the caller so that it can send feedback."""
    return given or header or ids.token_hex(16)


def id_headers(call: str) -> dict[str, str]:
    """``X-Request-Id`` for an id a header can carry (printable ASCII); any other id is
    answered in the body's ``id`` only."""
    if len(call) <= store.MAX_ID_BYTES and call.isascii() and call.isprintable():
        return {REQUEST_ID_HEADER: call}
    return {}


@dataclass(slots=True)
class Counts:
    """What became of the items of one feedback call."""

    matched: int = 0
    unknown: int = 0
    expired: int = 0
    already_labelled: int = 0
    invalid: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, index: int, reason: str) -> None:
        self.invalid += 1
        if len(self.errors) < 20:
            self.errors.append({"index": index, "error": reason})

    def body(self, model: str, received: int) -> dict[str, Any]:
        return {"model": model, "received": received, "matched": self.matched,
                "unknown": self.unknown, "expired": self.expired,
                "already_labelled": self.already_labelled, "invalid": self.invalid,
                "errors": self.errors}


@dataclass(frozen=True, slots=True)
class Item:
    index: int
    id: str
    row: int
    label: Any


def _utf8_bytes(text: str) -> int:
    """Its length in UTF-8, or 0 for text that is not (a lone surrogate)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return 0


def _is_number(label: Any) -> bool:
    try:
        return bool(np.isfinite(float(label)))
    except (TypeError, ValueError):
        return False


def parse_items(body: Any, counts: Counts) -> list[Item]:
    """The well-formed items of a feedback body (one object or a list of them); each
    malformed one is counted invalid with the reason, never failing the others."""
    raw = [body] if isinstance(body, dict) else body
    items = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            counts.reject(index, 'an item is an object like {"id": "...", "label": 1}')
            continue
        call, label, row = entry.get("id"), entry.get("label"), entry.get("row", 0)
        if not isinstance(call, str) or not 0 < _utf8_bytes(call) <= store.MAX_ID_BYTES:
            counts.reject(index, f"'id' must be the call's id, a string of 1 to "
                          f"{store.MAX_ID_BYTES} bytes")
        elif label is None or isinstance(label, bool | dict | list) or (
                isinstance(label, str) and not 0 < _utf8_bytes(label) <= MAX_LABEL_BYTES):
            counts.reject(index, "'label' must be a class (a string of 1 to "
                          f"{MAX_LABEL_BYTES} bytes, or an integer) or a number")
        elif isinstance(label, float) and not np.isfinite(label):
            counts.reject(index, "'label' must be finite")
        elif isinstance(row, bool) or not isinstance(row, int) or row < 0:
            counts.reject(index, "'row' must be the row's index in the call, 0 or more")
        else:
            items.append(Item(index, call, row, label))
    return items


class Feedback:
    def __init__(self, client: aioredis.Redis, metrics: Metrics,
                 spec_of: Any, versions_of: Any) -> None:
        self.client = client
        self.metrics = metrics
        self.spec_of = spec_of  # ModelVersion -> PredictionSpec
        self.versions_of = versions_of  # model name -> {version: ModelVersion}
        self.pending: list[tuple[ModelVersion, str, float, wire.Reply]] = []
        self._store = client.register_script(store.STORE)
        self._shrink = client.register_script(store.SHRINK)
        self._label = client.register_script(store.LABEL)
        self._score = client.register_script(store.SCORE)

    # ------------------------------------------------------------------ storing answers

    def keep(self, model: ModelVersion, call: str) -> str:
        """What the call's answer is stored under (its id), or "" when it is not: sampled
        out (``feedback_sample_share``), or an id no label could name (counted). A kept call's
        worker stores its answer with the reply (``worker/stored_answers.py``); the gateway
        stores what a worker did not (:meth:`record`)."""
        share = model.config.feedback_sample_share
        if share <= 0 or (share < 1 and random.random() >= share):
            return ""
        size = _utf8_bytes(call)
        if size == 0:  # a lone surrogate: no label could name it either
            self.metrics.feedback_dropped.labels(model.name, "id_invalid").inc()
            return ""
        if size > store.MAX_ID_BYTES:
            self.metrics.feedback_dropped.labels(model.name, "id_too_long").inc()
            return ""
        return call

    def record(self, model: ModelVersion, key: str, reply: wire.Reply) -> None:
        """Queue a kept call's answer for storing, unless its worker stored it (a worker of
        an earlier release does not): cheap, the work is done by :meth:`flush`."""
        if not key or reply.stored:
            return
        if len(self.pending) >= MAX_PENDING:
            self.metrics.feedback_dropped.labels(model.name, "queue_full").inc()
            return
        self.pending.append((model, key, time.time(), reply))

    async def flush(self) -> int:
        """Store every queued answer; returns how many were stored.

        On the event loop, STORE_BATCH answers at a time (about a millisecond of work each
        time), each batch written before the next is encoded: no thread to hand the
        interpreter to and back, and no call in flight waits long behind it.
        """
        pending, self.pending = self.pending, []
        stored = 0
        for start in range(0, len(pending), STORE_BATCH):
            for name, batch in self._encode(pending[start:start + STORE_BATCH]).items():
                config = batch[-1][0].config
                keys = [store.answers(name), store.times(name), store.counts(name)]
                args: list[Any] = [time.time(), config.feedback_horizon_s,
                                   config.feedback_max_rows]
                for _, call, value in batch:
                    args.extend((call, value))
                try:
                    await self._store(keys=keys, args=args)
                    stored += len(batch)
                except OutOfMemoryError:
                    self.metrics.feedback_dropped.labels(name, "redis_full").inc(len(batch))
                    await self._make_room(name, keys)
                    # Beside the workers' drops, in the quality answer (if Redis still
                    # refuses, the metric has it).
                    with contextlib.suppress(RedisError):
                        await self.client.hincrby(keys[2], "dropped", len(batch))
        return stored

    def _encode(self, pending: list[tuple[ModelVersion, str, float, wire.Reply]]
                ) -> dict[str, list[tuple[ModelVersion, str, bytes]]]:
        """Each model's encoded records, by version predicted together."""
        by_version: dict[tuple[str, str, str],
                         list[tuple[ModelVersion, str, float, wire.Reply]]] = defaultdict(list)
        for entry in pending:
            by_version[(entry[0].name, entry[0].version, entry[0].sha256)].append(entry)
        by_model: dict[str, list[tuple[ModelVersion, str, bytes]]] = defaultdict(list)
        for entries in by_version.values():
            model = entries[-1][0]
            found = stored_values(self.spec_of(model), model.version,
                                  [(at, reply, (call,)) for _, call, at, reply in entries])
            by_model[model.name].extend((model, call, value) for call, value in found)
        return by_model

    async def _make_room(self, name: str, keys: list[str]) -> None:
        """Redis is full: this store gives back memory first, so calls are not refused."""
        try:
            held = await self.client.zcard(keys[1])
            gone = await self._shrink(keys=keys,
                                      args=[min(SHRINK_RECORDS, max(1, (held + 1) // 2))])
            log.warning("Redis refused stored answers of %s (maxmemory): removed the oldest "
                        "%s of %s", name, gone, held)
        except RedisError as e:
            log.warning("stored answers of %s could not shrink: %s", name, e)

    async def run(self, models: Any = None) -> None:
        """The background writer: flush every FLUSH_INTERVAL_S; the quality gauges of every
        served model every GAUGES_INTERVAL_S (``models`` names them)."""
        gauges_at = 0.0
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
                if models is not None and time.monotonic() - gauges_at >= GAUGES_INTERVAL_S:
                    gauges_at = time.monotonic()
                    for name in models():
                        self.set_gauges(await self.quality(name, sorted(
                            self.versions_of(name), key=int)))
            except (RedisError, OSError) as e:
                log.warning("stored answers or quality unreadable this round (Redis: %s)", e)

    def set_gauges(self, body: Mapping[str, Any]) -> None:
        model = body["model"]
        for entry in body["versions"]:
            if not entry["labelled"]:
                continue
            version = entry["version"]
            figures = {"labelled": entry["labelled"],
                       **{metric: entry["since_load"].get(metric)
                          for metric in ("accuracy", "log_loss", "ece", "mae", "rmse")},
                       "window_accuracy": entry["window"].get("accuracy"),
                       "cusum": entry["test"]["value"] if entry["test"] else None}
            for metric, value in figures.items():
                if value is not None:
                    self.metrics.set_quality(model, version, metric, value)
            self.metrics.quality_alert.labels(model, version).set(1 if entry["alert"] else 0)

    # ------------------------------------------------------------------ labels

    async def label(self, model: str, body: Any) -> dict[str, Any]:
        """Join a feedback call's labels to the stored answers and score them."""
        counts = Counts()
        items = parse_items(body, counts)
        received = len(body) if isinstance(body, list) else 1
        keys = [store.answers(model), store.times(model), store.counts(model)]
        versions: Mapping[str, ModelVersion] = self.versions_of(model)
        horizon = max((v.config.feedback_horizon_s for v in versions.values()),
                      default=86_400)
        # A label the model's versions cannot score is refused before it marks its row
        # labelled: of no class they know, or no number for regressors.
        known = self._classes(versions)
        regression = bool(versions) and all(self.spec_of(v).task == "regression"
                                            for v in versions.values())
        checked = []
        for item in items:
            if known is not None and class_name(item.label) not in known:
                counts.reject(item.index, f"{item.label!r} is none of the model's classes "
                              f"{sorted(known)[:20]}")
            elif regression and not _is_number(item.label):
                counts.reject(item.index, f"the model is a regressor: a label is a number, "
                              f"got {item.label!r}")
            else:
                checked.append(item)
        items = checked
        now = time.time()
        replies: list[Any] = []
        # In chunks: a script holds Redis, and the calls' own commands wait behind it.
        for start in range(0, len(items), LABEL_CHUNK):
            args: list[Any] = [now, horizon]
            for item in items[start:start + LABEL_CHUNK]:
                args.extend((item.id, item.row))
            replies.extend(await self._label(keys=keys, args=args))
        outcomes: dict[str, list[Outcome]] = defaultdict(list)
        unmatched: dict[str, int] = defaultdict(int)
        rejected_after_match = 0
        for i, item in enumerate(items):
            status, payload = replies[2 * i].decode(), replies[2 * i + 1]
            if status == "u":
                counts.unknown += 1
            elif status == "a":
                counts.already_labelled += 1
            elif status == "r":
                counts.reject(item.index, f"call {item.id!r} has no row {item.row}")
            else:
                try:
                    record = store.AnswerRecord.decode(payload)
                except store.RecordError as e:
                    log.warning("a stored answer of %s is unreadable: %s", model, e)
                    counts.reject(item.index, "the stored answer is unreadable")
                    rejected_after_match += status == "m"
                    continue
                if status == "e":
                    counts.expired += 1
                    unmatched[record.version] += 1
                    continue
                try:
                    outcomes[record.version].append(score(record, item.row, item.label, now))
                    counts.matched += 1
                except LabelError as e:
                    counts.reject(item.index, str(e))
                    unmatched[record.version] += 1
                    rejected_after_match += 1
        if rejected_after_match:
            pipe = self.client.pipeline(transaction=False)
            pipe.hincrby(keys[2], "matched", -rejected_after_match)
            pipe.hincrby(keys[2], "invalid", rejected_after_match)
            await pipe.execute()
        for version in set(outcomes) | set(unmatched):
            await self._add(model, version, versions.get(version), outcomes.get(version, []),
                            unmatched.get(version, 0))
        for result in ("matched", "unknown", "expired", "already_labelled", "invalid"):
            value = getattr(counts, result)
            if value:
                self.metrics.feedback_labels.labels(model, result).inc(value)
        return counts.body(model, received)

    def _classes(self, versions: Mapping[str, ModelVersion]) -> set[str] | None:
        """Every class the model's served versions know, or None when any is a regressor or
        does not name its classes (its labels are then checked against each answer)."""
        known: set[str] = set()
        for version in versions.values():
            spec = self.spec_of(version)
            if spec.task != "classification" or not spec.classes:
                return None
            known.update(str(c) for c in spec.classes)
        return known or None

    async def _add(self, model: str, version: str, served: ModelVersion | None,
                   outcomes: Sequence[Outcome], unmatched: int) -> None:
        known_classes = await self.client.hkeys(store.quality(model, version))
        totals = Totals.of(outcomes)
        fields = totals.limited(k.decode().partition(":")[2] for k in known_classes
                                if k.startswith((b"true:", b"pred:", b"tp:")))
        if unmatched:
            fields["unmatched"] = unmatched
        config = served.config if served is not None else None
        reference = reference_accuracy(served.lineage.metrics) if served is not None else None
        alarm = AlarmConfig(config.quality_drop_share if config else ALARM_DEFAULTS.drop,
                            ALARM_DEFAULTS.h,
                            config.quality_min_labels if config else ALARM_DEFAULTS.min_labels,
                            config.quality_baseline_rows if config
                            else ALARM_DEFAULTS.baseline_rows)
        window_rows = config.quality_window_rows if config else 1000
        correctness = "".join("1" if o.correct else "0" for o in outcomes
                              if o.correct is not None)
        args: list[Any] = [window_rows, QUALITY_TTL_S,
                           reference if reference is not None else -1, alarm.drop, alarm.h,
                           alarm.min_labels, alarm.baseline_rows, correctness, version,
                           len(fields)]
        for name, value in fields.items():
            args.extend((name, repr(float(value))))
        args.extend(o.line() for o in outcomes[-window_rows:])  # the rest would be trimmed
        await self._score(keys=[store.quality(model, version), store.window(model, version),
                                store.alarm(model, version), store.alerts(model)], args=args)

    # ------------------------------------------------------------------ quality

    async def quality(self, model: str, versions: Sequence[str]) -> dict[str, Any]:
        """The quality answer: every version's figures since load and over its window, its
        labelled and unmatched rows, median label delay, alert and alarm."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(store.counts(model))
        pipe.xrevrange(store.alerts(model), count=RECENT_ALERTS)
        for version in versions:
            pipe.hgetall(store.quality(model, version))
            pipe.lrange(store.window(model, version), 0, -1)
            pipe.hgetall(store.alarm(model, version))
        results = await pipe.execute()
        counts = {k.decode(): int(float(v)) for k, v in results[0].items()}
        recent = [a.body() for a in (store.QualityAlert.parse(f) for _, f in results[1])
                  if a is not None]
        results = results[1:]
        served = self.versions_of(model)
        config = next(iter(served.values())).config if served else None
        body: dict[str, Any] = {
            "model": model,
            "stored": {"rows": counts.get("rows", 0),
                       "max_rows": config.feedback_max_rows if config else None,
                       "horizon_s": config.feedback_horizon_s if config else None,
                       "sample_share": config.feedback_sample_share if config else None,
                       "answers_stored": counts.get("stored", 0),
                       # Refused by Redis (at maxmemory), by workers and gateways alike.
                       "answers_dropped": counts.get("dropped", 0),
                       "replaced": counts.get("replaced", 0),
                       "trimmed_age": counts.get("trimmed_age", 0),
                       "trimmed_rows": counts.get("trimmed_rows", 0)},
            "labels": {name: counts.get(name, 0) for name in
                       ("matched", "unknown", "expired", "already_labelled", "invalid")},
            "versions": [],
            "alerts": recent,  # newest first
        }
        for i, version in enumerate(versions):
            raw_totals, raw_window, raw_alarm = results[1 + 3 * i: 4 + 3 * i]
            totals = Totals.parse(raw_totals)
            window = [o for o in (Outcome.of_line(line) for line in raw_window)
                      if o is not None]
            since = figures(totals)
            state = AlarmState.parse(raw_alarm)
            body["versions"].append({
                "version": version,
                "labelled": since.pop("rows"),
                "unmatched": int(totals.fields.get("unmatched", 0)),
                "label_delay_p50_s": median_delay_s(window),
                "since_load": since,
                "window": figures(Totals.of(window)),
                "alert": state.alert,
                "alarm": alarm_body(state) if state.alert else None,
                "test": alarm_body(state) if state.p0 is not None else None,
            })
        return body


def alarm_body(state: AlarmState) -> dict[str, Any]:
    """The statistic behind an alert: the CUSUM, its threshold and what it compares to."""
    return {"statistic": "cusum", "value": round(state.s, 4), "threshold": ALARM_DEFAULTS.h,
            "reference_accuracy": round(state.p0, 6) if state.p0 is not None else None,
            "reference": state.reference, "rows_judged": state.n,
            "fired_after_rows": state.fired_n}
