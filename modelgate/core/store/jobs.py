"""Batch prediction jobs: each job's record, its progress and checkpoint, the results of its
chunks, the per-pool job stream workers take chunks from, and the scripts that keep them
exactly once.

A job scores a whole input file on one pinned version of one model. The coordinator (one per
deployment, under :data:`LEASE`) cuts the input into *chunks* of at most one ORT run, adds them
to the pool's :func:`job_stream` (at most a window of them at a time), and assembles the output
in input order from :func:`results` as they come in. A worker writes a chunk's result with
:data:`JOB_ANSWER`, which stores it under the (job, chunk) field only if no result is there
yet and acknowledges the entry in the same step: a chunk run twice (a worker died after
writing) keeps its first result, and the coordinator reads each chunk exactly once.

Bounds (Redis memory): a running job holds at most its window of chunk results (``window`` x
``chunk_rows`` rows, by default 16 x 256 rows, a few hundred KiB for a small model); a finished
job's record and progress are kept :data:`RETENTION_S` (a day) and then expire; an uploaded
input is at most :data:`MAX_UPLOAD_BYTES` (64 MiB), uploads held at once at most
:data:`UPLOADS_MAX_BYTES` (256 MiB), and an upload's output (staged here, since no folder holds
it; about 100 bytes a row) expires with the job. :data:`INDEX` keeps at most
:data:`INDEX_MAX` jobs (the oldest go first).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

import msgpack
import orjson

from modelgate.core.store import PREFIX

# Every job id, scored by when it was submitted (epoch s): GET /v2/jobs, and retention.
INDEX = f"{PREFIX}:jobs"
INDEX_MAX = 10_000
# Jobs the coordinator still has to act on (queued, running, or cancelled with chunks still to
# withdraw), scored likewise.
ACTIVE = f"{PREFIX}:jobs:active"
# Uploaded inputs held: job id -> bytes (an entry goes once its upload key expired). Uploads
# past UPLOADS_MAX_BYTES in all are refused (429): the job store never crowds out the queues.
UPLOADS = f"{PREFIX}:jobs:uploads"
UPLOADS_MAX_BYTES = 256 * 1024 * 1024
# The coordinator's lease ('{coordinator id}'): one coordinator per deployment acts.
LEASE = f"{PREFIX}:jobs:lease"
LEASE_TTL_S = 5.0

# Consumer group of the workers on a pool's job stream (a group of its own, apart from the
# online stream's, so the two lanes' reads and reclaims never mix).
JOB_GROUP = "job-workers"

# A finished job's keys (record, progress, upload, staged output) expire after this.
RETENTION_S = 24 * 3600
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_CHUNK_ROWS = 256
DEFAULT_WINDOW = 16


def job_stream(pool: str) -> str:
    """Stream of :class:`ChunkEntry` for one pool (``{model}:{version}``), read by its workers
    in :data:`JOB_GROUP` only when no online call waits. Under the pool's prefix, so it goes
    with the pool."""
    return f"{PREFIX}:pool:{pool}:jobs"


def spec(job_id: str) -> str:
    """The job's :class:`JobSpec` (JSON), written once at submission."""
    return f"{PREFIX}:job:{job_id}:spec"


def progress(job_id: str) -> str:
    """Hash: the job's :class:`Progress` (state, rows, checkpoint), kept by the coordinator."""
    return f"{PREFIX}:job:{job_id}:progress"


def results(job_id: str) -> str:
    """Hash: chunk field (:func:`piece_field`) -> :class:`Piece` (msgpack), written once each by
    :data:`JOB_ANSWER`; the coordinator deletes a chunk's fields once it is in the output."""
    return f"{PREFIX}:job:{job_id}:results"


def chunk_rows(job_id: str) -> str:
    """Hash: chunk sequence number -> rows of it whose result is written (a chunk split after
    its worker died answers in parts)."""
    return f"{PREFIX}:job:{job_id}:chunks"


def upload(job_id: str) -> str:
    """The uploaded input file's bytes (at most MAX_UPLOAD_BYTES)."""
    return f"{PREFIX}:job:{job_id}:upload"


def output(job_id: str) -> str:
    """List of JSONL blocks: the output of a job whose input was uploaded (no folder holds
    it), in input order."""
    return f"{PREFIX}:job:{job_id}:output"


def patch(job_id: str) -> str:
    """List of JSONL blocks: a retry's new lines for the failed rows of an uploaded job,
    merged into :func:`output` when the retry ends."""
    return f"{PREFIX}:job:{job_id}:patch"


def job_keys(job_id: str) -> tuple[str, ...]:
    return (spec(job_id), progress(job_id), results(job_id), chunk_rows(job_id),
            upload(job_id), output(job_id), patch(job_id))


def piece_field(seq: int, offset: int | None = None) -> str:
    """A whole chunk's result field, or (``offset``) that of one row split out of it."""
    return str(seq) if offset is None else f"{seq}.{offset}"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = (JobState.SUCCEEDED, JobState.COMPLETED_WITH_FAILURES, JobState.FAILED,
         JobState.CANCELLED)
INPUT_FORMATS = ("csv", "jsonl", "parquet", "npy", "npz")
OUTPUT_FORMATS = ("jsonl", "parquet")


class JobRecordError(ValueError):
    """A stored job record that is not one of this format."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What was submitted. ``input_path``/``output_path`` are relative to the jobs folder
    (None: uploaded input, output kept in the job store); ``version`` and ``sha256`` are the
    version pinned at submission."""

    id: str
    model: str
    version: str
    sha256: str
    input_format: str
    output_format: str
    input_path: str | None = None
    output_path: str | None = None
    id_column: str | None = None
    owner: str = "anonymous"  # the submitting key's id (never the key)
    submitted_at: float = 0.0
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    window: int = DEFAULT_WINDOW

    @property
    def pool(self) -> str:
        return f"{self.model}:{self.version}"

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> JobSpec:
        try:
            data = orjson.loads(raw)
            return cls(**{k: v for k, v in data.items() if k in cls.__slots__})
        except (orjson.JSONDecodeError, TypeError) as e:
            raise JobRecordError(f"not a job spec: {e}") from e


@dataclass(frozen=True, slots=True)
class Progress:
    """The job's state and checkpoint.

    ``assembled`` rows (and ``mark``: output bytes, or staged blocks for uploads) are in the
    output, in input order; ``issued`` rows have been cut into chunks, ``next_seq`` chunks so
    far. A coordinator resuming truncates the output to ``mark`` and goes on from there: chunks
    issued but not assembled are on the job stream or in :func:`results`.
    """

    state: str = JobState.QUEUED
    total: int | None = None
    done: int = 0  # rows in the output with outputs
    failed: int = 0  # rows in the output with an error
    assembled: int = 0
    assembled_seq: int = 0  # chunks assembled
    issued: int = 0
    next_seq: int = 0
    mark: int = 0
    attempt: int = 1
    rows_per_s: float = 0.0
    started_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""
    cancel: bool = False
    prepared: bool = False  # this attempt's rows are counted (a retry: its failed rows)
    retrying: int = 0  # rows this retry runs again

    def fields(self) -> dict[str, str]:
        return {k: ("" if v is None else str(int(v)) if isinstance(v, bool) else str(v))
                for k, v in asdict(self).items()}

    @classmethod
    def parse(cls, raw: Mapping[bytes, bytes]) -> Progress:
        text = {k.decode(): v.decode() for k, v in raw.items()}
        try:
            values: dict[str, Any] = {name: int(text.get(name) or 0) for name in _INTS}
            values.update({name: float(text.get(name) or 0.0) for name in _FLOATS})
            return cls(
                state=text.get("state", JobState.QUEUED),
                total=int(text["total"]) if text.get("total") else None,
                error=text.get("error", ""), cancel=text.get("cancel") == "1",
                prepared=text.get("prepared") == "1", retrying=int(text.get("retrying") or 0),
                **values)
        except ValueError as e:
            raise JobRecordError(f"not a job's progress: {e}") from e

    def with_(self, **changes: Any) -> Progress:
        return replace(self, **changes)


_INTS = ("done", "failed", "assembled", "assembled_seq", "issued", "next_seq", "mark",
         "attempt")
_FLOATS = ("rows_per_s", "started_at", "updated_at", "finished_at")


class EntryError(ValueError):
    """Stream entry fields that are not a chunk entry of this format."""


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    """One chunk on a pool's job stream.

    ``job``      the job id (results go to :func:`results` of it, nowhere else)
    ``seq``      the chunk's sequence number in the job's attempt
    ``offset``   None for a whole chunk; the row's offset when split out of one
    ``ids``      msgpack list of the chunk's row ids (the id column's values, else positions)
    ``errors``   msgpack list of [offset, message] of rows that failed validation
    ``attempt``  deliveries before this entry was written (a split row carries its chunk's)
    ``payload``  ``wire.encode_bundle`` of the valid rows, one id per row (its offset)
    """

    job: str
    seq: int
    ids: bytes
    errors: bytes
    payload: bytes
    offset: int | None = None
    attempt: int = 1

    def fields(self) -> list[bytes | str | int]:
        items: list[bytes | str | int] = ["job", self.job, "seq", self.seq, "ids", self.ids,
                                          "errors", self.errors, "attempt", self.attempt,
                                          "payload", self.payload]
        if self.offset is not None:
            items += ["offset", self.offset]
        return items

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes]) -> ChunkEntry:
        try:
            offset = fields.get(b"offset")
            return cls(fields[b"job"].decode(), int(fields[b"seq"]), fields[b"ids"],
                       fields.get(b"errors", b"\x90"), fields.get(b"payload", b""),
                       int(offset) if offset is not None else None,
                       max(1, int(fields.get(b"attempt", b"1"))))
        except KeyError as e:
            raise EntryError(f"chunk entry lacks its {e.args[0].decode()!r} field") from e
        except (ValueError, UnicodeDecodeError) as e:
            raise EntryError(f"chunk entry has a malformed field: {e}") from e


@dataclass(frozen=True, slots=True)
class Piece:
    """A chunk's result (or a split row's): per row, in offset order, the row id and either
    its outputs (``outputs[name]`` is a list with one value per row that has outputs, in
    order) or its error."""

    seq: int
    ids: list[Any]
    errors: dict[int, str] = field(default_factory=dict)
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    first: int = 0  # the offset of ids[0] in its chunk

    def encode(self) -> bytes:
        return msgpack.packb({"v": 1, "seq": self.seq, "first": self.first, "ids": self.ids,
                              "errors": [[k, v] for k, v in self.errors.items()],
                              "outputs": self.outputs})

    @classmethod
    def decode(cls, raw: bytes) -> Piece:
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            if data.get("v") != 1:
                raise JobRecordError(f"result piece of version {data.get('v')!r}, expected 1")
            return cls(int(data["seq"]), list(data["ids"]),
                       {int(k): str(v) for k, v in data["errors"]}, dict(data["outputs"]),
                       int(data.get("first", 0)))
        except (ValueError, TypeError, KeyError, AttributeError,
                msgpack.UnpackException) as e:
            raise JobRecordError(f"not a result piece: {e}") from e


def pack(value: Any) -> bytes:
    return msgpack.packb(value)


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


# A worker's answer to one chunk: the result under its (job, chunk) field only if none is there
# (a chunk run twice keeps its first result) and only while the job runs (a chunk that ends
# after its job was cancelled or expired leaves nothing behind), the chunk's written-rows count
# raised only then, an optional dead letter, then the entry acknowledged and deleted. Only keys
# under mg:job: are written besides the stream and its dead letters, whatever the entry named.
# KEYS: the job stream, the job's results hash, its chunk counts hash, the dead-letter stream,
# the job's progress hash.
# ARGV: group, entry id, field, seq, rows, piece, dead-letter MAXLEN, then a letter's items.
# Returns 1 when this answer was the first for the field.
JOB_ANSWER = """
local jobs = '@jobs@'
local first = 0
local ours = string.sub(KEYS[2], 1, #jobs) == jobs and string.sub(KEYS[3], 1, #jobs) == jobs
  and string.sub(KEYS[5], 1, #jobs) == jobs
if ours and redis.call('TYPE', KEYS[5])['ok'] == 'hash'
    and redis.call('HGET', KEYS[5], 'state') == 'running' then
  local added = redis.pcall('HSETNX', KEYS[2], ARGV[3], ARGV[6])
  if type(added) == 'table' and added.err then return redis.error_reply(added.err) end
  if added == 1 then
    redis.call('HINCRBY', KEYS[3], ARGV[4], ARGV[5])
    first = 1
  end
end
if #ARGV > 7 then
  local written = redis.pcall('XADD', KEYS[4], 'MAXLEN', ARGV[7], '*', unpack(ARGV, 8, #ARGV))
  if type(written) == 'table' and written.err then return redis.error_reply(written.err) end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return first
""".replace("@jobs@", f"{PREFIX}:job:")


# A chunk taken over from a dead worker becomes one entry per row (so a row that kills the
# runtime takes no neighbour with it), unless its first worker acknowledged it meanwhile.
# KEYS: the job stream. ARGV: group, entry id, fields per new entry, then their items.
JOB_SPLIT = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
local width = tonumber(ARGV[3])
for i = 4, #ARGV, width do
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i, i + width - 1))
end
return 1
"""

# Set a job's progress fields only while its state is one of those given, in one step with the
# check (the coordinator starting a job must not overwrite a cancel that came meanwhile).
# KEYS: progress. ARGV: the allowed states (comma-separated), then field/value pairs.
# Returns 1 when set.
SET_IF_STATE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or not string.find(',' .. ARGV[1] .. ',', ',' .. state .. ',', 1, true) then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# Cancel a job: cancelled at once. A queued one leaves the active set (nothing runs it yet); a
# running one stays in it, marked, until the coordinator has withdrawn its chunks (a chunk a
# worker is running finishes and its result is dropped: JOB_ANSWER writes only for a running
# job). KEYS: progress, the active set. ARGV: job id, now. Returns 'cancelled', or
# 'ended:STATE' for a job that had ended already.
CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'cancel', '1', 'finished_at', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'cancelled'
end
if state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'cancel', '1', 'finished_at', ARGV[2])
  return 'cancelled'
end
return 'ended:' .. state
"""

# Retry the failed rows of a job that completed with failures: queued again, its chunk
# counters reset for the new attempt (whose output patches the previous one's).
# KEYS: progress, the active set, then the job's keys to keep (spec, upload, output).
# ARGV: job id, now. Returns the state after (or the state that refused it).
RETRY = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state ~= 'completed_with_failures' then return state end
redis.call('HSET', KEYS[1], 'state', 'queued', 'cancel', '0', 'error', '', 'finished_at', '0',
           'issued', '0', 'next_seq', '0', 'assembled', '0', 'assembled_seq', '0', 'mark', '0',
           'prepared', '0', 'rows_per_s', '0')
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
for i = 1, #KEYS do
  if i ~= 2 then redis.call('PERSIST', KEYS[i]) end
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 'queued'
"""


def now_s() -> float:
    return time.time()


def is_job_key(key: str) -> bool:
    return key.startswith(f"{PREFIX}:job:")


def cancel_command(job_id: str, now: float) -> tuple[str | int | float, ...]:
    return ("EVAL", CANCEL, 2, progress(job_id), ACTIVE, job_id, f"{now:.3f}")


def retry_command(job_id: str, now: float) -> tuple[str | int | float, ...]:
    keys = (progress(job_id), ACTIVE, spec(job_id), upload(job_id), output(job_id))
    return ("EVAL", RETRY, len(keys), *keys, job_id, f"{now:.3f}")


KEYS = (
    (INDEX, "sorted set", f"job id -> submitted (epoch s); at most INDEX_MAX ({INDEX_MAX:,})"),
    (ACTIVE, "sorted set", "ids of jobs the coordinator acts on -> submitted"),
    (UPLOADS, "hash", "job id -> bytes of its uploaded input; at most UPLOADS_MAX_BYTES in all"),
    (LEASE, "string", "the job coordinator's id; expires after LEASE_TTL_S unless renewed"),
    (job_stream, "stream", "ChunkEntry (group JOB_GROUP); at most the jobs' windows of chunks"),
    (spec, "string", "JobSpec (JSON); expires RETENTION_S after the job ends"),
    (progress, "hash", "Progress: state, rows, checkpoint; expires with the job"),
    (results, "hash", "chunk -> Piece (msgpack), written once (JOB_ANSWER); a window at most"),
    (chunk_rows, "hash", "chunk -> rows of it answered; a window at most"),
    (upload, "string", "an uploaded input, at most MAX_UPLOAD_BYTES; expires with the job"),
    (output, "list", "JSONL output of an uploaded job; expires with the job"),
    (patch, "list", "a retry's JSONL lines of an uploaded job's failed rows; expires with it"),
)
