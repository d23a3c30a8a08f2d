"""What a bench run measured and where: load points, ORT sweeps, sections, the machine."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import Usage
from bench.floor import Sweep
from bench.load import LoadResult
from modelgate.core.batching import cpu_model


@dataclass(frozen=True, slots=True)
class Measurement:
    """One server at one concurrency: the measured run (warm-up errors counted apart)."""

    workload: str
    target: str
    concurrency: int
    result: LoadResult
    cpu: Usage | None = None
    rows_per_request: int = 1
    warmup_errors: int = 0
    round: int = 0  # which of the interleaved rounds (bench.run --rounds)

    @property
    def rows_s(self) -> float:
        return self.result.rps * self.rows_per_request


def combine_rounds(measurements: Sequence[Measurement]) -> list[Measurement]:
    """One measurement per workload, server and concurrency: all rounds' answers over all
    their seconds (the mean throughput), the median of their p50s and p99s, every error, and
    the mean CPU use."""
    groups: dict[tuple[str, str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.workload, m.target, m.concurrency), []).append(m)
    combined = []
    for (workload, target, concurrency), group in groups.items():
        if len(group) == 1:
            combined.append(group[0])
            continue
        results = [m.result for m in group]
        result = LoadResult(
            requests=sum(r.requests for r in results),
            duration_s=sum(r.duration_s for r in results),
            p50_ms=statistics.median(r.p50_ms for r in results),
            p99_ms=statistics.median(r.p99_ms for r in results),
            non_2xx=sum(r.non_2xx for r in results),
            socket_errors=sum(r.socket_errors for r in results),
        )
        used = [m.cpu for m in group if m.cpu is not None]
        cpu = None
        if used:
            servers = [u.server for u in used if u.server is not None]
            others = [u.other for u in used if u.other is not None]
            roles = sorted({role for u in used for role, _ in u.by_role})
            by_role = tuple((role, statistics.fmean(dict(u.by_role).get(role, 0.0)
                                                    for u in used)) for role in roles)
            cpu = Usage(statistics.fmean(servers) if servers else None,
                        statistics.fmean(u.load_generator for u in used),
                        max(others) if others else None, by_role)
        combined.append(Measurement(workload, target, concurrency, result, cpu,
                                    group[0].rows_per_request,
                                    sum(m.warmup_errors for m in group)))
    return combined


@dataclass(frozen=True, slots=True)
class Section:
    workload: str
    description: str
    workers: int  # ORT worker processes modelgate and the peer got for it


@dataclass(frozen=True, slots=True)
class Machine:
    date: str
    nproc: int
    cpu_model: str
    python: str
    onnxruntime: str
    load_generator: str
    commit: str

    @classmethod
    def describe(cls, load_generator: str, repo: Path) -> Machine:
        import onnxruntime

        return cls(
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            nproc=_nproc(),
            cpu_model=_cpu_model(),
            python=platform.python_version(),
            onnxruntime=onnxruntime.__version__,
            load_generator=load_generator,
            commit=_commit(repo),
        )


def _nproc() -> int:
    if shutil.which("nproc"):
        done = subprocess.run(["nproc"], capture_output=True, text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip().isdigit():
            return int(done.stdout)
    return len(os.sched_getaffinity(0))


def _cpu_model() -> str:
    """The name the workers tune batch sizes by (their cache key), so a bench page and a
    worker's curve name the same CPU."""
    return cpu_model()


def _commit(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


@dataclass(slots=True)
class Results:
    measurements: list[Measurement] = field(default_factory=list)
    floors: list[Sweep] = field(default_factory=list)  # ORT alone
    notes: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)  # target name -> what it is
    # workload -> the batch sizes modelgate's workers chose for it (model metadata's
    # parameters.batching), as they said it the first time it was served
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: bool = False
