"""Where the coordinator assembles a job's output: a file under the jobs folder, or (for an
uploaded input, which names no folder) lists in the job store.

Both are append-only with a *mark* (file bytes, or list blocks) that the checkpoint records:
a coordinator resuming cuts the staged output back to the mark, so rows written after the last
checkpoint are written once more, not twice. The first attempt stages every row; a retry
stages only the retried rows (a *patch*), merged into the full output when it ends.

Files live in ``JOBS_DIR/.modelgate-jobs/`` (``{id}.jsonl``, ``{id}.patch.jsonl``); the
output the job names is written when the job ends (atomically: a temporary name, then a
rename), as JSONL or Parquet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import redis

from modelgate.core.batch import output as output_format
from modelgate.core.batch.paths import STAGING, confine
from modelgate.core.store import jobs
from modelgate.core.store.jobs import JobSpec


class FileStage:
    """A staged JSONL file under the jobs folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        self._file = path.open("r+b")

    def cut(self, mark: int) -> None:
        self._file.truncate(mark)
        self._file.seek(mark)

    def append(self, data: bytes) -> int:
        """Write ``data`` (flushed to the OS, so a killed process loses none of it); the new
        mark."""
        self._file.write(data)
        self._file.flush()
        return self._file.tell()

    def lines(self) -> Iterator[bytes]:
        with self.path.open("rb") as read:
            yield from read

    def close(self) -> None:
        self._file.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class ListStage:
    """A staged output as a list of JSONL blocks in the job store."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    def cut(self, mark: int) -> None:
        if mark == 0:
            self.client.delete(self.key)
        else:
            self.client.ltrim(self.key, 0, mark - 1)

    def queue_append(self, pipe: redis.client.Pipeline, data: bytes) -> None:
        pipe.rpush(self.key, data)

    def lines(self) -> Iterator[bytes]:
        at = 0
        while True:
            blocks = self.client.lrange(self.key, at, at + 63)
            if not blocks:
                return
            yield from output_format.split_lines(blocks)
            at += len(blocks)

    def close(self) -> None:
        pass

    def remove(self) -> None:
        self.client.delete(self.key)


Stage = FileStage | ListStage


def stage_of(client: redis.Redis, spec: JobSpec, jobs_dir: Path | None, patch: bool) -> Stage:
    if spec.output_path is None:
        return ListStage(client, jobs.patch(spec.id) if patch else jobs.output(spec.id))
    if jobs_dir is None:
        raise FileNotFoundError("the job names an output path but this coordinator has no "
                                "jobs folder (--jobs-dir)")
    name = f"{spec.id}.patch.jsonl" if patch else f"{spec.id}.jsonl"
    return FileStage(jobs_dir.resolve() / STAGING / name)


def merge_patch(client: redis.Redis, spec: JobSpec, full: Stage, patch: Stage,
                positions: list[int]) -> None:
    """Replace the retried rows' lines of the full output by the patch's, in one step."""
    lines = output_format.merged(full.lines(), patch.lines(), positions)
    if isinstance(full, FileStage):
        temporary = full.path.with_suffix(".merging")
        with temporary.open("wb") as out:
            out.writelines(lines)
        full.close()
        os.replace(temporary, full.path)
    else:
        blocks = []
        block: list[bytes] = []
        for line in lines:
            block.append(line)
            if len(block) == 4096:
                blocks.append(b"".join(block))
                block = []
        if block:
            blocks.append(b"".join(block))
        pipe = client.pipeline(transaction=True)
        pipe.delete(full.key)
        if blocks:
            pipe.rpush(full.key, *blocks)
        pipe.execute()
    patch.remove()


def publish(spec: JobSpec, full: Stage, jobs_dir: Path | None, output_names: list[str]) -> None:
    """Write the output the job names (path jobs), atomically; uploads' stay in the store."""
    if spec.output_path is None or not isinstance(full, FileStage):
        return
    target = confine(jobs_dir, spec.output_path, "output")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{spec.id}.partial")
    if spec.output_format == "parquet":
        output_format.write_parquet(full.lines(), str(temporary), output_names)
    else:
        with temporary.open("wb") as out:
            out.writelines(full.lines())
    os.replace(temporary, target)
