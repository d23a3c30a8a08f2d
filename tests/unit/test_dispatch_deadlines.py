"""The dispatcher's deadline sweep: every waiting call fails at its deadline, answered calls do
not keep the sweep busy, and the heap of deadlines stays bounded under steady traffic.

No Redis here: the writer and reader tasks are not started (the clients never connect), and
answers are handed to the dispatcher as the reply reader would hand them over.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis.asyncio as aioredis

from modelgate.core import wire
from modelgate.core.errors import DeadlineExceeded
from modelgate.gateway.dispatch import DEADLINES_SLACK, Dispatcher

REQUEST = wire.Request({"input": wire.tensor(np.zeros((1, 4), np.float32))})


def dispatcher() -> Dispatcher:
    # Nothing is sent: from_url does not connect until a command runs.
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    return Dispatcher(client, client, "test-gateway")


def answer(plane: Dispatcher, nth: int) -> None:
    """Answer the ``nth`` call submitted (0-based) as the reply reader would; correlation ids
    are random, so it is found in submission order."""
    correlation = plane._outbox[nth].correlation
    plane._resolve(wire.encode_reply(wire.Reply((correlation,), "ok", rows=(1,))))


def now_ms() -> int:
    return int(time.time() * 1000)


def test_each_waiting_call_fails_at_its_own_deadline() -> None:
    async def scenario() -> None:
        plane = dispatcher()
        answered = plane.submit("mlp:1", REQUEST, now_ms() + 30, 8)
        late = plane.submit("mlp:1", REQUEST, now_ms() + 5_000, 8)
        soon = plane.submit("mlp:1", REQUEST, now_ms() + 80, 8)
        answer(plane, 0)  # the earliest deadline's call is answered before its deadline
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(soon, timeout=2.0)
        assert 0.05 <= time.monotonic() - started < 1.0
        assert (await answered).status == "ok"
        assert not late.done()  # its deadline is seconds away
        assert plane.in_flight == 1
        await plane.stop()
        assert late.done()  # failed by the shutdown, not left pending

    asyncio.run(scenario())


def test_a_deadline_earlier_than_every_other_is_still_met() -> None:
    async def scenario() -> None:
        plane = dispatcher()
        plane.submit("mlp:1", REQUEST, now_ms() + 10_000, 8)
        urgent = plane.submit("mlp:1", REQUEST, now_ms() + 20, 8)  # the sweep must move up
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(urgent, timeout=1.0)
        await plane.stop()

    asyncio.run(scenario())


def test_answered_calls_do_not_pile_up_in_the_deadline_heap() -> None:
    async def scenario() -> None:
        plane = dispatcher()
        for i in range(1, 5 * DEADLINES_SLACK):
            plane.submit("mlp:1", REQUEST, now_ms() + 30_000, 8)
            answer(plane, i - 1)
        assert plane.in_flight == 0
        assert len(plane._deadlines) <= DEADLINES_SLACK + 1
        plane._outbox.clear()
        await plane.stop()

    asyncio.run(scenario())
