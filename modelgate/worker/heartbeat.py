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

from modelgate.core import keys

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
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.pool = pool
        self.interval_s = interval_s
        self.ttl_ms = int(ttl_s * 1000)
        self.stats = stats
        self.flush = flush
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def beat(self) -> None:
        now = time.time()
        key = keys.worker_heartbeat(self.worker_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping={
            "pool": self.pool,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self.started,
            **self.stats(),
        })
        pipe.pexpire(key, self.ttl_ms)
        pipe.zadd(keys.pool_workers(self.pool), {self.worker_id: now})
        if self.flush is not None:
            self.flush(pipe, int(now))
        pipe.execute()

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except redis.RedisError as e:
                log.warning("heartbeat failed: %s", e)

    def stop(self) -> None:
        """Stop beating and deregister, so gateways stop counting this worker at once."""
        self._stop.set()
        self._thread.join(timeout=self.interval_s * 2)
        try:
            pipe = self.client.pipeline(transaction=False)
            if self.flush is not None:
                self.flush(pipe, int(time.time()))
            pipe.delete(keys.worker_heartbeat(self.worker_id))
            pipe.zrem(keys.pool_workers(self.pool), self.worker_id)
            pipe.execute()
        except redis.RedisError as e:
            log.warning("could not deregister (the heartbeat will expire): %s", e)
