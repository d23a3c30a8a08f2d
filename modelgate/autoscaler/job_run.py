"""One batch job as the coordinator runs it (``coordinator.py``): starting or resuming it from
its checkpoint, issuing chunks to its pool's job stream within its window, assembling their
results in input order, ending it. Each step that must move together with another is one
Redis transaction: a chunk's ``XADD`` with the count of chunks issued; an assembled chunk's
checkpoint with the deletion of its result.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from modelgate.autoscaler import job_sinks
from modelgate.core import wire
from modelgate.core.batch import output as output_format
from modelgate.core.batch.paths import confine
from modelgate.core.batch.readers import Chunk, InputFile
from modelgate.core.errors import ModelgateError
from modelgate.core.repository import ModelVersion, RepositoryError, read_version
from modelgate.core.store import jobs
from modelgate.core.store import models as model_store
from modelgate.core.store.jobs import JobSpec, JobState, Progress
from modelgate.core.store.models import ModelState, VersionStatus

log = logging.getLogger("modelgate.coordinator")

RATE_WINDOW_S = 5.0
VERSION_CHECK_S = 1.0


class JobFailed(Exception):
    """The job cannot go on; the message, for its record, says why and what to do."""


class JobCancelled(Exception):
    """The job was cancelled while this coordinator started it: the next round ends it."""


class JobRun:
    """One active job as this coordinator runs it."""

    def __init__(self, client: redis.Redis, spec: JobSpec, models_dir: Path,
                 jobs_dir: Path | None) -> None:
        self.client = client
        self.spec = spec
        self.models_dir = models_dir
        self.jobs_dir = jobs_dir
        self.version: ModelVersion | None = None
        self.input: InputFile | None = None
        self.chunks: Iterator[Chunk] | None = None
        self.full: job_sinks.Stage | None = None
        self.patch: job_sinks.Stage | None = None
        self.positions: list[int] | None = None  # a retry's rows: the failed ones
        self.rows_total = 0  # this attempt's rows
        self.exhausted = False
        self.ended = False
        self.rates: deque[tuple[float, int]] = deque()
        self.checked_version_at = 0.0

    # -- starting and resuming

    def start(self, progress: Progress, now: float) -> Progress:
        spec = self.spec
        try:
            self.version = read_version(self.models_dir, spec.model, spec.version)
        except (RepositoryError, OSError) as e:
            raise JobFailed(f"version {spec.version} of model {spec.model!r} cannot be read "
                            f"from the repository ({e}); submit the job again") from e
        if spec.sha256 and self.version.sha256 != spec.sha256:
            raise JobFailed(f"version {spec.version} of model {spec.model!r} changed content "
                            "since the job was submitted; submit it again")
        self.input = InputFile(self._source(), spec.input_format, spec.id_column, self.version)
        self.full = job_sinks.stage_of(self.client, spec, self.jobs_dir, patch=False)
        attempt_stage = self.full
        if progress.attempt > 1:
            self.positions = output_format.failed_positions(self.full.lines())
            self.patch = job_sinks.stage_of(self.client, spec, self.jobs_dir, patch=True)
            attempt_stage = self.patch
            self.rows_total = len(self.positions)
            self.chunks = self.input.chunks(spec.chunk_rows,
                                            only=set(self.positions[progress.issued:]))
        else:
            self.rows_total = self.input.total
            self.chunks = self.input.chunks(spec.chunk_rows, start=progress.issued)
        attempt_stage.cut(progress.mark)
        changes: dict[str, Any] = {"state": JobState.RUNNING, "updated_at": now}
        if not progress.prepared:
            changes.update(prepared=True, started_at=now)
            if progress.attempt > 1:
                changes.update(retrying=self.rows_total,
                               failed=progress.failed - self.rows_total)
            else:
                changes.update(total=self.rows_total)
        elif progress.state == JobState.QUEUED:
            changes["started_at"] = now
        progress = progress.with_(**changes)
        fields = [item for k, v in progress.fields().items() if k in changes
                  for item in (k, v)]
        if not self.client.eval(jobs.SET_IF_STATE, 1, jobs.progress(spec.id),
                                f"{JobState.QUEUED},{JobState.RUNNING}", *fields):
            raise JobCancelled()
        log.info("job %s: %s on %s, %d rows (attempt %d, from row %d)", spec.id,
                 "resumed" if progress.issued else "started", spec.pool, self.rows_total,
                 progress.attempt, progress.issued)
        return progress

    def _source(self) -> Path | bytes:
        if self.spec.input_path is None:
            data = self.client.get(jobs.upload(self.spec.id))
            if data is None:
                raise JobFailed("the uploaded input is gone from the job store (Redis lost it, "
                                "or it expired); submit the job again")
            return data
        try:
            return confine(self.jobs_dir, self.spec.input_path, "input")
        except ModelgateError as e:
            raise JobFailed(str(e)) from e

    # -- one round

    def step(self, progress: Progress, now: float) -> bool:
        """Assemble what came back, issue what fits; True when anything moved."""
        moved = self._assemble(progress, now)
        progress = moved or progress
        issued = self._issue(progress)
        if (self.exhausted and progress.assembled_seq == progress.next_seq
                and not issued):
            self._finish(progress, now)
            return True
        return bool(moved or issued)

    def _expected_rows(self, seq: int) -> int:
        size = self.spec.chunk_rows
        if self.positions is not None:
            return len(self.positions[seq * size:(seq + 1) * size])
        return max(0, min(size, self.rows_total - seq * size))

    def _issue(self, progress: Progress) -> int:
        assert self.chunks is not None and self.version is not None
        room = self.spec.window - (progress.next_seq - progress.assembled_seq)
        if room <= 0 or self.exhausted:
            return 0
        pipe = self.client.pipeline(transaction=True)
        issued_rows = progress.issued
        seq = progress.next_seq
        count = 0
        for _ in range(room):
            chunk = next(self.chunks, None)
            if chunk is None:
                self.exhausted = True
                break
            pipe.xadd(jobs.job_stream(self.spec.pool), _entry_fields(self.spec, seq, chunk))
            seq += 1
            issued_rows += chunk.rows
            count += 1
        if count:
            pipe.hset(jobs.progress(self.spec.id),
                      mapping={"issued": issued_rows, "next_seq": seq})
            pipe.execute()
        return count

    def _assemble(self, progress: Progress, now: float) -> Progress | None:
        seqs = list(range(progress.assembled_seq, progress.next_seq))
        if not seqs:
            return None
        counts = self.client.hmget(jobs.chunk_rows(self.spec.id), [str(s) for s in seqs])
        ready = []
        for seq, count in zip(seqs, counts, strict=True):
            if count is None or int(count) < self._expected_rows(seq):
                break
            ready.append(seq)
        if not ready:
            return None
        data = []
        done = failed = rows = 0
        fields: list[str] = []
        assert self.version is not None
        for seq in ready:
            for field, piece in self._pieces(seq):
                lines, ok, bad = output_format.piece_lines(piece, self.spec.version)
                data.append(lines)
                done, failed, rows = done + ok, failed + bad, rows + len(piece.ids)
                fields.append(field)
        stage = self.patch if self.patch is not None else self.full
        assert stage is not None
        blob = b"".join(data)
        pipe = self.client.pipeline(transaction=True)
        if isinstance(stage, job_sinks.FileStage):
            mark = stage.append(blob)
        else:
            stage.queue_append(pipe, blob)
            mark = progress.mark + 1
        self.rates.append((now, progress.assembled + rows))
        while self.rates and now - self.rates[0][0] > RATE_WINDOW_S:
            self.rates.popleft()
        updated = progress.with_(
            assembled=progress.assembled + rows, assembled_seq=ready[-1] + 1, mark=mark,
            done=progress.done + done, failed=progress.failed + failed, updated_at=now,
            rows_per_s=self._rate(now, progress.assembled + rows))
        pipe.hset(jobs.progress(self.spec.id), mapping={
            k: updated.fields()[k] for k in ("assembled", "assembled_seq", "mark", "done",
                                             "failed", "updated_at", "rows_per_s")})
        pipe.hdel(jobs.results(self.spec.id), *fields)
        pipe.hdel(jobs.chunk_rows(self.spec.id), *[str(s) for s in ready])
        pipe.execute()
        return updated

    def _rate(self, now: float, assembled: int) -> float:
        if len(self.rates) < 2:
            return 0.0
        first_at, first_rows = self.rates[0]
        return round((assembled - first_rows) / max(now - first_at, 1e-3), 1)

    def _pieces(self, seq: int) -> list[tuple[str, jobs.Piece]]:
        """The result of chunk ``seq``: whole, or the rows it was split into, in order."""
        key = jobs.results(self.spec.id)
        whole = self.client.hget(key, jobs.piece_field(seq))
        if whole is not None:
            return [(jobs.piece_field(seq), jobs.Piece.decode(whole))]
        parts = [(field.decode(), jobs.Piece.decode(raw)) for field, raw in
                 self.client.hscan_iter(key, match=f"{seq}.*", count=1000)]
        return sorted(parts, key=lambda part: part[1].first)

    # -- ending

    def _finish(self, progress: Progress, now: float) -> None:
        assert self.full is not None and self.version is not None
        if self.patch is not None and self.positions is not None:
            job_sinks.merge_patch(self.client, self.spec, self.full, self.patch,
                                  self.positions)
            self.full = job_sinks.stage_of(self.client, self.spec, self.jobs_dir, patch=False)
        try:
            job_sinks.publish(self.spec, self.full, self.jobs_dir,
                              [o.name for o in self.version.outputs])
        except (OSError, ModelgateError) as e:
            raise JobFailed(f"the output could not be written: {e}") from e
        state = JobState.SUCCEEDED if progress.failed == 0 else JobState.COMPLETED_WITH_FAILURES
        end(self.client, self.spec.id, state, now)
        log.info("job %s: %s, %d rows done, %d failed", self.spec.id, state, progress.done,
                 progress.failed)
        self.ended = True
        self.close()

    def withdraw(self) -> int:
        """Take this job's chunks off the stream (cancel, failure); chunks withdrawn."""
        stream = jobs.job_stream(self.spec.pool)
        mine = [entry_id for entry_id, fields in self.client.xrange(stream)
                if fields.get(b"job") == self.spec.id.encode()]
        if mine:
            pipe = self.client.pipeline(transaction=True)
            pipe.xack(stream, jobs.JOB_GROUP, *mine)
            pipe.xdel(stream, *mine)
            pipe.execute()
        return len(mine)

    def check_version(self, now: float) -> None:
        """Fail the job once its pinned version is no longer served (it would never end)."""
        if now - self.checked_version_at < VERSION_CHECK_S:
            return
        self.checked_version_at = now
        raw = self.client.get(model_store.state(self.spec.model))
        if raw is None:
            return  # no decider keeps state: the repository serves what it holds
        try:
            found = ModelState.decode(raw).versions.get(self.spec.version)
        except model_store.StateError:
            return
        if found is None or found.status not in (VersionStatus.LOADING, VersionStatus.READY):
            raise JobFailed(f"version {self.spec.version} of model {self.spec.model!r}, which "
                            "the job is pinned to, is no longer served; load it again and "
                            "retry, or submit the job again for the current default version")

    def close(self) -> None:
        for stage in (self.full, self.patch):
            if stage is not None:
                stage.close()


def _entry_fields(spec: JobSpec, seq: int, chunk: Chunk) -> dict[str, Any]:
    payload = b""
    if chunk.valid:
        count = len(chunk.valid)
        payload = wire.encode_bundle(wire.Bundle(
            tuple(str(o) for o in chunk.valid), (1,) * count,
            wire.Request({name: wire.tensor(array) for name, array in chunk.inputs.items()})))
    entry = jobs.ChunkEntry(spec.id, seq, jobs.pack(chunk.ids),
                            jobs.pack([[o, m] for o, m in chunk.errors.items()]), payload)
    items = entry.fields()
    return {str(name): value for name, value in zip(items[::2], items[1::2], strict=True)}


def end(client: redis.Redis, job_id: str, state: str, now: float, error: str = "") -> None:
    """Set a job's final state, drop its chunk results and let its keys expire."""
    pipe = client.pipeline(transaction=True)
    pipe.hset(jobs.progress(job_id), mapping={"state": state, "finished_at": f"{now:.3f}",
                                              "updated_at": f"{now:.3f}", "error": error,
                                              "rows_per_s": 0})
    pipe.zrem(jobs.ACTIVE, job_id)
    pipe.delete(jobs.results(job_id), jobs.chunk_rows(job_id))
    for key in jobs.job_keys(job_id):
        pipe.expire(key, jobs.RETENTION_S)
    pipe.execute()
