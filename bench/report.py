"""The side-by-side tables, the batch-size curve and ``docs/benchmarks.md``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.floor import Sweep, floor_of
from bench.goals import FLOOR, GOALS_TEXT, goal_lines
from bench.results import Machine, Measurement, Section

_HEADER = ("server", "concurrency", "req/s", "rows/s", "p50 ms", "p99 ms", "errors")
_ALIGN = "|---|---:|---:|---:|---:|---:|---:|"


def _errors(m: Measurement) -> str:
    result = m.result
    text = "0" if not result.errors else \
        f"{result.errors} ({result.non_2xx} non-2xx, {result.socket_errors} socket)"
    return text + (f" (+{m.warmup_errors} in warm-up)" if m.warmup_errors else "")


def _ms(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"  # ORT alone runs in microseconds


def _rows(measurements: Sequence[Measurement], floors: Sequence[Sweep],
          workload: str) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        (m.target, str(m.concurrency), f"{m.result.rps:,.0f}", f"{m.rows_s:,.0f}",
         f"{m.result.p50_ms:.2f}", f"{m.result.p99_ms:.2f}", _errors(m))
        for m in measurements if m.workload == workload]
    floor = floor_of(floors, workload)
    if floor is not None:
        best = floor.best
        rows.append((FLOOR, f"n/a ({floor.label}, batch {best.batch})", "n/a",
                     f"{best.rows_s:,.0f}",
                     _ms(best.p50_ms), _ms(best.p99_ms), "0"))
    return rows


def text_table(measurements: Sequence[Measurement], floors: Sequence[Sweep],
               workload: str) -> str:
    rows = [_HEADER, *_rows(measurements, floors, workload)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) if i < 1 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(measurements: Sequence[Measurement], floors: Sequence[Sweep],
                   workload: str) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", _ALIGN]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(measurements, floors, workload)]
    return "\n".join(lines)


def _cpus(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def markdown_cpu_table(measurements: Sequence[Measurement], workload: str) -> str:
    """Where the CPU went, in CPUs busy on average (1.00 = one core), and server CPU per
    request, in all and per kind of process (modelgate's gateway, Redis, workers, supervisor)."""
    lines = ["| server | concurrency | server CPUs | server CPU us/request | by process, "
             "CPU us/request | load generator CPUs | other CPUs |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for m in measurements:
        if m.workload != workload or m.cpu is None:
            continue
        rps = m.result.rps
        per_request = "?" if m.cpu.server is None or not rps else \
            f"{m.cpu.server / rps * 1e6:.0f}"
        by_role = ", ".join(f"{role} {cpus / rps * 1e6:.0f}" for role, cpus in m.cpu.by_role
                            if role != "server") if rps else ""
        lines.append(f"| {m.target} | {m.concurrency} | {_cpus(m.cpu.server)} | {per_request} | "
                     f"{by_role or '-'} | {_cpus(m.cpu.load_generator)} | "
                     f"{_cpus(m.cpu.other)} |")
    return "\n".join(lines)


def markdown_rounds(rounds: Sequence[Measurement], workload: str) -> str:
    """Each round's throughput and p50 per server and concurrency, to show the spread."""
    if len({m.round for m in rounds if m.workload == workload}) < 2:
        return ""
    cells: dict[tuple[str, int], list[str]] = {}
    for m in sorted(rounds, key=lambda m: m.round):
        if m.workload == workload:
            cells.setdefault((m.target, m.concurrency), []).append(
                f"{m.result.rps:,.0f} / {m.result.p50_ms:.2f}")
    width = max(len(v) for v in cells.values())
    lines = ["| server | concurrency | " + " | ".join(
        f"round {i + 1}: req/s / p50 ms" for i in range(width)) + " |",
        "|---|---:|" + "---:|" * width]
    lines += [f"| {target} | {c} | " + " | ".join(values) + " |"
              for (target, c), values in cells.items()]
    return "\n".join(lines)


def markdown_curve(floors: Sequence[Sweep]) -> str:
    """Rows/s by batch size, per workload and thread count, from the ORT sweeps."""
    floors = [sweep for sweep in floors if sweep.processes == 1]
    if not floors:
        return ""
    header, align = ["batch"], ["---:"]
    for sweep in floors:
        threads = "1 thread" if sweep.threads == 1 else f"{sweep.threads} threads"
        header.append(f"{sweep.workload}, {threads}: rows/s")
        align.append("---:")
        if sweep.threads == 1:
            header.append(f"{sweep.workload}, {threads}: ms per run")
            align.append("---:")
    batches = sorted({p.batch for sweep in floors for p in sweep.points})
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for batch in batches:
        cells = [str(batch)]
        for sweep in floors:
            point = next((p for p in sweep.points if p.batch == batch), None)
            best = point is not None and point.batch == sweep.best.batch
            cells.append("" if point is None else
                         f"**{point.rows_s:,.0f}**" if best else f"{point.rows_s:,.0f}")
            if sweep.threads == 1:
                cells.append("" if point is None else f"{point.p50_ms:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_plan(plan: Mapping[str, Any]) -> str:
    """The batch sizes modelgate's workers chose for a model, from its metadata."""
    curve = ", ".join(f"{p['batch']}: {p['rows_per_s']:,.0f}" for p in plan.get("curve", []))
    preferred = plan.get("preferred_batch_sizes") or []
    return (f"run size cap {plan.get('max_batch_size')} ({plan.get('source')})"
            + (f", preferred {preferred}" if preferred else "")
            + (f"; their own curve, rows/s by batch ({plan.get('curve_from')}, "
               f"{plan.get('host', '')}): {curve}" if curve else ""))


def markdown(machine: Machine, sections: Sequence[Section], measurements: Sequence[Measurement],
             floors: Sequence[Sweep], targets: Mapping[str, str], method: str,
             notes: Sequence[str], plot: str | None,
             rounds: Sequence[Measurement] = (),
             plans: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The page; ``measurements`` combined over rounds, ``rounds`` each round's own."""
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run.py`); rerun it to refresh this page rather than "
        "editing it.",
        "",
        "Reproduce: `make bench` (knobs: `BENCH_DURATION_S`, `BENCH_WARMUP_S`, "
        "`BENCH_CONCURRENCY`, `BENCH_ROUNDS`, `BENCH_TARGETS`, `BENCH_WORKLOADS`, `BENCH_FLOOR_S`, "
        "`BENCH_CLIENT`; see `python -m bench.run --help`). The first run also builds the "
        "peer's venv under `.bench/peer-venv` (once; later runs reuse it). Where one call's "
        "time goes, stage by stage: `make trace` (`bench/trace.py`, docs/architecture.md).",
        "",
        "## Setup",
        "",
        f"- Date: {machine.date}",
        f"- Machine: {machine.nproc} CPUs (`nproc`), {machine.cpu_model}",
        f"- Python {machine.python}, onnxruntime {machine.onnxruntime}",
        f"- modelgate commit: {machine.commit}",
        f"- Load: {method}",
        "- Throughput is rows/s (= req/s here: every request carries one row); p50/p99 are "
        "per request, except for the ORT floor, where they are per `session.run` of the batch",
        "",
        "Servers (benchmarked one at a time, each alone on the machine with the load generator):",
        "",
        *[f"- **{name}**: {description}" for name, description in targets.items()],
        "",
        f"Goals: {GOALS_TEXT}.",
    ]
    if plot:
        out += ["", f"![Throughput by server and concurrency]({plot})"]
    for section in sections:
        out += ["", f"## {section.workload}: {section.description}", "",
                markdown_table(measurements, floors, section.workload), ""]
        out += [f"- {line}" for line in goal_lines(measurements, floors, section)]
        out += ["", "Where the CPU went (average CPUs busy; \"other\" is everything on the "
                "machine outside the server and the load generator, and should be near 0):", "",
                markdown_cpu_table(measurements, section.workload)]
        per_round = markdown_rounds(rounds, section.workload)
        if per_round:
            out += ["", "Each round (the servers took turns; the table above combines them):",
                    "", per_round]
    curve = markdown_curve(floors)
    if curve:
        out += ["", "## ONNX Runtime alone: rows/s by batch size", "",
                "One in-process session per column (modelgate's session options, "
                "`intra_op_threads` as named), the request's row repeated to the batch size; "
                "the best batch size of each column is in bold. The 1-thread columns show what "
                "dynamic batching can gain one single-threaded worker on each model; the "
                f"`{FLOOR}` row above runs the best of them in one process per core.", "", curve]
        if plans:
            out += ["", "The batch sizes modelgate's workers chose for each model when they "
                    "loaded it (`parameters.batching` of its metadata; `config.yaml` sets none):",
                    "", *[f"- {name}: {describe_plan(plan)}" for name, plan in plans.items()]]
    if notes:
        out += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(out) + "\n"
