"""The dispatcher's links to Redis (``gateway/link.py``) against a real redis-server: replies
come back to the exchange that asked, in order, errors as values; a connection Redis drops
fails what waits on it at once; an exchange past its deadline fails and closes the link; the
connection is made as the client's are (its database)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from modelgate.core.resp import packed
from modelgate.gateway.link import WATCH_INTERVAL_S, Link
from tests.conftest import redis_url_for_db


def exchange_once(url: str, *command: str) -> list[object]:
    """One command's replies on a link of its own to the Redis at ``url``."""
    async def run() -> list[object]:
        client = aioredis.Redis.from_url(url)
        link = await Link.open(client)
        try:
            return await link.exchange([packed(*command)], 1)
        finally:
            link.close()
            await client.aclose()

    return asyncio.run(run())


def test_exchanges_get_their_own_replies_in_order_and_errors_as_values(
        redis_url: str, redis_client: redis.Redis) -> None:
    async def run() -> tuple[list[object], list[object]]:
        client = aioredis.Redis.from_url(redis_url_for_db(redis_url, 0))
        link = await Link.open(client)
        try:
            # Two exchanges in flight at once, the second written before the first is read.
            first = link.exchange([packed("SET", "k", "1"), packed("INCRBY", "k", 41)], 2)
            second = link.exchange([packed("LPUSH", "k", "x"), packed("GET", "k")], 2)
            return await first, await second
        finally:
            link.close()
            await client.aclose()

    first, second = asyncio.run(run())
    assert first == [b"OK", 42]
    assert isinstance(second[0], ResponseError) and "WRONGTYPE" in str(second[0])
    assert second[1] == b"42"
    assert redis_client.get("k") == b"42"


def test_a_refusal_for_memory_is_an_out_of_memory_error(private_redis_url: str) -> None:
    admin = redis.Redis.from_url(private_redis_url)
    admin.set("filler", "x" * 200_000)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")  # anything: every write is now refused

    try:
        (refused,) = exchange_once(private_redis_url, "SET", "more", "x")
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()
    assert isinstance(refused, OutOfMemoryError), refused


def test_a_dropped_connection_fails_the_waiting_exchange_and_the_link_says_closed(
        redis_url: str, redis_client: redis.Redis) -> None:
    async def run() -> tuple[Link, BaseException]:
        client = aioredis.Redis.from_url(redis_url_for_db(redis_url, 0))
        link = await Link.open(client)
        try:
            (name,) = await link.exchange([packed("CLIENT", "SETNAME", "doomed")], 1)
            assert name == b"OK"
            waiting = link.exchange([packed("BLPOP", "nothing", 10)], 1)
            await asyncio.sleep(0.1)
            await client.client_kill_filter(_type="normal", skipme=True)
            with pytest.raises(RedisConnectionError) as failed:
                await asyncio.wait_for(waiting, 5)
            return link, failed.value
        finally:
            link.close()
            await client.aclose()

    link, failed = asyncio.run(run())
    assert link.closed and "closed" in str(failed)
    with pytest.raises(RedisConnectionError):
        link.exchange([packed("PING")], 1)


def test_the_link_uses_the_clients_database(redis_url: str) -> None:
    url = redis_url_for_db(redis_url, 7)

    seven = redis.Redis.from_url(url)
    try:
        assert exchange_once(url, "SET", "where", "db7") == [b"OK"]
        assert seven.get("where") == b"db7"
    finally:
        seven.delete("where")
        seven.close()


def test_an_exchange_past_its_deadline_fails_then_and_closes_the_link(redis_url: str) -> None:
    """A reply that does not come by the exchange's deadline fails it (and what waits behind
    it) within the watchdog's interval, and the link closes: the reply may still arrive on
    it. Exchanges answered in time, before and beside it, are untouched."""
    bound_s = 0.3

    async def run() -> tuple[list[object], BaseException, float, Link]:
        client = aioredis.Redis.from_url(redis_url_for_db(redis_url, 0))
        link = await Link.open(client)
        loop = asyncio.get_running_loop()
        try:
            # Answered long before its deadline: many such exchanges, one watchdog.
            quick = [link.exchange([packed("PING")], 1, expires=loop.time() + bound_s)
                     for _ in range(50)]
            answered = [reply for replies in await asyncio.gather(*quick) for reply in replies]
            started = time.monotonic()
            stuck = link.exchange([packed("BLPOP", "nothing", 10)], 1,
                                  expires=loop.time() + bound_s)
            behind = link.exchange([packed("PING")], 1)  # no deadline of its own
            with pytest.raises(RedisTimeoutError) as failed:
                await asyncio.wait_for(stuck, 5)
            waited_s = time.monotonic() - started
            with pytest.raises(RedisTimeoutError):
                await behind
            return answered, failed.value, waited_s, link
        finally:
            link.close()
            await client.aclose()

    answered, failed, waited_s, link = asyncio.run(run())
    assert answered == [b"PONG"] * 50
    assert bound_s <= waited_s < bound_s + WATCH_INTERVAL_S + 0.5, waited_s
    assert "in time" in str(failed)
    assert link.closed
    with pytest.raises(RedisConnectionError):
        link.exchange([packed("PING")], 1)
