"""ONNX Runtime execution: one session per process, batches of compatible bundles.

``run_batch`` concatenates bundles (each already several requests' rows, see modelgate.core.wire)
along dim 0, runs the session once and splits every output back per bundle. Should a batch
fail, or an output not have a row per input row, each request is run on its own, so one bad
request never fails its neighbours. A ZipMap output (the runtime's list of maps) becomes the
FP32 ``[N, C]`` tensor its signature says (``modelgate.core.zipmap``), so it travels back as raw
tensor bytes like any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from modelgate.core import wire
from modelgate.core.repository import ModelVersion, TensorSpec
from modelgate.core.zipmap import to_array

log = logging.getLogger("modelgate.worker")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request got from the ORT run it was part of.

    ``batch_size`` and ``compute_ms`` describe that run; ``leader`` is set on exactly one
    outcome per run so runs can be counted from the replies alone.
    """

    status: str
    outputs: dict[str, wire.Tensor]
    error: str = ""
    batch_size: int = 0
    compute_ms: float = 0.0
    leader: bool = False


def _plain(value: Any) -> Any:
    """Non-tensor outputs (sequences and maps other than ZipMap's, which become tensors) as
    msgpack-able plain values."""
    if isinstance(value, dict):
        return {(k.item() if isinstance(k, np.generic) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Runner:
    def __init__(self, model: ModelVersion, intra_op_threads: int) -> None:
        self.model = model
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.output_names = [o.name for o in model.outputs]

    def warm_up(self) -> None:
        """One run on zeros so the first caller does not pay for lazy initialisation."""
        feeds = {}
        for spec in self.model.inputs:
            shape = tuple(1 if d < 0 else d for d in spec.shape)
            if spec.datatype == wire.BYTES:
                feeds[spec.name] = np.full(shape, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=wire.NUMPY_DTYPES[spec.datatype])
        try:
            self.session.run(None, feeds)
        except Exception as e:  # a model may reject zeros; serving real input can still work
            log.warning("warm-up run of %s failed (%s); serving anyway", self.model.pool, e)

    def _feeds(self, requests: Sequence[wire.Request]) -> dict[str, np.ndarray]:
        feeds = {}
        for name, first in requests[0].inputs.items():
            if len(requests) == 1:
                array = first.data
            else:
                array = np.concatenate([r.inputs[name].data for r in requests], axis=0)
            if first.datatype == wire.BYTES:
                # ORT wants str objects for string tensors; the wire carries bytes.
                array = np.vectorize(
                    lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b,
                    otypes=[object],
                )(array)
            feeds[name] = array
        return feeds

    def _run(self, bundles: Sequence[wire.Bundle]) -> tuple[list[Any], float]:
        feeds = self._feeds([b.request for b in bundles])
        started = time.perf_counter()
        results = self.session.run(self.output_names, feeds)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return [self._tensor_of(spec, value)
                for spec, value in zip(self.model.outputs, results, strict=True)], elapsed_ms

    @staticmethod
    def _tensor_of(spec: TensorSpec, value: Any) -> Any:
        """A ZipMap output (a list of {class: probability}) as the FP32 [N, C] tensor its
        signature promises; any other output as the runtime gave it."""
        if not spec.classes or isinstance(value, np.ndarray):
            return value
        try:
            return to_array(value, spec.classes)
        except ValueError as e:  # not what the graph's ZipMap node says: the model's fault
            raise RuntimeError(f"output {spec.name!r}: {e}") from e

    def _split(
        self, bundles: Sequence[wire.Bundle], results: list[Any]
    ) -> list[dict[str, wire.Tensor]] | None:
        """Per-bundle outputs, or None when some output has no row per input row (then rows
        cannot be told apart, unless the run held a single request)."""
        rows = [b.request.rows for b in bundles]
        total = sum(rows)
        spans = wire.row_spans(rows)
        whole = len(bundles) == 1 and len(bundles[0].ids) == 1
        per_bundle: list[dict[str, wire.Tensor]] = [{} for _ in bundles]
        for spec, value in zip(self.model.outputs, results, strict=True):
            if isinstance(value, np.ndarray):
                if not whole and (value.ndim == 0 or value.shape[0] != total):
                    return None
                for i, (start, count) in enumerate(spans):
                    part = value if len(bundles) == 1 else value[start:start + count]
                    per_bundle[i][spec.name] = wire.tensor(part)
            else:
                items = _plain(value)
                if not whole and (not isinstance(items, list) or len(items) != total):
                    return None
                for i, (start, count) in enumerate(spans):
                    part = items if len(bundles) == 1 else items[start:start + count]
                    shape = (len(part),) if isinstance(part, list) else ()
                    per_bundle[i][spec.name] = wire.Tensor(wire.JSON, shape, part)
        return per_bundle

    @staticmethod
    def _select(outputs: dict[str, wire.Tensor], request: wire.Request) -> dict[str, wire.Tensor]:
        if request.outputs is None:
            return outputs
        return {name: outputs[name] for name in request.outputs if name in outputs}

    def run_batch(
        self, bundles: Sequence[wire.Bundle]
    ) -> list[list[tuple[wire.Bundle, Outcome]]]:
        """For every bundle, in order, what it got; runs them together when the model allows.

        A bundle answers as one (bundle, outcome) pair, or as one pair per request when its
        requests had to run apart.
        """
        rows = sum(b.request.rows for b in bundles)
        try:
            results, compute_ms = self._run(bundles)
        except Exception as e:  # ORT raises its own exception types for bad input and failures
            if len(bundles) == 1 and len(bundles[0].ids) == 1:
                return [[(bundles[0], self._failure(e, rows))]]
            return self._one_by_one(bundles)
        split = self._split(bundles, results)
        if split is None:
            return self._one_by_one(bundles)
        return [
            [(bundle, Outcome(wire.ReplyStatus.OK, self._select(outputs, bundle.request), "",
                              rows, compute_ms, leader=(i == 0)))]
            for i, (outputs, bundle) in enumerate(zip(split, bundles, strict=True))
        ]

    def _one_by_one(
        self, bundles: Sequence[wire.Bundle]
    ) -> list[list[tuple[wire.Bundle, Outcome]]]:
        return [[pair for single in bundle.singles() for pair in self.run_batch([single])[0]]
                for bundle in bundles]

    def _failure(self, error: Exception, rows: int) -> Outcome:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        # ORT reports input problems (wrong rank, type, dims) as INVALID_ARGUMENT.
        if "INVALID_ARGUMENT" in message or isinstance(error, ValueError | TypeError):
            status, text = wire.ReplyStatus.BAD_INPUT, f"model rejected the input: {message}"
        else:
            log.warning("model %s failed: %s", self.model.pool, message)
            status, text = wire.ReplyStatus.MODEL_ERROR, f"model failed: {message}"
        return Outcome(status, {}, text, rows, 0.0, leader=True)
