"""A pool's keys: its request stream and the entries on it, its backlog count, its workers, the
autoscaler's wish for it, its dead letters and per-second counters -- and the scripts that
keep the stream and the count in step.

A *pool* is the set of workers serving one version of one model; its id is
``{model}:{version}`` and every key of it starts ``mg:pool:{model}:{version}:``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from modelgate.core.store import PREFIX
from modelgate.core.store.replies import PREFIX_REPLIES

# Consumer group every worker of a pool reads the pool's request stream in.
WORKER_GROUP = "workers"

# A worker announced as starting (loading its model) counts as such for this long; one that
# never finishes (killed while loading) stops holding calls after it.
STARTING_GRACE_S = 120.0


def pool_id(model: str, version: str) -> str:
    return f"{model}:{version}"


def _key(pool: str, name: str) -> str:
    return f"{PREFIX}:pool:{pool}:{name}"


def requests_stream(pool: str) -> str:
    """Stream of request entries (:class:`RequestEntry`): XADD by gateways, XREADGROUP by
    workers in :data:`WORKER_GROUP`; an entry leaves it when a worker acknowledges it."""
    return _key(pool, "requests")


def queued(pool: str) -> str:
    """Requests queued for the pool and not yet answered: the backlog, in requests.

    Gateways add a bundle's request count in the same write as its XADD; workers subtract it
    in :data:`ANSWER` for the entries they acknowledge. An entry holds several requests, so the
    stream's length is not the backlog (it counts entries).
    """
    return _key(pool, "queued")


def worker_set(pool: str) -> str:
    """Sorted set of the ids of workers serving the pool, scored by their last heartbeat
    (epoch s); a member older than ``heartbeats.WORKER_TTL_S`` is not live."""
    return _key(pool, "workers")


def starting_set(pool: str) -> str:
    """Sorted set of the ids of workers loading their model for the pool, scored by when they
    began. Gateways hold a call for a pool with no live worker while one is starting, within
    the call's deadline (scale from zero, restarts)."""
    return _key(pool, "starting")


def desired(pool: str) -> str:
    """The autoscaler's latest desired worker count (an integer; expires unless renewed)."""
    return _key(pool, "desired")


def dead_letters(pool: str) -> str:
    """Stream of entries delivered too often without an answer (:class:`DeadLetter`), bounded
    by count (:data:`DEAD_LETTER_MAXLEN`), age (:data:`DEAD_LETTER_MAX_AGE_MS`) and the payload
    kept per letter (:data:`DEAD_LETTER_PAYLOAD_MAX_BYTES`)."""
    return _key(pool, "dead")


# The dead-letter stream's bounds: at most this many letters (the oldest go first), none older
# than a week, and a payload kept only up to 64 KiB (a larger one is replaced by its size), so
# a pool's dead letters take at most about 1,000 x 65 KiB = 65 MiB of Redis memory.
DEAD_LETTER_MAXLEN = 1_000
DEAD_LETTER_MAX_AGE_MS = 7 * 24 * 3600 * 1000
DEAD_LETTER_PAYLOAD_MAX_BYTES = 64 * 1024


def stats(pool: str, epoch_s: int) -> str:
    """Hash of one second's counters (``modelgate.core.stats``); expires after minutes."""
    return _key(pool, f"stats:{epoch_s}")


def pool_pattern(pool: str) -> str:
    """A SCAN pattern matching every key of one pool (model names hold no glob characters)."""
    return f"{PREFIX}:pool:{pool}:*"


def pools_pattern() -> str:
    """A SCAN pattern matching every pool's request stream (:func:`pool_of_stream` inverts)."""
    return f"{PREFIX}:pool:*:requests"


def pool_of_stream(stream: str) -> str:
    """The pool id of a :func:`requests_stream` key."""
    return stream.removeprefix(f"{PREFIX}:pool:").removesuffix(":requests")


class EntryError(ValueError):
    """Stream entry fields that are not a request entry of this format."""


@dataclass(frozen=True, slots=True)
class RequestEntry:
    """The fields of one request entry: a bundle of calls (``modelgate.core.wire``).

    ``ids``        the calls' correlation ids (unique per gateway), outside the payload so
                   that even an undecodable payload gets its callers an answer
    ``reply_to``   the gateway's reply list (``replies.reply_list``)
    ``budget_ms``  milliseconds from the entry's stream id (Redis's clock when it was added)
                   to the deadline of its last call: deadlines never compare two hosts' clocks
    ``attempt``    deliveries before this entry was written: 1 when a gateway adds it; a bundle
                   split after its worker died carries the deliveries so far, so a poison pill
                   is still parked after ``max_deliveries``
    ``payload``    the bundle, ``wire.encode_bundle``; empty when ``arena`` is set
    ``arena``      where the bundle is instead, when its gateway holds it in shared memory:
                   ``name:start:length`` of its arena (``modelgate.core.arena``); absent
                   otherwise
    ``store``      what the worker stores each call's answer under for feedback (the call's
                   id, ``""`` for a call not stored), as a msgpack list aligned with ``ids``;
                   absent when none is asked (``modelgate.worker.stored_answers``)
    """

    ids: tuple[str, ...]
    reply_to: str
    budget_ms: int
    attempt: int
    payload: bytes
    arena: bytes = b""
    store: tuple[str, ...] = ()

    def fields(self) -> list[bytes | str | int]:
        """Name/value items in XADD order (``payload`` last but for ``arena``)."""
        items: list[bytes | str | int] = [
            "ids", encode_ids(self.ids), "reply_to", self.reply_to, "budget_ms", self.budget_ms,
            "attempt", self.attempt]
        if self.store:  # even all "": the entries a bundle is split into share one layout
            items += ["store", encode_store_keys(self.store)]
        items += ["payload", self.payload]
        if self.arena:
            items += ["arena", self.arena]
        return items

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes]) -> RequestEntry:
        """Raises EntryError naming what is missing or malformed."""
        try:
            ids = decode_ids(fields[b"ids"])
            reply_to = fields[b"reply_to"].decode()
            budget_ms = int(fields[b"budget_ms"])
        except KeyError as e:
            raise EntryError(f"entry lacks its {e.args[0].decode()!r} field") from e
        except (ValueError, UnicodeDecodeError) as e:
            raise EntryError(f"entry has a malformed field: {e}") from e
        return cls(ids, reply_to, budget_ms, attempt_of(fields), fields.get(b"payload", b""),
                   fields.get(b"arena", b""), store_keys_of(fields, len(ids)))


def entry_time_ms(entry_id: bytes | str) -> int:
    """Redis's clock (epoch ms) when the entry was added: the first part of its stream id."""
    raw = entry_id.encode() if isinstance(entry_id, str) else entry_id
    return int(raw.split(b"-", 1)[0])


def encode_ids(ids: Sequence[str]) -> str:
    return ",".join(ids)


def decode_ids(raw: bytes) -> tuple[str, ...]:
    """The ``ids`` field; raises EntryError unless it names at least one id."""
    try:
        ids = tuple(raw.decode().split(","))
    except UnicodeDecodeError as e:
        raise EntryError("entry 'ids' is not UTF-8") from e
    if not all(ids):
        raise EntryError(f"entry 'ids' {raw[:80]!r} is not a comma-separated list of ids")
    return ids


def encode_store_keys(keys: Sequence[str]) -> bytes:
    return msgpack.packb(list(keys))


def store_keys_of(fields: Mapping[bytes, bytes], count: int) -> tuple[str, ...]:
    """The ``store`` field: one key per id; () when absent or malformed (storing an answer
    is never a reason to fail its call)."""
    raw = fields.get(b"store")
    if not raw:
        return ()
    try:
        keys = msgpack.unpackb(raw)
    except (ValueError, TypeError, msgpack.UnpackException):
        return ()
    if (not isinstance(keys, list) or len(keys) != count
            or not all(isinstance(key, str) for key in keys)):
        return ()
    return tuple(keys)


def attempt_of(fields: Mapping[bytes, bytes]) -> int:
    """Deliveries an entry had before it was written (its ``attempt`` field; 1 if absent)."""
    try:
        return max(1, int(fields.get(b"attempt", b"1")))
    except ValueError:
        return 1


_LETTER_FIELDS = (b"original_id", b"deliveries", b"parked_at_ms")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry parked in :func:`dead_letters`: its original fields, plus where it came from,
    how often it was delivered and when it was parked.

    A ``payload`` over :data:`DEAD_LETTER_PAYLOAD_MAX_BYTES` is not kept: the letter holds
    ``payload_bytes`` (its size) instead, and the rest of the entry (ids, reply list, budget).
    """

    fields: dict[bytes, bytes]
    original_id: bytes
    deliveries: int
    parked_at_ms: int

    def items(self) -> list[bytes | str | int]:
        fields = dict(self.fields)
        payload = fields.get(b"payload", b"")
        if len(payload) > DEAD_LETTER_PAYLOAD_MAX_BYTES:
            del fields[b"payload"]
            fields[b"payload_bytes"] = str(len(payload)).encode()
        items: list[bytes | str | int] = [
            part for name, value in fields.items() for part in (name, value)]
        return [*items, "original_id", self.original_id, "deliveries", self.deliveries,
                "parked_at_ms", self.parked_at_ms]

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes]) -> DeadLetter:
        try:
            return cls({k: v for k, v in fields.items() if k not in _LETTER_FIELDS},
                       fields[b"original_id"], int(fields[b"deliveries"]),
                       int(fields[b"parked_at_ms"]))
        except (KeyError, ValueError) as e:
            raise EntryError(f"not a dead letter: {e}") from e


# Reads the queued count, resetting it to 0 when the stream is empty: a count left off by a
# write resent after a dropped connection (or lost with Redis) heals once the pool drains.
# Gateways INCRBY in the write that XADDs and workers DECRBY with XDEL in one script (ANSWER), so
# an empty stream means nothing is queued.
# KEYS: the pool's requests stream, its queued count.
QUEUED_REPAIR = """
local queued = tonumber(redis.call('GET', KEYS[2]) or '0')
if queued ~= 0 and redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], 0)
  return 0
end
return queued
"""

# Write a worker's answers, then acknowledge their entries -- only if every answer was written.
# Redis at maxmemory (noeviction) refuses the first write that may grow memory (RPUSH, XADD),
# and did so to a plain RPUSH while the XACK after it still ran: the entry was acknowledged and
# its answer lost. Here each write is a redis.pcall; a refused one ends the script before any
# acknowledgement, and the worker keeps the answers and sends them again. (Once one write has
# run, Redis lets the rest of the script run: it never stops a script half done.) A reply list
# holding another type of value (an operator's mistake, never healed by waiting) gets no reply:
# its entries are acknowledged and the count of replies dropped returned. Only keys under
# mg:replies: are written to, whatever the caller passes. The queued count drops by the
# requests of the entries this call acknowledged, so an entry answered twice (its worker was
# slow, not dead, and another took it over) is not subtracted twice.
# KEYS: the request stream, its queued count, its dead-letter stream, then the reply lists.
# ARGV: group, reply TTL (ms), dead-letter MAXLEN, entries (n), letters (d); then n pairs
# (entry id, requests in it); then d letters, each its item count and its items (XADD
# name/value items); then per reply list, in KEYS order, its reply count and the replies.
# Returns {1, requests acknowledged, replies dropped}, or {0, the refusal} with nothing acked.
ANSWER = """
local replies = '@replies@'
local n, d = tonumber(ARGV[4]), tonumber(ARGV[5])
local at = 6 + 2 * n
for i = 1, d do
  local width = tonumber(ARGV[at])
  local written = redis.pcall('XADD', KEYS[3], 'MAXLEN', ARGV[3], '*',
                              unpack(ARGV, at + 1, at + width))
  if type(written) == 'table' and written.err then return {0, written.err} end
  at = at + 1 + width
end
local dropped = 0
for k = 4, #KEYS do
  local count = tonumber(ARGV[at])
  local kind = redis.call('TYPE', KEYS[k])['ok']
  if string.sub(KEYS[k], 1, #replies) ~= replies or (kind ~= 'list' and kind ~= 'none') then
    dropped = dropped + count
  else
    for s = at + 1, at + count, 1000 do
      local written = redis.pcall('RPUSH', KEYS[k], unpack(ARGV, s, math.min(s + 999, at + count)))
      if type(written) == 'table' and written.err then return {0, written.err} end
    end
    redis.call('PEXPIRE', KEYS[k], ARGV[2])
  end
  at = at + 1 + count
end
local done = 0
for i = 6, 5 + 2 * n, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    done = done + tonumber(ARGV[i + 1])
  end
  redis.call('XDEL', KEYS[1], ARGV[i])
end
if done > 0 then redis.call('DECRBY', KEYS[2], done) end
return {1, done, dropped}
""".replace("@replies@", PREFIX_REPLIES)


@dataclass(frozen=True, slots=True)
class Answered:
    """What :data:`ANSWER` did: everything (``written``), or nothing, refused with ``error``."""

    written: bool
    acked_requests: int = 0
    dropped_replies: int = 0
    error: str = ""

    @classmethod
    def parse(cls, result: Sequence[Any]) -> Answered:
        if int(result[0]) == 1:
            return cls(True, int(result[1]), int(result[2]))
        error = result[1]
        return cls(False, error=error.decode() if isinstance(error, bytes) else str(error))


def answer_command(pool: str, entries: Sequence[tuple[bytes, int]],
                   replies_by_list: Mapping[str, Sequence[bytes]], reply_ttl_ms: int,
                   letters: Sequence[DeadLetter] = ()) -> tuple[bytes | str | int, ...]:
    """The EVAL of :data:`ANSWER`: ``letters`` to park, replies (encoded, by reply list), then
    the acknowledgement of ``entries`` (entry id, requests in it)."""
    keys = [requests_stream(pool), queued(pool), dead_letters(pool), *replies_by_list]
    argv: list[bytes | str | int] = [WORKER_GROUP, reply_ttl_ms, DEAD_LETTER_MAXLEN,
                                     len(entries), len(letters)]
    for entry_id, requests in entries:
        argv += [entry_id, requests]
    for letter in letters:
        items = letter.items()
        argv += [len(items), *items]
    for encoded in replies_by_list.values():
        argv += [len(encoded), *encoded]
    return ("EVAL", ANSWER, len(keys), *keys, *argv)


# Remove a consumer from the group once it is dead and holds nothing: workers' consumer names
# are new with every process, so the group would otherwise grow with every restart. Atomic, so
# a consumer that beats or reads meanwhile is kept (deleting one with pending entries would
# drop them from the group for good). Returns 1 if removed.
# KEYS: the request stream, the consumer's heartbeat hash, the pool's worker set.
# ARGV: group, consumer, the oldest heartbeat (epoch s) that still counts as alive.
FORGET_CONSUMER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local beat = redis.call('ZSCORE', KEYS[3], ARGV[2])
if beat and tonumber(beat) >= tonumber(ARGV[3]) then return 0 end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
local removed = redis.pcall('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
if type(removed) == 'table' and removed.err then return 0 end
return 1
"""


# Drop dead letters older than DEAD_LETTER_MAX_AGE_MS, in Redis's clock (workers run it
# once a reclaim round; XTRIM never needs memory, so it runs at maxmemory too).
# KEYS: the dead-letter stream. ARGV: the maximum age (ms). Returns letters dropped.
DEAD_LETTER_TRIM = """
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 - tonumber(ARGV[1])
if cutoff <= 0 then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', cutoff)
"""


# Replace a claimed bundle by one entry per request, unless it was acknowledged meanwhile. The
# queued count is unchanged: the same requests stay queued. Each new entry's budget_ms is
# taken down by the time since the bundle was added, so its deadline stays where it was.
# KEYS: stream. ARGV: group, entry id, the bundle's budget_ms, fields per new entry (name/value
# items, budget_ms last but one), then the new entries' items.
SPLIT = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local added_ms = tonumber(string.match(ARGV[2], '^(%d+)'))
local budget = tonumber(ARGV[3]) - (now_ms - added_ms)
local width = tonumber(ARGV[4])
for i = 5, #ARGV, width do
  local fields = {unpack(ARGV, i, i + width - 1)}
  for j = 1, width, 2 do
    if fields[j] == 'budget_ms' then fields[j + 1] = tostring(budget) end
  end
  redis.call('XADD', KEYS[1], '*', unpack(fields))
end
return 1
"""


@dataclass(frozen=True, slots=True)
class PoolGauges:
    """A pool's state right now: the one reading of it that every process shares."""

    live_workers: int
    starting_workers: int
    backlog: int  # requests queued and not yet answered (see :func:`queued`)
    desired: int | None  # the autoscaler's latest wish; None when no autoscaler runs


GAUGE_COMMANDS = 4
# The keys read_gauges reads, in order, as problems name them.
GAUGE_KEYS = ("workers", "starting", "queued", "desired")
# No pool runs this many workers: a desired count past it is not one (and would overflow the
# float a metric holds).
MAX_DESIRED = 1_000_000


def read_gauges(pipe: Any, pool: str, now: float, worker_ttl_s: float) -> None:
    """Queue the :data:`GAUGE_COMMANDS` commands whose results :func:`gauges_from` reads, on
    a sync or asyncio pipeline. Repairs a stale backlog count on the way (QUEUED_REPAIR)."""
    pipe.zcount(worker_set(pool), now - worker_ttl_s, "+inf")
    pipe.zcount(starting_set(pool), now - STARTING_GRACE_S, "+inf")
    pipe.eval(QUEUED_REPAIR, 2, requests_stream(pool), queued(pool))
    pipe.get(desired(pool))


def gauges_from(results: Sequence[Any], problems: list[str] | None = None) -> PoolGauges:
    """The gauges from the results of :func:`read_gauges`' commands, in order.

    Results may be exceptions (a pipeline run with ``raise_on_error=False``: Redis refused the
    command, e.g. a key of another type). Those, and values that are not what their key holds,
    read as absent (0, or no desired count) and are described in ``problems``."""
    found = problems if problems is not None else []
    values = list(results[:GAUGE_COMMANDS])
    for i, (key, value) in enumerate(zip(GAUGE_KEYS, values, strict=True)):
        if isinstance(value, Exception):
            found.append(f"{key}: Redis refused the read ({value})")
            values[i] = None
    live, starting_count, backlog, wanted = values
    wanted_count = _int_or_none(wanted)
    if wanted_count is not None and not 0 <= wanted_count <= MAX_DESIRED:
        wanted_count = None
    if wanted is not None and wanted_count is None:
        found.append(f"desired: {_shown(wanted)} is not a worker count")
    return PoolGauges(int(live or 0), int(starting_count or 0), queued_count(backlog),
                      wanted_count)


def _shown(raw: bytes | str | int) -> str:
    """A value read from Redis, cut short for a log line."""
    text = repr(raw)
    return text if len(text) <= 40 else f"{text[:37]}..."


def queued_count(raw: bytes | str | int | None) -> int:
    """The value of :func:`queued` as read back: absent, malformed or negative is 0."""
    try:
        return max(0, int(raw)) if raw is not None else 0
    except ValueError:
        return 0


def _int_or_none(raw: bytes | str | int | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:  # not digits, or more digits than int() converts
        return None


# Every key of this family: (key, Redis type, the record stored under it).
KEYS = (
    (requests_stream, "stream", "RequestEntry (group WORKER_GROUP)"),
    (queued, "string", "integer: requests queued; ANSWER and QUEUED_REPAIR keep it"),
    (worker_set, "sorted set", "worker id -> last heartbeat (epoch s)"),
    (starting_set, "sorted set", "worker id -> when it began loading (epoch s)"),
    (desired, "string", "integer; expires with the autoscaler"),
    (dead_letters, "stream",
     "DeadLetter; at most 1,000, a week old, a 64 KiB payload each (DEAD_LETTER_*)"),
    (stats, "hash", "one second's counters (modelgate.core.stats)"),
)
