"""Worker process entry: load one model version, warm it up, serve its pool until stopped.

Shutdown contract: the first SIGTERM/SIGINT only sets an event; the loop finishes the batch it
holds, answers and acknowledges it, deregisters and returns. A second signal exits at once.

Redis unreachable, stalled, full (``maxmemory``) or read-only is an outage, never a reason to
exit: at start the worker waits until it can create its group and write its first heartbeat;
serving, it backs off and tries again, holding the answers Redis refused (nothing is
acknowledged without them) and reading nothing new until they are written.

Nothing else read from Redis ends the loop either: a step that fails (the pool's stream turned
into a key of another type, a bug) is logged, counted in the log line and retried with backoff;
entries it held stay pending and are taken over like a dead worker's. A stream that is gone
is made again while the served state still wants this version (or no decider keeps one); once
the version left it, the decider removed the pool on purpose and the worker stops.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType

import redis

from modelgate.core.clock import RedisClock
from modelgate.core.prediction import spec_for
from modelgate.core.profile import load_profile, profile_path
from modelgate.core.redis_checks import OUT_OF_MEMORY, OUTAGES, check_redis
from modelgate.core.repository import ModelVersion, load_model, read_version
from modelgate.core.settings import WorkerSettings
from modelgate.core.store import jobs, pools
from modelgate.core.store import models as model_store
from modelgate.core.store.models import ModelState, VersionStatus
from modelgate.core.trace import tracer
from modelgate.worker.consumer import Consumer
from modelgate.worker.drift_sampler import DriftSampler
from modelgate.worker.heartbeat import Heartbeat
from modelgate.worker.jobs import JobLane
from modelgate.worker.reclaim import Reclaimer
from modelgate.worker.runner import Runner
from modelgate.worker.stored_answers import AnswerStore
from modelgate.worker.tuning import publish, tune

log = logging.getLogger("modelgate.worker")


def install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("second signal: exiting without draining")
            os._exit(1)
        log.info("signal %s: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


class ContentChanged(RuntimeError):
    """The version's model.onnx is not the content the served state names."""


def _stored_state(client: redis.Redis, model: str) -> ModelState | None:
    try:
        raw = client.get(model_store.state(model))
        return ModelState.decode(raw) if raw is not None else None
    except model_store.StateError as e:
        log.warning("the stored state of model %s is unreadable (%s); going by the files", model,
                    e)
        return None
    except redis.RedisError:
        return None  # Redis not up yet: the files decide; the heartbeat checks again


def _still_served(client: redis.Redis, version: ModelVersion) -> bool:
    """Whether the served state still wants this version's pool (or no decider keeps one)."""
    state = _stored_state(client, version.name)
    if state is None:
        return True
    found = state.versions.get(version.version)
    return found is not None and found.status in (VersionStatus.LOADING, VersionStatus.READY)


def resolve_version(settings: WorkerSettings, client: redis.Redis) -> ModelVersion:
    """The version to serve: the one asked for, else the served default, else the repository's
    default. Raises ContentChanged when its file is not what the served state names."""
    state = _stored_state(client, settings.model)
    wanted = settings.version or (state.default if state is not None else None)
    version = (read_version(settings.models_dir, settings.model, wanted) if wanted
               else load_model(settings.models_dir / settings.model).default)
    stored = state.versions.get(version.version) if state is not None else None
    if stored is not None and stored.sha256 and stored.sha256 != version.sha256:
        raise ContentChanged(
            f"{version.path} has sha256 {version.sha256[:12]}, but version {version.version} is "
            f"served with {stored.sha256[:12]}: the file changed in place; the model control "
            "loop reloads it (poll mode) or a load call does (explicit mode)")
    return version


def run(settings: WorkerSettings, stop: threading.Event, max_steps: int | None = None) -> int:
    """Serve until ``stop`` is set (or ``max_steps`` reads were made); returns entries handled."""
    client = redis.Redis.from_url(settings.redis_url, health_check_interval=10)
    version = resolve_version(settings, client)
    threads = settings.intra_op_threads or version.config.intra_op_threads or 1
    worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    starting = pools.starting_set(version.pool)
    _announce(client, starting, worker_id)
    try:
        runner = Runner(version, threads)
        runner.warm_up()
    except Exception as e:
        _withdraw(client, starting, worker_id)
        _report_load_error(client, version.pool, e)
        raise
    # Before the first heartbeat: a live worker's pool always has its plan published.
    plan = tune(client, version, runner, threads, settings.tuning_budget_s)
    log.info("batching of %s: %s", version.pool, plan.describe())
    reclaimer = Reclaimer(client, version.pool, worker_id, settings.claim_timeout_ms,
                          settings.max_deliveries, settings.reclaim_interval_s)
    profile = load_profile(version) if version.rows_axis else None
    sampler = None
    if profile is not None:
        sampler = DriftSampler(version.pool, profile, version.config.drift_max_rows_per_s,
                               version.config.drift_sample_share)
        log.info("sampling rows for drift against %s (%d features, %d labels)",
                 profile_path(version), len(profile.features), len(profile.labels))
    clock = RedisClock()
    # Answers the gateways keep for feedback, stored here beside the reply (stored_answers.py).
    answer_store = (AnswerStore(client, version, spec_for(version))
                    if version.config.feedback_sample_share > 0 else None)
    consumer = Consumer(client, version, runner, worker_id, settings.reply_ttl_s, reclaimer,
                        sampler, clock, plan, tracer(settings.trace_dir, "worker"),
                        answer_store)
    if version.rows_axis:
        consumer.jobs = JobLane(client, version, runner, worker_id, consumer.send,
                                Reclaimer(client, version.pool, worker_id,
                                          settings.claim_timeout_ms, settings.max_deliveries,
                                          settings.reclaim_interval_s,
                                          jobs.job_stream(version.pool), jobs.JOB_GROUP))

    def flush(pipe: redis.client.Pipeline, epoch_s: int) -> None:
        consumer.stats.flush(pipe, epoch_s)
        if sampler is not None:
            sampler.flush(pipe)

    started = time.monotonic()

    def stats() -> dict[str, float]:
        uptime = max(time.monotonic() - started, 1e-9)
        figures = {"processed": consumer.processed, "busy": round(consumer.busy_s / uptime, 4)}
        if consumer.jobs is not None:  # the job lane's own counters, apart from online ones
            figures.update(job_rows=consumer.jobs.rows, job_chunks=consumer.jobs.chunks,
                           job_failed_rows=consumer.jobs.failed_rows,
                           job_busy=round(consumer.jobs.busy_s / uptime, 4))
        return figures

    def on_state(raw: bytes | None) -> None:
        """Stop reading (and drain) once the served state names other content for this
        version: its new workers take over the pool."""
        if raw is None or stop.is_set():
            return
        try:
            found = ModelState.decode(raw).versions.get(version.version)
        except model_store.StateError:
            return
        if found is not None and found.sha256 and found.sha256 != version.sha256:
            log.warning("version %s of %s is now served with content %s, not this worker's %s;"
                        " draining", version.version, version.name, found.sha256[:12],
                        version.sha256[:12])
            stop.set()

    heartbeat = Heartbeat(
        redis.Redis.from_url(settings.redis_url), worker_id, version.pool,
        settings.heartbeat_interval_s, settings.heartbeat_ttl_s, stats, flush, clock,
        version.sha256, on_state,
    )
    _wait_for_redis(consumer, heartbeat, stop, lambda: publish(client, version.pool, plan))
    check_redis(client, log)
    gc.collect()
    gc.freeze()  # the session and modules live as long as the process: skip them in full passes
    heartbeat.start(beat_first=False)
    if answer_store is not None:
        answer_store.start()
    _withdraw(client, starting, worker_id)
    log.info("worker %s serving %s (max_batch_size=%d, intra_op_threads=%d)",
             worker_id, version.pool, plan.max_batch_size, threads)
    handled = steps = failures = 0
    outage = Outage()
    backoff_s = 0.1  # after a failed step that was no outage
    regroup = False
    try:
        while not stop.is_set() and (max_steps is None or steps < max_steps):
            steps += 1
            try:
                if regroup:
                    consumer.ensure_group()
                    if consumer.jobs is not None:
                        consumer.jobs.ensure_group()
                    regroup = False
                handled += consumer.step(settings.block_ms)
                outage.over()
                backoff_s = 0.1
                continue
            # A timeout is Redis not answering (stalled, overloaded), OOM is Redis full: retry
            # them like a dropped connection rather than die holding entries.
            except OUTAGES as e:
                # Never longer than a heartbeat: once Redis is back the heartbeat thread makes
                # gateways count this worker live and send it work, so the loop must be reading.
                stop.wait(outage.begin(e, consumer.answers.held,
                                       settings.heartbeat_interval_s))
                continue
            except redis.ResponseError as e:
                # NOGROUP: Redis lost the stream (restart without persistence); UNBLOCKED: it
                # was deleted under a blocked read. Recreate it and go on.
                if "NOGROUP" in str(e) or "UNBLOCKED" in str(e):
                    if not _still_served(client, version):
                        # The decider removed the pool once its version left: nothing more
                        # will come, and making the stream again would leave a key behind.
                        log.warning("the pool's stream is gone and version %s of %s is no "
                                    "longer served; stopping", version.version, version.name)
                        stop.set()
                        continue
                    log.warning("the pool's stream is gone (%s); creating it again", e)
                    regroup = True
                    continue
                failures += 1
                log.error("step failed (%s; %d failures so far); retrying in %.1fs", e,
                          failures, backoff_s)
            # Anything else is a bug or data nothing foresaw: never a reason to stop serving.
            except Exception:
                failures += 1
                log.exception("step failed (%d failures so far); retrying in %.1fs", failures,
                              backoff_s)
            stop.wait(backoff_s)
            backoff_s = min(backoff_s * 2, settings.heartbeat_interval_s)  # as for an outage
    finally:
        try:
            consumer.answers.settle()  # the last answers' confirmations, if Redis is there
        except Exception:  # stopping anyway: unconfirmed answers' entries stay pending
            log.exception("could not read the last answers' confirmations")
        if consumer.answers.held:
            log.warning("stopping with %d runs' answers unwritten: their entries stay pending "
                        "and other workers take them over", consumer.answers.held)
        if answer_store is not None:
            answer_store.close()  # what it took: the replies said stored
        heartbeat.stop()
        log.info("worker %s stopped after %d entries", worker_id, handled)
    return handled


class Outage:
    """Backoff and the log while Redis cannot take the worker's commands: said when it
    starts, every 30 s while it lasts, and when it ends."""

    REPEAT_S = 30.0

    def __init__(self) -> None:
        self.backoff_s = 0.1
        self.since: float | None = None
        self._said_at = 0.0

    def begin(self, error: Exception, held: int, max_backoff_s: float) -> float:
        """Seconds to wait before the next try."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self._said_at >= self.REPEAT_S or self._said_at < self.since:
            self._said_at = now
            if isinstance(error, redis.OutOfMemoryError):
                log.warning("%s: holding the answers of %d runs, acknowledging nothing, "
                            "reading nothing new; retrying (%s)", OUT_OF_MEMORY, held, error)
            else:
                log.warning("redis unavailable (%s: %s); retrying", type(error).__name__, error)
        wait_s = self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, max_backoff_s)
        return wait_s

    def over(self) -> None:
        if self.since is not None:
            log.warning("redis takes writes again after %.1f s", time.monotonic() - self.since)
            self.since = None
        self.backoff_s = 0.1


def _report_load_error(client: redis.Redis, pool: str, error: Exception) -> None:
    """Tell the model control loop why this version cannot be served, so it stops trying."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    try:
        client.set(model_store.load_error(pool), f"the worker could not load the model: "
                                                 f"{message}", ex=model_store.RESULT_TTL_S)
    except redis.RedisError as e:
        log.warning("could not report the load failure (%s)", e)


def _announce(client: redis.Redis, starting: str, worker_id: str) -> None:
    """Tell gateways a worker is on its way, so they hold calls instead of answering 503."""
    try:
        client.zadd(starting, {worker_id: time.time()})
    except redis.RedisError as e:
        log.warning("could not announce start (%s); gateways may answer 503 until ready", e)


def _withdraw(client: redis.Redis, starting: str, worker_id: str) -> None:
    try:
        client.zrem(starting, worker_id)
    except redis.RedisError as e:
        log.warning("could not withdraw start announcement (%s); it expires", e)


def _wait_for_redis(consumer: Consumer, heartbeat: Heartbeat, stop: threading.Event,
                    publish_plan: Callable[[], None]) -> None:
    """Until the group exists, the pool's batch plan is published and the first heartbeat is
    written: a worker reads nothing before others can see it is alive (they would take its
    entries over), and gateways bundle to the plan from the moment they count it live."""
    outage = Outage()
    while not stop.is_set():
        try:
            consumer.ensure_group()
            if consumer.jobs is not None:
                consumer.jobs.ensure_group()
            publish_plan()
            heartbeat.beat()
            outage.over()
            return
        except OUTAGES as e:
            stop.wait(outage.begin(e, 0, 5.0))


def main(settings: WorkerSettings) -> int:
    stop = threading.Event()
    install_signal_handlers(stop)
    try:
        run(settings, stop)
    except ContentChanged as e:
        log.error("not serving: %s", e)
        return 3
    return 0
