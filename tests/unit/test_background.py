"""The gateway's task supervisor: a task that dies is counted, logged and restarted; readiness
hears of a critical task that is down or crash-looping, and of no other.

No Redis here: the tasks are plain coroutines that fail on cue.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from modelgate.gateway import background
from modelgate.gateway.background import Background

DEADLINE_S = 5.0


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "RESTART_MIN_S", 0.01)


async def until(condition: object, what: str) -> None:
    """Poll ``condition()`` with a deadline, yielding to the tasks under test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Flaky:
    """A background loop that raises the first ``deaths`` times it runs, then runs for good."""

    def __init__(self, deaths: int) -> None:
        self.deaths = deaths
        self.starts = 0
        self.serving = asyncio.Event()

    async def run(self) -> None:
        self.starts += 1
        if self.starts <= self.deaths:
            raise TypeError(f"bad data, run {self.starts}")
        self.serving.set()
        await asyncio.Event().wait()  # forever, until cancelled


def test_a_task_that_dies_is_counted_logged_and_restarted(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        counted: list[str] = []
        supervisor = Background(counted.append)
        flaky = Flaky(deaths=2)
        supervisor.start("reader", flaky.run)
        await asyncio.wait_for(flaky.serving.wait(), DEADLINE_S)
        assert flaky.starts == 3
        assert counted == ["reader", "reader"]
        await supervisor.stop()

    with caplog.at_level(logging.ERROR, logger="modelgate.gateway"):
        asyncio.run(scenario())
    deaths = [r for r in caplog.records if "background task reader died" in r.getMessage()]
    assert len(deaths) == 2 and all(r.exc_info for r in deaths)


def test_a_critical_task_is_down_while_it_waits_for_its_restart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The restart waits out a backoff; readiness fails meanwhile."""
    monkeypatch.setattr(background, "RESTART_MIN_S", 0.3)

    async def scenario() -> None:
        supervisor = Background(lambda name: None)
        flaky = Flaky(deaths=1)
        supervisor.start("monitor", flaky.run)
        await until(lambda: flaky.starts == 1, "the first run")
        await until(lambda: supervisor.down() == ["monitor"], "the task to be down")
        await asyncio.wait_for(flaky.serving.wait(), DEADLINE_S)
        assert supervisor.down() == []  # one death is not a crash loop
        await supervisor.stop()

    asyncio.run(scenario())


def test_a_crash_looping_task_stays_down_until_its_deaths_are_old() -> None:
    now = [1000.0]

    async def scenario() -> None:
        supervisor = Background(lambda name: None, clock=lambda: now[0])
        flaky = Flaky(deaths=background.CRASH_LOOP_DEATHS)
        supervisor.start("writer", flaky.run)
        await asyncio.wait_for(flaky.serving.wait(), DEADLINE_S)
        assert supervisor.down() == ["writer"]  # running again, but it died 3 times just now
        now[0] += background.CRASH_LOOP_WINDOW_S
        assert supervisor.down() == []
        await supervisor.stop()

    asyncio.run(scenario())


def test_a_task_that_is_not_critical_is_restarted_without_failing_readiness() -> None:
    async def scenario() -> None:
        supervisor = Background(lambda name: None)
        flaky = Flaky(deaths=background.CRASH_LOOP_DEATHS)
        supervisor.start("drift", flaky.run, critical=False)
        await asyncio.wait_for(flaky.serving.wait(), DEADLINE_S)
        assert supervisor.down() == []
        assert supervisor.restarting() == ["drift"]
        await supervisor.stop()

    asyncio.run(scenario())


def test_stop_cancels_every_task_and_a_cancelled_task_is_not_restarted() -> None:
    async def scenario() -> None:
        counted: list[str] = []
        supervisor = Background(counted.append)
        flaky = Flaky(deaths=0)
        supervisor.start("reader", flaky.run)
        await asyncio.wait_for(flaky.serving.wait(), DEADLINE_S)
        await supervisor.stop()
        assert flaky.starts == 1 and counted == []
        assert supervisor.down() == ["reader"]

    asyncio.run(scenario())


def test_two_tasks_cannot_share_a_name() -> None:
    async def scenario() -> None:
        supervisor = Background(lambda name: None)
        supervisor.start("reader", Flaky(0).run)
        with pytest.raises(ValueError, match="reader"):
            supervisor.start("reader", Flaky(0).run)
        await supervisor.stop()

    asyncio.run(scenario())
