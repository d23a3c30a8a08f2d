"""Hot-path ids (``core/ids.py``): hex of the requested size, never repeated, across refills
of the buffer, and a forked child never hands out its parent's bytes."""

from __future__ import annotations

import os

from modelgate.core import ids


def test_ids_are_hex_of_the_size_asked_and_never_repeat_across_refills() -> None:
    seen = [ids.token_hex(8) for _ in range(3 * ids.REFILL_BYTES // 8 + 5)]
    assert all(len(token) == 16 and int(token, 16) >= 0 for token in seen)
    assert len(set(seen)) == len(seen)
    long = ids.token_hex(ids.REFILL_BYTES + 10)  # larger than one refill
    assert len(long) == 2 * (ids.REFILL_BYTES + 10)


def test_a_forked_child_does_not_reuse_the_parents_bytes() -> None:
    ids._RANDOM.forget()
    ids.token_hex(8)  # the parent holds a fresh buffer, nearly all of it left
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write_end, "".join(ids.token_hex(8) for _ in range(16)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(ids.token_hex(8) for _ in range(16))
    assert len(child) == len(parent) == 256
    assert child != parent
