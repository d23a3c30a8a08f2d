"""The end of a run: the summary on the terminal, ``results.json``, the plot and the page."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson

from bench.goals import goal_lines
from bench.plot import PlotUnavailable, write_plot
from bench.report import describe_plan, markdown, text_table
from bench.results import Machine, Results, combine_rounds
from bench.targets import REPO_ROOT


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def publish(results: Results, machine: Machine, method: str, out: Path | None,
            log_dir: Path) -> None:
    """Print the tables and verdicts; write ``results.json`` to ``log_dir`` and, unless ``out``
    is None, the markdown page there and the plot beside it (same name, ``.png``)."""
    combined = combine_rounds(results.measurements)
    plot_path = None if out is None else out.with_suffix(".png")
    if plot_path is not None:
        try:
            write_plot(plot_path, results.sections, combined, results.floors)
        except PlotUnavailable as e:
            results.notes.append(str(e))
            plot_path = None
    for section in results.sections:
        print(f"{section.workload}: {section.description}")
        print(text_table(combined, results.floors, section.workload))
        for line in goal_lines(combined, results.floors, section):
            print(f"  {line}")
        print()
    for name, plan in results.plans.items():
        print(f"{name}: modelgate's workers chose {describe_plan(plan)}")
    for note in results.notes:
        print(f"note: {note}")
    (log_dir / "results.json").write_bytes(orjson.dumps(
        {"machine": dataclasses.asdict(machine),
         "measurements": [{**dataclasses.asdict(m), "rps": m.result.rps, "rows_s": m.rows_s}
                          for m in results.measurements],
         "ort": [{**dataclasses.asdict(s), "best_batch": s.best.batch,
                  "best_rows_s": s.best.rows_s} for s in results.floors],
         "batching": results.plans},
        option=orjson.OPT_INDENT_2))
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(machine, results.sections, combined, results.floors,
                            results.descriptions, method, results.notes,
                            None if plot_path is None else plot_path.name, results.measurements,
                            results.plans))
    print(f"bench: wrote {_shown(out)}" + (f" and {_shown(plot_path)}" if plot_path else "")
          + f"; logs in {_shown(log_dir)}/")
