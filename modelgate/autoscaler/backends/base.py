"""The interface every worker backend implements; the control loop knows only this."""

from __future__ import annotations

from typing import Protocol


class Backend(Protocol):
    """Runs worker replicas per model pool.

    ``scale`` is idempotent and returns promptly: it starts replicas that are missing and
    drains the surplus (SIGTERM: the worker answers what it holds before it exits). A backend
    removes idle or newest replicas first.
    """

    name: str

    def scale(self, model: str, desired: int) -> None:
        """Make ``desired`` replicas of ``model``'s worker run (starting ones count)."""

    def running(self, model: str) -> int:
        """Replicas of ``model`` that exist now (starting or serving; not the ones draining)."""

    def supervise(self) -> None:
        """Periodic upkeep: replace replicas that died unasked (no-op where the platform does)."""

    def stop_all(self) -> None:
        """Drain and remove every replica this backend started (local backend only)."""
