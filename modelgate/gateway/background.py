"""The gateway's background tasks, supervised: a task that dies is logged, counted, restarted.

Each task is a coroutine function that loops until cancelled. One that raises is restarted
after a backoff (doubling from RESTART_MIN_S to RESTART_MAX_S; back to the minimum once a run
lasted HEALTHY_AFTER_S), and each death is logged with its traceback and counted in
``modelgate_background_errors_total{task}``. A *critical* task (the dispatcher's writer and
reader, the pool monitor: without them no call is answered) makes ``/v2/health/ready`` fail
while it is down -- waiting for its restart -- or crash-looping (CRASH_LOOP_DEATHS deaths
within CRASH_LOOP_WINDOW_S); the others are restarted and counted but never take the gateway
out of service.

Bad data is not a death: each task handles what it reads record by record (log, count, skip).
This is the net under that, for the bug nobody foresaw.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

log = logging.getLogger("modelgate.gateway")

RESTART_MIN_S = 0.1
RESTART_MAX_S = 5.0
HEALTHY_AFTER_S = 30.0
CRASH_LOOP_DEATHS = 3
CRASH_LOOP_WINDOW_S = 60.0
STOP_TIMEOUT_S = 3.0


@dataclass(slots=True)
class _Task:
    name: str
    run: Callable[[], Awaitable[None]]
    critical: bool
    running: bool = False
    deaths: deque[float] = field(default_factory=lambda: deque(maxlen=CRASH_LOOP_DEATHS))
    task: asyncio.Task[None] | None = None


class Background:
    """Starts, supervises and stops the background tasks of one gateway process.

    ``on_death(name)`` is called once per death (the metrics counter); ``clock`` is
    ``time.monotonic`` unless a test steps it.
    """

    def __init__(self, on_death: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_death = on_death
        self.clock = clock
        self._tasks: dict[str, _Task] = {}

    def start(self, name: str, run: Callable[[], Awaitable[None]], critical: bool = True) -> None:
        """Run ``run()`` as the task ``name`` until :meth:`stop`, restarting it when it dies."""
        if name in self._tasks:
            raise ValueError(f"a background task named {name!r} is already running")
        state = _Task(name, run, critical)
        self._tasks[name] = state
        state.task = asyncio.create_task(self._keep(state), name=name)

    def down(self) -> list[str]:
        """Critical tasks that are not running now or are crash-looping, by name."""
        return [t.name for t in self._tasks.values() if t.critical and not self._healthy(t)]

    def restarting(self) -> list[str]:
        """Every task, critical or not, that is not running now or is crash-looping."""
        return [t.name for t in self._tasks.values() if not self._healthy(t)]

    def _healthy(self, task: _Task) -> bool:
        if not task.running:
            return False
        recent = [d for d in task.deaths if self.clock() - d < CRASH_LOOP_WINDOW_S]
        return len(recent) < CRASH_LOOP_DEATHS

    async def _keep(self, task: _Task) -> None:
        backoff_s = RESTART_MIN_S
        while True:
            started = self.clock()
            task.running = True
            try:
                await task.run()
            except asyncio.CancelledError:
                task.running = False
                raise
            except Exception:  # the supervisor's whole point: anything, logged and counted
                task.running = False
                now = self.clock()
                if now - started >= HEALTHY_AFTER_S:
                    backoff_s = RESTART_MIN_S
                task.deaths.append(now)
                self.on_death(task.name)
                log.exception("background task %s died; restarting it in %.1f s",
                              task.name, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RESTART_MAX_S)
                continue
            task.running = False
            log.warning("background task %s returned; it is not restarted", task.name)
            return

    async def stop(self, names: Collection[str] | None = None,
                   timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Cancel the tasks ``names`` (default: every task) and wait for them, at most
        ``timeout_s``."""
        tasks = [t.task for t in self._tasks.values()
                 if t.task is not None and (names is None or t.name in names)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
