"""``make trace``: where the time of one call goes, stage by stage, at concurrency 1.

Starts ``modelgate up`` (one gateway, one worker) with ``MODELGATE_TRACE_DIR`` set, so the
gateway and the worker write each call's stage timestamps (``modelgate.core.trace``); sends
``--calls`` calls one after another on one keep-alive connection, timing each from this
process (the same host clock: ``time.time_ns``); joins the three sides by the call's id and the
correlation id; prints the median of every stage, the median end to end, and for comparison
the medians on the same calls of the naive in-process server and of the two-hop floor
(``bench/two_hop_floor.py``: the least any design through Redis to a worker process and back
costs on this host), with the CPU model and modelgate's distance from the floor.

Stages, in order (each from the end of the one before):

- HTTP in: the client sends -> the gateway's V2 handler starts (the connection's protocol,
  which serves small infer calls itself, else uvicorn's cycle and the ASGI app; auth)
- read body, parse: the body is read; JSON -> tensors, checked against the signature
- enqueue: admission, the dispatcher's outbox, the writer task's wake-up, the bundle's encoding
- Redis hop: the XADD written to the socket, Redis adds the entry and wakes the worker's
  blocked XREADGROUP
- worker read: the entry decoded, the run planned
- ORT: ``session.run``; around ORT: feeds built, outputs split and selected
- reply + hop back: the reply encoded, the ANSWER script sent, Redis runs it and wakes the
  gateway's blocked BLMPOP, the reply popped
- resolve: the reply decoded and cut, the caller's future resolved, its handler resumed
- format: the answer's JSON
- HTTP out: the answer written, read and parsed by the client
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from bench.results import _cpu_model
from bench.targets import (
    ProcessTarget,
    Target,
    modelgate_command,
    naive_target,
    two_hop_floor_target,
)
from bench.workloads import WORKLOADS, Workload, binary_body
from modelgate.core import trace

# (stage, from mark, to mark); marks: "send"/"recv" (client), gateway and worker marks.
STAGES = (
    ("HTTP in", "send", "start"),
    ("read body", "start", "read"),
    ("parse", "read", "parsed"),
    ("enqueue", "parsed", "writing"),
    ("Redis hop", "writing", "w.read"),
    ("worker read", "w.read", "w.run"),
    ("ORT (session.run)", None, None),
    ("around ORT (feeds, split)", None, None),
    ("reply + hop back", "w.ran", "popped"),
    ("resolve", "popped", "resumed"),
    ("format", "resumed", "formatted"),
    ("HTTP out", "formatted", "recv"),
)


class TracedModelgate(ProcessTarget):
    def __init__(self, trace_dir: Path) -> None:
        super().__init__("modelgate", "modelgate up, traced", modelgate_command(1))
        self.trace_dir = trace_dir

    def env(self, workload: Workload, model_root: Path, log_dir: Path) -> dict[str, str]:
        return {**super().env(workload, model_root, log_dir),
                "MODELGATE_TRACE_DIR": str(self.trace_dir)}


NAIVE = "naive in-process server"
FLOOR = "two-hop floor (bench/two_hop_floor.py)"


def run_trace(workload: Workload, calls: int, warmup: int, log_dir: Path,
              references: Sequence[str] = (NAIVE, FLOOR), binary: bool = False
              ) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """The stage medians of ``calls`` traced calls (their tensors as binary data with
    ``binary``), and the median of each of ``references`` on the same calls (the naive server
    always gets them as JSON)."""
    with tempfile.TemporaryDirectory(prefix="modelgate-trace-") as tmp:
        model_root, trace_dir = Path(tmp) / "models", Path(tmp) / "trace"
        workload.write(model_root)
        target = TracedModelgate(trace_dir)
        expected = workload.expected(model_root / workload.name / "1" / "model.onnx")
        try:
            started = target.start(workload, model_root, log_dir, expected)
            timed = drive(started.base_url, workload, calls, warmup, binary)
        finally:
            target.stop()
        table = stage_table(timed, trace.read(trace_dir))
        return table, {name: median_ms(REFERENCES[name](), workload, model_root, log_dir,
                                       calls, warmup, binary and name == FLOOR)
                       for name in references}


def drive(base_url: str, workload: Workload, calls: int, warmup: int, binary: bool = False
          ) -> list[tuple[str, int, int]]:
    """(request id, sent ns, received ns) of ``calls`` calls after ``warmup`` untimed ones."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    timed = []
    for i in range(warmup + calls):
        request_id = f"trace-{i}"
        if binary:
            body, header_length = binary_body({**workload.body, "id": request_id})
            headers = {"Content-Type": "application/octet-stream",
                       "Inference-Header-Content-Length": str(header_length)}
        else:
            body = orjson.dumps({**workload.body, "id": request_id})
            headers = {"Content-Type": "application/json"}
        sent = time.time_ns()
        connection.request("POST", workload.infer_path, body, headers)
        response = connection.getresponse()
        content = response.read()
        received = time.time_ns()
        if response.status != 200:
            raise RuntimeError(f"call {i}: HTTP {response.status}: {content[:200]!r}")
        if i >= warmup:
            timed.append((request_id, sent, received))
    connection.close()
    return timed


def stage_table(timed: Sequence[tuple[str, int, int]],
                records: Sequence[dict[str, object]]) -> list[tuple[str, float]]:
    """Median milliseconds of every stage, then end to end, over the calls seen by all sides."""
    gateway = {r["request_id"]: r for r in records if r["role"] == "gateway"}
    worker: dict[object, dict[str, object]] = {}
    for record in records:
        if record["role"] == "worker":
            for correlation in record["ids"]:  # type: ignore[attr-defined]
                worker[correlation] = record
    samples: dict[str, list[float]] = {name: [] for name, _, _ in STAGES}
    totals = []
    for request_id, sent, received in timed:
        g = gateway.get(request_id)
        w = worker.get(g["id"]) if g is not None else None
        if g is None or w is None:
            continue
        marks = {**{k: v for k, v in g.items() if isinstance(v, int)}, "send": sent,
                 "recv": received, **{f"w.{k}": v for k, v in w.items() if isinstance(v, int)}}
        ort_ms = float(w["ort_ms"])  # type: ignore[arg-type]
        for name, start, end in STAGES:
            if start is None or end is None:
                continue
            samples[name].append((marks[end] - marks[start]) / 1e6)
        around = (marks["w.ran"] - marks["w.run"]) / 1e6
        samples["ORT (session.run)"].append(ort_ms)
        samples["around ORT (feeds, split)"].append(around - ort_ms)
        totals.append((received - sent) / 1e6)
    if not totals:
        raise RuntimeError("no call was traced by the gateway and the worker both")
    return [(name, statistics.median(values)) for name, values in samples.items()] + [
        ("end to end (median)", statistics.median(totals))]


REFERENCES: dict[str, Callable[[], Target]] = {NAIVE: naive_target,
                                               FLOOR: two_hop_floor_target}


def median_ms(target: Target, workload: Workload, model_root: Path, log_dir: Path, calls: int,
              warmup: int, binary: bool = False) -> float:
    """The median of ``calls`` calls to ``target`` at concurrency 1 (JSON, or binary tensors
    with ``binary``)."""
    expected = workload.expected(model_root / workload.name / "1" / "model.onnx")
    try:
        started = target.start(workload, model_root, log_dir, expected)
        timed = drive(started.base_url, workload, calls, warmup, binary)
    finally:
        target.stop()
    return statistics.median((received - sent) / 1e6 for _, sent, received in timed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="mlp", choices=sorted(WORKLOADS))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--log-dir", type=Path, default=Path(".bench"))
    parser.add_argument("--no-naive", action="store_true",
                        help="skip the naive server's median")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the two-hop floor's median")
    parser.add_argument("--binary", action="store_true",
                        help="send the tensors as binary data (to modelgate and the two-hop "
                             "floor; the naive server gets JSON)")
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    references = [name for name, skip in ((NAIVE, args.no_naive), (FLOOR, args.no_floor))
                  if not skip]
    table, medians = run_trace(workload, args.calls, args.warmup, args.log_dir, references,
                               args.binary)
    print(f"trace: {workload.name} ({'binary tensors' if args.binary else 'JSON'}), "
          f"{args.calls} calls at concurrency 1 after {args.warmup} warm-up calls; "
          f"{_cpu_model()}")
    names = [name for name, _ in table] + [f"{name}, median" for name in medians]
    width = max(len(name) for name in names)
    for name, ms in table:
        print(f"  {name:<{width}}  {ms:8.3f} ms")
    staged = sum(ms for name, ms in table[:-1])
    print(f"  {'sum of the stage medians':<{width}}  {staged:8.3f} ms")
    for name, ms in medians.items():
        print(f"  {name + ', median':<{width}}  {ms:8.3f} ms")
    if FLOOR in medians:
        above = table[-1][1] - medians[FLOOR]
        print(f"modelgate is {above:.3f} ms above the two-hop floor at the median (the floor: "
              "the same calls through Redis to a worker process and back, with nothing else "
              "done)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
