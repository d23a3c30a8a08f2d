"""Prometheus metrics of one gateway process, in a registry of its own (names: DESIGN §6).

Worker-side figures arrive with every reply (queue wait, compute time, rows per run), so the
gateway's ``/metrics`` shows the whole path and one scrape target is enough.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelgate import wire

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("modelgate_requests", "Requests answered, by HTTP status code",
                                ["model", "code"], registry=r)
        self.request_duration = Histogram(
            "modelgate_request_duration_seconds", "End-to-end latency at the gateway",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_wait = Histogram(
            "modelgate_queue_wait_seconds", "Time from enqueue to a worker taking the request",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.inference_duration = Histogram(
            "modelgate_inference_duration_seconds", "ONNX Runtime time per batch",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram(
            "modelgate_batch_size", "Rows per ONNX Runtime run", ["model"],
            buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("modelgate_queue_depth", "Backlog: entries waiting or in work",
                                 ["model"], registry=r)
        self.workers = Gauge("modelgate_workers", "Live workers serving the model", ["model"],
                             registry=r)
        self.desired_workers = Gauge("modelgate_desired_workers",
                                     "Workers the autoscaler wants", ["model"], registry=r)
        self.drift_score = Gauge("modelgate_drift_score",
                                 "Drift statistic over its alarm threshold (1 = alarm)",
                                 ["model", "feature"], registry=r)
        self.drift_alert = Gauge("modelgate_drift_alert", "1 while the feature is drifting",
                                 ["model", "feature"], registry=r)

    def observe_reply(self, model: str, reply: wire.Reply) -> None:
        self.queue_wait.labels(model).observe(reply.queue_ms / 1000.0)
        if reply.batch_leader:
            self.inference_duration.labels(model).observe(reply.compute_ms / 1000.0)
            self.batch_size.labels(model).observe(reply.batch_size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
