"""ONNX Runtime alone, no server: the compute floor, and the batch-size curve.

The floor is the most rows per second this machine gets out of the workload's model: one ORT
session with ``intra_op_threads`` = every core, fed in-process batches of each size in
``BATCH_SIZES``, the best one kept. A server can only approach it (it also parses, queues and
answers on the same cores), so ``server rows/s / floor rows/s`` says how much of the machine's
compute reaches the clients. The same sweep on one thread is the batch-size curve: how much a
single ORT worker gains from dynamic batching on this model.

Runs in the bench's own process, whose CPU is accounted like a server's, so a busy machine is
flagged here too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench import cpu

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
MIN_RUNS = 3  # per batch size, however long a run takes


@dataclass(frozen=True, slots=True)
class BatchPoint:
    batch: int  # rows per session.run
    runs: int
    duration_s: float
    p50_ms: float  # per session.run (the whole batch)
    p99_ms: float

    @property
    def rows_s(self) -> float:
        return self.batch * self.runs / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Sweep:
    workload: str
    threads: int  # ORT intra_op_threads
    points: tuple[BatchPoint, ...]
    cpu: cpu.Usage | None = None

    @property
    def best(self) -> BatchPoint:
        return max(self.points, key=lambda p: p.rows_s)


def session(model_path: Path, threads: int) -> ort.InferenceSession:
    """Options as modelgate's workers set them, bar the thread count."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def _time_batch(ort_session: ort.InferenceSession, names: list[str],
                inputs: dict[str, np.ndarray], duration_s: float) -> BatchPoint:
    ort_session.run(names, inputs)  # the first run of a shape allocates; not measured
    latencies_s: list[float] = []
    started = time.perf_counter()
    while True:
        before = time.perf_counter()
        ort_session.run(names, inputs)
        after = time.perf_counter()
        latencies_s.append(after - before)
        if after - started >= duration_s and len(latencies_s) >= MIN_RUNS:
            break
    elapsed_s = time.perf_counter() - started
    p50, p99 = np.percentile(np.asarray(latencies_s) * 1000.0, [50, 99])
    batch = len(next(iter(inputs.values())))
    return BatchPoint(batch, len(latencies_s), elapsed_s, float(p50), float(p99))


def sweep(workload: str, model_path: Path, feeds: Callable[[int], Mapping[str, np.ndarray]],
          threads: int, duration_s: float,
          batch_sizes: Sequence[int] = BATCH_SIZES) -> Sweep:
    """Rows/s at every batch size on one session with ``threads`` threads."""
    ort_session = session(model_path, threads)
    names = [o.name for o in ort_session.get_outputs()]
    points = []
    before = cpu.snapshot([os.getpid()])
    for batch in batch_sizes:
        points.append(_time_batch(ort_session, names, dict(feeds(batch)), duration_s))
    used = cpu.usage(before, cpu.snapshot([os.getpid()]))
    return Sweep(workload, threads, tuple(points), used)


def floor_of(sweeps: Sequence[Sweep], workload: str) -> Sweep | None:
    """The floor of ``workload``: its sweep with the most threads, if one ran."""
    return max((s for s in sweeps if s.workload == workload), key=lambda s: s.threads,
               default=None)


def one_thread_of(sweeps: Sequence[Sweep], workload: str) -> Sweep | None:
    """The 1-thread batch-size curve of ``workload``, if it ran."""
    return next((s for s in sweeps if s.workload == workload and s.threads == 1), None)
