"""The payload arena (``modelgate.core.arena``): a ring of regions in a shared file that a
gateway writes and workers read in place, and that never hands a worker bytes of another call
as if they were its own."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelgate.core import arena, wire

SIZE = 4096


def _bytes(reader: arena.ArenaReader, region: arena.Region) -> bytes:
    return reader.decode(region.ref, bytes)


def test_a_region_reads_back_as_written_from_another_mapping(tmp_path: Path) -> None:
    ring = arena.Arena(SIZE, tmp_path)
    region = ring.hold([b"head-", memoryview(b"middle-").cast("B"), b"tail"], holders=1)
    assert region is not None
    assert _bytes(arena.ArenaReader(tmp_path), region) == b"head-middle-tail"
    mode = os.stat(ring.path).st_mode
    assert stat.S_IMODE(mode) == 0o600  # the callers' data: this user only
    ring.close()
    assert not ring.path.exists()


def test_a_bundle_decodes_from_the_arena_as_from_redis(tmp_path: Path) -> None:
    images = [np.random.default_rng(i).random((1, 3, 8, 8)).astype(np.float32)
              for i in range(2)]
    requests = [wire.Request({"image": wire.tensor(image)}) for image in images]
    ring = arena.Arena(1 << 20, tmp_path)
    region = ring.hold(wire.encode_bundle_parts(requests), holders=2)
    assert region is not None
    bundle = arena.ArenaReader(tmp_path).decode(
        region.ref, lambda payload: wire.decode_bundle(("a", "b"), payload))
    np.testing.assert_array_equal(bundle.request.inputs["image"].data, np.concatenate(images))
    assert bundle.rows == (1, 1)


def test_space_comes_back_only_behind_the_oldest_region_held(tmp_path: Path) -> None:
    ring = arena.Arena(SIZE, tmp_path)
    first = ring.hold([b"a" * 1500], 1)
    second = ring.hold([b"b" * 1500], 2)
    assert first is not None and second is not None
    assert ring.hold([b"c" * 1500], 1) is None  # 4500 > 4096: full
    ring.release(second)
    ring.release(second)  # both of its calls settled, but the first region still holds
    assert ring.tail == first.start and ring.hold([b"c" * 1500], 1) is None
    ring.release(first)
    assert ring.held_bytes == 0 and ring.tail == ring.head
    third = ring.hold([b"c" * 1500], 1)
    assert third is not None
    # It would straddle the end (3000 + 1500 > 4096): it starts on the next lap instead.
    assert third.start == SIZE and _bytes(arena.ArenaReader(tmp_path), third) == b"c" * 1500


def test_a_region_reused_after_its_calls_were_settled_is_refused(tmp_path: Path) -> None:
    ring = arena.Arena(SIZE, tmp_path)
    reader = arena.ArenaReader(tmp_path)
    old = ring.hold([b"x" * 3000], 1)
    assert old is not None
    ring.release(old)  # the call's deadline passed: the gateway gave it back
    new = ring.hold([b"y" * 3000], 1)  # the next lap, over the old bytes
    assert new is not None
    with pytest.raises(arena.PayloadReleased, match="deadline had passed"):
        _bytes(reader, old)
    assert _bytes(reader, new) == b"y" * 3000


def test_a_region_overwritten_while_it_is_decoded_is_refused(tmp_path: Path) -> None:
    ring = arena.Arena(SIZE, tmp_path)
    old = ring.hold([b"x" * 3000], 1)
    assert old is not None

    def decode_while_reused(payload: memoryview) -> bytes:
        copy = bytes(payload)
        ring.release(old)
        ring.hold([b"y" * 3000], 1)  # the gateway reuses it mid-read
        return copy

    with pytest.raises(arena.PayloadReleased):
        arena.ArenaReader(tmp_path).decode(old.ref, decode_while_reused)


@pytest.mark.parametrize("ref", [
    b"modelgate-arena-1-0123456789abcdef:0",  # no length
    b"../etc/passwd:0:10",  # a path, not an arena's name
    b"modelgate-arena-1-0123456789abcdef:-5:10",
    b"modelgate-arena-1-0123456789abcdef:0:0",
    b"\xff\xfe:1:2",
])
def test_malformed_references_are_refused_before_any_file_is_opened(
        tmp_path: Path, ref: bytes) -> None:
    with pytest.raises(arena.PayloadUnavailable, match="malformed") as raised:
        arena.ArenaReader(tmp_path).decode(ref, bytes)
    assert not isinstance(raised.value, arena.ArenaUnreachable)  # a forged entry, not a host


def test_an_arena_this_worker_cannot_open_says_what_to_do(tmp_path: Path) -> None:
    ring = arena.Arena(SIZE, tmp_path)
    region = ring.hold([b"z" * 10], 1)
    assert region is not None
    elsewhere = tmp_path / "another-host"
    elsewhere.mkdir()
    with pytest.raises(arena.ArenaUnreachable, match="--payload-arena-mb 0"):
        arena.ArenaReader(elsewhere).decode(region.ref, bytes)


def test_a_region_past_the_head_is_refused(tmp_path: Path) -> None:
    ring = arena.Arena(SIZE, tmp_path)
    region = ring.hold([b"z" * 10], 1)
    assert region is not None
    forged = region.ref.rsplit(b":", 2)[0] + b":0:2000"  # never allocated
    with pytest.raises(arena.PayloadUnavailable, match="no region") as raised:
        arena.ArenaReader(tmp_path).decode(forged, bytes)
    assert not isinstance(raised.value, arena.ArenaUnreachable)


def test_a_file_other_users_can_open_is_not_read_as_an_arena(tmp_path: Path) -> None:
    ring = arena.Arena(SIZE, tmp_path)
    region = ring.hold([b"z" * 10], 1)
    assert region is not None
    os.chmod(ring.path, 0o644)
    with pytest.raises(arena.ArenaUnreachable, match="not an arena of this user"):
        arena.ArenaReader(tmp_path).decode(region.ref, bytes)


def test_a_worker_drops_its_mapping_of_an_arena_whose_gateway_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = arena.Arena(SIZE, tmp_path)
    region = ring.hold([b"z" * 10], 1)
    assert region is not None
    reader = arena.ArenaReader(tmp_path)
    assert _bytes(reader, region) == b"z" * 10
    ring.close()
    monkeypatch.setattr(arena, "RECHECK_S", 0.0)
    with pytest.raises(arena.ArenaUnreachable, match="cannot open"):
        _bytes(reader, region)
    assert reader._mapped == {}


def test_arenas_of_dead_gateways_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    live = arena.Arena(SIZE, tmp_path)
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    dead = tmp_path / f"{arena.PREFIX}{dead_pid}-0123456789abcdef"
    dead.write_bytes(b"left by a killed gateway")
    unrelated = tmp_path / "someone-elses-file"
    unrelated.write_bytes(b"")
    assert arena.sweep_stale(tmp_path) == 1
    assert not dead.exists() and live.path.exists() and unrelated.exists()


def test_no_arena_when_none_is_asked_for_or_the_folder_is_missing(tmp_path: Path) -> None:
    assert arena.open_arena(0, tmp_path) is None
    assert arena.open_arena(1, tmp_path / "missing") is None
    made = arena.open_arena(1, tmp_path)
    assert made is not None and made.size == 1 << 20


_WRITER = """
import sys, time
from pathlib import Path
from modelgate.core import arena
ring = arena.Arena(1 << 20, Path(sys.argv[1]))
print(ring.name, flush=True)
piece = b"w" * 65_537  # odd sizes: every byte of head changes, carries included
until = time.monotonic() + float(sys.argv[2])
while time.monotonic() < until:
    region = ring.hold([piece], 1)
    ring.release(region)
ring.close()
"""


def test_a_worker_never_reads_head_half_written(tmp_path: Path) -> None:
    """The gateway moves ``head`` on every allocation while workers read it: a value read
    half written (``struct.pack_into`` clears the field first) made a live region look
    unallocated, and its call failed."""
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), "1.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        name = writer.stdout.readline().strip()
        mapped = arena.ArenaReader(tmp_path)._mapping(name)
        last = reads = 0
        while writer.poll() is None:
            head = int(mapped.head[0])
            assert head >= last, f"head went back from {last} to {head}"
            last = head
            reads += 1
        assert writer.returncode == 0 and reads > 1000 and last > 1 << 24
    finally:
        writer.kill()
        writer.communicate()


def test_a_dead_letter_keeps_its_payload_after_the_arena_gives_it_back() -> None:
    from modelgate.worker.consumer import self_contained

    ring = arena.Arena(SIZE)  # in /dev/shm, where workers look
    try:
        region = ring.hold([b"the poison pill"], 1)
        assert region is not None
        fields = {b"ids": b"a", b"payload": b"", b"arena": region.ref}
        kept = self_contained(fields)
        assert kept[b"payload"] == b"the poison pill" and b"arena" not in kept
        ring.release(region)
        for filler in (b"x", b"y"):  # the next lap, over it
            reused = ring.hold([filler * 3000], 1)
            assert reused is not None
            ring.release(reused)
        assert self_contained(fields) == fields  # no longer there: left as it was
        assert self_contained({b"payload": b"inline"}) == {b"payload": b"inline"}
    finally:
        ring.close()


def test_an_arena_larger_than_its_shared_memory_is_refused_at_start(tmp_path: Path) -> None:
    """A /dev/shm too small (a container's 64 MB) must mean no arena, never a gateway killed
    by SIGBUS on its first write into a page the filesystem cannot give."""
    small = tmp_path / "small-shm"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, mounted.stderr  # root, as CI runs
    try:
        assert arena.open_arena(4, small) is None  # 4 MiB into 1 MiB
        assert list(small.iterdir()) == []  # nothing left behind
    finally:
        subprocess.run(["umount", str(small)], check=True)
