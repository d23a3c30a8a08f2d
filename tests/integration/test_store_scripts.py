"""The worker's Lua scripts of ``modelgate.core.store.pools`` against a real Redis: ANSWER
(write every answer, then acknowledge, or do nothing) and DEAD_LETTER_TRIM.

Each test has a Redis of its own (``private_redis_url``): some set ``maxmemory``. Run them on
Redis 6.2 too with ``MODELGATE_REDIS_SERVER=/path/to/redis-server-6.2``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from modelgate.core.store import pools, replies

pytestmark = pytest.mark.integration

POOL = "m:1"
STREAM = pools.requests_stream(POOL)
REPLY_TO = replies.reply_list("gw")


@pytest.fixture
def client(private_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis_url)
    client.xgroup_create(STREAM, pools.WORKER_GROUP, id="0", mkstream=True)
    try:
        yield client
    finally:
        client.config_set("maxmemory", 0)
        client.close()


def delivered(client: redis.Redis, requests: int = 1) -> bytes:
    """An entry of ``requests`` calls, counted as queued and delivered to consumer "w"."""
    entry_id = client.xadd(STREAM, {"ids": ",".join(map(str, range(requests)))})
    client.incrby(pools.queued(POOL), requests)
    client.xreadgroup(pools.WORKER_GROUP, "w", {STREAM: ">"})
    return entry_id


def answer(client: redis.Redis, entries: list[tuple[bytes, int]],
           replies_by_list: dict[str, list[bytes]],
           letters: tuple[pools.DeadLetter, ...] = ()) -> pools.Answered:
    command = pools.answer_command(POOL, entries, replies_by_list, 60_000, letters)
    return pools.Answered.parse(client.execute_command(*command))


def state(client: redis.Redis) -> tuple[int, int, int]:
    """(entries in the stream, entries pending, the queued count)."""
    return (client.xlen(STREAM), int(client.xpending(STREAM, pools.WORKER_GROUP)["pending"]),
            pools.queued_count(client.get(pools.queued(POOL))))


def test_answer_writes_every_reply_then_acknowledges(client: redis.Redis) -> None:
    first, second = delivered(client, 2), delivered(client, 1)
    other = replies.reply_list("gw2")
    done = answer(client, [(first, 2), (second, 1)],
                  {REPLY_TO: [b"r1", b"r2"], other: [b"r3"]})
    assert done == pools.Answered(True, acked_requests=3)
    assert client.lrange(REPLY_TO, 0, -1) == [b"r1", b"r2"]
    assert client.lrange(other, 0, -1) == [b"r3"]
    assert 0 < client.pttl(REPLY_TO) <= 60_000 and 0 < client.pttl(other) <= 60_000
    assert state(client) == (0, 0, 0)
    # The same entries answered again (a slow worker after a takeover): nothing subtracted.
    assert answer(client, [(first, 2)], {REPLY_TO: [b"r1"]}).acked_requests == 0
    assert state(client) == (0, 0, 0)


def test_answer_at_maxmemory_writes_nothing_and_acknowledges_nothing(
        client: redis.Redis) -> None:
    entry_id = delivered(client)
    letter = pools.DeadLetter({b"ids": b"0"}, entry_id, 4, 1)
    client.config_set("maxmemory", 1)
    for letters in ((), (letter,)):
        done = answer(client, [(entry_id, 1)], {REPLY_TO: [b"r"]}, letters)
        assert not done.written and "OOM" in done.error, done
        assert state(client) == (1, 1, 1)
        assert not client.exists(REPLY_TO) and not client.exists(pools.dead_letters(POOL))
    client.config_set("maxmemory", 0)
    assert answer(client, [(entry_id, 1)], {REPLY_TO: [b"r"]}, (letter,)).written
    assert state(client) == (0, 0, 0)
    assert client.xlen(pools.dead_letters(POOL)) == 1 and client.llen(REPLY_TO) == 1


def test_entries_without_anyone_to_answer_are_acknowledged_even_at_maxmemory(
        client: redis.Redis) -> None:
    """An entry that names no caller (undecodable) has no answer to lose."""
    entry_id = delivered(client)
    client.config_set("maxmemory", 1)
    assert answer(client, [(entry_id, 1)], {}) == pools.Answered(True, acked_requests=1)
    assert state(client) == (0, 0, 0)


def test_a_reply_list_of_another_type_or_name_is_never_written(client: redis.Redis) -> None:
    """Waiting never heals those: their replies are dropped, their entries acknowledged."""
    entry_id = delivered(client, 3)
    wrong_type = replies.reply_list("not-a-list")
    client.set(wrong_type, "x")
    done = answer(client, [(entry_id, 3)],
                  {wrong_type: [b"r1"], "victim": [b"r2", b"r3"], REPLY_TO: [b"r4"]})
    assert done == pools.Answered(True, acked_requests=3, dropped_replies=3)
    assert client.get(wrong_type) == b"x" and not client.exists("victim")
    assert client.lrange(REPLY_TO, 0, -1) == [b"r4"]
    assert state(client) == (0, 0, 0)


def test_dead_letters_are_capped_and_keep_no_large_payload(client: redis.Redis) -> None:
    big = b"x" * (pools.DEAD_LETTER_PAYLOAD_MAX_BYTES + 1)
    entry_id = delivered(client)
    letters = (pools.DeadLetter({b"ids": b"0", b"payload": big}, entry_id, 4, 1),
               pools.DeadLetter({b"ids": b"1", b"payload": b"small"}, entry_id, 4, 1))
    assert answer(client, [(entry_id, 1)], {REPLY_TO: [b"r"]}, letters).written
    [(_, large), (_, small)] = client.xrange(pools.dead_letters(POOL))
    assert b"payload" not in large and large[b"payload_bytes"] == str(len(big)).encode()
    assert small[b"payload"] == b"small"
    parsed = pools.DeadLetter.parse(large)
    assert parsed.fields[b"payload_bytes"] == str(len(big)).encode()
    assert parsed.deliveries == 4


def test_the_dead_letter_stream_is_capped_in_count(client: redis.Redis) -> None:
    letter = pools.DeadLetter({b"ids": b"0"}, b"1-0", 4, 1)
    entries = [(delivered(client), 1) for _ in range(3)]
    for _ in range(pools.DEAD_LETTER_MAXLEN + 5):
        assert answer(client, [], {}, (letter,)).written
    assert client.xlen(pools.dead_letters(POOL)) == pools.DEAD_LETTER_MAXLEN
    assert answer(client, entries, {}).acked_requests == 3


def test_old_dead_letters_are_trimmed_by_age(client: redis.Redis) -> None:
    dead = pools.dead_letters(POOL)
    now_ms = int(client.time()[0]) * 1000
    old = now_ms - pools.DEAD_LETTER_MAX_AGE_MS - 60_000
    for i in range(300):  # whole macro nodes, so that the approximate trim takes them
        client.xadd(dead, {"ids": "old"}, id=f"{old}-{i}")
    client.xadd(dead, {"ids": "new"})
    client.config_set("maxmemory", 1)  # trimming needs no memory: it runs at maxmemory too
    dropped = client.eval(pools.DEAD_LETTER_TRIM, 1, dead, pools.DEAD_LETTER_MAX_AGE_MS)
    assert dropped >= 200
    assert client.xrange(dead)[-1][1] == {b"ids": b"new"}
    client.config_set("maxmemory", 0)
    assert client.eval(pools.DEAD_LETTER_TRIM, 1, dead, pools.DEAD_LETTER_MAX_AGE_MS) >= 0
