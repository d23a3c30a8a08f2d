"""Prometheus metrics of one gateway process, in a registry of its own (docs/operations.md).

Worker-side figures arrive with every reply (queue wait, compute time, rows per run), so the
gateway's ``/metrics`` shows the whole path and one scrape target is enough. When several
gateway processes share a port (``PROMETHEUS_MULTIPROC_DIR`` set by ``modelgate up
--gateway-procs N``), values go to files in that folder and every process's ``/metrics``
merges all of them: counters and histograms add up, gauges show the most recent value of a
live process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelgate.core import wire

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = CONTENT_TYPE_LATEST

log = logging.getLogger("modelgate.gateway")
# Scope key a route sets to the (model, version, route) a call was admitted to: the request
# metrics are counted under it once the call is answered (``gateway/app.py``).
SERVED = "modelgate.served"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram]] = {}
        self._calls: dict[tuple[str, str, str, str], Histogram] = {}
        self._requests: dict[tuple[str, str, str, str, int], Counter] = {}
        self._grpc_requests: dict[tuple[str, str, str, str], Counter] = {}
        self._quality_metrics: dict[tuple[str, str], set[str]] = {}
        self._later: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        r = self.registry
        gauge_mode: Literal["livemostrecent", "all"] = (
            "livemostrecent" if self.multiprocess_dir else "all")
        # Calls: by the version that answered, the protocol they came by and the route that
        # sent them there (serving, canary, shadow, job); pools: by model and version.
        call_labels = ["model", "version", "protocol", "route"]
        pool_labels = ["model", "version"]
        self.requests = Counter("modelgate_requests",
                                "HTTP requests answered, by HTTP status code (protocol http)",
                                [*call_labels, "code"], registry=r)
        # gRPC calls by their gRPC status, never in the HTTP code (DECISIONS 8).
        self.grpc_requests = Counter(
            "modelgate_grpc_requests", "gRPC calls answered, by gRPC status code (OK, "
            "INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, "
            "...)", ["model", "version", "route", "grpc_code"], registry=r)
        self.request_duration = Histogram(
            "modelgate_request_duration_seconds", "End-to-end latency at the gateway",
            call_labels, buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_wait = Histogram(
            "modelgate_queue_wait_seconds", "Time from enqueue to a worker taking the request",
            pool_labels, buckets=LATENCY_BUCKETS_S, registry=r)
        self.inference_duration = Histogram(
            "modelgate_inference_duration_seconds", "ONNX Runtime time per batch",
            pool_labels, buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram(
            "modelgate_batch_size", "Rows per ONNX Runtime run", pool_labels,
            buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("modelgate_queue_depth", "Backlog: requests waiting or in work",
                                 pool_labels, registry=r, multiprocess_mode=gauge_mode)
        self.workers = Gauge("modelgate_workers", "Live workers serving the model version",
                             pool_labels, registry=r, multiprocess_mode=gauge_mode)
        self.desired_workers = Gauge("modelgate_desired_workers",
                                     "Workers the autoscaler wants", pool_labels, registry=r,
                                     multiprocess_mode=gauge_mode)
        self.cost_per_hour = Gauge("modelgate_cost_per_hour",
                                   "Cost rate of the workers the autoscaler wants",
                                   pool_labels, registry=r, multiprocess_mode=gauge_mode)
        self.budget_per_hour = Gauge("modelgate_budget_per_hour",
                                     "The autoscaler's budget across models (absent: none)",
                                     registry=r, multiprocess_mode=gauge_mode)
        self.drift_score = Gauge("modelgate_drift_score",
                                 "Drift statistic over its alarm threshold (1 = alarm)",
                                 ["model", "version", "feature"], registry=r,
                                 multiprocess_mode=gauge_mode)
        self.background_errors = Counter(
            "modelgate_background_errors",
            "Background tasks (task: dispatch-writer, dispatch-reader, pool-monitor, drift, "
            "dashboard) that died with an exception; each was restarted", ["task"], registry=r)
        self.dropped_replies = Counter(
            "modelgate_dropped_replies",
            "Replies dropped: malformed (not valid wire format; its callers get a 500 when its "
            "ids were readable) or late (no call waits for it: answered already, past its "
            "deadline, or not this gateway's)", ["reason"], registry=r)
        self.large_payloads = Counter(
            "modelgate_large_payloads",
            "Bundles of large request tensors, by the way they went to the workers: arena (the "
            "gateway's shared memory), full (through Redis: the arena had no room), unreachable "
            "(through Redis: a worker of the pool could not open the arena), redis (no arena)",
            ["path"], registry=r)
        self.malformed_records = Counter(
            "modelgate_malformed_records",
            "Values read from Redis that were skipped, not being what their key holds (record: "
            "pool, stats, budget, models, drift)", ["record"], registry=r)
        self.connections = Gauge(
            "modelgate_connections", "Client connections open (counted once a second)",
            registry=r, multiprocess_mode="livesum" if self.multiprocess_dir else "all")
        self.connections_closed = Counter(
            "modelgate_connections_closed",
            "Connections the gateway closed: header_timeout, body_timeout, evicted (idle, to "
            "make room at --max-connections), refused (none idle at the limit: a JSON 503)",
            ["reason"], registry=r)
        self.body_bytes_in_flight = Gauge(
            "modelgate_body_bytes_in_flight",
            "Bytes of request bodies held, from their arrival to their answer "
            "(--max-inflight-bytes bounds it)",
            registry=r, multiprocess_mode="livesum" if self.multiprocess_dir else "all")
        self.shadow_shed = Counter(
            "modelgate_shadow_shed",
            "Shadow copies not sent: the candidate could not take them (no live worker, a "
            "backlog past half its limit) or this gateway was busy", pool_labels, registry=r)
        self.agreement = Gauge(
            "modelgate_agreement",
            "Agreement of a candidate with the serving version on shadowed calls, since the "
            "candidate loaded (stat: n, top1, mean_abs_delta, p99_abs_delta)",
            ["model", "serving", "candidate", "stat"], registry=r,
            multiprocess_mode=gauge_mode)
        self.drift_alert = Gauge("modelgate_drift_alert", "1 while the feature is drifting",
                                 ["model", "version", "feature"], registry=r,
                                 multiprocess_mode=gauge_mode)

        self.feedback_dropped = Counter(
            "modelgate_feedback_answers_dropped",
            "Answered calls not stored for feedback: queue_full (this gateway's writer fell "
            "behind), redis_full (Redis refused the write; the store shrank), id_too_long, "
            "id_invalid (not UTF-8)",
            ["model", "reason"], registry=r)
        self.feedback_labels = Counter(
            "modelgate_feedback_labels",
            "Labels received, by result: matched, unknown, expired, already_labelled, invalid",
            ["model", "result"], registry=r)
        self.quality = Gauge(
            "modelgate_quality",
            "Live quality of a version on labelled rows since it loaded (metric: labelled, "
            "accuracy, log_loss, ece, mae, rmse, window_accuracy, cusum)",
            ["model", "version", "metric"], registry=r, multiprocess_mode=gauge_mode)
        self.quality_alert = Gauge(
            "modelgate_quality_alert",
            "1 while the version's accuracy is significantly below its reference (CUSUM)",
            pool_labels, registry=r, multiprocess_mode=gauge_mode)

    def later(self, record: Callable[..., None], *args: Any) -> None:
        """``record(*args)`` once the answers of this event-loop step are written: one
        callback for every call of the step rather than one per call (a figure a few
        microseconds late changes nothing a scrape sees)."""
        self._later.append((record, args))
        if len(self._later) == 1:
            asyncio.get_running_loop().call_soon(self._record_later)

    def _record_later(self) -> None:
        pending, self._later = self._later, []
        for record, args in pending:
            try:
                record(*args)
            except Exception:  # one figure lost, never the others, never the loop
                log.exception("a metric could not be recorded")

    def set_quality(self, model: str, version: str, metric: str, value: float) -> None:
        """One live quality figure of a version (forgotten with its pool)."""
        self._quality_metrics.setdefault((model, version), set()).add(metric)
        self.quality.labels(model, version, metric).set(value)

    def _per_pool(self, model: str, version: str) -> tuple[Histogram, Histogram, Histogram]:
        """The labelled children every answer of a pool touches, looked up once."""
        children = self._children.get((model, version))
        if children is None:
            children = self._children[model, version] = (
                self.queue_wait.labels(model, version),
                self.inference_duration.labels(model, version),
                self.batch_size.labels(model, version))
        return children

    def count_request(self, model: str, version: str, protocol: str, route: str, status: int,
                      duration_s: float) -> None:
        key = (model, version, protocol, route, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(
                model, version, protocol, route, str(status))
        counter.inc()
        duration = self._calls.get(key[:4])
        if duration is None:
            duration = self._calls[key[:4]] = self.request_duration.labels(*key[:4])
        duration.observe(duration_s)

    def count_grpc_request(self, model: str, version: str, route: str, grpc_code: str,
                           duration_s: float) -> None:
        key = (model, version, route, grpc_code)
        counter = self._grpc_requests.get(key)
        if counter is None:
            counter = self._grpc_requests[key] = self.grpc_requests.labels(*key)
        counter.inc()
        calls = (model, version, "grpc", route)
        duration = self._calls.get(calls)
        if duration is None:
            duration = self._calls[calls] = self.request_duration.labels(*calls)
        duration.observe(duration_s)

    def observe_reply(self, model: str, version: str, reply: wire.Reply) -> None:
        queue_wait, inference_duration, batch_size = self._per_pool(model, version)
        queue_wait.observe(reply.queue_ms / 1000.0)
        if reply.batch_leader:
            inference_duration.observe(reply.compute_ms / 1000.0)
            batch_size.observe(reply.batch_size)

    def forget_pool(self, model: str, version: str) -> None:
        """A pool that left: its gauges go (its counters and histograms stay, as Prometheus
        expects of counters)."""
        for gauge in (self.queue_depth, self.workers, self.desired_workers, self.cost_per_hour,
                      self.quality_alert):
            with contextlib.suppress(KeyError):
                gauge.remove(model, version)
        for metric in self._quality_metrics.pop((model, version), set()):
            with contextlib.suppress(KeyError):
                self.quality.remove(model, version, metric)
        self._children.pop((model, version), None)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)

    def close(self) -> None:
        """Drop this process's live gauges from the merged view (it is exiting)."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)
