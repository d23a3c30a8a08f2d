"""A bundle of large inputs goes to a real Redis as the requests' own buffers
(``dispatch.packed_xadd``): the entry Redis holds is the bundle, small entries written in the
same round trip keep their order, and the answers come back to the right callers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import redis

from modelgate.core import wire
from modelgate.core.settings import GatewaySettings
from modelgate.core.store import pools
from modelgate.gateway.app import redis_clients
from modelgate.gateway.dispatch import Dispatcher

LARGE, SMALL = "big:1", "tiny:1"


def test_large_and_small_entries_of_one_write_arrive_whole_and_in_order(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    images = [rng.random((1, 3, 64, 64)).astype(np.float32) for _ in range(3)]  # 48 KB each
    small = rng.random((1, 4)).astype(np.float32)
    settings = GatewaySettings(models_dir=tmp_path, redis_url=redis_url)

    async def run() -> tuple[list[wire.Reply], list[tuple[str, pools.RequestEntry]]]:
        writer, reader = redis_clients(settings)
        dispatcher = Dispatcher(writer, reader, "parts")
        dispatcher.start()
        try:
            deadline = int(time.time() * 1000) + 10_000
            futures = [dispatcher.submit(LARGE, wire.Request({"image": wire.tensor(image)}),
                                         deadline, 8) for image in images]
            futures.append(dispatcher.submit(SMALL, wire.Request({"x": wire.tensor(small)}),
                                             deadline, 8))
            entries = []
            while len(entries) < 2:
                await asyncio.sleep(0.01)
                entries = [(pool, pools.RequestEntry.parse(fields))
                           for pool in (LARGE, SMALL)
                           for _, fields in redis_client.xrange(pools.requests_stream(pool))]
            # Answer each entry as a worker would: the input's first value per row.
            for _, entry in entries:
                bundle = wire.decode_bundle(entry.ids, entry.payload)
                data = next(iter(bundle.request.inputs.values())).data
                first = data.reshape(data.shape[0], -1)[:, :1].copy()
                redis_client.rpush(entry.reply_to, wire.encode_reply(wire.Reply(
                    entry.ids, wire.ReplyStatus.OK, {"first": wire.tensor(first)},
                    rows=bundle.rows)))
            replies = await asyncio.wait_for(asyncio.gather(*futures), 10)
            return replies, entries
        finally:
            await dispatcher.stop()
            await writer.aclose()
            await reader.aclose()

    replies, entries = asyncio.run(run())
    large = [entry for pool, entry in entries if pool == LARGE]
    assert len(large) == 1 and len(large[0].ids) == 3  # one bundle of the three images
    bundle = wire.decode_bundle(large[0].ids, large[0].payload)
    np.testing.assert_array_equal(bundle.request.inputs["image"].data, np.concatenate(images))
    for image, reply in zip(images, replies[:3], strict=True):
        assert reply.outputs["first"].data[0, 0] == image.reshape(-1)[0]
    assert replies[3].outputs["first"].data[0, 0] == small[0, 0]
    # The backlog count written beside each entry counts its calls.
    assert int(redis_client.get(pools.queued(LARGE))) == 3
    assert int(redis_client.get(pools.queued(SMALL))) == 1
