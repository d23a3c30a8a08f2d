"""How the dispatcher's requests reach Redis (``gateway/dispatch.py``, ``gateway/link.py``).

Its own connections have no socket timeout of their own; each exchange on them is bounded as
a whole. A Redis that stops answering (a stopped process: the socket stays open, nothing comes
back) must still turn calls into a prompt 503, not into waits until their deadlines, and the
dispatcher must take calls again once Redis answers. A call alone in flight is written by
``submit`` itself, before the event loop turns."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from modelgate.core import wire
from modelgate.core.embedded_redis import start_redis
from modelgate.core.errors import BackendUnavailable
from modelgate.core.settings import GatewaySettings
from modelgate.core.store import pools
from modelgate.gateway.app import redis_clients
from modelgate.gateway.dispatch import Dispatcher
from tests.procs import stop_process

POOL = "m:1"
TIMEOUT_S = 0.5  # redis_timeout_s: every exchange on the dispatcher's connections


def answer_all(client: redis.Redis) -> int:
    """Answer every waiting entry as a worker would (its input back); how many."""
    answered = 0
    for entry_id, fields in client.xrange(pools.requests_stream(POOL)):
        entry = pools.RequestEntry.parse(fields)
        bundle = wire.decode_bundle(entry.ids, entry.payload)
        x = bundle.request.inputs["x"]
        client.rpush(entry.reply_to, wire.encode_reply(wire.Reply(
            entry.ids, wire.ReplyStatus.OK, {"y": x}, rows=bundle.rows)))
        client.xdel(pools.requests_stream(POOL), entry_id)
        answered += 1
    return answered


def test_a_stopped_redis_fails_calls_promptly_and_calls_go_on_after_it(tmp_path: Path) -> None:
    process, url = start_redis()
    client = redis.Redis.from_url(url)
    settings = GatewaySettings(models_dir=tmp_path, redis_url=url, redis_timeout_s=TIMEOUT_S)
    x = wire.tensor(np.ones((1, 4), np.float32))

    async def run() -> tuple[wire.Reply, BaseException, float, wire.Reply]:
        writer, reader = redis_clients(settings)
        dispatcher = Dispatcher(writer, reader, "hung")
        dispatcher.start()
        try:
            def submit() -> asyncio.Future[wire.Reply]:
                deadline_ms = int(time.time() * 1000) + 30_000  # far past the Redis bound
                return dispatcher.submit(POOL, wire.Request({"x": x}), deadline_ms, 8)

            async def answered(future: asyncio.Future[wire.Reply]) -> wire.Reply:
                while not future.done():
                    await asyncio.to_thread(answer_all, client)
                    await asyncio.sleep(0.02)
                return future.result()

            before = await asyncio.wait_for(answered(submit()), 10)
            os.kill(process.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                stuck = submit()
                with pytest.raises(BackendUnavailable) as refused:
                    await asyncio.wait_for(stuck, 10)
                waited_s = time.monotonic() - started
            finally:
                os.kill(process.pid, signal.SIGCONT)
            after = await asyncio.wait_for(answered(submit()), 10)
            return before, refused.value, waited_s, after
        finally:
            await dispatcher.stop()
            await writer.aclose()
            await reader.aclose()

    try:
        before, refused, waited_s, after = asyncio.run(run())
    finally:
        client.close()
        stop_process(process, timeout_s=5)
    np.testing.assert_array_equal(before.outputs["y"].data, x.data)
    # The write's exchange bound (one redis_timeout_s, the retry included), not the deadline.
    assert waited_s < 4 * TIMEOUT_S, waited_s
    assert "Redis" in str(refused) and "retry" in str(refused)
    np.testing.assert_array_equal(after.outputs["y"].data, x.data)


def test_a_lone_call_reaches_redis_before_the_event_loop_turns(tmp_path: Path) -> None:
    """At concurrency 1 the call's entry is written by ``submit`` itself: it is in the stream
    while the event loop is still blocked in the caller's step (with the writer task, it
    would reach Redis only once the loop turned)."""
    process, url = start_redis()
    client = redis.Redis.from_url(url)
    settings = GatewaySettings(models_dir=tmp_path, redis_url=url)
    x = wire.tensor(np.ones((1, 4), np.float32))

    async def run() -> tuple[int, int]:
        writer, reader = redis_clients(settings)
        dispatcher = Dispatcher(writer, reader, "lone")
        dispatcher.start()
        try:
            def submit() -> asyncio.Future[wire.Reply]:
                deadline_ms = int(time.time() * 1000) + 30_000
                return dispatcher.submit(POOL, wire.Request({"x": x}), deadline_ms, 8)

            first = submit()  # connects the writer's link
            while not first.done():
                await asyncio.to_thread(answer_all, client)
                await asyncio.sleep(0.02)
            lone = submit()
            time.sleep(0.3)  # the loop is blocked here: only a write made by submit is in
            seen = client.xlen(pools.requests_stream(POOL))
            while not lone.done():
                await asyncio.to_thread(answer_all, client)
                await asyncio.sleep(0.02)
            lone.result()
            # Two at once, the loop still blocked after both: the second waits for the
            # writer task, which bundles what arrives meanwhile.
            pair = [submit(), submit()]
            time.sleep(0.3)
            seen_pair = client.xlen(pools.requests_stream(POOL))
            while not all(f.done() for f in pair):
                await asyncio.to_thread(answer_all, client)
                await asyncio.sleep(0.02)
            return seen, seen_pair
        finally:
            await dispatcher.stop()
            await writer.aclose()
            await reader.aclose()

    try:
        seen, seen_pair = asyncio.run(run())
    finally:
        client.close()
        stop_process(process, timeout_s=5)
    assert seen == 1
    assert seen_pair == 1  # the first of the two alone; the second after the loop turns
