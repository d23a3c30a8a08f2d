"""Per-call stage timestamps, recorded only when asked (``--trace-dir``, ``MODELGATE_TRACE_DIR``).

The gateway and the workers each append one JSON line per traced call (gateway) or per entry
(worker) to ``DIR/trace-{role}-{pid}.jsonl``: wall-clock nanoseconds (``time.time_ns``, one
clock for every process of a host) at each stage the call passes, and the correlation ids that
join a gateway's line to the worker's. ``bench/trace.py`` starts a deployment with it, drives
calls at concurrency 1 and reports the median of each stage. Without a trace folder no process
holds a :class:`Tracer` and the hot path only tests for ``None``: nothing is timed or written.

A line is written after the call's answer has gone out (the gateway) or after the entry's
answer is written (the worker), so the writing never sits inside a measured stage.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO

import orjson


def now_ns() -> int:
    return time.time_ns()


class Tracer:
    """Appends traced records to this process's file in ``folder``."""

    def __init__(self, folder: Path, role: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"trace-{role}-{os.getpid()}.jsonl"
        self._file: IO[bytes] = self.path.open("ab", buffering=0)

    def write(self, record: dict[str, object]) -> None:
        self._file.write(orjson.dumps(record) + b"\n")

    def close(self) -> None:
        self._file.close()


def tracer(folder: Path | None, role: str) -> Tracer | None:
    return Tracer(folder, role) if folder is not None else None


def read(folder: Path) -> list[dict[str, object]]:
    """Every record written in ``folder``, in no particular order."""
    records = []
    for path in sorted(folder.glob("trace-*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                records.append({"role": path.name.split("-")[1], **orjson.loads(line)})
    return records
