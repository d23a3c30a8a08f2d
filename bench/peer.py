"""The PyPI peer: BentoML with adaptive batching, serving the same ONNX file through
onnxruntime from its own venv (``bench.peer_venv``) with ``bench/peer_bentoml/service.py``.

BentoML's batchable endpoints take the input array under the parameter's name rather than a
KServe V2 body, so the peer gets its own request: ``POST /infer`` with
``{"input": [[...one row...]]}`` (the same rows as the V2 body, nested), answered with the
model's first output as a nested list. Same model file, same rows per request, JSON both ways;
the peer's answer is smaller than a V2 one (no envelope), which if anything favours the peer.

Resources: one BentoML worker whose ORT session gets as many threads as modelgate gets worker
processes (1 on the tiny MLP, every core on the compute-bound model). BentoML's own way to use
more cores, more workers, shares one listening socket, and a closed-loop client's long-lived
connections all land on one worker, so that layout served far fewer rows/s here.
"""

from __future__ import annotations

import concurrent.futures
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import orjson

from bench.peer_venv import PeerVenv
from bench.targets import HOST, REPO_ROOT, ProcessTarget, Started
from bench.workloads import Workload, WrongAnswer

SERVICE_DIR = REPO_ROOT / "bench" / "peer_bentoml"
# Rows per ORT run: modelgate's default, kept on the heavy model, where modelgate is set to 8
# rows, because BentoML served fewer rows/s with 8 there (298 vs 341 at c=32 in a trial).
MAX_BATCH_SIZE = 64
# BentoML cancels (503) a queued request its batcher expects to finish later than this; the
# bench's client gives up after 5 s by default anyway, so 5 s costs the peer nothing.
MAX_LATENCY_MS = 5000
# BentoML's batcher learns its latency model from its first requests, and while it trains it
# holds single requests back for seconds waiting for company. These are sent, 8 at a time,
# before any measurement, so no load point pays for the training.
TRAINING_REQUESTS = 64


class BentoMLTarget(ProcessTarget):
    required = False

    def __init__(self, venv: PeerVenv) -> None:
        versions = venv.versions()
        super().__init__(
            "bentoml",
            f"BentoML {versions.get('bentoml', '?')} with onnxruntime "
            f"{versions.get('onnxruntime', '?')}, from PyPI into the isolated venv "
            "`.bench/peer-venv`: `bentoml serve` of `bench/peer_bentoml/service.py`, one "
            f"`@bentoml.api(batchable=True, max_batch_size={MAX_BATCH_SIZE}, "
            f"max_latency_ms={MAX_LATENCY_MS})` endpoint running the same model.onnx in one ORT "
            "session, in 1 BentoML worker with intra_op_threads = 1 for mlp and every core for "
            "heavy (BentoML's workers share one listening socket and wrk's connections all "
            "land on one of them: 2 workers x 1 thread served 208 rows/s on heavy at c=32 in "
            "a trial, 1 worker x 2 threads 341); 64 rows per batch on heavy too (with "
            "modelgate's 8 it served 298); access log off; request "
            '`POST /infer {"input": [[row]]}`, answer `[[p0, p1, p2]]`; '
            f"{TRAINING_REQUESTS} requests train its batcher before the first load point",
            start_timeout_s=180.0,
        )
        self.venv = venv

    def command(self, workload: Workload, model_root: Path, port: int) -> list[str]:
        return [str(self.venv.executable("bentoml")), "serve", "service:OnnxModel",
                "--working-dir", str(SERVICE_DIR), "--host", HOST, "--port", str(port)]

    def env(self, workload: Workload, model_root: Path, log_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MODELGATE_", "BENTOML_", "PYTHON", "VIRTUAL_ENV"))}
        model = model_root / workload.name / "1" / "model.onnx"
        env.update({
            "PYTHONUNBUFFERED": "1",
            "BENTOML_DO_NOT_TRACK": "True",  # no usage reporting (and no network)
            "BENTOML_HOME": str(log_dir / "bentoml-home"),
            "BENCH_PEER_MODEL": str(model),
            "BENCH_PEER_WORKERS": "1",
            "BENCH_PEER_INTRA_OP_THREADS": str(workload.workers),
            "BENCH_PEER_MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
            "BENCH_PEER_MAX_LATENCY_MS": str(MAX_LATENCY_MS),
        })
        return env

    def request(self, workload: Workload) -> tuple[str, bytes]:
        inputs = workload.body["inputs"]
        if len(inputs) != 1:
            raise WrongAnswer(f"the BentoML peer serves one-input models; {workload.name} has "
                              f"{[i['name'] for i in inputs]}")
        # The V2 body's numbers as written there, nested to the tensor's shape.
        nested = np.asarray(inputs[0]["data"]).reshape(inputs[0]["shape"]).tolist()
        return "/infer", orjson.dumps({inputs[0]["name"]: nested})

    def check(self, content: bytes, expected: Mapping[str, np.ndarray]) -> None:
        name, want = next(iter(expected.items()))  # the service answers the first output
        try:
            got = np.asarray(orjson.loads(content), dtype=want.dtype)
        except (orjson.JSONDecodeError, TypeError, ValueError) as e:
            raise WrongAnswer(f"not a nested list: {content[:200]!r}") from e
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-6):
            raise WrongAnswer(f"output {name!r} is {got.tolist()}, expected {want.tolist()}")

    def start(self, workload: Workload, model_root: Path, log_dir: Path,
              expected: Mapping[str, np.ndarray]) -> Started:
        started = super().start(workload, model_root, log_dir, expected)
        path, body = self.request(workload)
        _train(started.base_url + path, body)
        return started


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def _train(url: str, body: bytes) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: _post(url, body), range(TRAINING_REQUESTS)))
