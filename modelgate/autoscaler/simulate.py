"""``modelgate simulate``: replay an arrival trace through the real policy against a queueing model.

The model: Poisson arrivals at the trace's rate (per second, linearly interpolated), one FIFO
queue per pool, workers that each serve one request at a time with a service time drawn around
the measured mean (gamma, coefficient of variation ``service_cv``), and new workers that serve
only after ``startup_s``. Every second the simulator builds the same ``Observation`` the live
loop reads from Redis and calls the same ``policy.decide``. Removed workers finish the request
they hold (drain) and cost nothing after. Worker-seconds count starting workers too: they are
paid for.

The report compares the policy with the best static allocation in hindsight: the smallest fixed
worker count whose SLO attainment is at least the policy's (or the target), found by running
the same arrivals through every count.
"""

from __future__ import annotations

import csv
import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelgate.autoscaler.policy import Observation, PolicyConfig, PolicyState, decide
from modelgate.core.stats import LATENCY_WINDOW_S, RATE_WINDOW_S

TRACES_DIR = Path(__file__).parent / "traces"


@dataclass(frozen=True, slots=True)
class SimConfig:
    service_ms: float = 20.0
    service_cv: float = 0.25
    startup_s: float = 2.0
    slo_ms: float = 250.0
    seed: int = 7


@dataclass(slots=True)
class Timeline:
    """Per-second series for the report and the plot."""

    time_s: list[int] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    p95_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SimResult:
    label: str
    requests: int
    within_slo: float  # share of requests answered within slo_ms
    p95_ms: float
    p99_ms: float
    worker_seconds: float
    scale_events: int
    timeline: Timeline

    def row(self) -> str:
        return (f"{self.label:<22} {self.requests:>8} {self.within_slo:>9.2%} "
                f"{self.p95_ms:>8.0f} {self.p99_ms:>8.0f} {self.worker_seconds:>10.0f} "
                f"{self.scale_events:>6}")


HEADER = (f"{'allocation':<22} {'requests':>8} {'in SLO':>9} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'worker-s':>10} {'scales':>6}")


def read_trace(path: Path) -> np.ndarray:
    """A CSV of ``time_s,rate_rps`` rows as a per-second rate array (linear in between)."""
    times, rates = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                times.append(float(row["time_s"]))
                rates.append(float(row["rate_rps"]))
            except (KeyError, ValueError) as e:
                raise ValueError(f"{path}: rows need numeric time_s and rate_rps ({e})") from e
    if not times:
        raise ValueError(f"{path}: no rows; expected a header 'time_s,rate_rps' and data")
    seconds = np.arange(0, math.ceil(max(times)) + 1)
    return np.interp(seconds, times, rates)


def arrivals_for(rates: np.ndarray, seed: int) -> list[np.ndarray]:
    """Arrival times per second (sorted), Poisson with the given rate."""
    rng = np.random.default_rng(seed)
    return [np.sort(second + rng.random(rng.poisson(rate))) for second, rate in enumerate(rates)]


class _Pool:
    """Workers as a heap of (free_at, id); starting ones become free at their ready time."""

    def __init__(self, count: int, now: float, startup_s: float) -> None:
        self.free: list[tuple[float, int]] = []
        self.alive: dict[int, float] = {}  # id -> started (for newest-first removal)
        self.next_id = 0
        self.startup_s = startup_s
        self.add(count, now, ready_now=True)

    def add(self, count: int, now: float, ready_now: bool = False) -> None:
        for _ in range(count):
            worker = self.next_id
            self.next_id += 1
            self.alive[worker] = now
            heapq.heappush(self.free, (now if ready_now else now + self.startup_s, worker))

    def remove(self, count: int) -> None:
        for worker in sorted(self.alive, key=lambda w: -self.alive[w])[:count]:
            del self.alive[worker]  # its heap entry is skipped lazily; it finishes its request

    def earliest(self) -> tuple[float, int] | None:
        while self.free and self.free[0][1] not in self.alive:
            heapq.heappop(self.free)
        return self.free[0] if self.free else None

    def busy_at(self, now: float) -> int:
        return sum(1 for t, w in self.free if w in self.alive and t > now)


def simulate(rates: np.ndarray, policy: PolicyConfig | None, static_workers: int | None,
             sim: SimConfig, label: str) -> SimResult:
    """Run one allocation: the policy (``policy``) or a fixed count (``static_workers``)."""
    rng = np.random.default_rng(sim.seed + 1)
    arrivals = arrivals_for(rates, sim.seed)
    shape = 1.0 / sim.service_cv**2
    start = policy.min_workers if policy is not None else int(static_workers or 0)
    pool = _Pool(start, 0.0, sim.startup_s)
    state = PolicyState()
    queue: deque[float] = deque()
    latencies: list[float] = []
    completed_at: deque[tuple[float, float]] = deque()  # (finish, latency_ms)
    timeline = Timeline()
    worker_seconds = 0.0
    scale_events = 0
    horizon = len(rates)
    second = 0
    while second < horizon or queue:
        if second < horizon:
            queue.extend(arrivals[second].tolist())
        tick_end = second + 1.0
        while queue:
            head = pool.earliest()
            if head is None:
                break
            free_at, worker = head
            begin = max(free_at, queue[0])
            if begin >= tick_end:
                break
            arrived = queue.popleft()
            finish = begin + rng.gamma(shape, sim.service_ms / 1000.0 / shape)
            heapq.heapreplace(pool.free, (finish, worker))
            latency_ms = (finish - arrived) * 1000.0
            latencies.append(latency_ms)
            completed_at.append((finish, latency_ms))
        while completed_at and completed_at[0][0] < tick_end - LATENCY_WINDOW_S:
            completed_at.popleft()
        recent = [lat for t, lat in completed_at if t <= tick_end]
        p95 = float(np.percentile(recent, 95)) if recent else None
        current = len(pool.alive)
        worker_seconds += current
        window = arrivals[max(0, second - RATE_WINDOW_S + 1):second + 1]
        arrival_rate = sum(len(a) for a in window) / RATE_WINDOW_S
        backlog = len(queue) + pool.busy_at(tick_end)
        timeline.time_s.append(second)
        timeline.arrivals.append(len(arrivals[second]) if second < horizon else 0)
        timeline.workers.append(current)
        timeline.backlog.append(backlog)
        timeline.p95_ms.append(p95 or 0.0)
        if policy is not None:
            obs = Observation(pool="sim", workers=current, backlog=backlog,
                              arrival_rate=arrival_rate, completion_rate=0.0,
                              service_s=sim.service_ms / 1000.0, latency_p95_ms=p95,
                              rate_window_s=RATE_WINDOW_S)
            decision = decide(obs, state, tick_end, policy)
            state = decision.state
            if decision.desired > current:
                pool.add(decision.desired - current, tick_end)
                scale_events += 1
            elif decision.desired < current:
                pool.remove(current - decision.desired)
                scale_events += 1
        elif not pool.alive and queue:
            raise ValueError("a static allocation of 0 workers cannot serve the trace")
        second += 1
        if second > horizon + 3600:
            break  # the pool cannot drain what is left; count it as missed below
    missed = len(queue)
    total = len(latencies) + missed
    within = sum(1 for lat in latencies if lat <= sim.slo_ms) / total if total else 1.0
    ordered = np.array(latencies) if latencies else np.zeros(1)
    return SimResult(label, total, within, float(np.percentile(ordered, 95)),
                     float(np.percentile(ordered, 99)), worker_seconds, scale_events, timeline)


def best_static(rates: np.ndarray, policy: PolicyConfig, sim: SimConfig,
                target: float) -> SimResult:
    """The cheapest fixed count meeting ``target`` SLO attainment (else the best attainment)."""
    best: SimResult | None = None
    for count in range(max(1, policy.min_workers), policy.max_workers + 1):
        result = simulate(rates, None, count, sim, f"static {count}")
        if result.within_slo >= target:
            return result
        if best is None or result.within_slo > best.within_slo:
            best = result
    assert best is not None
    return best


def synthetic_trace(kind: str, seconds: int = 1200) -> list[tuple[int, float]]:
    """The shipped traces, as (time_s, rate_rps) rows."""
    t = np.arange(seconds + 1)
    if kind == "steady":
        rates = np.full_like(t, 100.0, dtype=float)
    elif kind == "step":
        rates = np.where((t >= seconds // 3) & (t < 2 * seconds // 3), 200.0, 50.0)
    elif kind == "spike":
        rates = np.where((t >= seconds // 2) & (t < seconds // 2 + 60), 180.0, 60.0)
    elif kind == "diurnal":
        rates = 110.0 - 90.0 * np.cos(2 * np.pi * t / seconds)
    else:
        raise ValueError(f"unknown synthetic trace {kind!r}; use steady, step, spike or diurnal")
    return [(int(s), float(r)) for s, r in zip(t, rates, strict=True)]


def write_trace(rows: list[tuple[int, float]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time_s", "rate_rps"])
        writer.writerows(rows)


def plot(results: list[SimResult], rates: np.ndarray, sim: SimConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    axes[0].plot(rates, color="grey", label="offered load (req/s)")
    axes[0].set_ylabel("req/s")
    for result in results:
        axes[1].step(result.timeline.time_s, result.timeline.workers, where="post",
                     label=result.label)
        axes[2].plot(result.timeline.time_s, result.timeline.p95_ms, label=result.label)
    axes[1].set_ylabel("workers")
    axes[2].axhline(sim.slo_ms, color="red", linestyle="--", label="SLO")
    axes[2].set_ylabel("p95 latency (ms, 10 s window)")
    axes[2].set_yscale("symlog", linthresh=max(sim.slo_ms / 10, 1))
    axes[2].set_xlabel("time (s)")
    for axis in axes:
        axis.legend(loc="upper right")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_cli(trace: str, sim: SimConfig, policy: PolicyConfig, target: float,
            plot_path: Path | None) -> int:
    """Print the policy against the best static allocation; the `modelgate simulate` body."""
    path = Path(trace)
    if not path.is_file():
        path = TRACES_DIR / f"{trace}.csv"
    if not path.is_file():
        shipped = sorted(p.stem for p in TRACES_DIR.glob("*.csv"))
        raise FileNotFoundError(f"no trace {trace!r}: give a CSV path or one of {shipped}")
    rates = read_trace(path)
    print(f"trace {path.name}: {len(rates)} s, mean {rates.mean():.0f} req/s, "
          f"peak {rates.max():.0f} req/s; service {sim.service_ms:g} ms/request, "
          f"start-up {sim.startup_s:g} s, SLO {sim.slo_ms:g} ms", flush=True)
    print(f"policy: {policy.min_workers}..{policy.max_workers} workers, scale-down delay "
          f"{policy.scale_down_delay_s:g} s, target utilisation {policy.target_utilisation:.0%}",
          flush=True)
    dynamic = simulate(rates, policy, None, sim, "autoscaler")
    static = best_static(rates, policy, sim, max(target, dynamic.within_slo))
    print(HEADER)
    print(dynamic.row())
    print(static.row() + "   <- best static in hindsight")
    ratio = dynamic.worker_seconds / static.worker_seconds
    print(f"autoscaler / best static worker-seconds: {ratio:.2f}x; "
          f"requests within SLO: {dynamic.within_slo:.2%} (target {target:.0%})")
    if plot_path is not None:
        plot([dynamic, static], rates, sim, plot_path)
        print(f"plot written to {plot_path}")
    return 0
