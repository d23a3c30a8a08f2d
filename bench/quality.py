"""``make bench-quality``: the feedback loop end to end on a real scikit-learn classifier.

One ``modelgate up`` serving a logistic regression trained on a 3-class synthetic data set and
exported to ONNX (ZipMap output), with its held-out accuracy as the version's lineage metric
(``metadata.json``). Three scenes:

- **clean**: ``--calls`` calls (each one row, each with its own id) at ``--concurrency``; each
  call's true label is fed back after a random delay (uniform in ``--delay-s``) through
  ``POST /v2/models/clf/feedback``, in batches as they come due. Then the live accuracy since
  load (and over the window of the last 1,000 labelled rows) is compared with the accuracy
  scikit-learn computes offline on the same rows: they must be equal, exactly.
- **switch**: the labels change under the model: every row of class 2 is now labelled 0 (the
  model is wrong on one class). Counts the labelled rows from the switch until the quality
  alarm fires (``alert``), against the stated bound.
- **overhead**: the hot path with and without storing answers: the same classifier at the
  same closed-loop load (callers pause between calls: a machine with headroom), first with
  ``feedback_sample_share: 0`` (nothing stored anywhere), then storing every answer: p50, p99
  and calls/s of each.
- **memory**: a model whose answers are kept ``--horizon-s`` seconds, under load for three
  horizons: the answer store's rows and bytes (``MEMORY USAGE``), sampled twice a second, stay
  within the calls answered in any ``horizon + 1 s`` (the store trims at every write, 0.2 s
  apart) and the bytes per row stated in docs/architecture.md.

Prints every figure and the CPU model; ``--json`` writes them too.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.results import _cpu_model
from bench.swap import ADMIN, up
from modelgate.core.store import feedback as store

MODEL = "clf"
BOUNDED = "bounded"
UNSTORED = "unstored"  # the same classifier with feedback_sample_share 0
SWITCHED_CLASS, SWITCHED_TO = 2, 0
BYTES_PER_ROW = 300  # the bound docs/architecture.md states for a small classifier's row
DETECTION_BOUND_ROWS = 400  # the bound this bench states for its switch


@dataclass
class Data:
    rows: np.ndarray  # float32 [n, features], held out
    labels: np.ndarray
    predicted: np.ndarray  # scikit-learn's own predictions on them (offline)
    accuracy: float


def build(root: Path, horizon_s: int) -> Data:
    """The classifier, trained, exported and placed twice (the bounded copy keeps answers
    ``horizon_s``); returns its held-out rows and scikit-learn's offline predictions."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from modelgate.cli.demo import OPSET, write_model

    features, labels = make_classification(n_samples=40_000, n_features=8, n_informative=6,
                                            n_redundant=0, n_classes=3, class_sep=2.0,
                                            random_state=0)
    features = features.astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(features, labels, test_size=0.5,
                                                        random_state=0)
    classifier = LogisticRegression(max_iter=1000).fit(train_x, train_y)
    onnx_model = convert_sklearn(classifier, initial_types=[("input", FloatTensorType([None, 8]))],
                                 target_opset={"": OPSET, "ai.onnx.ml": 3})
    predicted = classifier.predict(test_x)
    accuracy = float(np.mean(predicted == test_y))
    for name in (MODEL, BOUNDED, UNSTORED):
        path = write_model(onnx_model, root, name)
        (path.parent / "metadata.json").write_text(json.dumps(
            {"run_id": "bench-quality", "metrics": {"accuracy": accuracy}}))
    (root / MODEL / "config.yaml").write_text("max_batch_size: 64\n")
    (root / BOUNDED / "config.yaml").write_text(
        f"max_batch_size: 64\nfeedback_horizon_s: {horizon_s}\n")
    (root / UNSTORED / "config.yaml").write_text("max_batch_size: 64\nfeedback_sample_share: 0\n")
    return Data(test_x, test_y, predicted, accuracy)


@dataclass
class Labelled:
    id: str
    label: int
    truth: int
    row: int


class Loop:
    """Calls with ids, and their labels fed back after a random delay, in batches."""

    def __init__(self, client: httpx.AsyncClient, data: Data, delay_s: tuple[float, float],
                 seed: int) -> None:
        self.client = client
        self.data = data
        self.delay_s = delay_s
        self.rng = random.Random(seed)
        self.due: list[tuple[float, int, Labelled]] = []
        self.sent: list[Labelled] = []  # in the order the gateway received them
        self.live_predicted: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.failed = 0
        self.switched = False
        self._serial = 0

    async def call(self, model: str, row: int) -> None:
        self._serial += 1
        call_id = f"{model}-{self._serial}"
        body = {"id": call_id, "inputs": [{
            "name": "input", "datatype": "FP32", "shape": [1, 8],
            "data": self.data.rows[row].tolist()}]}
        response = await self.client.post(f"/v2/models/{model}/infer", json=body)
        if response.status_code != 200:
            self.failed += 1
            return
        answer = response.json()
        label_output = next(o for o in answer["outputs"] if o["name"] == "output_label")
        self.live_predicted[call_id] = int(label_output["data"][0])
        truth = int(self.data.labels[row])
        label = SWITCHED_TO if self.switched and truth == SWITCHED_CLASS else truth
        heapq.heappush(self.due, (time.monotonic() + self.rng.uniform(*self.delay_s),
                                  self._serial, Labelled(call_id, label, truth, row)))

    async def send_due(self, everything: bool = False) -> int:
        """Feed back the labels that are due (all with ``everything``); returns how many."""
        now = time.monotonic()
        batch = []
        while self.due and (everything or self.due[0][0] <= now):
            batch.append(heapq.heappop(self.due)[2])
        if not batch:
            return 0
        response = await self.client.post(
            f"/v2/models/{MODEL}/feedback",
            json=[{"id": b.id, "label": b.label} for b in batch])
        response.raise_for_status()
        for name, value in response.json().items():
            if isinstance(value, int):
                self.counts[name] = self.counts.get(name, 0) + value
        self.sent.extend(batch)
        return len(batch)

    async def quality(self) -> dict[str, Any]:
        response = await self.client.get(f"/v2/models/{MODEL}/quality")
        response.raise_for_status()
        return response.json()["versions"][0]


async def _load(loop: Loop, model: str, calls: int, concurrency: int) -> float:
    """``calls`` calls at ``concurrency``, labels fed back as they come due; calls/s."""
    rows = iter(np.random.default_rng(loop._serial + calls).integers(
        0, len(loop.data.labels), calls).tolist())
    started = time.monotonic()
    done = asyncio.Event()

    async def caller() -> None:
        for row in rows:
            await loop.call(model, row)

    async def labeller() -> None:
        while not done.is_set():
            await loop.send_due()
            await asyncio.sleep(0.1)

    feeding = asyncio.create_task(labeller())
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    rate = calls / (time.monotonic() - started)
    done.set()
    await feeding
    return rate


@dataclass
class CleanFigures:
    calls: int
    calls_per_s: float
    failed: int
    labels: dict[str, int]
    live_accuracy: float
    offline_accuracy: float
    live_window_accuracy: float | None
    offline_window_accuracy: float
    window_rows: int
    onnx_vs_sklearn_disagreements: int
    label_delay_p50_s: float | None
    reference_accuracy: float

    @property
    def exact(self) -> bool:
        return self.live_accuracy == self.offline_accuracy and \
            self.live_window_accuracy == self.offline_window_accuracy


@dataclass
class SwitchFigures:
    rows_to_alarm: int | None
    bound_rows: int
    accuracy_after_switch: float | None
    alarm: dict[str, Any] | None
    false_alarm_before_switch: bool
    alert_event: dict[str, Any] | None = None  # the newest in the quality answer's alerts


@dataclass
class MemoryFigures:
    horizon_s: int
    seconds: float
    calls_per_s: float
    peak_rows: int
    peak_bytes: int
    bytes_per_row: float
    rows_bound: int
    bytes_bound: int

    @property
    def within(self) -> bool:
        return self.peak_rows <= self.rows_bound and self.peak_bytes <= self.bytes_bound


@dataclass
class OverheadFigures:
    concurrency: int
    pause_ms: float
    seconds: float
    unstored: dict[str, float]
    stored: dict[str, float]


@dataclass
class QualityFigures:
    cpu_model: str
    overhead: OverheadFigures
    clean: CleanFigures
    switch: SwitchFigures
    memory: MemoryFigures
    notes: list[str] = field(default_factory=list)


async def _latencies(client: httpx.AsyncClient, data: Data, model: str, concurrency: int,
                     pause_s: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def caller(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < stop:
            row = data.rows[int(rng.integers(0, len(data.rows)))]
            sent = time.perf_counter()
            response = await client.post(f"/v2/models/{model}/infer", json={"inputs": [{
                "name": "input", "datatype": "FP32", "shape": [1, 8], "data": row.tolist()}]})
            response.raise_for_status()
            latencies.append(time.perf_counter() - sent)
            await asyncio.sleep(pause_s)

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return latencies


def _summary(latencies: list[float], seconds: float) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {"calls_per_s": round(len(ms) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


async def _overhead(client: httpx.AsyncClient, data: Data, seconds: float) -> OverheadFigures:
    """Alternating slices of each (so a neighbour's load on a shared machine falls on both
    alike), ``seconds`` of each in all."""
    concurrency, pause_s, slices = 8, 0.02, 4
    await _latencies(client, data, UNSTORED, concurrency, pause_s, 1.0)  # warm both up
    await _latencies(client, data, MODEL, concurrency, pause_s, 1.0)
    unstored: list[float] = []
    stored: list[float] = []
    for _ in range(slices):
        unstored += await _latencies(client, data, UNSTORED, concurrency, pause_s,
                                     seconds / slices)
        stored += await _latencies(client, data, MODEL, concurrency, pause_s, seconds / slices)
    return OverheadFigures(concurrency, pause_s * 1000, seconds, _summary(unstored, seconds),
                           _summary(stored, seconds))


async def _clean(loop: Loop, calls: int, concurrency: int) -> CleanFigures:
    rate = await _load(loop, MODEL, calls, concurrency)
    while loop.due:
        await asyncio.sleep(0.1)
        await loop.send_due()
    version = await loop.quality()
    rows = np.array([s.row for s in loop.sent])
    labels = np.array([s.label for s in loop.sent])
    offline = loop.data.predicted[rows]
    window = min(len(loop.sent), 1000)
    live = np.array([loop.live_predicted[s.id] for s in loop.sent])
    return CleanFigures(
        calls, round(rate, 1), loop.failed, dict(loop.counts),
        version["since_load"].get("accuracy"), round(float(np.mean(offline == labels)), 6),
        version["window"].get("accuracy"),
        round(float(np.mean(offline[-window:] == labels[-window:])), 6), window,
        int(np.sum(live != offline)), version["label_delay_p50_s"], loop.data.accuracy)


async def _switch(loop: Loop, concurrency: int, max_rows: int) -> SwitchFigures:
    before = await loop.quality()
    judged_before = (before.get("test") or {}).get("rows_judged", 0)
    false_alarm = bool(before["alert"])
    loop.switched = True
    loop.delay_s = (0.0, 0.2)
    sent_at_switch = len(loop.sent)
    found: dict[str, Any] | None = None
    while len(loop.sent) - sent_at_switch < max_rows:
        await asyncio.gather(*(loop.call(MODEL, int(r)) for r in np.random.default_rng(
            len(loop.sent)).integers(0, len(loop.data.labels), concurrency)))
        await asyncio.sleep(0.2)
        await loop.send_due(everything=True)
        version = await loop.quality()
        if version["alert"]:
            found = version
            break
    if found is None:
        return SwitchFigures(None, DETECTION_BOUND_ROWS, None, None, false_alarm)
    switched = loop.sent[sent_at_switch:]
    right = [loop.live_predicted[s.id] == s.label for s in switched]
    events = (await loop.client.get(f"/v2/models/{MODEL}/quality")).json()["alerts"]
    return SwitchFigures(found["alarm"]["fired_after_rows"] - judged_before,
                         DETECTION_BOUND_ROWS, round(float(np.mean(right)), 4),
                         found["alarm"], false_alarm, events[0] if events else None)


async def _memory(loop: Loop, redis_client: Any, horizon_s: int, concurrency: int
                  ) -> MemoryFigures:
    seconds = 3.0 * horizon_s
    keys = (store.answers(BOUNDED), store.times(BOUNDED))
    peak_rows = peak_bytes = 0
    calls = 0
    stop = asyncio.Event()

    answered: list[float] = []

    async def caller() -> None:
        nonlocal calls
        rng = np.random.default_rng(calls)
        while not stop.is_set():
            await loop.call(BOUNDED, int(rng.integers(0, len(loop.data.labels))))
            answered.append(time.monotonic())
            calls += 1

    async def sampler() -> None:
        nonlocal peak_rows, peak_bytes
        while not stop.is_set():
            rows = int(await asyncio.to_thread(redis_client.zcard, keys[1]))
            held = sum([int(await asyncio.to_thread(redis_client.memory_usage, key, 0) or 0)
                        for key in keys])
            peak_rows, peak_bytes = max(peak_rows, rows), max(peak_bytes, held)
            await asyncio.sleep(0.5)

    started = time.monotonic()
    tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
    watch = asyncio.create_task(sampler())
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks, watch)
    loop.due = [d for d in loop.due if not d[2].id.startswith(BOUNDED)]
    rate = calls / (time.monotonic() - started)
    # The store holds what was answered within the horizon before its last write, plus what
    # came since (a write every 0.2 s): never more than the calls of any horizon + 1 s.
    times = np.array(answered)
    rows_bound = int(np.max(np.searchsorted(times, times + horizon_s + 1.0) -
                            np.arange(len(times)))) if len(times) else 0
    return MemoryFigures(horizon_s, seconds, round(rate, 1), peak_rows, peak_bytes,
                         round(peak_bytes / max(peak_rows, 1), 1), rows_bound,
                         rows_bound * BYTES_PER_ROW)


async def _run(url: str, data: Data, redis_client: Any, calls: int, concurrency: int,
               delay_s: tuple[float, float], horizon_s: int, switch_rows: int,
               overhead_s: float
               ) -> tuple[OverheadFigures, CleanFigures, SwitchFigures, MemoryFigures]:
    limits = httpx.Limits(max_connections=max(concurrency, 8) + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits,
                                 headers={"authorization": f"Bearer {ADMIN}"}) as client:
        overhead = await _overhead(client, data, overhead_s)
        loop = Loop(client, data, delay_s, seed=1)
        clean = await _clean(loop, calls, concurrency)
        switch = await _switch(loop, concurrency, switch_rows)
        memory = await _memory(loop, redis_client, horizon_s, concurrency)
    return overhead, clean, switch, memory


def run(work: Path, calls: int = 20_000, concurrency: int = 16,
        delay_s: tuple[float, float] = (1.0, 4.0), horizon_s: int = 5,
        switch_rows: int = 3000, overhead_s: float = 20.0) -> QualityFigures:
    root = work / "models"
    data = build(root, horizon_s)
    with up(root, work) as running:
        overhead, clean, switch, memory = asyncio.run(_run(
            running.url, data, running.redis(), calls, concurrency, delay_s, horizon_s,
            switch_rows, overhead_s))
    return QualityFigures(_cpu_model(), overhead, clean, switch, memory)


def report(figures: QualityFigures) -> str:
    c, s, m, o = figures.clean, figures.switch, figures.memory, figures.overhead
    return "\n".join([
        f"CPU: {figures.cpu_model}",
        f"overhead ({o.concurrency} callers pausing {o.pause_ms:g} ms, {o.seconds:g} s each, "
        "alternating): "
        f"answers not stored {o.unstored}; every answer stored {o.stored}",
        f"clean: {c.calls} calls at {c.calls_per_s}/s ({c.failed} failed); labels {c.labels}",
        f"  live accuracy since load {c.live_accuracy} vs offline (scikit-learn, same rows) "
        f"{c.offline_accuracy}; window of {c.window_rows}: live {c.live_window_accuracy} vs "
        f"offline {c.offline_window_accuracy} -> {'EQUAL' if c.exact else 'DIFFERENT'}",
        f"  ONNX vs scikit-learn predictions differ on {c.onnx_vs_sklearn_disagreements} rows;"
        f" median label delay {c.label_delay_p50_s} s; lineage accuracy "
        f"{round(c.reference_accuracy, 4)}",
        f"switch (class {SWITCHED_CLASS} labelled {SWITCHED_TO}): alarm after "
        f"{s.rows_to_alarm} labelled rows (bound {s.bound_rows}); accuracy after the switch "
        f"{s.accuracy_after_switch}; false alarm before it: {s.false_alarm_before_switch}",
        f"memory: horizon {m.horizon_s} s, {m.seconds:.0f} s at {m.calls_per_s} calls/s: peak "
        f"{m.peak_rows} rows, {m.peak_bytes} B ({m.bytes_per_row} B/row); bounds "
        f"{m.rows_bound} rows, {m.bytes_bound} B -> {'WITHIN' if m.within else 'OVER'}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay-s", type=float, nargs=2, default=(1.0, 4.0),
                        help="labels come back after a delay uniform in [MIN, MAX] s")
    parser.add_argument("--horizon-s", type=int, default=5,
                        help="the memory scene's feedback_horizon_s (load for 3 of them)")
    parser.add_argument("--overhead-s", type=float, default=20.0,
                        help="seconds of load with and without storing answers")
    parser.add_argument("--work", type=Path, default=Path(".bench/quality"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import shutil
    import tempfile
    work = Path(tempfile.mkdtemp(dir=args.work))
    try:
        figures = run(work, args.calls, args.concurrency, tuple(args.delay_s), args.horizon_s,
                      overhead_s=args.overhead_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(figures))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(figures), indent=2))


if __name__ == "__main__":
    main()
