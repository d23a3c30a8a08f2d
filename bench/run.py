"""``make bench``: serve the same model with every target, one at a time, and drive each with
the same closed-loop load from a separate process; measure ONNX Runtime alone on the same model
(the compute floor); print side-by-side tables and the goal verdicts, and write them with a
plot to ``docs/benchmarks.md`` and ``docs/benchmarks.png``.

Targets: modelgate (and variants: two gateway processes, gRPC, binary tensors, storing no
answers), the naive in-process server, the two-hop floor (``bench/two_hop_floor.py``: at c=1,
and under load), BentoML from PyPI in an isolated venv (built under ``.bench/peer-venv`` on
first use; skipped with a note if it cannot be installed) and ``ort-floor``. Workloads: a tiny
MLP, a mid-size MLP (64->256->256->10), a compute-bound model and a MobileNet-style CNN; none
sets its batch sizes: modelgate's workers tune them at load, and the page shows what they
chose beside ONNX Runtime's own curve. Every knob is a flag that also reads ``BENCH_<FLAG>``
from the environment. Defaults take about forty minutes: three rounds in which the
servers take turns, each with a warm-up then a measured run per load point. Server logs, the
load generator's full output, ``/metrics`` scrapes and ``results.json`` go to ``.bench/``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from bench import cpu, floor
from bench.goals import FLOOR, PEER, SUBJECT
from bench.load import GrpcClient, LoadClient, LoadError, LoadPoint, PythonClient, make_client
from bench.peer import BentoMLTarget
from bench.peer_venv import PeerUnavailable, PeerVenv, default_venv
from bench.publish import publish
from bench.report import describe_plan
from bench.results import Machine, Measurement, Results, Section
from bench.targets import NPROC, REPO_ROOT, TARGETS, Target, TargetFailed
from bench.workloads import WORKLOADS, Workload, WrongAnswer

ALL_TARGETS = (*TARGETS, PEER, FLOOR)


@dataclass(frozen=True, slots=True)
class Settings:
    points: tuple[LoadPoint, ...]
    rounds: int  # every server of a workload, in turn, this many times
    targets: tuple[str, ...]
    workloads: tuple[str, ...]
    client: str  # auto | wrk | python
    floor_s: float  # per batch size and thread count, ORT alone
    request_timeout_s: int
    quiet_wait_s: int
    out: Path | None  # None: print only
    log_dir: Path


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    def option(flag: str, default: str, help_text: str, **kwargs: Any) -> None:
        variable = "BENCH_" + flag[2:].upper().replace("-", "_")
        parser.add_argument(flag, default=env.get(variable, default),
                            help=f"{help_text} (default {default}) [env {variable}]", **kwargs)

    option("--duration-s", "6", "measured seconds per load point and round", type=int)
    option("--rounds", "3", "times every server of a workload is measured, taking turns; "
           "a point is the mean throughput and median latencies of its rounds, so a change in "
           "the machine's speed during the run (a shared host) weighs on every server alike",
           type=int)
    option("--warmup-s", "2", "unmeasured seconds before each load point", type=int)
    option("--concurrency", "1,32,128", "comma-separated connection counts, one load point each")
    option("--targets", ",".join(ALL_TARGETS), f"comma-separated, from {list(ALL_TARGETS)}")
    option("--workloads", ",".join(WORKLOADS), f"comma-separated, from {sorted(WORKLOADS)}")
    option("--client", "auto", "load generator: wrk, python, or auto (wrk if it can be had)",
           choices=["auto", "wrk", "python"])
    option("--floor-s", "1.5", "seconds of ONNX Runtime alone per batch size and thread count "
           f"(batch sizes {', '.join(map(str, floor.BATCH_SIZES))}; 1 thread and all cores)",
           type=float)
    option("--request-timeout-s", "5", "a request slower than this counts as an error", type=int)
    option("--quiet-wait-s", "20", "wait up to this long for a quiet machine before each server",
           type=int)
    option("--out", "docs/benchmarks.md",
           "markdown report, relative to the repo; '-' or empty for none")
    option("--log-dir", ".bench", "server logs and raw load output, relative to the repo")
    return parser


def parse_settings(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    parser = build_parser(env)
    args = parser.parse_args(argv)
    unknown = [n for n in _names(args.targets) if n not in ALL_TARGETS] + \
        [n for n in _names(args.workloads) if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown target or workload {unknown}")
    if int(args.duration_s) < 1 or int(args.warmup_s) < 0 or int(args.request_timeout_s) < 1 \
            or float(args.floor_s) <= 0 or int(args.rounds) < 1:
        parser.error("--duration-s, --rounds and --request-timeout-s must be >= 1, "
                     "--warmup-s >= 0, --floor-s > 0")
    try:
        concurrencies = [int(c) for c in _names(args.concurrency)]
    except ValueError:
        parser.error(f"--concurrency takes whole numbers, got {args.concurrency!r}")
    if not concurrencies or min(concurrencies) < 1:
        parser.error("--concurrency needs at least one number >= 1")
    return Settings(
        points=tuple(LoadPoint(c, int(args.duration_s), int(args.warmup_s))
                     for c in concurrencies),
        rounds=int(args.rounds),
        targets=_names(args.targets),
        workloads=_names(args.workloads),
        client=args.client,
        floor_s=float(args.floor_s),
        request_timeout_s=int(args.request_timeout_s),
        quiet_wait_s=int(args.quiet_wait_s),
        out=None if args.out in ("-", "") else REPO_ROOT / args.out,
        log_dir=REPO_ROOT / args.log_dir,
    )


def _interrupt_on_sigterm() -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started.
    def handle(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handle)


def batching_of(base_url: str, model: str) -> dict[str, Any] | None:
    """The batch sizes the workers tuned for ``model`` (its metadata's parameters.batching)."""
    try:
        with urllib.request.urlopen(f"{base_url}/v2/models/{model}", timeout=5) as response:
            plan = orjson.loads(response.read()).get("parameters", {}).get("batching")
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError):
        return None
    return plan if isinstance(plan, dict) else None


def _save_metrics(base_url: str, path: Path) -> None:
    """Keep the target's Prometheus text, if it has any, to explain the numbers later."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=5) as response:
            path.write_bytes(response.read())
    except (urllib.error.URLError, OSError):
        pass


def wait_for_quiet(max_wait_s: int) -> float | None:
    """Wait up to ``max_wait_s`` for other work on the machine to drop below the threshold;
    returns the CPUs it kept busy in the last one-second sample (None: cannot tell)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = cpu.machine_cpus(window_s=1.0)
        if busy is None or busy <= cpu.BUSY_MACHINE_CPUS or time.monotonic() >= deadline:
            return busy
        print(f"bench: other processes keep {busy:.2f} CPUs busy; waiting up to "
              f"{deadline - time.monotonic():.0f}s more for a quiet machine", flush=True)


def points_of(target: Target, points: Sequence[LoadPoint]) -> list[LoadPoint]:
    """The load points ``target`` is measured at (some run at a few concurrencies only)."""
    return [p for p in points if p.concurrency >= target.min_concurrency and (
        target.concurrencies is None or p.concurrency in target.concurrencies)]


def measure_target(target: Target, workload: Workload, model_root: Path, client: LoadClient,
                   settings: Settings, results: Results, round_: int = 0) -> None:
    """Start ``target``, run every load point against it, stop it (always)."""
    label = f"{target.name}/{workload.name}"
    expected = workload.expected(model_root / workload.name / "1" / "model.onnx")
    path, body = target.request(workload)
    headers = target.headers(workload)
    print(f"bench: starting {target.name} for {workload.name}...", flush=True)
    try:
        started = target.start(workload, model_root, settings.log_dir, expected)
        print(f"bench: {target.name} answers correctly at {started.base_url} "
              f"({started.ready_s:.1f}s after spawn)", flush=True)
        results.notes.append(f"{label}: first correct answer {started.ready_s:.1f}s after spawn")
        if target.name.startswith(SUBJECT) and workload.name not in results.plans:
            plan = batching_of(started.base_url, workload.name)
            if plan is not None:
                results.plans[workload.name] = plan
                print(f"bench: modelgate's workers chose {describe_plan(plan)}", flush=True)
        url = target.load_url(started, workload, path)
        if url.startswith("grpc://"):
            client = GrpcClient(client.work_dir, client.request_timeout_s)
        load_log = settings.log_dir / f"load-{target.name}-{workload.name}.txt"
        load_log.write_text("")
        for point in points_of(target, settings.points):
            c = point.concurrency
            warmup_errors = 0
            if point.warmup_s:
                warmup_errors = client.run(url, body, c, point.warmup_s, load_log,
                                           headers).errors
                if warmup_errors:
                    results.notes.append(f"{label} c={c}: {warmup_errors} errors during warm-up")
            before = cpu.snapshot(target.pids())
            result = client.run(url, body, c, point.duration_s, load_log, headers)
            used = cpu.usage(before, cpu.snapshot(target.pids()))
            if not target.alive():
                raise TargetFailed(f"{target.name} died during the run: {target.why_dead()}")
            results.measurements.append(Measurement(workload.name, target.name, c, result, used,
                                                    workload.rows_per_request, warmup_errors,
                                                    round_))
            print(f"bench: {target.name:<13} c={c:<3} {result.rps:>9,.0f} req/s  "
                  f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                  f"errors {result.errors}", flush=True)
            if used.disturbed:
                warning = (f"{label} c={c}: other processes kept {used.other:.2f} CPUs busy "
                           "during the run; the machine was not quiet, so this point is not "
                           "comparable")
                print(f"bench: WARNING {warning}", flush=True)
                results.notes.append(warning)
        _save_metrics(started.base_url,
                      settings.log_dir / f"metrics-{target.name}-{workload.name}.txt")
    finally:
        how = target.stop()
        print(f"bench: {target.name} {how}", flush=True)
        if not how.startswith("stopped"):
            results.notes.append(f"{label}: {how}")


def measure_floor(workload: Workload, model_path: Path, settings: Settings,
                  results: Results) -> None:
    """ONNX Runtime alone on one thread (the batch-size curve) and on every core as threads,
    then the floor: a one-thread process per core at the curve's best batch size."""
    for threads in sorted({1, NPROC}):
        if settings.quiet_wait_s:
            wait_for_quiet(settings.quiet_wait_s)
        print(f"bench: ONNX Runtime alone, {workload.name}, {threads} thread(s), batch sizes "
              f"{', '.join(map(str, floor.BATCH_SIZES))}...", flush=True)
        sweep = floor.sweep(workload.name, model_path, workload.feeds, threads, settings.floor_s)
        _add_floor(sweep, results)
    one = floor.one_thread_of(results.floors, workload.name)
    if NPROC > 1 and one is not None:
        if settings.quiet_wait_s:
            wait_for_quiet(settings.quiet_wait_s)
        batch = one.best.batch
        print(f"bench: ONNX Runtime alone, {workload.name}, {NPROC} processes x 1 thread, "
              f"batch {batch}...", flush=True)
        _add_floor(floor.parallel(workload.name, model_path, workload.feeds(batch), NPROC,
                                  max(settings.floor_s * 2, 2.0)), results)


def _add_floor(sweep: floor.Sweep, results: Results) -> None:
    results.floors.append(sweep)
    best = sweep.best
    print(f"bench: {'ort':<13} {sweep.label}: best {best.rows_s:>11,.0f} rows/s at "
          f"batch {best.batch} (p50 {best.p50_ms:.2f} ms per run)", flush=True)
    if sweep.cpu is not None and sweep.cpu.disturbed:
        warning = (f"ort/{sweep.workload} {sweep.label}: other processes kept "
                   f"{sweep.cpu.other:.2f} CPUs busy; the machine was not quiet, so the "
                   "floor is not comparable")
        print(f"bench: WARNING {warning}", flush=True)
        results.notes.append(warning)


def run(settings: Settings, factories: Mapping[str, Callable[[], Target]], client: LoadClient,
        work_dir: Path, results: Results) -> None:
    """Every workload: ORT alone, then every server, one at a time."""
    for workload in (WORKLOADS[n]() for n in settings.workloads):
        model_root = work_dir / workload.name
        model_path = workload.write(model_root)
        results.sections.append(Section(workload.name, workload.description, workload.workers))
        if FLOOR in settings.targets:
            measure_floor(workload, model_path, settings, results)
        failed: set[str] = set()
        for round_ in range(settings.rounds):
            if settings.rounds > 1:
                print(f"bench: {workload.name}, round {round_ + 1} of {settings.rounds}",
                      flush=True)
            for target in (factories[n]() for n in settings.targets if n in factories):
                if target.workloads is not None and workload.name not in target.workloads:
                    continue
                if not points_of(target, settings.points):
                    continue
                if target.name in failed:
                    continue
                results.descriptions[target.name] = target.description
                if settings.quiet_wait_s:
                    wait_for_quiet(settings.quiet_wait_s)
                try:
                    measure_target(target, workload, model_root, client, settings, results,
                                   round_)
                except (TargetFailed, WrongAnswer, LoadError) as e:
                    failed.add(target.name)
                    results.failed = results.failed or target.required
                    print(f"bench: {target.name}/{workload.name} FAILED: {e}", flush=True)
                    results.notes.append(
                        f"{target.name}/{workload.name} FAILED: {str(e).splitlines()[0]}"
                        + ("" if target.required else " (a peer: noted, not a failed bench)"))


def peer_venv(settings: Settings, results: Results) -> PeerVenv | None:
    """The peer's venv, built now (before anything is measured) if it is missing."""
    venv = default_venv(settings.log_dir)
    try:
        venv.ensure(settings.log_dir / "peer-venv-install.log")
    except PeerUnavailable as e:
        print(f"bench: skipping the {PEER} peer: {e}", flush=True)
        results.notes.append(f"{PEER} peer skipped: its venv could not be built: {e}")
        return None
    return venv


def server_factories(settings: Settings, results: Results) -> dict[str, Callable[[], Target]]:
    factories = {name: TARGETS[name] for name in settings.targets if name in TARGETS}
    if PEER in settings.targets and (venv := peer_venv(settings, results)) is not None:
        factories[PEER] = lambda: BentoMLTarget(venv)
    return factories


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    settings = parse_settings(argv, os.environ if env is None else env)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    _interrupt_on_sigterm()
    results = Results()
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="modelgate-bench-") as tmp:
            client = make_client(settings.client, Path(tmp), settings.request_timeout_s)
            machine = Machine.describe(f"{client.name} {client.version}", REPO_ROOT)
            factories = server_factories(settings, results)
            if isinstance(client, PythonClient):
                results.notes.append(
                    "load came from the Python fallback client, which needs a core of its own: "
                    "high-concurrency numbers are capped by the client and throughput ratios "
                    "flatter the slower server; install wrk")
            run(settings, factories, client, Path(tmp), results)
    except LoadError as e:  # no load generator at all
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; every server was stopped", file=sys.stderr)
        return 130

    point = settings.points[0]
    method = (f"{client.name} {client.version}, 1 thread, closed loop (each connection sends "
              f"its next request when the previous answer arrives); {point.warmup_s}s warm-up "
              f"then {point.duration_s}s measured per point; {settings.rounds} rounds in which "
              "the servers of a workload take turns, a point being the mean throughput and the "
              "median p50 and p99 of its rounds; all on 127.0.0.1")
    print(f"\nbench: done in {time.monotonic() - began:.0f}s on {machine.nproc} CPUs "
          f"({machine.cpu_model}), load by {client.name}\n")
    if FLOOR in settings.targets:
        results.descriptions[FLOOR] = (
            f"ONNX Runtime alone, no server: {NPROC} processes (one per core), each a "
            "one-thread session running batches of the size at which one thread is fastest "
            f"on the model (the 1-thread sweep over {', '.join(map(str, floor.BATCH_SIZES))} "
            f"rows, {settings.floor_s:g}s each), all at once; their summed rows/s is the "
            "compute floor")
    publish(results, machine, method, settings.out, settings.log_dir)
    return 1 if results.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
