"""The BentoML peer: the benchmark's ONNX model behind one adaptive-batching endpoint.

Runs in its own venv (``.bench/peer-venv``, see ``bench.peer_venv``), never in modelgate's:

    BENCH_PEER_MODEL=MODELS/mlp/1/model.onnx bentoml serve service:OnnxModel \\
        --working-dir bench/peer_bentoml --host 127.0.0.1 --port 3000

``POST /infer`` takes ``{"input": [[...row...], ...]}`` (the model's input as a nested list)
and answers the model's first output as a nested list. ``batchable=True`` makes BentoML's
adaptive batcher merge concurrent requests along dim 0 (up to ``max_batch_size`` rows) before
one ``session.run``, as modelgate's workers do. BentoML reads its service configuration from
the decorators at import time, so the bench passes settings in ``BENCH_PEER_*`` variables.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort

MODEL_PATH = os.environ["BENCH_PEER_MODEL"]
WORKERS = int(os.environ.get("BENCH_PEER_WORKERS", "1"))  # processes, each with a session
INTRA_OP_THREADS = int(os.environ.get("BENCH_PEER_INTRA_OP_THREADS", "1"))
MAX_BATCH_SIZE = int(os.environ.get("BENCH_PEER_MAX_BATCH_SIZE", "64"))  # modelgate's default
MAX_LATENCY_MS = int(os.environ.get("BENCH_PEER_MAX_LATENCY_MS", "30000"))


# Access logging off: modelgate and the naive server log no line per request either.
@bentoml.service(workers=WORKERS, traffic={"timeout": 60},
                 logging={"access": {"enabled": False}})
class OnnxModel:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = INTRA_OP_THREADS
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(MODEL_PATH, options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH_SIZE,
                 max_latency_ms=MAX_LATENCY_MS)
    def infer(self, input: np.ndarray) -> np.ndarray:
        feeds = {self.input_name: np.asarray(input, dtype=np.float32)}
        return self.session.run([self.output_name], feeds)[0]
