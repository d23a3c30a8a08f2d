"""ONNX Runtime alone, no server: the compute floor, and the batch-size curve.

The sweep on one thread is the batch-size curve: how much a single ORT worker gains from
dynamic batching on this model, and at which batch size it is fastest. The floor is the most
rows per second this machine gets out of the model the way modelgate runs it: one process per
core, each a one-thread session fed in-process batches of that best size, all at once
(:func:`parallel`; each process is ``python -m bench.floor``, its result one JSON line). A
server can only approach it (it also parses, queues and answers on the same cores), so
``server rows/s / floor rows/s`` says how much of the machine's compute reaches the clients.
The sweep of one session with every core as its threads is shown beside it, for models that
gain more from ORT's own threads than from processes.

Runs in the bench's own process, whose CPU is accounted like a server's, so a busy machine is
flagged here too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

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
    processes: int = 1  # sessions in as many processes at once (their rows/s summed)

    @property
    def label(self) -> str:
        threads = "1 thread" if self.threads == 1 else f"{self.threads} threads"
        return threads if self.processes == 1 else f"{self.processes} processes x {threads}"

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
                inputs: dict[str, np.ndarray], duration_s: float,
                warm: bool = True) -> BatchPoint:
    if warm:
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
    """The floor of ``workload``: its sweep with the most processes, else the most threads,
    if one ran."""
    return max((s for s in sweeps if s.workload == workload),
               key=lambda s: (s.processes, s.threads), default=None)


def parallel(workload: str, model_path: Path, feeds: Mapping[str, np.ndarray], processes: int,
             duration_s: float, settle_s: float = 5.0) -> Sweep:
    """``processes`` one-thread sessions, each in its own process, running batches of
    ``feeds`` for ``duration_s`` from the same moment (``settle_s`` and half a second per
    process from now: each imports ORT and loads the model first): one point, their rows/s
    summed."""
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **feeds)  # type: ignore[arg-type]
        # Time for every process to import ORT and load the model before the common start.
        start_at = time.time() + settle_s + 0.5 * processes
        command = [sys.executable, "-m", "bench.floor", "--model", str(model_path),
                   "--feeds", str(feeds_path), "--duration-s", str(duration_s),
                   "--start-at", str(start_at)]
        children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
                    for _ in range(processes)]
        before = cpu.snapshot([os.getpid(), *(c.pid for c in children)])
        outputs = [child.communicate(timeout=duration_s + 120)[0] for child in children]
        used = cpu.usage(before, cpu.snapshot([os.getpid()]))
    results = [orjson.loads(out.strip().splitlines()[-1]) for out in outputs]
    batch = len(next(iter(feeds.values())))
    point = BatchPoint(batch, sum(r["runs"] for r in results),
                       max(r["duration_s"] for r in results),
                       float(np.median([r["p50_ms"] for r in results])),
                       max(r["p99_ms"] for r in results))
    return Sweep(workload, 1, (point,), used, processes)


def _child(argv: Sequence[str] | None = None) -> None:
    """One process of :func:`parallel`: prints its runs and latencies as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--feeds", type=Path, required=True)
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--start-at", type=float, required=True)
    args = parser.parse_args(argv)
    ort_session = session(args.model, 1)
    names = [o.name for o in ort_session.get_outputs()]
    with np.load(args.feeds) as archive:
        inputs = {name: archive[name] for name in archive.files}
    ort_session.run(names, inputs)  # the first run of a shape allocates; not measured
    time.sleep(max(0.0, args.start_at - time.time()))
    point = _time_batch(ort_session, names, inputs, args.duration_s, warm=False)
    print(orjson.dumps({"runs": point.runs, "duration_s": point.duration_s,
                        "p50_ms": point.p50_ms, "p99_ms": point.p99_ms}).decode(), flush=True)


if __name__ == "__main__":
    _child()


def one_thread_of(sweeps: Sequence[Sweep], workload: str) -> Sweep | None:
    """The 1-thread batch-size curve of ``workload``, if it ran."""
    return next((s for s in sweeps if s.workload == workload and s.threads == 1
                 and s.processes == 1), None)
