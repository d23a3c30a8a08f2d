"""The batch-job coordinator: one per deployment, under the jobs lease (``jobs.LEASE``).

``modelgate up`` runs it in the supervisor's process, the ``modelgate autoscaler`` service in
Compose and Kubernetes (``modelgate coordinator`` runs it alone); never a gateway's event
loop. For every active job it

1. starts it: opens the input (an upload from the job store, or a path confined to the jobs
   folder), checks the pinned version's content, counts the rows;
2. issues chunks (``chunk_rows`` rows, at most one ORT run) to the pinned pool's job stream,
   keeping at most ``window`` chunks in flight; a chunk and the checkpoint that counts it are
   one transaction;
3. assembles, in input order, every chunk whose result is complete (``jobs.JOB_ANSWER`` wrote
   it once), appends its lines to the staged output and then checkpoints (rows, output mark)
   and deletes the chunk's result in one transaction;
4. ends it: a retry's lines merged into the full output, the output the job names written,
   the state set, the job's keys set to expire after ``jobs.RETENTION_S``.

After a crash of anything (a worker: its chunk is taken over; a gateway: it holds nothing; the
coordinator: the next holder of the lease resumes), a job goes on from its checkpoint: the
staged output is cut back to the checkpoint's mark, chunks issued but not assembled are still on
the stream or in the results, and every row appears in the output exactly once.

A cancelled job (``cancelled`` from the call on) is seen on the next round (milliseconds): its
chunks are withdrawn from the stream; a chunk a worker is running finishes and is dropped. Each
job's steps are ``job_run.JobRun``'s.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import redis

from modelgate.autoscaler.job_run import JobCancelled, JobFailed, JobRun, end
from modelgate.core.batch.paths import STAGING
from modelgate.core.errors import ModelgateError
from modelgate.core.store import jobs
from modelgate.core.store import models as model_store
from modelgate.core.store.jobs import JobRecordError, JobSpec, JobState, Progress

log = logging.getLogger("modelgate.coordinator")

CLEANUP_S = 60.0
# A round that moved nothing waits this long before the next: briefly while chunks are in
# flight (a worker answers a chunk in about a millisecond), longer with no active job.
WAIT_BUSY_S = 0.002
WAIT_IDLE_S = 0.05
# The coordinator's thread runs at this nice value: reading inputs and writing outputs is CPU
# work that must not take the CPU from the gateways and workers answering online calls.
NICE = 10


class Coordinator:
    def __init__(self, client: redis.Redis, models_dir: Path, jobs_dir: Path | None,
                 coordinator_id: str | None = None) -> None:
        self.client = client
        self.models_dir = models_dir
        self.jobs_dir = jobs_dir
        self.id = coordinator_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.holding = False
        self.runs: dict[str, JobRun] = {}
        self._lease_at = 0.0
        self._cleaned_at = 0.0

    def _take_lease(self, now: float) -> bool:
        if now - self._lease_at < jobs.LEASE_TTL_S / 5 and self.holding:
            return True
        held = bool(self.client.eval(model_store.TAKE_LEASE, 1, jobs.LEASE, self.id,
                                     int(jobs.LEASE_TTL_S * 1000)))
        self._lease_at = now
        if held != self.holding:
            log.info("%s the jobs lease", "took" if held else "lost")
            if not held:
                self._drop_all()
        self.holding = held
        return held

    def _drop_all(self) -> None:
        for run in self.runs.values():
            run.close()
        self.runs.clear()

    def step(self, now: float | None = None) -> bool:
        """One round over every active job; True when anything moved."""
        now = time.time() if now is None else now
        if not self._take_lease(now):
            return False
        active = [raw.decode() for raw in self.client.zrange(jobs.ACTIVE, 0, -1)]
        for gone in set(self.runs) - set(active):
            self.runs.pop(gone).close()
        moved = False
        for job_id in active:
            moved |= self._step_job(job_id, now)
        if now - self._cleaned_at > CLEANUP_S:
            self._cleaned_at = now
            self._clean_staging()
        return moved

    def _step_job(self, job_id: str, now: float) -> bool:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(jobs.spec(job_id))
        pipe.hgetall(jobs.progress(job_id))
        raw_spec, raw_progress = pipe.execute()
        try:
            if raw_spec is None or not raw_progress:
                raise JobRecordError("its record is gone")
            spec, progress = JobSpec.decode(raw_spec), Progress.parse(raw_progress)
        except JobRecordError as e:
            log.warning("job %s: %s; dropped from the active jobs", job_id, e)
            self.client.zrem(jobs.ACTIVE, job_id)
            return False
        run = self.runs.get(job_id)
        try:
            if progress.cancel or progress.state in jobs.FINAL:
                return self._cancel(job_id, spec, run, progress, now)
            if run is None:
                run = JobRun(self.client, spec, self.models_dir, self.jobs_dir)
                try:
                    progress = run.start(progress, now)
                except JobCancelled:
                    run.close()
                    return True
                self.runs[job_id] = run
            run.check_version(now)
            moved = run.step(progress, now)
            if run.ended:  # a retry queued at once starts afresh from its record
                self.runs.pop(job_id, None)
            return moved
        except (JobFailed, ModelgateError, OSError) as e:
            self._fail(job_id, spec, run, str(e), now)
            return True

    def _cancel(self, job_id: str, spec: JobSpec, run: JobRun | None, progress: Progress,
                now: float) -> bool:
        """Withdraw a cancelled (or otherwise ended) job's chunks and let its keys expire."""
        withdrawn = (run or JobRun(self.client, spec, self.models_dir, self.jobs_dir)).withdraw()
        state = progress.state if progress.state in jobs.FINAL else JobState.CANCELLED
        end(self.client, job_id, state, progress.finished_at or now, progress.error)
        if progress.cancel:
            log.info("job %s: cancelled (%d chunks withdrawn)", job_id, withdrawn)
        if run is not None:
            self.runs.pop(job_id, None)
            run.close()
        return True

    def _fail(self, job_id: str, spec: JobSpec, run: JobRun | None, error: str,
              now: float) -> None:
        log.warning("job %s failed: %s", job_id, error)
        try:
            (run or JobRun(self.client, spec, self.models_dir, self.jobs_dir)).withdraw()
        finally:
            end(self.client, job_id, JobState.FAILED, now, error)
            if run is not None:
                self.runs.pop(job_id, None)
                run.close()

    def _clean_staging(self) -> None:
        """Staged outputs of jobs whose record expired."""
        if self.jobs_dir is None:
            return
        folder = self.jobs_dir.resolve() / STAGING
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            job_id = path.name.split(".", 1)[0]
            if not self.client.exists(jobs.spec(job_id)):
                path.unlink(missing_ok=True)

    def release(self) -> None:
        self._drop_all()
        try:
            if self.client.get(jobs.LEASE) == self.id.encode():
                self.client.delete(jobs.LEASE)
        except redis.RedisError:
            pass

    def run(self, stop: threading.Event, max_rounds: int | None = None) -> int:
        """Rounds until ``stop`` (or ``max_rounds``); Redis errors are waited out."""
        _lower_priority()
        rounds = 0
        backoff_s = 0.5
        while not stop.is_set() and (max_rounds is None or rounds < max_rounds):
            rounds += 1
            try:
                moved = self.step()
                backoff_s = 0.5
            except redis.RedisError as e:
                log.warning("cannot reach Redis (%s); retrying in %.1fs", e, backoff_s)
                self._drop_all()
                self.holding = False
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            except Exception:
                log.exception("coordinator round failed; retrying")
                self._drop_all()
                stop.wait(backoff_s)
                continue
            if not moved:
                stop.wait(WAIT_BUSY_S if self.runs else WAIT_IDLE_S)
        return rounds


def _lower_priority() -> None:
    """Nice this thread only (Linux gives each thread its own nice value); elsewhere, or
    refused, it runs at the process's priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except (AttributeError, OSError) as e:
        log.info("the coordinator runs at normal priority (%s)", e)


def start_thread(client: redis.Redis, models_dir: Path, jobs_dir: Path | None,
                 stop: threading.Event) -> tuple[Coordinator, threading.Thread]:
    """The coordinator in a thread of this process (``up``'s supervisor, the autoscaler)."""
    coordinator = Coordinator(client, models_dir, jobs_dir)
    thread = threading.Thread(target=coordinator.run, args=(stop,), name="job-coordinator",
                              daemon=True)
    thread.start()
    return coordinator, thread


def main(models_dir: Path, redis_url: str, jobs_dir: Path | None) -> int:
    """``modelgate coordinator``: the coordinator alone, until SIGTERM/SIGINT."""
    import signal

    client = redis.Redis.from_url(redis_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    coordinator = Coordinator(client, models_dir, jobs_dir)
    log.info("job coordinator %s, jobs folder %s", coordinator.id, jobs_dir or "(uploads only)")
    try:
        coordinator.run(stop)
    finally:
        coordinator.release()
    return 0
