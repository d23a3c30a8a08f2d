"""Interleaved A/B measurements behind issue 20's choices, for hosts where a single run says
little (a shared VM): each variant in turn, ``--rounds`` times, every figure printed.

    python -m bench.ab tuning [--rounds 3] [--concurrency 16,64]
        the CNN through binary tensors with the batch sizes its workers tune (cap 1-4 on a
        CPU where it is slower per row in large batches) against config.yaml's
        ``max_batch_size: 64`` (the default before tuning), modelgate up with one worker per
        core, wrk closed loop, 2 s warm-up and 6 s measured per point
    python -m bench.ab redis-aof [--rounds 3]
        Redis's CPU per 150 KB request entry (XADD, XREADGROUP, XACK, XDEL: what a CNN call
        costs it) with ``appendonly yes`` (modelgate up's embedded Redis) and without

Each line names the CPUs other processes kept busy meanwhile: above ~0.15 the host was not
quiet and the figures of that round are not comparable (for redis-aof, "other" includes this
process, which drives Redis: about one CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import cpu
from bench.load import make_client
from bench.results import _cpu_model
from bench.targets import BinaryModelgate
from bench.workloads import cnn

ENTRY_BYTES = 3 * 112 * 112 * 4  # the bench CNN's input: a 112x112 RGB image in FP32


def tuning(rounds: int, concurrencies: Sequence[int]) -> None:
    workload = cnn()
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    roots = {}
    for label in ("tuned", "cap64"):
        roots[label] = work / label
        workload.write(roots[label])
    (roots["cap64"] / workload.name / "config.yaml").write_text("max_batch_size: 64\n")
    client = make_client("auto", work, 10)
    expected = workload.expected(roots["tuned"] / workload.name / "1" / "model.onnx")
    for round_ in range(1, rounds + 1):
        for label, root in roots.items():
            target = BinaryModelgate()
            try:
                started = target.start(workload, root, work, expected)
                path, body = target.request(workload)
                headers = target.headers(workload)
                for c in concurrencies:
                    client.run(started.base_url + path, body, c, 2, work / "warm.txt", headers)
                    before = cpu.snapshot(target.pids())
                    result = client.run(started.base_url + path, body, c, 6, work / "load.txt",
                                        headers)
                    used = cpu.usage(before, cpu.snapshot(target.pids()))
                    print(f"round {round_} {label:<6} c={c:<3} {result.rps:8.1f} rows/s  p50 "
                          f"{result.p50_ms:7.2f} ms  p99 {result.p99_ms:8.2f} ms  errors "
                          f"{result.errors}  other CPUs {used.other or 0:.2f}", flush=True)
            finally:
                target.stop()


def redis_aof(rounds: int, entries: int = 2000) -> None:
    import redis

    from modelgate.core.embedded_redis import start_redis
    from modelgate.core.process import stop_process

    payload = os.urandom(ENTRY_BYTES)

    def one(extra: tuple[str, ...]) -> tuple[float, float]:
        folder = tempfile.mkdtemp(prefix="bench-ab-redis-")
        process, url = start_redis(extra_args=("--dir", folder, *extra))
        client = redis.Redis.from_url(url)
        client.xgroup_create("s", "g", id="0", mkstream=True)

        def cycle() -> None:
            entry = client.xadd("s", {"payload": payload})
            client.xreadgroup("g", "w", {"s": ">"}, count=1)
            client.xack("s", "g", entry)
            client.xdel("s", entry)

        try:
            for _ in range(100):
                cycle()
            before = cpu.snapshot([process.pid])
            for _ in range(entries):
                cycle()
            used = cpu.usage(before, cpu.snapshot([process.pid]))
            elapsed_s = time.monotonic() - before.at
        finally:
            stop_process(process, timeout_s=5)
        return (used.server or 0.0) * elapsed_s / entries * 1e6, used.other or 0.0

    for round_ in range(1, rounds + 1):
        for label, extra in (("appendonly yes", ("--appendonly", "yes",
                                                 "--appendfsync", "everysec")),
                             ("appendonly no", ("--appendonly", "no"))):
            cpu_us, other = one(extra)
            print(f"round {round_} {label:<15} Redis CPU {cpu_us:6.0f} us per entry of "
                  f"{ENTRY_BYTES // 1024} KB  other CPUs {other:.2f}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["tuning", "redis-aof"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="16,64")
    args = parser.parse_args(argv)
    print(f"bench.ab {args.experiment}: {_cpu_model()}, {len(os.sched_getaffinity(0))} CPUs",
          flush=True)
    if args.experiment == "tuning":
        tuning(args.rounds, [int(c) for c in args.concurrency.split(",")])
    else:
        redis_aof(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
