"""Random ids for the hot path: the OS's random bytes read a few kilobytes at a time.

``secrets.token_hex`` asks the kernel for every id (a ``getrandom`` system call); a call
through the gateway needs two (its correlation id, and its call id when the caller gives
none). The bytes are the same kernel CSPRNG's, read 4 KB at once and handed out in order,
never twice; a forked child starts with none of its parent's.
"""

from __future__ import annotations

import os

REFILL_BYTES = 4096


class _RandomBytes:
    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        at = self._at
        if at + count > len(self._buffer):
            self._buffer = os.urandom(max(REFILL_BYTES, count))
            at = 0
        self._at = at + count
        return self._buffer[at:at + count]

    def forget(self) -> None:
        self._buffer = b""
        self._at = 0


_RANDOM = _RandomBytes()
os.register_at_fork(after_in_child=_RANDOM.forget)


def token_hex(nbytes: int) -> str:
    """``secrets.token_hex(nbytes)``: ``nbytes`` random bytes from the OS, as hex."""
    return _RANDOM.take(nbytes).hex()
