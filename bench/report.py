"""The side-by-side table, the goal checks, the machine description and ``docs/benchmarks.md``."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import Usage
from bench.load import LoadResult

# The goals modelgate is held to against the naive single-process server.
SUBJECT, BASELINE = "modelgate", "naive"
LATENCY_CONCURRENCY = 1
MAX_P50_OVERHEAD_MS = 1.0  # p50 at c=1 within this of the baseline's
THROUGHPUT_CONCURRENCY = 32
MIN_THROUGHPUT_RATIO = 0.5  # req/s at c=32 at least this fraction of the baseline's


@dataclass(frozen=True, slots=True)
class Measurement:
    workload: str
    target: str
    concurrency: int
    result: LoadResult
    cpu: Usage | None = None


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
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def _find(measurements: list[Measurement], workload: str, target: str,
          concurrency: int) -> Measurement | None:
    return next((m for m in measurements if (m.workload, m.target, m.concurrency)
                 == (workload, target, concurrency)), None)


def _verdict(met: bool, *compared: Measurement) -> str:
    verdict = "MET" if met and not any(m.result.errors for m in compared) else "MISSED"
    if any(m.cpu is not None and m.cpu.disturbed for m in compared):
        verdict += "; unreliable, other work ran on the machine: rerun on a quiet one"
    return verdict


def goal_lines(measurements: list[Measurement], workload: str) -> list[str]:
    """The ratio lines and whether each goal holds (``MET``/``MISSED``/``not measured``)."""
    lines = []
    subject = _find(measurements, workload, SUBJECT, THROUGHPUT_CONCURRENCY)
    baseline = _find(measurements, workload, BASELINE, THROUGHPUT_CONCURRENCY)
    if subject and baseline and baseline.result.rps > 0:
        ratio = subject.result.rps / baseline.result.rps
        verdict = _verdict(ratio >= MIN_THROUGHPUT_RATIO, subject, baseline)
        lines.append(f"{SUBJECT}/{BASELINE} throughput at c={THROUGHPUT_CONCURRENCY}: "
                     f"{ratio:.2f}x (goal >= {MIN_THROUGHPUT_RATIO}x: {verdict})")
    else:
        lines.append(f"throughput goal at c={THROUGHPUT_CONCURRENCY}: not measured")
    subject = _find(measurements, workload, SUBJECT, LATENCY_CONCURRENCY)
    baseline = _find(measurements, workload, BASELINE, LATENCY_CONCURRENCY)
    if subject and baseline:
        delta_ms = subject.result.p50_ms - baseline.result.p50_ms
        verdict = _verdict(delta_ms <= MAX_P50_OVERHEAD_MS, subject, baseline)
        lines.append(f"p50 difference ({SUBJECT} - {BASELINE}) at c={LATENCY_CONCURRENCY}: "
                     f"{delta_ms:+.2f} ms (goal <= {MAX_P50_OVERHEAD_MS:g} ms: {verdict})")
    else:
        lines.append(f"latency goal at c={LATENCY_CONCURRENCY}: not measured")
    return lines


_HEADER = ("server", "concurrency", "req/s", "p50 ms", "p99 ms", "errors")


def _rows(measurements: list[Measurement], workload: str) -> list[tuple[str, ...]]:
    return [(m.target, str(m.concurrency), f"{m.result.rps:,.0f}", f"{m.result.p50_ms:.2f}",
             f"{m.result.p99_ms:.2f}", _errors(m.result))
            for m in measurements if m.workload == workload]


def _errors(result: LoadResult) -> str:
    if not result.errors:
        return "0"
    return f"{result.errors} ({result.non_2xx} non-2xx, {result.socket_errors} socket)"


def text_table(measurements: list[Measurement], workload: str) -> str:
    rows = [_HEADER, *_rows(measurements, workload)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(measurements: list[Measurement], workload: str) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(measurements, workload)]
    return "\n".join(lines)


def _cpus(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def markdown_cpu_table(measurements: list[Measurement], workload: str) -> str:
    """Where the CPU went, in CPUs busy on average (1.00 = one core), and server CPU/request."""
    lines = ["| server | concurrency | server CPUs | server CPU us/request | load generator CPUs "
             "| other CPUs |", "|---|---:|---:|---:|---:|---:|"]
    for m in measurements:
        if m.workload != workload or m.cpu is None:
            continue
        per_request = "?" if m.cpu.server is None or not m.result.rps else \
            f"{m.cpu.server / m.result.rps * 1e6:.0f}"
        lines.append(f"| {m.target} | {m.concurrency} | {_cpus(m.cpu.server)} | {per_request} | "
                     f"{_cpus(m.cpu.load_generator)} | {_cpus(m.cpu.other)} |")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Section:
    workload: str
    description: str


def markdown(machine: Machine, sections: list[Section], measurements: list[Measurement],
             targets: dict[str, str], method: str, notes: list[str]) -> str:
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run.py`); rerun it to refresh this page rather than "
        "editing it.",
        "",
        "Reproduce: `make bench` (knobs: `BENCH_DURATION_S`, `BENCH_WARMUP_S`, "
        "`BENCH_CONCURRENCY`, `BENCH_CLIENT`, `BENCH_TARGETS`; see `python -m bench.run --help`).",
        "",
        "## Setup",
        "",
        f"- Date: {machine.date}",
        f"- Machine: {machine.nproc} CPUs (`nproc`), {machine.cpu_model}",
        f"- Python {machine.python}, onnxruntime {machine.onnxruntime}",
        f"- modelgate commit: {machine.commit}",
        f"- Load: {method}",
        "",
        "Servers (benchmarked one at a time, each alone on the machine with the load generator):",
        "",
        *[f"- **{name}**: {description}" for name, description in targets.items()],
        "",
        f"Goals for {SUBJECT} against {BASELINE}: p50 at c={LATENCY_CONCURRENCY} within "
        f"{MAX_P50_OVERHEAD_MS:g} ms; throughput at c={THROUGHPUT_CONCURRENCY} at least "
        f"{MIN_THROUGHPUT_RATIO}x; no errors.",
    ]
    for section in sections:
        out += ["", f"## {section.workload}: {section.description}", "",
                markdown_table(measurements, section.workload), ""]
        out += [f"- {line}" for line in goal_lines(measurements, section.workload)]
        out += ["", "Where the CPU went (average CPUs busy; \"other\" is everything on the "
                "machine outside the server and the load generator, and should be near 0):", "",
                markdown_cpu_table(measurements, section.workload)]
    if notes:
        out += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(out) + "\n"
