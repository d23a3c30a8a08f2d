"""Redis commands in Redis's protocol (RESP), packed by hand.

redis-py's packer checks and converts every argument through several layers: ~12 us for a
worker's answer script and ~9 us for its read on the bench VM, against ~5 and ~3 here, on
paths every call takes (the gateway's XADD and reply pop, the worker's read and answer). It
takes what redis-py's encoder takes, converted the same way: bytes-like values as they are,
strings as UTF-8, numbers as their ``repr``; anything else (a bool included) is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

Argument = bytes | bytearray | memoryview | str | int | float


def arguments(args: Iterable[Argument]) -> list[bytes]:
    """Each argument as one bulk string of the protocol."""
    parts = []
    for arg in args:
        if isinstance(arg, bytes):
            data: bytes | bytearray | memoryview = arg
            size = len(arg)
        elif isinstance(arg, str):
            data = arg.encode()
            size = len(data)
        elif isinstance(arg, bool):
            raise TypeError("a bool is not a Redis argument; send 0 or 1, or a string")
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
            size = len(data)
        elif isinstance(arg, bytearray | memoryview):
            data = arg
            size = memoryview(arg).nbytes
        else:
            raise TypeError(f"{type(arg).__name__} is not a Redis argument")
        parts.append(b"$%d\r\n%s\r\n" % (size, data))
    return parts


def packed(*args: Argument) -> bytes:
    """One command, ready to write."""
    return b"".join([b"*%d\r\n" % len(args), *arguments(args)])


def packed_all(commands: Iterable[tuple[Argument, ...]]) -> bytes:
    """Commands one after another, in one buffer: one write sends them all."""
    return b"".join([packed(*command) for command in commands])
