"""Commands packed by hand (``core/resp.py``) are byte for byte what redis-py's packer sends
for the same arguments, and refuse what its encoder refuses."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from modelgate.core import resp
from modelgate.core.resp import packed, packed_all

COMMANDS = [
    ("XADD", "mg:pool:m:1:requests", "*", "ids", b"5d890ad425058e19", "budget_ms", 29999,
     "payload", bytes(range(256)) * 40),
    ("EVAL", "return {ARGV[1], KEYS[1]}", 1, "clé", "ünïcode ✓", -7, 2.5, 1e-300),
    ("SET", "k", np.arange(6, dtype=np.float32).data.cast("B"), "PX", 10),
    ("SET", "k", bytearray(b"\x00\r\n$")),
    ("PING",),
]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_packed_as_redis_py_packs(command: tuple[object, ...]) -> None:
    theirs = b"".join(bytes(part) for part in
                      redis.Connection().pack_commands([command]))  # type: ignore[list-item]
    assert packed(*command) == theirs  # type: ignore[arg-type]


def test_many_commands_in_one_buffer() -> None:
    both = packed_all([("SET", "a", 1), ("GET", "a")])
    assert both == packed("SET", "a", 1) + packed("GET", "a")


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}, object()])
def test_what_the_encoder_refuses_is_refused(value: object) -> None:
    with pytest.raises(TypeError):
        packed("SET", "k", value)  # type: ignore[arg-type]


def test_a_real_redis_reads_them(redis_client: redis.Redis) -> None:
    connection = redis_client.connection_pool.get_connection()
    try:
        # A list: redis-py's blocking connection iterates what it is given.
        connection.send_packed_command([packed_all([
            ("SET", "k", np.arange(3, dtype=np.int16).data), ("GET", "k"),
            ("SET", "u", "ünï"), ("GET", "u")])])
        replies = [connection.read_response() for _ in range(4)]
    finally:
        redis_client.connection_pool.release(connection)
    # A memoryview of 2-byte items is sent as its bytes (redis-py would count its items).
    assert replies[1] == np.arange(3, dtype=np.int16).tobytes()
    assert replies[3] == "ünï".encode()


def test_strings_seen_once_never_grow_the_cache_past_its_bound() -> None:
    """Arguments that vary (a caller's keys) cannot grow the cache of framed strings without
    end, and packing stays byte for byte what redis-py sends while it is cleared and refilled."""
    connection = redis.Connection()
    for i in range(resp.STR_BULKS_MAX + 10):
        command = ("GET", f"key-{i}")
        assert packed(*command) == b"".join(
            bytes(part) for part in connection.pack_commands([command]))  # type: ignore[list-item]
        assert len(resp._STR_BULKS) <= resp.STR_BULKS_MAX
