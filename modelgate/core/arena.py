"""Large request tensors in shared memory: a gateway's payload arena.

A bundle of large numeric inputs (``wire.LARGE_INPUT_BYTES`` or more) costs far more on its
way through Redis than its own bytes: the gateway writes it to a socket, Redis reads it, keeps
it, appends it to its append-only file (and rewrites that file every few seconds under load),
writes it to the worker's socket, and the worker reads it. On a 150 KB image that was most of
the serving cost beside the model itself. A gateway whose workers run on its host (``modelgate
up``) therefore writes such a bundle, once, into an *arena*: a file in ``/dev/shm`` that only
its user can open, mapped by the gateway and by the workers. The stream entry carries where
it is (``RequestEntry.arena``, ``name:start:length``) instead of the bytes, and the worker
decodes the bundle from its own mapping of the file.

Nothing is lost by it. A payload only needs to live as long as the gateway that holds the
caller's connection: the arena is that gateway's own memory, kept while the call waits (an
answer, its deadline, its failure, whatever comes first, gives it back), so a Redis that
restarts from its append-only file finds the payloads of its restored entries where they were,
and a worker that dies leaves them for the one that takes its entries over. A gateway that
dies takes its arena with it, as it takes its callers' connections.

The arena is a ring. ``head`` counts every byte ever allocated (a position, never wrapped);
byte ``p`` lives at ``p % size``; a region that would straddle the end starts at the next lap
instead. A region is held by its calls until they are all settled, and space is reused only
behind the oldest region still held (``tail``): a call that waits long holds back the ring, and
while the ring is full the gateway sends payloads through Redis as before. The header
publishes ``head`` before the bytes are written, so a worker can tell, after decoding, whether
the region may have been reused meanwhile (only ever after its calls were settled: their
deadline passed): the region ``[start, start + length)`` is intact while ``head <= start +
size``.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import secrets
import stat
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from modelgate.core.wire import WireError

log = logging.getLogger("modelgate.arena")

ARENA_DIR = Path("/dev/shm")
PREFIX = "modelgate-arena-"
_NAME = re.compile(r"modelgate-arena-(\d{1,10})-[0-9a-f]{16}\Z")
MAGIC = b"MGARENA1"
# magic, the data's size, head; the rest of a cache line is padding.
_HEADER = struct.Struct("@8sQQ")  # offsets 0, 8, 16
HEADER_BYTES = 64
_HEAD_AT = 16
KEEP_MAPPED = 8  # arenas one worker keeps mapped (one per gateway process it serves)
RECHECK_S = 10.0  # how often a worker looks whether an arena it maps is still there

T = TypeVar("T")


class PayloadUnavailable(WireError):
    """An entry's payload that its arena does not hold (or no longer holds)."""


class ArenaUnreachable(PayloadUnavailable):
    """The entry names an arena this process cannot open: another host's, or another
    container's ``/dev/shm``, or a gateway that is gone (the gateway then stops sending that
    pool's payloads this way)."""


class PayloadReleased(PayloadUnavailable):
    """The region was given back by its gateway (its calls' deadline passed) and may have
    been reused."""


@dataclass(slots=True)
class Region:
    """A span of an arena, held by ``holders`` calls."""

    start: int  # position: bytes allocated before it, since the arena was made
    length: int
    holders: int
    ref: bytes  # what the stream entry carries: b"name:start:length"


def parse_ref(ref: bytes) -> tuple[str, int, int]:
    """``(name, start, length)`` of an entry's ``arena`` field; raises PayloadUnavailable."""
    try:
        name, start, length = ref.decode("ascii").split(":")
        position, size = int(start), int(length)
    except (UnicodeDecodeError, ValueError) as e:
        raise PayloadUnavailable(f"malformed arena reference {ref[:80]!r}") from e
    if not _NAME.match(name) or position < 0 or size <= 0:
        raise PayloadUnavailable(f"malformed arena reference {ref[:80]!r}")
    return name, position, size


class Arena:
    """A gateway's arena (one per gateway process): allocate, write, release, close."""

    def __init__(self, size_bytes: int, directory: Path = ARENA_DIR) -> None:
        if size_bytes <= 0:
            raise ValueError("an arena needs a positive size")
        self.size = size_bytes
        self.name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        self.path = directory / self.name
        # Only this user may open it: the payloads are the callers' data.
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o600)
        try:
            # Every page taken now (ENOSPC now, when /dev/shm is too small, rather than SIGBUS
            # on a write into a page tmpfs cannot give later).
            os.posix_fallocate(descriptor, 0, HEADER_BYTES + size_bytes)
            self._map = mmap.mmap(descriptor, HEADER_BYTES + size_bytes)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(descriptor)
        _HEADER.pack_into(self._map, 0, MAGIC, size_bytes, 0)
        self._head_cell = _head_cell(self._map)
        self.head = 0
        self._regions: deque[Region] = deque()
        self.held_bytes = 0
        self._full_said_at = 0.0

    @property
    def tail(self) -> int:
        """Where the oldest region still held starts (``head`` when none is)."""
        return self._regions[0].start if self._regions else self.head

    def hold(self, pieces: Iterable[bytes | memoryview], holders: int) -> Region | None:
        """A region holding the pieces one after the other, for ``holders`` calls; None when
        the ring has no room for them now (the caller sends them another way)."""
        pieces = list(pieces)
        length = sum(len(piece) for piece in pieces)  # byte buffers: len is their size
        region = self._allocate(length, holders)
        if region is None:
            return None
        at = HEADER_BYTES + region.start % self.size
        for piece in pieces:
            end = at + len(piece)
            self._map[at:end] = piece
            at = end
        return region

    def _allocate(self, length: int, holders: int) -> Region | None:
        if length <= 0 or length > self.size or holders <= 0:
            return None
        start = self.head
        offset = start % self.size
        if offset + length > self.size:
            start += self.size - offset  # would straddle the end: the next lap
        if start + length - self.tail > self.size:
            now = time.monotonic()
            if now - self._full_said_at > 60.0:
                self._full_said_at = now
                log.warning("payload arena %s is full (%d of %d bytes held): large payloads "
                            "go through Redis until calls give space back", self.name,
                            self.held_bytes, self.size)
            return None
        self.head = start + length
        # Published before the bytes are written: see the module's note on reuse.
        self._head_cell[0] = self.head
        region = Region(start, length, holders, b"%s:%d:%d" % (self.name.encode(), start, length))
        self._regions.append(region)
        self.held_bytes += length
        return region

    def release(self, region: Region) -> None:
        """One of the region's calls is settled; its space is reusable once all are (and
        every region allocated before it is given back too)."""
        region.holders -= 1
        if region.holders == 0:
            self.held_bytes -= region.length
        regions = self._regions
        while regions and regions[0].holders <= 0:
            regions.popleft()

    def close(self) -> None:
        """Remove the file; workers' mappings of it stay valid until they drop them."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        del self._head_cell  # it holds the mapping open
        self._map.close()


def _head_cell(mapped: mmap.mmap) -> np.ndarray:
    """The header's ``head`` as a one-element array over the mapping: numpy reads and writes
    an aligned 8-byte element with one access, so a worker never sees it half written.
    (``struct.pack_into`` clears the field before it writes it: a reader could see 0.)"""
    return np.ndarray((1,), np.uint64, buffer=mapped, offset=_HEAD_AT)


def open_arena(size_mb: int, directory: Path = ARENA_DIR) -> Arena | None:
    """A gateway's arena of ``size_mb`` MiB, after removing dead gateways' arenas; None when
    asked for none, or when this host has no shared memory to give (said in the log)."""
    if size_mb <= 0:
        return None
    swept = sweep_stale(directory)
    if swept:
        log.info("removed %d payload arenas of gateways that are gone", swept)
    try:
        arena = Arena(size_mb * 1024 * 1024, directory)
    except OSError as e:
        log.warning("no payload arena (%s in %s): large payloads go through Redis", e,
                    directory)
        return None
    log.info("payload arena %s: %d MiB of shared memory for large request tensors",
             arena.path, size_mb)
    return arena


def sweep_stale(directory: Path = ARENA_DIR) -> int:
    """Remove arenas of this user's gateways that died without removing theirs (killed);
    how many. An arena is stale when the process named in it is gone."""
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    uid = os.getuid()
    for name in names:
        match = _NAME.match(name)
        if match is None:
            continue
        path = directory / name
        try:
            owner = os.lstat(path).st_uid
        except OSError:
            continue
        if owner != uid or _alive(int(match.group(1))):
            continue
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(slots=True)
class _Mapped:
    map: mmap.mmap
    head: np.ndarray  # _head_cell of map
    size: int
    inode: tuple[int, int]
    checked_at: float


class ArenaReader:
    """A worker's view of the arenas its entries name: each mapped once, read-only."""

    def __init__(self, directory: Path = ARENA_DIR, keep: int = KEEP_MAPPED) -> None:
        self.directory = directory
        self.keep = keep
        self._mapped: OrderedDict[str, _Mapped] = OrderedDict()

    def decode(self, ref: bytes, decode: Callable[[memoryview], T]) -> T:
        """``decode`` of the region ``ref`` names, read in place; raises ArenaUnreachable,
        PayloadReleased or (a reference no gateway wrote) PayloadUnavailable. ``decode`` must
        copy what it keeps (msgpack does)."""
        name, start, length = parse_ref(ref)
        mapped = self._mapping(name)
        size = mapped.size
        head = int(mapped.head[0])
        if length > size or start + length > head:
            raise PayloadUnavailable(f"arena {name} has no region {start}:{length}")
        if head > start + size:
            raise PayloadReleased(_released(name))
        at = HEADER_BYTES + start % size
        if at + length > HEADER_BYTES + size:
            raise PayloadUnavailable(f"arena {name} has no region {start}:{length}")
        view = memoryview(mapped.map)[at:at + length]
        try:
            value = decode(view)
        finally:
            view.release()
        if int(mapped.head[0]) > start + size:
            raise PayloadReleased(_released(name))
        return value

    def _mapping(self, name: str) -> _Mapped:
        now = time.monotonic()
        mapped = self._mapped.get(name)
        if mapped is not None:
            self._mapped.move_to_end(name)
            if now - mapped.checked_at < RECHECK_S:
                return mapped
            mapped.checked_at = now
            if self._same_file(name, mapped):
                return mapped
            self._drop(name)  # its gateway is gone: its memory goes with the last mapping
        mapped = self._open(name, now)
        self._mapped[name] = mapped
        while len(self._mapped) > self.keep:
            self._drop(next(iter(self._mapped)))
        return mapped

    def _same_file(self, name: str, mapped: _Mapped) -> bool:
        try:
            found = os.stat(self.directory / name)
        except OSError:
            return False
        return (found.st_dev, found.st_ino) == mapped.inode

    def _open(self, name: str, now: float) -> _Mapped:
        path = self.directory / name
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise ArenaUnreachable(
                f"the request's tensors are in shared memory this worker cannot open ({path}: "
                f"{e.strerror}): its gateway runs on another host or in another container, or "
                "is gone. Run workers beside their gateways, or start gateways with "
                "--payload-arena-mb 0") from e
        try:
            found = os.fstat(descriptor)
            if (not stat.S_ISREG(found.st_mode) or found.st_uid != os.getuid()
                    or found.st_mode & 0o077):
                raise ArenaUnreachable(f"{path} is not an arena of this user's gateways")
            if found.st_size <= HEADER_BYTES:
                raise ArenaUnreachable(f"{path} is not an arena (too small)")
            region = mmap.mmap(descriptor, found.st_size, prot=mmap.PROT_READ)
        finally:
            os.close(descriptor)
        magic, size, _ = _HEADER.unpack_from(region, 0)
        if magic != MAGIC or size + HEADER_BYTES != found.st_size:
            region.close()
            raise ArenaUnreachable(f"{path} is not an arena (bad header)")
        return _Mapped(region, _head_cell(region), size, (found.st_dev, found.st_ino), now)

    def _drop(self, name: str) -> None:
        mapped = self._mapped.pop(name)
        mapped.head = np.empty(1, np.uint64)  # let go of the mapping before closing it
        mapped.map.close()

    def close(self) -> None:
        for name in list(self._mapped):
            self._drop(name)


def _released(name: str) -> str:
    return (f"the request's tensors were released by their gateway (arena {name}) before a "
            "worker read them: the call's deadline had passed")
