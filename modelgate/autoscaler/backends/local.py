"""Local backend: each worker is its own ``modelgate worker --model NAME --version V`` process.

Scale-down drains with SIGTERM (the worker answers what it holds first). A worker that exits
unasked is restarted, with exponential backoff while it keeps dying young.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelgate.autoscaler.backends.base import PoolRef
from modelgate.core.process import child_preexec, stop_process
from modelgate.core.settings import SECRET_VARIABLES

log = logging.getLogger("modelgate.autoscaler")

HEALTHY_AFTER_S = 30.0  # a worker that lived this long resets its pool's restart backoff
MAX_BACKOFF_S = 30.0


@dataclass(slots=True)
class _Pool:
    ref: PoolRef
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    desired: int = 0
    backoff_s: float = 0.0
    next_start: float = 0.0
    started_at: dict[int, float] = field(default_factory=dict)


class LocalBackend:
    name = "local"

    def __init__(self, models_dir: Path, redis_url: str, drain_timeout_s: float = 30.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.models_dir = models_dir
        self.redis_url = redis_url
        self.drain_timeout_s = drain_timeout_s
        self.extra_args = extra_args
        self.pools: dict[str, _Pool] = {}
        self.draining: list[tuple[subprocess.Popen[bytes], float]] = []  # (process, kill at)
        self.restarts = 0

    def _spawn(self, pool: _Pool) -> None:
        command = [sys.executable, "-m", "modelgate", "worker", "--model", pool.ref.model,
                   "--version", pool.ref.version, "--models", str(self.models_dir),
                   *self.extra_args]
        # The Redis URL may hold a password: environment, not argv, so `ps` does not show it.
        # Workers need no API key: they do not inherit the servers' secrets.
        env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
        env["MODELGATE_REDIS_URL"] = self.redis_url
        process = subprocess.Popen(command, preexec_fn=child_preexec, env=env)
        pool.processes.append(process)
        pool.started_at[process.pid] = time.monotonic()

    def running(self, ref: PoolRef) -> int:
        pool = self.pools.get(ref.pool)
        return sum(1 for p in pool.processes if p.poll() is None) if pool else 0

    def processes(self) -> list[subprocess.Popen[bytes]]:
        """Every worker process this backend started and has not reaped, draining ones too."""
        return ([p for pool in self.pools.values() for p in pool.processes]
                + [p for p, _ in self.draining])

    def pids(self, ref: PoolRef) -> list[int]:
        pool = self.pools.get(ref.pool)
        return [p.pid for p in pool.processes if p.poll() is None] if pool else []

    def scale(self, ref: PoolRef, desired: int) -> None:
        """Start or drain workers until ``desired`` run for the pool; newest go first.

        Returns at once: draining workers finish in the background (``supervise`` reaps
        them, killing any still running after the drain timeout).
        """
        pool = self.pools.setdefault(ref.pool, _Pool(ref))
        pool.desired = desired
        self._reap(pool)
        while len(pool.processes) < desired:
            self._spawn(pool)
        surplus = pool.processes[desired:]
        pool.processes = pool.processes[:desired]
        kill_at = time.monotonic() + self.drain_timeout_s
        for process in reversed(surplus):
            process.terminate()  # SIGTERM: the worker answers what it holds, then exits
            pool.started_at.pop(process.pid, None)
            self.draining.append((process, kill_at))

    def remove(self, ref: PoolRef) -> None:
        """Drain the pool's workers and forget the pool (nothing restarts them)."""
        if ref.pool in self.pools:
            self.scale(ref, 0)
            del self.pools[ref.pool]

    def _finish(self, process: subprocess.Popen[bytes]) -> None:
        try:
            process.wait(timeout=self.drain_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not drain in %.0fs; killing it", process.pid,
                        self.drain_timeout_s)
            process.kill()
            process.wait()

    def _reap(self, pool: _Pool) -> list[subprocess.Popen[bytes]]:
        dead = [p for p in pool.processes if p.poll() is not None]
        pool.processes = [p for p in pool.processes if p.poll() is None]
        return dead

    def supervise(self) -> None:
        """Restart workers that died unasked and reap drained ones; call this periodically."""
        now = time.monotonic()
        still_draining = []
        for process, kill_at in self.draining:
            if process.poll() is None:
                if now >= kill_at:
                    log.warning("worker %d did not drain in %.0fs; killing it", process.pid,
                                self.drain_timeout_s)
                    process.kill()
                still_draining.append((process, kill_at))
        self.draining = [(p, k) for p, k in still_draining if p.poll() is None]
        for pool in self.pools.values():
            for process in self._reap(pool):
                lived_s = now - pool.started_at.pop(process.pid, now)
                log.warning("worker %d of %s exited with %s after %.1fs", process.pid,
                            pool.ref.pool, process.returncode, lived_s)
                if lived_s >= HEALTHY_AFTER_S:
                    pool.backoff_s = 0.0
                else:
                    pool.backoff_s = min(max(pool.backoff_s * 2, 0.5), MAX_BACKOFF_S)
                pool.next_start = now + pool.backoff_s
            if len(pool.processes) < pool.desired and now >= pool.next_start:
                while len(pool.processes) < pool.desired:
                    self._spawn(pool)
                    self.restarts += 1

    def stop_all(self) -> None:
        """Drain every worker at once, then wait for each (kill those past the timeout)."""
        processes = self.processes()
        self.draining = []
        for pool in self.pools.values():
            pool.desired = 0
            pool.processes = []
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            self._finish(process)


__all__ = ["LocalBackend", "stop_process"]
