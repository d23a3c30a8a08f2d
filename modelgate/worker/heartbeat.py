"""Liveness: a hash with a TTL per worker and the pool's sorted set scored by last beat.

Beats come from a thread with its own connection, so a long ORT run (which releases the GIL)
does not make a busy worker look dead.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import redis

from modelgate.core.clock import RedisClock
from modelgate.core.store import heartbeats, pools
from modelgate.core.store import models as model_store

log = logging.getLogger("modelgate.worker")


class Heartbeat:
    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        pool: str,
        interval_s: float,
        ttl_s: float,
        stats: Callable[[], dict[str, float]],
        flush: Callable[[redis.client.Pipeline, int], object] | None = None,
        clock: RedisClock | None = None,
        sha256: str = "",
        on_state: Callable[[bytes | None], None] | None = None,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.pool = pool
        self.interval_s = interval_s
        self.ttl_ms = int(ttl_s * 1000)
        self.stats = stats
        self.flush = flush
        self.clock = clock  # kept in step with Redis's clock at every beat
        self.sha256 = sha256
        # Called with the model's stored state at every beat (the worker stops serving a
        # version whose content changed under it).
        self.on_state = on_state
        self.model = pool.rsplit(":", 1)[0]
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def beat(self) -> None:
        now = time.time()
        key = heartbeats.heartbeat(self.worker_id)
        stats = self.stats()
        record = heartbeats.Heartbeat(self.pool, os.getpid(), socket.gethostname(),
                                      self.started, int(stats["processed"]), stats["busy"],
                                      self.sha256, int(stats.get("job_rows", 0)),
                                      int(stats.get("job_chunks", 0)),
                                      int(stats.get("job_failed_rows", 0)),
                                      stats.get("job_busy", 0.0))
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.get(model_store.state(self.model))
        pipe.hset(key, mapping=record.fields())
        pipe.pexpire(key, self.ttl_ms)
        pipe.zadd(pools.worker_set(self.pool), {self.worker_id: now})
        # Members past the TTL are no longer counted by anyone; drop them so the set stays
        # as small as the pool.
        pipe.zremrangebyscore(pools.worker_set(self.pool), "-inf", now - heartbeats.WORKER_TTL_S)
        if self.flush is not None:
            self.flush(pipe, int(now))
        redis_time, stored = pipe.execute()[:2]
        if self.clock is not None:
            self.clock.observe(now, time.time(), redis_time)
        if self.on_state is not None:
            self.on_state(stored)

    def start(self, beat_first: bool = True) -> None:
        if beat_first:
            self.beat()
        self._thread.start()

    def _loop(self) -> None:
        failing = False
        failures = 0
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            # At maxmemory the hash's PEXPIRE still runs (it needs no memory) while its HSET is
            # refused: the worker stays known as alive, and nobody takes its entries over.
            except redis.RedisError as e:
                if not failing:
                    log.warning("heartbeat failed: %s; retrying every %.1f s", e,
                                self.interval_s)
                failing = True
            # A beat that broke on something else (a figure, a flush) is one missed beat: the
            # thread goes on, or a worker still serving would be declared dead.
            except Exception:
                failures += 1
                log.exception("heartbeat failed (%d such failures so far)", failures)
            else:
                if failing:
                    log.warning("heartbeat written again")
                failing = False

    def stop(self) -> None:
        """Stop beating and deregister, so gateways stop counting this worker at once."""
        self._stop.set()
        self._thread.join(timeout=self.interval_s * 2)
        try:
            pipe = self.client.pipeline(transaction=False)
            if self.flush is not None:
                self.flush(pipe, int(time.time()))
            pipe.delete(heartbeats.heartbeat(self.worker_id))
            pipe.zrem(pools.worker_set(self.pool), self.worker_id)
            pipe.execute()
        except redis.RedisError as e:
            log.warning("could not deregister (the heartbeat will expire): %s", e)
