"""Worker process entry: load one model version, warm it up, serve its pool until stopped.

Shutdown contract: the first SIGTERM/SIGINT only sets an event; the loop finishes the batch it
holds, answers and acknowledges it, deregisters and returns. A second signal exits at once.

Nothing read from Redis ends the loop: a step that fails (Redis unreachable, the pool's stream
turned into a key of another type, a bug) is logged, counted in the log line and retried with
backoff; entries it held stay pending and are taken over like a dead worker's.
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
from types import FrameType

import redis

from modelgate.core.clock import RedisClock
from modelgate.core.profile import load_profile, profile_path
from modelgate.core.repository import RepositoryError, load_model
from modelgate.core.settings import WorkerSettings
from modelgate.core.store import pools
from modelgate.worker.consumer import Consumer
from modelgate.worker.drift_sampler import DriftSampler
from modelgate.worker.heartbeat import Heartbeat
from modelgate.worker.reclaim import ClaimTimeout, Reclaimer
from modelgate.worker.runner import Runner

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


def run(settings: WorkerSettings, stop: threading.Event, max_steps: int | None = None) -> int:
    """Serve until ``stop`` is set (or ``max_steps`` reads were made); returns entries handled."""
    model = load_model(settings.models_dir / settings.model)
    version = model.versions.get(settings.version or model.default_version)
    if version is None:
        raise RepositoryError(
            f"model {model.name!r} has no version {settings.version}; "
            f"it has {sorted(model.versions, key=int)}"
        )
    threads = settings.intra_op_threads or version.config.intra_op_threads or 1
    worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(settings.redis_url, health_check_interval=10)
    starting = pools.starting_set(version.pool)
    _announce(client, starting, worker_id)
    try:
        runner = Runner(version, threads)
        runner.warm_up()
    except Exception:
        _withdraw(client, starting, worker_id)
        raise
    reclaimer = Reclaimer(client, version.pool, worker_id,
                          ClaimTimeout(settings.claim_timeout_ms), settings.max_deliveries,
                          settings.reclaim_interval_s)
    profile = load_profile(version) if version.batchable else None
    sampler = None
    if profile is not None:
        sampler = DriftSampler(version.pool, profile, version.config.drift_max_rows_per_s,
                               version.config.drift_sample_share)
        log.info("sampling rows for drift against %s (%d features, %d labels)",
                 profile_path(version), len(profile.features), len(profile.labels))
    clock = RedisClock()
    consumer = Consumer(client, version, runner, worker_id, settings.reply_ttl_s, reclaimer,
                        sampler, clock)

    def flush(pipe: redis.client.Pipeline, epoch_s: int) -> None:
        consumer.stats.flush(pipe, epoch_s)
        if sampler is not None:
            sampler.flush(pipe)

    started = time.monotonic()

    def stats() -> dict[str, float]:
        uptime = max(time.monotonic() - started, 1e-9)
        return {"processed": consumer.processed, "busy": round(consumer.busy_s / uptime, 4)}

    heartbeat = Heartbeat(
        redis.Redis.from_url(settings.redis_url), worker_id, version.pool,
        settings.heartbeat_interval_s, settings.heartbeat_ttl_s, stats, flush, clock,
    )
    _wait_for_redis(consumer, stop)
    gc.collect()
    gc.freeze()  # the session and modules live as long as the process: skip them in full passes
    heartbeat.start()
    _withdraw(client, starting, worker_id)
    log.info("worker %s serving %s (max_batch_size=%d, intra_op_threads=%d)",
             worker_id, version.pool, version.max_batch_size, threads)
    handled = steps = failures = 0
    backoff_s = 0.1
    regroup = False
    try:
        while not stop.is_set() and (max_steps is None or steps < max_steps):
            steps += 1
            try:
                if regroup:
                    consumer.ensure_group()
                    regroup = False
                handled += consumer.step(settings.block_ms)
                backoff_s = 0.1
                continue
            # A timeout is Redis not answering (stalled, overloaded): retry it like a dropped
            # connection rather than die holding entries.
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("redis unreachable (%s); retrying in %.1fs", e, backoff_s)
            except redis.ResponseError as e:
                # NOGROUP: Redis lost the stream (restart without persistence); UNBLOCKED: it
                # was deleted under a blocked read. Recreate it and go on.
                if "NOGROUP" in str(e) or "UNBLOCKED" in str(e):
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
            # Never longer than a heartbeat: once Redis is back the heartbeat thread makes
            # gateways count this worker live and send it work, so the loop must be reading.
            backoff_s = min(backoff_s * 2, settings.heartbeat_interval_s)
    finally:
        heartbeat.stop()
        log.info("worker %s stopped after %d entries", worker_id, handled)
    return handled


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


def _wait_for_redis(consumer: Consumer, stop: threading.Event) -> None:
    backoff_s = 0.1
    while not stop.is_set():
        try:
            consumer.ensure_group()
            return
        except (redis.ConnectionError, redis.TimeoutError) as e:
            log.warning("waiting for redis (%s)", e)
            stop.wait(backoff_s)
            backoff_s = min(backoff_s * 2, 5.0)


def main(settings: WorkerSettings) -> int:
    stop = threading.Event()
    install_signal_handlers(stop)
    run(settings, stop)
    return 0
