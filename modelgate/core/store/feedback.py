"""Stored answers, the labels joined to them, and the quality figures they make, per model.

Gateways store each answered call's prediction (:class:`AnswerRecord`) under its id in the
model's answer hash, with its time in a sorted set beside it; ``STORE`` writes a batch and trims
in the same step, so the store never holds more than ``feedback_max_rows`` rows nor anything
older than ``feedback_horizon_s``. A reused id replaces the earlier record (counted).

``LABEL`` joins labels to stored answers and marks each labelled row, atomically, so a row is
scored once whichever gateway its label reaches. ``SCORE`` adds the scored rows of one version
to its totals since it loaded, its window of the last labelled rows, and its alarm (a one-sided
Bernoulli CUSUM, ``modelgate.core.quality``), in one step: every gateway's labels are one
stream, and no control loop is needed to merge them.

A stored value is ``{rows}:{flags}{msgpack}``: one flag character per row (``0`` unlabelled,
``1`` labelled) ahead of the record, so the scripts mark rows without decoding msgpack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from modelgate.core.store import PREFIX

RECORD_VERSION = 1
MAX_ID_BYTES = 256  # longer ids are served but not stored
# Rows of one call stored at most: a larger call keeps its first rows (labels for the others
# count as invalid rows).
MAX_ROWS_PER_ANSWER = 1024
# Probability vectors are stored for up to this many classes (log-loss, per-class figures);
# beyond it only the predicted class and its probability.
MAX_STORED_CLASSES = 64
ALERTS_MAXLEN = 1000
TRIM_CHUNK = 2000  # records one STORE removes at most per bound (a batch adds far fewer)
IDLE_GRACE_S = 3600  # the store of a model without calls expires this long after its horizon


def answers(model: str) -> str:
    """Hash: call id -> stored answer ``{rows}:{flags}{AnswerRecord}``."""
    return f"{PREFIX}:fb:{model}:answers"


def times(model: str) -> str:
    """Sorted set: call id -> when it was answered (epoch s); trimmed with the answers."""
    return f"{PREFIX}:fb:{model}:times"


def counts(model: str) -> str:
    """Hash of counters: stored, replaced, dropped (refused by Redis), trimmed_age,
    trimmed_rows, rows (held now, with the bounds max_rows and horizon_s it was last trimmed
    to), and the labels' matched, unknown, expired, already_labelled, invalid."""
    return f"{PREFIX}:fb:{model}:counts"


def quality(model: str, version: str) -> str:
    """Hash: a version's quality totals since it loaded (``quality.Totals`` fields)."""
    return f"{PREFIX}:fb:{model}:quality:{version}"


def window(model: str, version: str) -> str:
    """List: the version's last labelled rows, newest first (``quality.Outcome`` lines)."""
    return f"{PREFIX}:fb:{model}:window:{version}"


def alarm(model: str, version: str) -> str:
    """Hash: the version's CUSUM state (``quality.AlarmState`` fields)."""
    return f"{PREFIX}:fb:{model}:alarm:{version}"


def alerts(model: str) -> str:
    """Stream of :class:`QualityAlert`: a version's quality alarm raised or cleared, capped."""
    return f"{PREFIX}:fb:{model}:alerts"


@dataclass(frozen=True, slots=True)
class QualityAlert:
    """A version's alarm ``raised`` or ``cleared`` (written once, by ``SCORE``)."""

    version: str
    change: str  # raised | cleared
    statistic: float  # the CUSUM at the change
    threshold: float
    reference_accuracy: float
    rows_judged: int
    time: float

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes]) -> QualityAlert | None:
        try:
            text = {k.decode(): v.decode() for k, v in fields.items()}
            return cls(text["version"], text["change"], float(text["s"]), float(text["h"]),
                       float(text["p0"]), int(text["n"]), float(text["t"]))
        except (KeyError, ValueError, UnicodeDecodeError):
            return None

    def body(self) -> dict[str, Any]:
        return {"version": self.version, "change": self.change,
                "statistic": round(self.statistic, 4), "threshold": self.threshold,
                "reference_accuracy": round(self.reference_accuracy, 6),
                "rows_judged": self.rows_judged, "time": self.time}


class RecordError(ValueError):
    """Bytes that are not a stored answer of this format."""


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    """What scoring one answered call needs: the version that answered, when, and per row the
    predicted class with its probability (and the probability vector, ``[rows, C]``, with the
    column names when they are not 0..C-1), or the score of a regressor."""

    version: str
    time: float
    classes: tuple[str, ...] = ()
    confidence: np.ndarray | None = None  # float32 [rows]
    probabilities: np.ndarray | None = None  # float32 [rows, C]
    columns: tuple[str, ...] = ()  # the probabilities' class names; () means 0..C-1
    scores: np.ndarray | None = None  # float64 [rows]

    @property
    def rows(self) -> int:
        return len(self.scores) if self.scores is not None else len(self.classes)

    def encode(self) -> bytes:
        """The value ``STORE`` writes: row flags (all unlabelled) then the msgpack record."""
        return encode_answer(
            self.version, self.time, self.classes,
            _f4(self.confidence), _f4(self.probabilities),
            int(self.probabilities.shape[1]) if self.probabilities is not None else 0,
            self.columns, None if self.scores is None else
            np.ascontiguousarray(self.scores, "<f8").tobytes())

    @classmethod
    def decode(cls, payload: bytes) -> AnswerRecord:
        """The record from the msgpack part (what ``LABEL`` returns)."""
        try:
            m = msgpack.unpackb(payload)
            if not isinstance(m, dict) or m.get("v") != RECORD_VERSION:
                raise RecordError("a stored answer of another format version")
            version, time = str(m["ver"]), float(m["t"])
            if "s" in m:
                return cls(version, time, scores=np.frombuffer(m["s"], "<f8"))
            classes = tuple(str(c) for c in m["c"])
            confidence = np.frombuffer(m["p"], "<f4") if "p" in m else None
            probabilities = None
            if "P" in m:
                probabilities = np.frombuffer(m["P"], "<f4").reshape(len(classes), int(m["C"]))
            columns = tuple(str(c) for c in m.get("k", ()))
            return cls(version, time, classes, confidence, probabilities, columns)
        except (KeyError, TypeError, ValueError, msgpack.UnpackException) as e:
            raise RecordError(f"not a stored answer: {e}") from e


def _f4(values: np.ndarray | None) -> bytes | None:
    return None if values is None else np.ascontiguousarray(values, "<f4").tobytes()


def encode_answer(version: str, time: float, classes: tuple[str, ...] | list[str],
                  confidence: bytes | None, probabilities: bytes | None, columns_count: int,
                  columns: tuple[str, ...], scores: bytes | None) -> bytes:
    """:meth:`AnswerRecord.encode` from its parts already as bytes (``<f4`` confidence and
    ``[rows, columns_count]`` probabilities, ``<f8`` scores): what a gateway storing thousands
    of answers a second calls, with no record object in between."""
    body: dict[str, object] = {"v": RECORD_VERSION, "ver": version, "t": time}
    if scores is not None:
        body["s"] = scores
        rows = len(scores) // 8
    else:
        body["c"] = list(classes)
        rows = len(classes)
        if confidence is not None:
            body["p"] = confidence
        if probabilities is not None:
            body["P"] = probabilities
            body["C"] = columns_count
            if columns:
                body["k"] = list(columns)
    return f"{rows}:{'0' * rows}".encode() + msgpack.packb(body)


# KEYS: answers, times, counts. ARGV: now, horizon_s, max_rows, then (id, value) pairs.
# Returns {replaced, trimmed by age, trimmed by rows, rows held}.
STORE = """
local now, horizon, max_rows = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function rows_of(value)
  if not value then return 0 end
  return tonumber(string.match(value, '^(%d+):')) or 0
end
-- Redis commands of many arguments at once, in slices unpack can take: a command per record
-- was most of the script's time.
local function each_slice(args, call)
  for i = 1, #args, 1000 do call(unpack(args, i, math.min(i + 999, #args))) end
end
local function values_of(ids)
  local found = {}
  each_slice(ids, function(...)
    for _, value in ipairs(redis.call('HMGET', KEYS[1], ...)) do found[#found + 1] = value end
  end)
  return found
end
local ids, pairs, members = {}, {}, {}
for i = 4, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  pairs[#pairs + 1] = ARGV[i]; pairs[#pairs + 1] = ARGV[i + 1]
  members[#members + 1] = now; members[#members + 1] = ARGV[i]
end
local added, replaced = 0, 0
local olds = values_of(ids)
local written = {}  -- an id twice in one batch: its second value replaces its first
for j, id in ipairs(ids) do
  local old = written[id] or olds[j]
  if old then
    replaced = replaced + 1
    added = added - rows_of(old)
  end
  written[id] = ARGV[3 + 2 * j]
  added = added + rows_of(written[id])
end
each_slice(pairs, function(...) redis.call('HSET', KEYS[1], ...) end)
each_slice(members, function(...) redis.call('ZADD', KEYS[2], ...) end)
local held = tonumber(redis.call('HINCRBY', KEYS[3], 'rows', added))
local function drop(gone_ids, values)
  local gone = 0
  for j = 1, #gone_ids do gone = gone + rows_of(values[j]) end
  each_slice(gone_ids, function(...) redis.call('HDEL', KEYS[1], ...) end)
  each_slice(gone_ids, function(...) redis.call('ZREM', KEYS[2], ...) end)
  return gone
end
local old_ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - horizon),
                           'LIMIT', 0, TRIM_CHUNK_ROWS)
local by_age = #old_ids
if by_age > 0 then held = held - drop(old_ids, values_of(old_ids)) end
local by_rows = 0
while held > max_rows and by_rows < TRIM_CHUNK_ROWS do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 255)
  if #oldest == 0 then held = 0 break end
  local values = values_of(oldest)
  local take, taken = {}, {}
  for j, id in ipairs(oldest) do
    if held <= max_rows then break end
    take[#take + 1] = id
    taken[#taken + 1] = values[j]
    held = held - rows_of(values[j])
  end
  drop(take, taken)
  by_rows = by_rows + #take
end
redis.call('HSET', KEYS[3], 'rows', held, 'max_rows', max_rows, 'horizon_s', horizon)
redis.call('HINCRBY', KEYS[3], 'stored', (#ARGV - 3) / 2)
redis.call('HINCRBY', KEYS[3], 'replaced', replaced)
redis.call('HINCRBY', KEYS[3], 'trimmed_age', by_age)
redis.call('HINCRBY', KEYS[3], 'trimmed_rows', by_rows)
-- A model that stops being called (or is removed) leaves nothing behind past its horizon.
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], horizon + IDLE_GRACE) end
return {replaced, by_age, by_rows, held}
""".replace("TRIM_CHUNK_ROWS", str(TRIM_CHUNK)).replace("IDLE_GRACE", str(IDLE_GRACE_S))

# Deletes only (Redis takes them at maxmemory): the oldest ARGV[1] records go, so a store that
# Redis refused to grow makes room for the calls themselves. KEYS: answers, times, counts.
SHRINK = """
local ids = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
local gone = 0
for _, id in ipairs(ids) do
  local value = redis.call('HGET', KEYS[1], id)
  if value then gone = gone + (tonumber(string.match(value, '^(%d+):')) or 0) end
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  pcall(redis.call, 'HINCRBY', KEYS[3], 'rows', -gone)
end
return #ids
"""


# KEYS: answers, times, counts. ARGV: now, horizon_s, then (id, row) pairs.
# Returns per pair {status, payload}: status m (matched: the row is marked labelled), u
# (unknown id), e (expired), a (already labelled), r (no such row); the payload is the record
# for m and e (whose version the label counts as unmatched), else empty.
LABEL = ("""
local cutoff = tonumber(ARGV[1]) - tonumber(ARGV[2])
local out = {}
local tally = {m = 0, u = 0, e = 0, a = 0, r = 0}
for i = 3, #ARGV, 2 do
  local id, row = ARGV[i], tonumber(ARGV[i + 1])
  local value = redis.call('HGET', KEYS[1], id)
  local status, payload = 'u', ''
  if value then
    local at = tonumber(redis.call('ZSCORE', KEYS[2], id) or '0')
    local digits = string.match(value, '^(%d+):')
    local rows = tonumber(digits)
    local start = #digits + 2
    if at < cutoff then
      status = 'e'
      payload = string.sub(value, start + rows)
    elseif row >= rows then
      status = 'r'
    elseif string.sub(value, start + row, start + row) == '1' then
      status = 'a'
    else
      status = 'm'
      value = string.sub(value, 1, start + row - 1) .. '1' .. string.sub(value, start + row + 1)
      redis.call('HSET', KEYS[1], id, value)
      payload = string.sub(value, start + rows)
    end
  end
  tally[status] = tally[status] + 1
  table.insert(out, status)
  table.insert(out, payload)
end
redis.call('HINCRBY', KEYS[3], 'matched', tally.m)
redis.call('HINCRBY', KEYS[3], 'unknown', tally.u)
redis.call('HINCRBY', KEYS[3], 'expired', tally.e)
redis.call('HINCRBY', KEYS[3], 'already_labelled', tally.a)
redis.call('HINCRBY', KEYS[3], 'invalid', tally.r)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]) + IDLE_GRACE)
return out
""").replace("IDLE_GRACE", str(IDLE_GRACE_S))

# KEYS: quality totals, window, alarm, the model's alerts. ARGV: window_rows, ttl_s, reference
# accuracy (or -1: none known), drop, threshold h, min labels, baseline rows, the per-row
# correctness string ('1'/'0', '' for a regressor), the version, the count of (field,
# increment) pairs, those pairs, then the window lines (oldest first). Keeps the CUSUM of
# modelgate.core.quality.cusum_step; appends a QualityAlert when it is raised or cleared.
SCORE = """
local window_rows, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local reference, drop, h = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local min_labels, baseline_rows = tonumber(ARGV[6]), tonumber(ARGV[7])
local outcomes, version = ARGV[8], ARGV[9]
local pairs_n = tonumber(ARGV[10])
for i = 11, 10 + 2 * pairs_n, 2 do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = 11 + 2 * pairs_n, #ARGV do
  redis.call('LPUSH', KEYS[2], ARGV[i])
end
redis.call('LTRIM', KEYS[2], 0, window_rows - 1)
if #outcomes > 0 then
  local st = redis.call('HMGET', KEYS[3], 's', 'n', 'p0', 'base_n', 'base_correct', 'alert',
                        'peak')
  local s, n = tonumber(st[1] or '0'), tonumber(st[2] or '0')
  local p0 = tonumber(st[3] or '-1')
  local base_n, base_correct = tonumber(st[4] or '0'), tonumber(st[5] or '0')
  local alert, peak = tonumber(st[6] or '0'), tonumber(st[7] or '0')
  local fired_n = nil
  local changes = {}
  for i = 1, #outcomes do
    local correct = string.sub(outcomes, i, i) == '1'
    if p0 < 0 and reference >= 0 then
      p0 = math.min(math.max(reference, 0.0), 1.0 - 1e-3)
      redis.call('HSET', KEYS[3], 'reference', 'lineage', 'p0', p0)
    end
    if p0 < 0 then
      base_n = base_n + 1
      if correct then base_correct = base_correct + 1 end
      if base_n >= baseline_rows then
        p0 = math.min(math.max(base_correct / base_n, 0.0), 1.0 - 1e-3)
        redis.call('HSET', KEYS[3], 'reference', 'baseline', 'p0', p0)
      end
    else
      local p1 = p0 - drop
      if p1 > 0 then
        if correct then s = s + math.log(p1 / p0) else s = s + math.log((1 - p1) / (1 - p0)) end
        if s < 0 then s = 0 end
        if s > 2 * h then s = 2 * h end
        n = n + 1
        if s > peak then peak = s end
        if alert == 0 and n >= min_labels and s > h then
          alert = 1
          fired_n = n
          table.insert(changes, {'raised', s, n})
        elseif alert == 1 and s == 0 then
          alert = 0
          table.insert(changes, {'cleared', s, n})
        end
      end
    end
  end
  redis.call('HSET', KEYS[3], 's', s, 'n', n, 'base_n', base_n, 'base_correct', base_correct,
             'alert', alert, 'h', h, 'peak', peak)
  local now = redis.call('TIME')
  if fired_n then
    redis.call('HSET', KEYS[3], 'fired_n', fired_n, 'fired_t', now[1])
  end
  for _, change in ipairs(changes) do
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ALERTS_MAXLEN_N, '*', 'version', version,
               'change', change[1], 's', change[2], 'h', h, 'p0', p0, 'n', change[3],
               't', now[1] .. '.' .. string.format('%06d', now[2]))
  end
  redis.call('EXPIRE', KEYS[3], ttl)
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return 1
""".replace("ALERTS_MAXLEN_N", str(ALERTS_MAXLEN))

KEYS = (
    (answers, "hash", "call id -> stored answer '{rows}:{flags}' + AnswerRecord (msgpack); "
     "bounded by feedback_max_rows and feedback_horizon_s (STORE); expires unused"),
    (times, "sorted set", "call id -> answer time; trimmed with the answers"),
    (counts, "hash", "stored answers' and labels' counters; 'rows' held now"),
    (quality, "hash", "a version's quality totals since it loaded (SCORE); expires unused"),
    (window, "list", "a version's last quality_window_rows labelled rows (SCORE)"),
    (alarm, "hash", "a version's CUSUM state of per-row correctness (SCORE)"),
    (alerts, "stream", "QualityAlert: a version's alarm raised or cleared, capped at "
     "ALERTS_MAXLEN"),
)
