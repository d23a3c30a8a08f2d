"""The interface every worker backend implements; the control loop knows only this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from modelgate.core.store import pools


@dataclass(frozen=True, slots=True)
class PoolRef:
    """One pool: the workers serving one version of one model."""

    model: str
    version: str

    @property
    def pool(self) -> str:
        return pools.pool_id(self.model, self.version)


class Backend(Protocol):
    """Runs worker replicas per pool (one model version).

    ``scale`` is idempotent and returns promptly: it starts replicas that are missing and
    drains the surplus (SIGTERM: the worker answers what it holds before it exits). A backend
    removes idle or newest replicas first. A platform's errors (an API that refuses or cannot
    be reached) are the backend's to log and retry; they never reach the control loop.
    """

    name: str

    def scale(self, ref: PoolRef, desired: int) -> None:
        """Make ``desired`` replicas of the pool's worker run (starting ones count)."""

    def running(self, ref: PoolRef) -> int:
        """Replicas of the pool that exist now (starting or serving; not the ones draining)."""

    def remove(self, ref: PoolRef) -> None:
        """The pool is gone for good: drain its replicas and forget it (Kubernetes: delete its
        Deployment). Returns promptly, like ``scale``."""

    def supervise(self) -> None:
        """Periodic upkeep: replace replicas that died unasked (no-op where the platform does)."""

    def stop_all(self) -> None:
        """Drain and remove every replica this backend started (local backend only)."""
