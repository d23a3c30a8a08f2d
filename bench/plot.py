"""``docs/benchmarks.png``: rows/s by server and concurrency, one panel per workload, with the
raw-ORT floor as a dashed line (or named in the title when it is far off the scale)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.floor import Sweep, floor_of
from bench.results import Measurement, Section

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# A floor more than this many times the fastest server is named, not drawn: as a line it would
# flatten every bar (the tiny MLP's floor is millions of rows/s).
FLOOR_DRAWN_UP_TO = 4.0


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed (it comes with the ``dev`` extra)."""


def write_plot(path: Path, sections: Sequence[Section], measurements: Sequence[Measurement],
               floors: Sequence[Sweep]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotUnavailable("no plot: matplotlib is not installed (pip install -e '.[dev]')") \
            from e
    shown = [s for s in sections if any(m.workload == s.workload for m in measurements)]
    if not shown:
        raise PlotUnavailable("no plot: nothing was measured")
    # One colour per server in every panel.
    servers = list(dict.fromkeys(m.target for m in measurements))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {server: palette[i % len(palette)] for i, server in enumerate(servers)}
    figure, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 5.0), squeeze=False)
    for ax, section in zip(axes[0], shown, strict=True):
        _panel(ax, section, [m for m in measurements if m.workload == section.workload],
               floor_of(floors, section.workload), colours)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _panel(ax: Axes, section: Section, measurements: Sequence[Measurement],
           floor: Sweep | None, colours: dict[str, str]) -> None:
    servers = list(dict.fromkeys(m.target for m in measurements))
    concurrencies = sorted({m.concurrency for m in measurements})
    width = 0.8 / max(len(servers), 1)
    top = max(m.rows_s for m in measurements)
    for i, server in enumerate(servers):
        xs, heights = [], []
        for j, c in enumerate(concurrencies):
            m = next((m for m in measurements if (m.target, m.concurrency) == (server, c)), None)
            if m is not None:
                xs.append(j + (i - (len(servers) - 1) / 2) * width)
                heights.append(m.rows_s)
        bars = ax.bar(xs, heights, width, label=server, color=colours[server])
        ax.bar_label(bars, labels=[_short(h) for h in heights], fontsize=7, rotation=90,
                     padding=2)
    title = f"{section.workload}: rows/s (1 row per request)"
    if floor is not None:
        best = floor.best.rows_s
        label = f"ONNX Runtime alone, {floor.threads} threads: {_short(best)} rows/s"
        if best <= FLOOR_DRAWN_UP_TO * top:
            ax.axhline(best, color="black", linestyle="--", linewidth=1, label=label)
            top = max(top, best)
        else:
            title += f"\n({label}, off the scale)"
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(len(concurrencies)), [f"c={c}" for c in concurrencies])
    ax.set_xlabel("concurrent connections (closed loop)")
    ax.set_ylabel("rows/s")
    ax.set_ylim(0, top * 1.45)  # room for the legend above the bars
    ax.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    ax.legend(fontsize=8, loc="upper left", ncol=2)


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:,.0f}"
